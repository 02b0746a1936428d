"""Logger factories whose run names, groups and tags come from the Hydra job, and the secrets policy."""

from __future__ import annotations

import netrc
import os
import re
from pathlib import Path
from typing import Optional, Sequence

from hydra.core.hydra_config import HydraConfig

SECRET_ENV = ("WANDB_API_KEY",)
SECRET_KEY = re.compile(r"api_?key|token|secret|password", re.IGNORECASE)


def wandb_api_key_configured() -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` stores it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def hydra_run_names() -> tuple[Optional[str], Optional[str], list[str]]:
    """(run name, group, tags) of the current Hydra job: the name is its overrides (or its directory name), the
    group is the multirun's sweep directory (one group per multirun), the tags are the config group choices."""
    if not HydraConfig.initialized():
        return None, None, []
    hc = HydraConfig.get()
    name = hc.job.override_dirname or Path(hc.runtime.output_dir).name
    group = Path(hc.sweep.dir).name if hc.mode.name == "MULTIRUN" else None
    tags = [f"{k}:{v}" for k, v in sorted(hc.runtime.choices.items()) if v and not k.startswith("hydra")]
    return name, group, tags


def wandb_logger(project: str = "cfglab", entity: Optional[str] = None, name: Optional[str] = None,
                 group: Optional[str] = None, tags: Sequence[str] = (), mode: Optional[str] = None,
                 save_dir: str = ".", log_model: bool = False):
    """Lightning's WandbLogger. mode: "online", "offline" or None (online only when an API key is configured,
    so that runs on machines without one still keep their files: sync them later with `wandb sync`).
    name/group default to the Hydra job's (see `hydra_run_names`); `tags` add to the config group choices."""
    from lightning.pytorch.loggers import WandbLogger

    if mode not in (None, "online", "offline"):
        raise ValueError(f"logger.wandb.mode={mode!r} must be 'online', 'offline' or null")
    mode = mode or ("online" if wandb_api_key_configured() else "offline")
    hydra_name, hydra_group, hydra_tags = hydra_run_names()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=project, entity=entity, name=name or hydra_name, group=group or hydra_group,
                       tags=[*hydra_tags, *tags], offline=mode == "offline", save_dir=save_dir, log_model=log_model)


def find_secrets(node, path: str = "") -> list[str]:
    """Config keys that look like credentials, or values holding one of the SECRET_ENV variables' values.

    Configs are saved to the run directory and logged to every logger, so credentials must come from the
    environment (wandb reads WANDB_API_KEY itself) and never from a config value.
    """
    secrets = [v for k in SECRET_ENV if (v := os.environ.get(k))]
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{path}.{k}" if path else str(k)
            if SECRET_KEY.search(str(k)) and v is not None:
                found.append(key)
            else:
                found += find_secrets(v, key)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            found += find_secrets(v, f"{path}[{i}]")
    elif isinstance(node, str) and any(s in node for s in secrets):
        found.append(path)
    return found
