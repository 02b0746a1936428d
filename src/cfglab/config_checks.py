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

import collections.abc
import copy
import inspect
import math
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.utils import get_method, instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from cfglab.checkpoints import MOVED_MODULE_KEYS, data_config, read_checkpoint, stored_config
from cfglab.devices import cuda_unavailable_reason, resolve_device
from cfglab.diffusion.guidance import check_sampler_guidance, check_student_guidance
from cfglab.diffusion.sampling import step_strengths
from cfglab.loggers import find_secrets
from cfglab.models.student import TEACHER_ADVICE
from cfglab.sweep import ws_problems

TRAIN_KEYS = {"data", "model", "schedule", "sampler", "guidance", "sampling", "sweep", "trainer", "logger",
              "callbacks", "metrics", "seed", "ckpt_path", "teacher_ckpt", "module", "grids", "hydra"}
EVALUATE_KEYS = {"sampler", "guidance", "sampling", "sweep", "metrics", "ckpt_path", "device", "data", "logger", "hydra"}
GENERATE_KEYS = {"sampler", "guidance", "sampling", "ckpt_path", "ws", "labels", "num_samples", "batch_size", "seed",
                 "device", "png", "data", "logger", "hydra"}
HYDRA_ARGS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
SWEEP_KEYS = ("ws", "num_samples", "batch_size", "seed", "grid_per_class")
_ABSENT = object()
_MISSING = object()


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
    if p.lines:
        _exit(str(ConfigError(job, p.lines)))


class ConfigError(ValueError):
    """One or more bad config values; the message has one line per problem, each naming key and value."""

    def __init__(self, what: str, lines: list[tuple[str, str]]):
        self.lines = lines
        super().__init__(f"bad {what} configuration, nothing was run:\n  " + "\n  ".join(f"{k}: {m}" for k, m in lines))


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
        node's own keys was already reported, e.g. as unknown, missing or of the wrong type)."""
        if any(k.startswith(key + ".") or k.startswith(key + "[") for k, _ in self.lines):
            return None
        try:
            return fn()
        except InstantiationException as e:
            cause = e.__cause__ or e
            if not isinstance(cause, MissingMandatoryValue):  # each ??? is reported once, under its own key
                self.add(key, str(cause).strip())
        except MissingMandatoryValue:
            pass
        except (ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError,
                OmegaConfBaseException, MisconfigurationException) as e:
            self.add(key, str(e).strip())
        return None

    def raise_if_any(self, what: str) -> None:
        if self.lines:
            raise ConfigError(what, self.lines)


