"""Which device a job runs on (`device: auto | cpu | cuda | cuda:N` in the evaluate and generate configs), and the
precision that is fast on it (`precision: auto`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch


def cuda_unavailable_reason() -> str:
    """Why torch sees no CUDA device, pointing at the likely fix."""
    if torch.version.cuda is None:
        return (f"the installed torch {torch.__version__} is a CPU-only build: install the torch build that matches "
                "your CUDA driver first (https://pytorch.org/get-started/locally/), then cfglab")
    return f"no CUDA device is visible to torch {torch.__version__} (CUDA {torch.version.cuda}): check the driver " \
           "and CUDA_VISIBLE_DEVICES, or use the CPU"


def resolve_device(name: str) -> torch.device:
    """'auto' is the first CUDA device when there is one, else the CPU; 'cuda' needs a visible CUDA device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={name!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={name!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}: {cuda_unavailable_reason()}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def _cpu_flags() -> Optional[set[str]]:
    """The CPU's feature flags from /proc/cpuinfo (x86 'flags', Arm 'Features'); None where there is no such file."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return {f for line in text.splitlines() if line.split(":")[0].strip() in ("flags", "Features")
            for f in line.split(":", 1)[1].split()}


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """Whether `device` computes bf16 natively, and what says so (or why not). Without it, bf16 autocast is
    emulated: on an AVX2-only CPU about 10x slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{name} computes bf16 natively"
        return False, f"{name} has no native bf16 (CUDA compute capability below 8.0)"
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if cap != "ALL" and not any(s in cap for s in ("BF16", "AMX", "FP16", "AVX10")):
        return False, f"ONEDNN_MAX_CPU_ISA={cap} keeps oneDNN off this CPU's bf16 instructions"
    flags = _cpu_flags()
    if flags is None:
        return False, "this CPU's features cannot be read (no /proc/cpuinfo), so native bf16 is not assumed"
    found = sorted({"avx512_bf16", "amx_bf16", "bf16"} & flags)
    if found:
        return True, f"this CPU computes bf16 natively ({', '.join(found)})"
    return False, "this CPU has no native bf16 (no avx512_bf16, amx_bf16 or Arm bf16 flag)"


def resolve_precision(key: str, precision: Any, device: torch.device | str) -> tuple[Any, Optional[str]]:
    """The precision to run with for the setting `key` (e.g. trainer.precision) and one line to print, or None.
    'auto' is bf16-mixed on a device with native bf16 and 32-true elsewhere; a bf16 precision asked for on a
    device without native bf16 is kept, with a line saying it is slow there."""
    if precision == "auto":
        native, why = native_bf16(device)
        chosen = "bf16-mixed" if native else "32-true"
        return chosen, f"{key}=auto: {chosen}, since {why}"
    if isinstance(precision, str) and precision.startswith("bf16"):
        native, why = native_bf16(device)
        if not native:
            return precision, (f"{key}={precision}, but {why}: bf16 is emulated and several times slower than "
                               f"32-true here ({key}=auto picks the fast one)")
    return precision, None
