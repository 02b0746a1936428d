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


def short_override(override: str) -> str:
    """key=value with the key's last part and, for a path, its last part: module.p_uncond=0.2 -> p_uncond=0.2,
    data.data_dir=/data/mnist -> data_dir=mnist."""
    key, _, value = override.partition("=")
    key = key.lstrip("+~").rsplit(".", 1)[-1]
    if "/" in value and not value.startswith("["):
        value = Path(value.rstrip("/")).name or value
    return f"{key}={value}" if value else key


def sweep_keys(sweep_overrides: Sequence[str], params: dict) -> list[str]:
    """The keys a multirun sweeps over: its command-line overrides with several values (a,b or range(...)) and
    the sweeper's params (e.g. those of an experiment preset)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([*sweep_overrides, *(f"{k}={v}" for k, v in params.items())])
    return list(dict.fromkeys(o.key_or_group for o in parsed if o.is_sweep_override()))


def run_group(experiment: Optional[str], run_dir: str | Path, sweep_dir: Optional[str | Path]) -> str:
    """The W&B group of a run: its study (the experiment preset, else "train") and the time stamp of its multirun,
    or of the run itself when it is not part of one: paper_table1_2026-11-25_16-08-20-123456."""
    stamp = Path(sweep_dir) if sweep_dir is not None else Path(run_dir)
    return f"{experiment or 'train'}_{stamp.parent.name}_{stamp.name}"


def hydra_run_names() -> tuple[Optional[str], Optional[str], list[str]]:
    """(run name, group, tags) of the current Hydra job. The name holds the overrides that vary across the
    multirun, shortened (p_uncond=0.2); for a single run (or a multirun of one job) its shortened overrides, or
    its directory name without any. The group is `run_group`; the tags are the config group choices."""
    if not HydraConfig.initialized():
        return None, None, []
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    multirun = hc.mode.name == "MULTIRUN"
    if multirun:
        swept = set(sweep_keys(_multirun_overrides(Path(hc.sweep.dir)), dict(hc.sweeper.get("params") or {})))
        overrides = [o for o in overrides if o.partition("=")[0] in swept] or overrides
    name = " ".join(short_override(o) for o in overrides)[:128] or Path(hc.runtime.output_dir).name
    group = run_group(hc.runtime.choices.get("experiment"), hc.runtime.output_dir, hc.sweep.dir if multirun else None)
    tags = [f"{k}:{v}" for k, v in sorted(hc.runtime.choices.items()) if v and not k.startswith("hydra")]
    return name, group, tags


def _multirun_overrides(sweep_dir: Path) -> list[str]:
    """The command line of the multirun a job belongs to (multirun.yaml, which Hydra's sweeper writes before any
    job starts); empty when it cannot be read."""
    import yaml

    try:
        return list(yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]["overrides"]["task"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return []


def wandb_logger(project: str = "cfglab", entity: Optional[str] = None, name: Optional[str] = None,
                 group: Optional[str] = None, tags: Sequence[str] = (), mode: Optional[str] = None,
                 save_dir: str = ".", log_model: bool = False, job_type: Optional[str] = None):
    """Lightning's WandbLogger. mode: "online", "offline" or None (online only when an API key is configured,
    so that runs on machines without one still keep their files: sync them later with `wandb sync`).
    name/group default to the Hydra job's (see `hydra_run_names`); `tags` add to the config group choices;
    job_type: "train" (default), "eval", ... (W&B filters and groups by it)."""
    from lightning.pytorch.loggers import WandbLogger

    if mode not in (None, "online", "offline"):
        raise ValueError(f"logger.wandb.mode={mode!r} must be 'online', 'offline' or null")
    mode = mode or ("online" if wandb_api_key_configured() else "offline")
    hydra_name, hydra_group, hydra_tags = hydra_run_names()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=project, entity=entity, name=name or hydra_name, group=group or hydra_group,
                       tags=[*hydra_tags, *tags], offline=mode == "offline", save_dir=save_dir, log_model=log_model,
                       job_type=job_type or "train")


def training_run_identity(loggers: Sequence, output_dir: str | Path) -> dict:
    """The name and group of a training run (and its W&B project and id when it logs there), kept in its
    checkpoints: evaluate.py and generate.py join that group (cfglab.checkpoints.run_identity)."""
    from lightning.pytorch.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger):
            run = lg.experiment
            return {"name": run.name, "group": run.group, "project": run.project, "id": run.id}
    name, group, _ = hydra_run_names()
    return {"name": name or Path(output_dir).name, "group": group}


def finish_wandb(loggers: Sequence) -> None:
    """End the W&B run of a job: the next job of a sequential multirun must start its own, not continue this one."""
    from lightning.pytorch.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger) and lg._experiment is not None:
            lg.experiment.finish()


def checkpoint_job_loggers(loggers_cfg, identity: dict, job_type: str) -> list:
    """The loggers of a job on a checkpoint (`job_type` "eval" or "generate"): a W&B run joins the training run's
    group and is named after it, unless logger.wandb.name / group / job_type are set."""
    from hydra.utils import instantiate

    out = []
    for node in (loggers_cfg or {}).values():
        if node is None:
            continue
        extra = {}
        if node.get("_target_") == f"{__name__}.wandb_logger":
            extra = {"name": node.get("name") or f"{identity['name']} {job_type}",
                     "group": node.get("group") or identity.get("group"), "job_type": node.get("job_type") or job_type}
        out.append(instantiate(node, **extra))
    return out


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