def check_train_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every problem of a train.py config."""
    from cfglab.diffusion.schedules import Cosine

    p = _Problems()
    _check_top_level(cfg, TRAIN_KEYS, "train", p)
    _check_arguments(cfg, "", p)
    teacher = _value(cfg, "teacher_ckpt")
    if teacher not in (None, _MISSING):
        if "teacher_ckpt" not in cfg.module:
            p.add("teacher_ckpt", f"{teacher!r} would not be read: {cfg.module.get('_target_')} has no teacher "
                                  "(guidance distillation: experiment=distill_mnist or progressive_mnist)")
        elif not Path(teacher).is_file():
            p.add("teacher_ckpt", f"{teacher!r} is not a file")
        else:
            p.build("teacher_ckpt", lambda: stored_config(teacher, TEACHER_ADVICE))
    data = p.build("data", lambda: instantiate(cfg.data))
    schedule = None if _depends_on_reported(cfg.schedule, p) else p.build("schedule", lambda: instantiate(cfg.schedule))
    net = None
    if data is not None and not _depends_on_reported(cfg.model, p):
        shape = {"image_size": data.image_size, "in_channels": data.channels, "num_classes": data.num_classes}
        for k, v in shape.items():
            if k in cfg.model and cfg.model[k] != v:
                p.add(f"model.{k}", f"{cfg.model[k]} disagrees with the data ({type(data).__name__} has {k}={v})")
        with torch.device("meta"):  # constructors check shapes without allocating the weights
            net = p.build("model", lambda: instantiate(cfg.model, **shape))
        _check_batch_size(cfg, data, p)
    # The module's own values are checked even when a group it is built from failed: stand-ins take its place,
    # except for a distillation module, which compares them with its teacher's.
    stand_ins = net is None or schedule is None or data is None
    if not _depends_on_reported(cfg.module, p) and not (stand_ins and "teacher_ckpt" in cfg.module):
        p.build("module", lambda: instantiate(cfg.module, net=net or torch.nn.Identity(),
                                              schedule=schedule or Cosine(),
                                              num_classes=data.num_classes if data is not None else 1))
    _check_metrics(cfg.metrics, "metrics", data, p)
    _check_sampling(cfg, p, data, cfg)
    _check_sweep(cfg, p)
    _check_guidance_grid(cfg, "grids.ws", p, allow_empty=True)
    for key in ("sweep.ws", "grids.ws"):
        _check_student(cfg, key, getattr(net, "guidance_range", None), schedule, p)
    for name, node in (cfg.callbacks or {}).items():
        if node is not None and not _depends_on_reported(node, p):
            p.build(f"callbacks.{name}", lambda node=node: instantiate(node))
    _positive(cfg.grids, "grids", ("per_class",), p)
    _check_trainer(cfg.trainer, p)
    ckpt_path = _value(cfg, "ckpt_path")
    if ckpt_path not in (None, "last", _MISSING) and not Path(ckpt_path).is_file():
        p.add("ckpt_path", f"{ckpt_path!r} is not a file (use 'last' to resume from the run directory, or null)")
    else:
        resume = _resume_path(cfg, ckpt_path)
        if resume is not None:
            p.build("ckpt_path", lambda: read_checkpoint(resume, RESUME_ADVICE))
    p.raise_if_any("train")


def check_distill_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every problem of a distill.py config: its rounds, and the first round's
    train.py config (the later rounds differ only in their steps and their teacher, the round before)."""
    from cfglab.lightning.distillation import ProgressiveDistillation
    from cfglab.progressive import rounds_problems

    p = _Problems()
    rounds = _show(_value(cfg, "rounds"))
    for message in rounds_problems(rounds) if rounds is not _MISSING else []:
        p.add("rounds", message)
    if not str(cfg.module.get("_target_", "")).endswith(ProgressiveDistillation.__name__):
        p.add("module", f"{cfg.module.get('_target_')!r}: distill.py runs progressive distillation rounds; use "
                        "experiment=progressive_mnist or module._target_=cfglab.lightning.distillation."
                        "ProgressiveDistillation")
    steps = _value(cfg.module, "student_steps") if "student_steps" in cfg.module else None
    if not p.lines and steps != rounds[0]:
        p.add("module.student_steps", f"{steps!r} would not be read: distill.py sets each round's steps from rounds="
                                      f"{rounds}")
    round_cfg = copy.deepcopy(cfg)
    with open_dict(round_cfg):
        round_cfg.pop("rounds")
        if not p.lines:
            round_cfg.module.student_steps = rounds[0]
    try:
        check_train_config(round_cfg)
    except ConfigError as e:
        for key, message in e.lines:
            p.add(key, message)
    p.raise_if_any("distill")


RESUME_ADVICE = ("move it aside to start afresh (or to resume from an earlier checkpoint: ckpt_path=<its path>); "
                 "checkpoints are written atomically, so this file was damaged after it was written")


def check_evaluate_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every problem of an evaluate.py config."""
    p, stored = _checkpoint_job_problems(cfg, EVALUATE_KEYS, "evaluate")
    _check_sweep(cfg, p)
    _check_stored_student(cfg, "sweep.ws", stored, p)
    _check_metrics(cfg.metrics, "metrics", None, p)
    p.raise_if_any("evaluate")


def check_generate_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every problem of a generate.py config."""
    p, stored = _checkpoint_job_problems(cfg, GENERATE_KEYS, "generate")
    _check_guidance_grid(cfg, "ws", p)
    _check_stored_student(cfg, "ws", stored, p)
    _positive(cfg, "", ("num_samples", "batch_size"), p)
    labels = _value(cfg, "labels")
    items = list(labels) if isinstance(labels, ListConfig) else [labels]
    if labels not in ("balanced", _MISSING) and (not items or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in items)):
        p.add("labels", f"{_show(labels)!r} must be 'balanced', a class index or a non-empty list of class indices")
    png = _value(cfg, "png")
    if png is not _MISSING and not isinstance(png, bool):
        p.add("png", f"{png!r} must be true or false")
    elif png is True and stored is not None and "image_size" not in stored["data"]:
        p.add("png", f"true, but this checkpoint's data ({stored['data']['_target_']}) are not images")
    p.raise_if_any("generate")


