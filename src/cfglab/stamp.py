"""What produced a run: written as stamp.json into every run directory and given to every logger's config."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Optional

import torch

from cfglab.atomic import atomic_write_text


def _git(*args: str) -> Optional[str]:
    source = Path(__file__).resolve().parents[2]  # the checkout holding src/cfglab, for an editable install
    try:
        out = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def run_stamp(device: Optional[torch.device | str] = None) -> dict:
    """cfglab's version and git commit (None outside a checkout) with whether the tree had uncommitted changes,
    the versions of Python, torch and Lightning, and the device the job computes on."""
    commit = _git("rev-parse", "HEAD")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {
        "cfglab": _version("cfglab"),
        "git_commit": commit,
        "git_dirty": None if commit is None else bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "lightning": _version("lightning"),
        "device": f"{device.type}: {name}",
    }


def write_stamp(run_dir: str | Path, device: Optional[torch.device | str] = None) -> dict:
    """run_stamp() written to <run_dir>/stamp.json; returns it."""
    stamp = run_stamp(device)
    atomic_write_text(Path(run_dir) / "stamp.json", json.dumps(stamp, indent=1) + "\n")
    return stamp
