"""Lightning's Trainer from the `trainer` config group, with the checks of its arguments that the configuration
check and the run share."""

from __future__ import annotations

import math

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.strategies import StrategyRegistry
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, ListConfig, OmegaConf

from cfglab.devices import cuda_unavailable_reason, resolve_precision
from cfglab.lightning.console import RunSummary, StepProgressBar, quiet_lightning


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_trainer_args(args: DictConfig) -> None:
    """Raise ValueError for Trainer arguments that make a fit fail, stop at once or never stop. Their types are
    checked against the Trainer's own signature (cfglab.config_nodes); the duration of max_time by Lightning's
    Timer, which parses it; Lightning accepts max_steps=0, max_epochs=0 and gradient_clip_val < 0 when it builds
    the Trainer, and refuses devices=0 or a missing accelerator only with messages that do not name the fix."""
    from lightning.pytorch.callbacks import Timer

    problems = []
    max_steps, max_epochs, max_time = args.get("max_steps", -1), args.get("max_epochs"), args.get("max_time")
    if not _integer(max_steps) or (max_steps < 1 and max_steps != -1):
        problems.append(f"max_steps={max_steps!r} must be an integer >= 1 (or -1: no step limit)")
    if max_epochs is not None and (not _integer(max_epochs) or (max_epochs < 1 and max_epochs != -1)):
        problems.append(f"max_epochs={max_epochs!r} must be an integer >= 1, -1 (no epoch limit) or null")
    # What stops a fit, as Lightning decides it: max_steps, max_epochs (null: 1000 unless max_steps or max_time
    # is set) or max_time; only max_steps = max_epochs = -1 without max_time never stops.
    if max_time is None and max_steps == -1 and max_epochs == -1:
        problems.append("max_epochs=-1 with max_steps=-1 and no max_time: nothing would stop the fit; set one of them")
    if max_time is not None:
        try:
            Timer(duration=OmegaConf.to_container(max_time) if isinstance(max_time, DictConfig) else max_time)
        except (MisconfigurationException, TypeError, ValueError):
            problems.append(f"max_time={max_time!r} is not a duration: use 'DD:HH:MM:SS' or a mapping such as "
                            "{hours: 12}")
    devices = args.get("devices", "auto")
    if devices != "auto" and not isinstance(devices, (list, ListConfig)) and not (
            _integer(devices) and (devices >= 1 or devices == -1)):
        problems.append(f"devices={devices!r} must be 'auto', -1, an integer >= 1 or a list of device ids")
    for key in ("accumulate_grad_batches", "log_every_n_steps", "check_val_every_n_epoch"):
        v = args.get(key)
        if v is not None and (not _integer(v) or v < 1):
            problems.append(f"{key}={v!r} must be an integer >= 1")
    clip = args.get("gradient_clip_val")
    if clip is not None and not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip >= 0):
        problems.append(f"gradient_clip_val={clip!r} must be a finite number >= 0 or null")
    strategy = args.get("strategy", "auto")
    if isinstance(strategy, str) and strategy != "auto" and strategy not in StrategyRegistry.available_strategies():
        known = ", ".join(sorted(s for s in StrategyRegistry.available_strategies() if "find_unused" not in s))
        problems.append(f"strategy={strategy!r} is not one of Lightning's strategies: auto, {known} (or a "
                        "Strategy object)")
    if args.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        problems.append(f"accelerator={args.accelerator!r}, but {cuda_unavailable_reason()} (or use trainer=cpu)")
    if problems:
        raise ValueError("; ".join(problems))


def world_size(args: DictConfig) -> int:
    """The number of training processes of the `trainer` config: devices x num_nodes (1 for devices 'auto' or
    -1 on a CPU)."""
    devices, nodes = args.get("devices", "auto"), args.get("num_nodes", 1)
    count = len(devices) if isinstance(devices, (list, ListConfig)) else devices if _integer(devices) and devices > 0 \
        else 1
    return count * (nodes if _integer(nodes) and nodes > 0 else 1)


def training_device(args: DictConfig) -> torch.device:
    """The kind of device the `trainer` config trains on (accelerator 'auto': CUDA when torch sees a device)."""
    accelerator = args.get("accelerator", "auto")
    if accelerator in ("gpu", "cuda") or accelerator == "auto" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def build_trainer(args: DictConfig, **kwargs) -> L.Trainer:
    """The Trainer of the `trainer` config (`_target_` Lightning's Trainer) with `kwargs` added (callbacks,
    loggers, plugins), after `check_trainer_args`; Lightning checks the rest as it is built. `precision: auto`
    is resolved for the device (`cfglab.devices.resolve_precision`, said in one line), the progress bar counts
    steps (`StepProgressBar`), the model summary counts the FLOPs of a forward (`RunSummary`), and Lightning's
    messages that are not about the run are left out."""
    check_trainer_args(args)
    quiet_lightning()
    precision, line = resolve_precision("trainer.precision", args.get("precision"), training_device(args))
    if line:
        rank_zero_info(line)
    callbacks = list(kwargs.pop("callbacks", None) or [])
    if args.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(StepProgressBar())
    if args.get("enable_model_summary", True) and not any(isinstance(c, ModelSummary) for c in callbacks):
        callbacks.append(RunSummary())
    # The summary is the callback's: Lightning would otherwise announce that it skips its own default one.
    return instantiate(args, callbacks=callbacks, enable_model_summary=False, precision=precision, **kwargs)