CHECKPOINT_ADVICE = "point ckpt_path at another checkpoint (e.g. an earlier one of the same run)"


def _checkpoint_job_problems(cfg: DictConfig, known: set, job: str) -> tuple[_Problems, Optional[dict]]:
    """The problems every job on a checkpoint can have (keys, the file, the data settings that replace its own,
    the device, the sampling groups), and the config stored in the checkpoint (None if it cannot be read)."""
    p, stored, data = _Problems(), None, None
    _check_top_level(cfg, known, job, p)
    _check_arguments(cfg, "", p)
    ckpt_path = _value(cfg, "ckpt_path")
    if ckpt_path is _MISSING:
        pass
    elif ckpt_path is None or not Path(ckpt_path).is_file():
        p.add("ckpt_path", f"{ckpt_path!r} is not a file")
    elif not isinstance(cfg.data, DictConfig):
        p.add("data", f"{cfg.data!r} must be a mapping of data settings, e.g. data.data_dir=/path")
    else:
        stored = p.build("ckpt_path", lambda: stored_config(ckpt_path, CHECKPOINT_ADVICE))
        if stored is not None:
            data = p.build("data", lambda: instantiate(data_config(stored, OmegaConf.to_container(cfg.data))))
    p.build("device", lambda: resolve_device(cfg.device))
    _check_sampling(cfg, p, data, None if stored is None else OmegaConf.create(stored))
    return p, stored


def _check_sweep(cfg: DictConfig, p: _Problems) -> None:
    _check_guidance_grid(cfg, "sweep.ws", p)
    p.build("sweep", lambda: instantiate(cfg.sweep))


def _check_sampling(cfg: DictConfig, p: _Problems, data, model_config: Optional[DictConfig]) -> None:
    """The groups every sampling job has: sampler, guidance, sampling; `data` is the data module the samples are
    of (None if unknown) and `model_config` the config the model was trained with (for autoguidance's guide)."""
    sampler = p.build("sampler", lambda: instantiate(cfg.sampler))
    guidance = p.build("guidance", lambda: instantiate(cfg.guidance)(w=0.0))
    if sampler is not None and guidance is not None:
        p.build("sampler", lambda: check_sampler_guidance(sampler, guidance))
    sampling = p.build("sampling", lambda: instantiate(cfg.sampling))
    clip = getattr(sampling, "clip_x0", "auto")
    if data is not None and data.data_range is None and clip not in ("auto", None):
        p.add("sampling.clip_x0", f"{clip!r}, but the data ({type(data).__name__}) are unbounded, not images in "
                                  "[-1, 1]: clipping the x0 estimates would distort the samples; use 'auto' (no "
                                  "clipping for such data) or null")
    guide_ckpt = getattr(guidance, "guide_ckpt", None)
    if guide_ckpt:
        guide = p.build("guidance.guide_ckpt", lambda: stored_config(guide_ckpt, "point guidance.guide_ckpt at "
                                                                                  "another checkpoint"))
        for key, what in (("schedule", "noise schedule"), ("module.target", "prediction target")):
            if model_config is None or guide is None:
                break
            ours, theirs = (_show(OmegaConf.select(c, key)) for c in (model_config, OmegaConf.create(guide)))
            if ours != theirs:
                p.add("guidance.guide_ckpt", f"{guide_ckpt!r} has the {what} {_show(theirs)}, this model "
                                             f"{_show(ours)}: autoguidance needs a weaker model of the same kind")


def _check_stored_student(cfg: DictConfig, key: str, stored: Optional[dict], p: _Problems) -> None:
    """_check_student for the checkpoint whose stored config is `stored` (None: unreadable)."""
    if stored is not None and stored["model"].get("guidance_range") is not None:
        _check_student(cfg, key, stored["model"]["guidance_range"], instantiate(stored["schedule"]), p)


