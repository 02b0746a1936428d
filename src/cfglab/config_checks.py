"""Checks of a composed train or evaluate config, run before any output is written or compute is spent.

The schema is the code itself: every node with a `_target_` may only hold arguments its target accepts, and
the cheap objects (data module, model on the meta device, schedule, sampler, guidance, module, callbacks) are
built once, so their constructors' range checks run. On top come the checks no single constructor can make:
consistency between groups, the trainer's ranges, file paths. Every problem found is reported at once, each
naming its config key and bad value.

`CheckConfig` runs the checks as a Hydra callback, before Hydra creates the run directory, so a bad
configuration leaves nothing behind (and cannot overwrite the .hydra record of a run it was meant to resume).
"""

from __future__ import annotations

import copy
import inspect
import math
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from cfglab.checkpoints import MOVED_MODULE_KEYS, data_config, stored_config
from cfglab.devices import cuda_unavailable_reason, resolve_device
from cfglab.diffusion.guidance import check_sampler_guidance
from cfglab.loggers import find_secrets
from cfglab.sweep import ws_problems

TRAIN_KEYS = {"data", "model", "schedule", "sampler", "guidance", "sampling", "sweep", "trainer", "logger",
              "callbacks", "metrics", "seed", "ckpt_path", "module", "grids", "hydra"}
EVALUATE_KEYS = {"sampler", "guidance", "sampling", "sweep", "metrics", "ckpt_path", "device", "data", "hydra"}
GENERATE_KEYS = {"sampler", "guidance", "sampling", "ckpt_path", "ws", "labels", "num_samples", "batch_size", "seed",
                 "device", "png", "data", "hydra"}
HYDRA_ARGS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
SWEEP_KEYS = ("ws", "num_samples", "batch_size", "seed", "grid_per_class")
_ABSENT = object()


def moved_keys(job: str) -> dict[str, str]:
    """Keys whose value would not be read, each with where that value is set instead."""
    ws = {"train": "sweep.ws (the sweep) and grids.ws (the end-of-job grids)", "evaluate": "sweep.ws",
          "generate": "ws"}[job]
    moved = {"guidance.w": f"a guidance strength here would be ignored: the strengths are {ws}",
             "sweep.w": "the sweep's guidance strengths are sweep.ws"}
    moved |= {f"callbacks.sweep.{k}": f"the sweep settings are shared with evaluate.py: set sweep.{k}" for k in SWEEP_KEYS}
    moved |= {f"module.{k}": f"a sampling setting, not a model one: set {new}" for k, new in MOVED_MODULE_KEYS.items()}
    return moved