def _check_student(cfg: DictConfig, key: str, guidance_range, schedule, p: _Problems) -> None:
    """A guidance-distilled network (`guidance_range` not None) samples only CFG-like guidance at strengths within
    its range: each w of the grid at `key` is checked at every step of the sampler."""
    if guidance_range is None or schedule is None or any(p.reported(k) for k in (key, "sampler", "guidance")):
        return
    sampler = instantiate(cfg.sampler)
    for w in OmegaConf.select(cfg, key):
        guidance = instantiate(cfg.guidance)(w=float(w))
        p.build(key, lambda: check_student_guidance(tuple(guidance_range), guidance,
                                                    step_strengths(guidance, schedule, sampler)))


def _check_batch_size(cfg: DictConfig, data, p: _Problems) -> None:
    """A batch larger than the training split is never drawn (the last incomplete batch of an epoch is dropped)."""
    n = p.build("data", data.num_train_items)
    devices, nodes = cfg.trainer.get("devices"), cfg.trainer.get("num_nodes", 1)
    world = devices * nodes if isinstance(devices, int) and devices > 0 and isinstance(nodes, int) else 1
    if n is not None and data.batch_size * world > n:
        per = f" x {world} processes" if world > 1 else ""
        p.add("data.batch_size", f"{data.batch_size}{per} exceeds the {n} training items of {type(data).__name__}: "
                                 "the last incomplete batch of an epoch is dropped, so no batch would be drawn")


def _resume_path(cfg: DictConfig, ckpt_path: Any) -> Optional[Path]:
    """The checkpoint fit() would resume from: ckpt_path itself, or for 'last' the newest last*.ckpt in the
    checkpoint callback's folder (Lightning's own choice); None when there is none."""
    if ckpt_path in (None, _MISSING):
        return None
    if ckpt_path != "last":
        return Path(ckpt_path)
    try:
        folder = OmegaConf.select(cfg, "callbacks.checkpoint.dirpath")
    except OmegaConfBaseException:
        return None
    if not folder or not Path(folder).is_dir():
        return None
    last = [f for f in Path(folder).glob("last*.ckpt") if re.fullmatch(r"last(-\d+)?", f.stem)]
    return max(last, key=lambda f: f.stat().st_mtime) if last else None


def _value(cfg: DictConfig, key: str) -> Any:
    """cfg's value at `key`, or _MISSING for ??? (reported once by _check_top_level)."""
    return _MISSING if OmegaConf.is_missing(cfg, key) else cfg[key]


def _show(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _depends_on_reported(node: DictConfig, p: _Problems) -> bool:
    """Whether a node interpolates a group (${sweep}) whose problems were already reported."""
    refs = [str(node._get_node(k)._value()) for k in node.keys()]
    return any(p.reported(r[2:-1]) for r in refs if r.startswith("${") and r.endswith("}"))


def _check_top_level(cfg: DictConfig, known: set, job: str, p: _Problems) -> None:
    for key in sorted(OmegaConf.missing_keys(cfg)):
        p.add(key, f"??? is a required value: set it, e.g. {key}=<value>")
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
    """Every `_target_` node may only hold arguments that its target accepts, and for cfglab's own targets each
    value must fit the type its parameter is annotated with (so that 'abc' for a float is named as such, not
    reported as the comparison that later fails on it)."""
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
    if accepted is not None:  # None: forwards keywords to something unknown, whose constructor rejects unknown ones
        for key in set(node.keys()) - accepted - HYDRA_ARGS:
            if p.reported(f"{path}.{key}"):  # a moved key, already named with where it belongs
                continue
            p.add(f"{path}.{key}", f"unknown key (value {node._get_node(key)._value()!r}) for {node._target_}; "
                                   f"accepted: {sorted(accepted)}")
    for key, hint in _annotations(target).items():
        if key not in node or OmegaConf.is_missing(node, key) or p.reported(f"{path}.{key}"):
            continue
        if str in typing.get_args(hint):  # a number or a word such as "auto": the constructor's own message says which
            continue
        try:
            value = node[key]
        except OmegaConfBaseException:
            continue  # a broken interpolation: building the node reports it
        problem = _type_problem(value, hint)
        if problem is not None:
            p.add(f"{path}.{key}{problem[0]}", problem[1])


def _annotations(target) -> dict[str, Any]:
    """Parameter annotations of cfglab's own functions and classes (with their cfglab parents'); others: none."""
    inits = [k.__dict__["__init__"] for k in reversed(target.__mro__) if "__init__" in k.__dict__] \
        if isinstance(target, type) else [target]
    hints: dict[str, Any] = {}
    for fn in inits:
        if getattr(fn, "__module__", "").startswith("cfglab."):
            try:
                hints |= typing.get_type_hints(fn)
            except Exception:  # an annotation that cannot be evaluated here: no type check for that target
                continue
    hints.pop("return", None)
    return hints


_TYPE_NAMES = {float: ("a number", "numbers"), int: ("an integer", "integers"), bool: ("true or false", "booleans"),
               str: ("a string", "strings"), type(None): ("null", "nulls")}
_SEQUENCES = (list, tuple, collections.abc.Sequence)


def _fits(value: Any, hint: Any) -> Optional[bool]:
    """Whether a config value fits a parameter annotation; None when the annotation is not one of the plain
    kinds checked here (numbers, strings, booleans, Literal, Optional/Union and sequences of those)."""
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (bool, str):
        return isinstance(value, hint)
    if hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        fits = [_fits(value, a) for a in args]
        return True if True in fits else (None if None in fits else False)
    if origin in _SEQUENCES and args:
        hints = _item_hints(value, args, origin)
        if hints is None:
            return False
        fits = [_fits(v, h) for v, h in zip(value, hints)]
        return False if False in fits else (None if None in fits else True)
    return None


def _item_hints(value: Any, args: tuple, origin: Any) -> Optional[list]:
    """The annotation of each item of a list value, or None if the value is not a list of the right length."""
    if not isinstance(value, (list, tuple, ListConfig)):
        return None
    if origin is tuple and Ellipsis not in args:
        return list(args) if len(args) == len(value) else None
    return [args[0]] * len(value)


def _describe(hint: Any) -> str:
    if hint in _TYPE_NAMES:
        return _TYPE_NAMES[hint][0]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple and Ellipsis not in args and len(set(args)) == 1 and args[0] in _TYPE_NAMES:
        return f"a list of {len(args)} {_TYPE_NAMES[args[0]][1]}"
    if args and args[0] in _TYPE_NAMES:
        return f"a list of {_TYPE_NAMES[args[0]][1]}"
    return "a list"


def _type_problem(value: Any, hint: Any) -> Optional[tuple[str, str]]:
    """(index suffix such as "[1]" or "", message) when `value` does not fit `hint`, naming the first bad item
    of a list; None when it fits or cannot be told."""
    if _fits(value, hint) is not False:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    hints = _item_hints(value, args, origin) if origin in _SEQUENCES and args else None
    for i, (v, h) in enumerate(zip(value, hints) if hints is not None else ()):
        if _fits(v, h) is False:
            return f"[{i}]", f"{_show(v)!r} is not {_describe(h)}"
    return "", f"{_show(value)!r} is not {_describe(hint)}"


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

    from lightning.pytorch.callbacks import Timer

    # What stops a fit, as Lightning decides it: max_steps, max_epochs (null: 1000 unless max_steps or max_time
    # is set) or max_time; only max_steps = max_epochs = -1 without max_time never stops.
    max_steps, max_epochs, max_time = t.get("max_steps", -1), t.get("max_epochs"), t.get("max_time")
    integer = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    if not integer(max_steps) or (max_steps < 1 and max_steps != -1):
        p.add("trainer.max_steps", f"{max_steps!r} must be an integer >= 1 (or -1: no step limit)")
    if max_epochs is not None and (not integer(max_epochs) or (max_epochs < 1 and max_epochs != -1)):
        p.add("trainer.max_epochs", f"{max_epochs!r} must be an integer >= 1, -1 (no epoch limit) or null")
    if max_time is not None:
        try:
            Timer(duration=_show(max_time))
        except (MisconfigurationException, TypeError, ValueError):
            p.add("trainer.max_time", f"{_show(max_time)!r} is not a duration: use 'DD:HH:MM:SS' or a mapping such "
                                      "as {hours: 12}")
    elif max_steps == -1 and max_epochs == -1:
        p.add("trainer.max_epochs", "-1 with trainer.max_steps=-1 and no trainer.max_time: nothing would stop the "
                                    "fit; set one of them")
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
    """Hydra callback: check a run's config, or every job of a multirun, before Hydra writes anything.

    A single run is checked before Hydra creates its run directory. A multirun is expanded into its jobs as
    Hydra's basic sweeper will launch them, and each job's composed config is checked before the sweeper creates
    the sweep directory and hands any job to the launcher (basic, local processes or SLURM): one bad job stops
    the whole multirun, so no job folder, no SLURM job and no W&B run exists. Hydra turns exceptions raised in
    callbacks into warnings, so a bad config ends the process here with its message and exit status 2. The jobs
    check themselves again at their start (train() etc.), for callers that bypass Hydra.
    """

    def __init__(self, check: str):
        self.check: Callable[[DictConfig], None] = get_method(check)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            self._check_job(config, Path(config.hydra.run.dir), 0)
        except ConfigError as e:
            _exit(str(e))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.core.global_hydra import GlobalHydra

        p = _Problems()
        for key in _launcher_missing(config):
            p.add(f"hydra.launcher.{key}", f"??? is a required value of hydra/launcher="
                                           f"{config.hydra.runtime.choices.get('hydra/launcher')}: set it, e.g. "
                                           f"hydra.launcher.{key}=<value>")
        loader = GlobalHydra.instance().config_loader()
        # Another sweeper (e.g. Optuna) chooses its jobs as it goes: they are checked at their start.
        basic = str(config.hydra.sweeper.get("_target_", "")).endswith(".BasicSweeper")
        jobs = _multirun_jobs(config, loader) if basic else []
        failed = []
        for num, overrides in enumerate(jobs):
            try:
                self._check_job(loader.load_sweep_config(config, list(overrides)), None, num)
            except ConfigError as e:
                failed.append((num, overrides, e.lines))
        HydraConfig.instance().set_config(config)
        if not p.lines and not failed:
            return
        lines = ["bad multirun, nothing was launched:", *(f"  {k}: {m}" for k, m in p.lines)]
        if failed:
            lines.append(f"  {len(failed)} of {len(jobs)} jobs have problems:")
        for num, overrides, problems in failed:
            lines.append(f"  job {num} ({' '.join(overrides) or 'no overrides'}):")
            lines += [f"    {k}: {m}" for k, m in problems]
        _exit("\n".join(lines))

    def _check_job(self, config: DictConfig, output_dir: Optional[Path], num: int) -> None:
        """Check one job's composed config (hydra node included) as the job will see it."""
        cfg = copy.deepcopy(config)
        with open_dict(cfg):  # what Hydra sets when it runs the job, so that ${hydra:runtime.output_dir} resolves
            cfg.hydra.job.num = num
            cfg.hydra.job.id = f"{cfg.hydra.job.name}_{num}"
            if output_dir is None:
                output_dir = Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)
            cfg.hydra.runtime.output_dir = str(output_dir.absolute())
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.pop("hydra")
        self.check(cfg)