def check_overrides(args: list[str], job: str) -> None:
    """Refuse command-line overrides of keys whose value would not be read (e.g. guidance.w=3), naming where the
    value belongs. Runs before Hydra composes the config, whose own error for such keys would not say that."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, moved, p = OverridesParser.create(), moved_keys(job), _Problems()
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = parser.parse_override(arg)
        except Exception:
            continue  # malformed: Hydra reports it
        if override.key_or_group in moved:
            p.add(override.key_or_group, f"{override.get_value_element_as_str()}: {moved[override.key_or_group]}")
    try:
        p.raise_if_any(job)
    except ConfigError as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(2)


class ConfigError(ValueError):
    """One or more bad config values; the message has one line per problem, each naming key and value."""


class _Problems:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def add(self, key: str, message: str) -> None:
        if all(message != m for _, m in self.lines):  # interpolated nodes (${sampler}) repeat a complaint
            self.lines.append((key, message))

    def reported(self, key: str) -> bool:
        """Whether a problem of `key` or of a key inside it was recorded."""
        return any(k == key or k.startswith(key + ".") or k.startswith(key + "[") for k, _ in self.lines)

    def build(self, key: str, fn: Callable[[], Any]) -> Any:
        """fn(), or None with the constructor's complaint recorded under `key` (skipped when one of the
        node's own keys was already reported as unknown)."""
        if any(k.startswith(key + ".") or k.startswith(key + "[") for k, _ in self.lines):
            return None
        try:
            return fn()
        except InstantiationException as e:
            self.add(key, str(e.__cause__ or e).strip())
        except (ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
            self.add(key, str(e))
        return None

    def raise_if_any(self, what: str) -> None:
        if self.lines:
            raise ConfigError(f"bad {what} configuration, nothing was run:\n  "
                              + "\n  ".join(f"{k}: {m}" for k, m in self.lines))


def check_train_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every problem of a train.py config."""
    p = _Problems()
    _check_top_level(cfg, TRAIN_KEYS, "train", p)
    _check_arguments(cfg, "", p)
    data = p.build("data", lambda: instantiate(cfg.data))
    schedule = p.build("schedule", lambda: instantiate(cfg.schedule))
    if data is not None:
        shape = {"image_size": data.image_size, "in_channels": data.channels, "num_classes": data.num_classes}
        for k, v in shape.items():
            if k in cfg.model and cfg.model[k] != v:
                p.add(f"model.{k}", f"{cfg.model[k]} disagrees with the data ({type(data).__name__} has {k}={v})")
        with torch.device("meta"):  # constructors check shapes without allocating the weights
            net = p.build("model", lambda: instantiate(cfg.model, **shape))
        if net is not None and schedule is not None:
            p.build("module", lambda: instantiate(cfg.module, net=net, schedule=schedule, num_classes=data.num_classes))
        _check_metrics(cfg.metrics, "metrics", data, p)
    _check_sampling(cfg, p)
    _check_sweep(cfg, p)
    _check_guidance_grid(cfg, "grids.ws", p, allow_empty=True)
    for name, node in (cfg.callbacks or {}).items():
        if node is not None and not _depends_on_reported(node, p):
            p.build(f"callbacks.{name}", lambda node=node: instantiate(node))
    _positive(cfg.grids, "grids", ("per_class",), p)
    _check_trainer(cfg.trainer, p)
    if cfg.ckpt_path not in (None, "last") and not Path(cfg.ckpt_path).is_file():
        p.add("ckpt_path", f"{cfg.ckpt_path!r} is not a file (use 'last' to resume from the run directory, or null)")
    p.raise_if_any("train")


def check_evaluate_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every problem of an evaluate.py config."""
    p, _ = _checkpoint_job_problems(cfg, EVALUATE_KEYS, "evaluate")
    _check_sweep(cfg, p)
    _check_metrics(cfg.metrics, "metrics", None, p)
    p.raise_if_any("evaluate")


def check_generate_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every problem of a generate.py config."""
    p, stored = _checkpoint_job_problems(cfg, GENERATE_KEYS, "generate")
    _check_guidance_grid(cfg, "ws", p)
    _positive(cfg, "", ("num_samples", "batch_size"), p)
    labels = cfg.labels
    items = list(labels) if isinstance(labels, ListConfig) else [labels]
    if labels != "balanced" and (not items or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                                      for c in items)):
        p.add("labels", f"{OmegaConf.to_container(labels) if isinstance(labels, ListConfig) else labels!r} must be "
                        "'balanced', a class index or a non-empty list of class indices")
    if not isinstance(cfg.png, bool):
        p.add("png", f"{cfg.png!r} must be true or false")
    elif cfg.png and stored is not None and "image_size" not in stored["data"]:
        p.add("png", f"true, but this checkpoint's data ({stored['data']['_target_']}) are not images")
    p.raise_if_any("generate")


def _checkpoint_job_problems(cfg: DictConfig, known: set, job: str) -> tuple[_Problems, Optional[dict]]:
    """The problems every job on a checkpoint can have (keys, the file, the data settings that replace its own,
    the device, the sampling groups), and the config stored in the checkpoint (None if it cannot be read)."""
    p, stored = _Problems(), None
    _check_top_level(cfg, known, job, p)
    _check_arguments(cfg, "", p)
    if cfg.ckpt_path is None or not Path(cfg.ckpt_path).is_file():
        p.add("ckpt_path", f"{cfg.ckpt_path!r} is not a file")
    elif not isinstance(cfg.data, DictConfig):
        p.add("data", f"{cfg.data!r} must be a mapping of data settings, e.g. data.data_dir=/path")
    else:
        stored = p.build("ckpt_path", lambda: stored_config(cfg.ckpt_path))
        if stored is not None:
            p.build("data", lambda: data_config(stored, OmegaConf.to_container(cfg.data)))
    p.build("device", lambda: resolve_device(cfg.device))
    _check_sampling(cfg, p)
    return p, stored


def _check_sweep(cfg: DictConfig, p: _Problems) -> None:
    _check_guidance_grid(cfg, "sweep.ws", p)
    p.build("sweep", lambda: instantiate(cfg.sweep))


def _check_sampling(cfg: DictConfig, p: _Problems) -> None:
    """The groups every sampling job has: sampler, guidance, sampling."""
    sampler = p.build("sampler", lambda: instantiate(cfg.sampler))
    guidance = p.build("guidance", lambda: instantiate(cfg.guidance)(w=0.0))
    if sampler is not None and guidance is not None:
        p.build("sampler", lambda: check_sampler_guidance(sampler, guidance))
    p.build("sampling", lambda: instantiate(cfg.sampling))


def _depends_on_reported(node: DictConfig, p: _Problems) -> bool:
    """Whether a node interpolates a group (${sweep}) whose problems were already reported."""
    refs = [str(node._get_node(k)._value()) for k in node.keys()]
    return any(p.reported(r[2:-1]) for r in refs if r.startswith("${") and r.endswith("}"))


def _check_top_level(cfg: DictConfig, known: set, job: str, p: _Problems) -> None:
    for key in find_secrets(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)):
        p.add(key, "looks like a credential: configs are saved and logged, so set it in the environment "
                   "(e.g. WANDB_API_KEY) and not in the config")
    for key, where in moved_keys(job).items():
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
        if value is not _ABSENT:
            p.add(key, f"{value!r}: {where}")
    for key in set(cfg.keys()) - known:
        p.add(key, f"unknown key (value {OmegaConf.select(cfg, key)!r}); known keys: {sorted(known - {'hydra'})}")


def _check_arguments(node: Any, path: str, p: _Problems) -> None:
    """Every `_target_` node may only hold arguments that its target accepts."""
    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            _check_arguments(item, f"{path}[{i}]", p)
    if not isinstance(node, DictConfig):
        return
    for key in node.keys():
        if key != "hydra" and not str(key).startswith("_"):
            _check_arguments(node._get_node(key), f"{path}.{key}" if path else str(key), p)
    if "_target_" not in node:
        return
    try:
        target = get_method(node._target_) if not isinstance(node._target_, type) else node._target_
    except Exception:
        p.add(f"{path}._target_", f"{node._target_!r} cannot be imported")
        return
    accepted = _accepted_arguments(target)
    if accepted is None:
        return  # forwards keywords to something unknown: its constructor rejects unknown ones
    for key in set(node.keys()) - accepted - HYDRA_ARGS:
        if p.reported(f"{path}.{key}"):  # a moved key, already named with where it belongs
            continue
        p.add(f"{path}.{key}", f"unknown key (value {node._get_node(key)._value()!r}) for {node._target_}; "
                               f"accepted: {sorted(accepted)}")


def _accepted_arguments(target) -> set[str] | None:
    """Named parameters of a function or class; None when **kwargs may take anything. cfglab's own classes
    pass **kwargs on to their parent's __init__, so the parents' parameters count too."""
    inits = [k.__dict__["__init__"] for k in target.__mro__ if "__init__" in k.__dict__] if isinstance(target, type) \
        else [target]
    names: set[str] = set()
    for fn in inits:
        if fn is object.__init__:
            return None
        params = inspect.signature(fn).parameters.values()
        names |= {q.name for q in params if q.kind not in (q.VAR_KEYWORD, q.VAR_POSITIONAL)} - {"self"}
        if not any(q.kind is q.VAR_KEYWORD for q in params):
            return names
        if not fn.__module__.startswith("cfglab."):
            return None
    return None


def _check_guidance_grid(cfg: DictConfig, key: str, p: _Problems, allow_empty: bool = False) -> None:
    """The list at `key` must hold distinct numbers, each a valid strength of the chosen guidance method (e.g.
    CFG++ needs w <= 1)."""
    ws = OmegaConf.select(cfg, key)
    problems = ws_problems(ws, allow_empty)
    for index, message in problems:
        p.add(key + index, message)
    guidance = None if problems else p.build("guidance", lambda: instantiate(cfg.guidance))
    for i, w in enumerate(ws if guidance is not None else []):
        p.build(f"{key}[{i}]", lambda w=w: guidance(w=float(w)))


def _check_metrics(node: DictConfig, key: str, data, p: _Problems) -> None:
    from cfglab.metrics.fidelity import check_metrics_args

    args = {k: node[k] for k in ("extractor", "reference_split", "weights_path", "allow_download") if k in node}
    p.build(key, lambda: check_metrics_args(datamodule=data, **args))


def _positive(node: DictConfig, path: str, keys: tuple[str, ...], p: _Problems) -> None:
    for k in keys:
        v = node.get(k)
        if k in node and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            p.add(f"{path}.{k}" if path else k, f"{v!r} must be an integer >= 1")


def _check_trainer(t: DictConfig, p: _Problems) -> None:
    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    max_steps = t.get("max_steps", -1)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or (max_steps < 1 and max_steps != -1):
        p.add("trainer.max_steps", f"{max_steps!r} must be an integer >= 1 (or -1 to train by max_epochs)")
    elif max_steps == -1 and (t.get("max_epochs") or -1) < 1:
        p.add("trainer.max_epochs", f"{t.get('max_epochs')!r}: with max_steps=-1 training needs max_epochs >= 1")
    _positive(t, "trainer", ("accumulate_grad_batches", "log_every_n_steps"), p)
    if t.get("check_val_every_n_epoch") is not None:
        _positive(t, "trainer", ("check_val_every_n_epoch",), p)
    clip = t.get("gradient_clip_val")
    if clip is not None and not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip >= 0):
        p.add("trainer.gradient_clip_val", f"{clip!r} must be a finite number >= 0 or null")
    precision = str(t.get("precision", "32-true"))
    allowed = typing.get_args(_PRECISION_INPUT_STR) + typing.get_args(_PRECISION_INPUT_STR_ALIAS)
    if precision not in allowed:
        p.add("trainer.precision", f"{precision!r} is not one of {list(allowed)}")
    devices = t.get("devices", "auto")
    if devices != "auto" and not (isinstance(devices, int) and (devices >= 1 or devices == -1)) \
            and not isinstance(devices, (ListConfig, list)):
        p.add("trainer.devices", f"{devices!r} must be 'auto', -1, an integer >= 1 or a list of device ids")
    if t.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        p.add("trainer.accelerator", f"{t.accelerator!r}, but {cuda_unavailable_reason()} (or use trainer=cpu)")


class CheckConfig(Callback):
    """Hydra callback: check a single run's config before Hydra creates its run directory.

    Hydra turns exceptions raised in callbacks into warnings, so a bad config ends the process here with
    its message and exit status 2. Multirun jobs are checked by train()/evaluate() themselves, before compute.
    """

    def __init__(self, check: str):
        self.check: Callable[[DictConfig], None] = get_method(check)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        cfg = copy.deepcopy(config)
        with open_dict(cfg):  # what run_job sets later, so that ${hydra:runtime.output_dir} resolves now
            cfg.hydra.runtime.output_dir = str(Path(cfg.hydra.run.dir).absolute())
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.pop("hydra")
        try:
            self.check(cfg)
        except ConfigError as e:
            print(f"Error: {e}", file=sys.stderr)
            sys.exit(2)