def _multirun_jobs(config: DictConfig, loader) -> list[list[str]]:
    """The override list of each job, in launch order, as Hydra's basic sweeper expands them (its
    hydra.sweeper.params first, then the command line's task overrides)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.get("params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(args)
    return [list(job) for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def _launcher_missing(config: DictConfig) -> list[str]:
    """Launcher keys left at ???. OmegaConf ignores a ??? merged over a plugin's structured default (submitit's
    partition: None), so the ??? of the launcher's own yaml files (and the files they extend) are read there."""
    launcher, choice = config.hydra.launcher, config.hydra.runtime.choices.get("hydra/launcher")
    folders = [Path(s.path) / "hydra" / "launcher" for s in config.hydra.runtime.config_sources if s.schema == "file"]
    declared, todo, seen = set(OmegaConf.missing_keys(launcher)), [choice], set()
    while todo:
        name = todo.pop()
        path = next((f / f"{name}.yaml" for f in folders if (f / f"{name}.yaml").is_file()), None)
        if path is None or name in seen:
            continue
        seen.add(name)
        raw = OmegaConf.load(path)
        declared |= {k for k in raw if k != "defaults" and OmegaConf.is_missing(raw, k)}
        todo += [d for d in raw.get("defaults", []) if isinstance(d, str)]
    return sorted(k for k in declared if OmegaConf.is_missing(launcher, k) or launcher.get(k) is None)


def _exit(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(2)
