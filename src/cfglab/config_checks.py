"""The configuration check of every job, run before any output is written or compute is spent: the orchestration
and the Hydra hook.

The rules live beside what they protect, and the run calls the same code: the cheap objects (data module, model
on the meta device, schedule, sampler, guidance, settings, module, callbacks, trainer) are built once, so their
constructors' checks run; what a node may hold comes from its target's signature (cfglab.config_nodes); what
sampling refuses is `cfglab.diffusion.sampling.check_sampling`; a checkpoint is read through the one
`cfglab.checkpoints.Checkpoint` of the process, which the job then uses. Every problem found is reported at once,
each naming its config key and bad value.

`CheckConfig` runs the check as a Hydra callback, before Hydra creates the run directory, so a bad
configuration leaves nothing behind (and cannot overwrite the .hydra record of a run it was meant to resume).
"""

from __future__ import annotations

import copy
import re
import sys
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

from cfglab.build import build_net
from cfglab.checkpoints import GUIDE_ADVICE, RESUME_ADVICE, Checkpoint, check_same_kind, model_kind
from cfglab.config_nodes import (config_dir, declared_paths, job_keys, node_problems, target_nodes, type_problems,
                                 unknown_overrides)
from cfglab.data.loader import check_batch_size
from cfglab.devices import resolve_device
from cfglab.diffusion.denoiser import check_guided_channels, learned_variance
from cfglab.diffusion.sampling import check_sampling
from cfglab.lightning.module import lr_factor
from cfglab.lightning.trainer import check_trainer_args, world_size
from cfglab.loggers import find_secrets
from cfglab.models.student import TEACHER_ADVICE
from cfglab.published.model import ModelData, PublishedModel
from cfglab.sweep import ws_problems


def refuse_unknown_overrides(args: list[str], config_name: str, conf: Path) -> None:
    """Before Hydra composes anything: refuse command-line overrides of keys that no yaml file of the job declares
    (e.g. guidance.w=3), naming similar keys; Hydra's own error would not say where such a value belongs."""
    problems = unknown_overrides(args, conf, config_name)
    if problems:
        _exit(str(ConfigError(config_name if config_name != "config" else "train", problems)))


class ConfigError(ValueError):
    """One or more bad config values; the message has one line per problem, each naming key and value."""

    def __init__(self, what: str, lines: list[tuple[str, str]]):
        self.lines = lines
        super().__init__(f"bad {what} configuration, nothing was run:\n  " +
                         "\n  ".join(f"{k}: {m}" if k else m for k, m in lines))


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
    _check_keys_and_nodes(cfg, "config", p)
    seed = _value(cfg, "seed")
    if seed is not _MISSING and (isinstance(seed, bool) or not isinstance(seed, int)):
        p.add("seed", f"{seed!r}: should be an integer (it seeds every training batch and sweep)")
    teacher = _value(cfg, "teacher_ckpt")
    if teacher is not None and teacher is not _MISSING:
        if "teacher_ckpt" not in cfg.module:
            p.add("teacher_ckpt", f"{teacher!r} would not be read: {cfg.module.get('_target_')} has no teacher "
                                  "(guidance distillation: experiment=distill_mnist or progressive_mnist)")
        else:
            p.build("teacher_ckpt", lambda: Checkpoint.open(teacher, TEACHER_ADVICE))
    data = p.build("data", lambda: instantiate(cfg.data))
    schedule = None if _depends_on_reported(cfg.schedule, p) else p.build("schedule", lambda: instantiate(cfg.schedule))
    net = None
    if data is not None and not _depends_on_reported(cfg.model, p):
        with torch.device("meta"):  # constructors check shapes without allocating the weights
            net = p.build("model", lambda: build_net(cfg.model, data))
    trainer_ok = not p.reported("trainer") and p.build("trainer", lambda: check_trainer_args(cfg.trainer) or True)
    if data is not None and trainer_ok:
        p.build("data", lambda: check_batch_size(data.num_train_items(), data.batch_size, world_size(cfg.trainer)))
    # The module's own values are checked even when a group it is built from failed: stand-ins take its place,
    # except for a distillation module, which compares them with its teacher's.
    stand_ins = net is None or schedule is None or data is None
    module = None
    weighting = p.build("weighting", lambda: instantiate(cfg.weighting))
    if not _depends_on_reported(cfg.module, p) and not (stand_ins and "teacher_ckpt" in cfg.module) and (
            weighting is not None):
        module = p.build("module", lambda: instantiate(cfg.module, net=net or torch.nn.Identity(),
                                                       schedule=schedule or Cosine(),
                                                       num_classes=data.num_classes if data is not None else 1,
                                                       weighting=weighting))
    if module is not None and trainer_ok:
        p.build("module.lr_schedule", lambda: lr_factor(module.lr_schedule, module.warmup_steps,
                                                        _value(cfg.trainer, "max_steps")))
    _check_metrics(cfg, data, p)
    kind = None if stand_ins or module is None else model_kind(module.num_classes, module.target, module.schedule)
    _check_sampling(cfg, p, data, None if net is None else net.guidance_range, schedule, kind,
                    {"sweep.ws": "sweep", "grids.ws": "grids"}, None if net is None else learned_variance(net),
                    None if net is None else net.sample_shape[0])
    for name, node in (cfg.callbacks or {}).items():
        if node is not None and not _depends_on_reported(node, p):
            p.build(f"callbacks.{name}", lambda node=node: instantiate(node))
    ckpt_path = _value(cfg, "ckpt_path")
    if ckpt_path not in (None, "last", _MISSING) and not Path(ckpt_path).is_file():
        p.add("ckpt_path", f"{ckpt_path!r} is not a file (use 'last' to resume from the run directory, or null)")
    else:
        resume = resume_path(cfg, ckpt_path)
        if resume is not None:
            p.build("ckpt_path", lambda: Checkpoint.open(resume, RESUME_ADVICE))
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


def check_evaluate_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every problem of an evaluate.py config."""
    from cfglab.ema_sweep import EMASweep

    p, ckpt, data = _checkpoint_job_problems(cfg, "evaluate", {"sweep.ws": "sweep"})
    if isinstance(data, ModelData):
        p.add("data.data_dir", "null: the metrics compare the samples with the images the published model was "
                               "trained on; give their folder (ImageNet's train folder for DiT)")
    if ckpt is not None:  # the lengths and their snapshots (messages name their keys)
        p.build("", lambda: EMASweep.from_config(cfg, ckpt))
    _check_metrics(cfg, None, p, getattr(data, "num_classes", None))
    p.raise_if_any("evaluate")


def check_generate_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every problem of a generate.py config."""
    from cfglab.generate import GenerateSettings, requested_labels

    p, ckpt, data = _checkpoint_job_problems(cfg, "generate", {"ws": None})
    values = {k: _show(cfg[k]) for k in GenerateSettings.__dataclass_fields__ if k in cfg and not OmegaConf.is_missing(cfg, k)}
    for key, message in type_problems(GenerateSettings, values, ""):
        p.add(key.lstrip("."), message)
    # The settings' own messages name their keys (num_samples=0 ...): reported without a key of their own.
    settings = p.build("", lambda: GenerateSettings.from_config(cfg))
    if settings is not None and data is not None:  # the classes: the labels' form is GenerateSettings' own check
        p.build("", lambda: requested_labels(settings.labels, settings.num_samples, data.num_classes))
    if settings is not None and settings.png is True and ckpt is not None and not ckpt.is_images:
        p.add("png", f"true, but this checkpoint's data ({ckpt.config['data']['_target_']}) are not images")
    p.raise_if_any("generate")


def check_prepare_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every problem of a prepare.py config."""
    from cfglab.data.base import ImageDataModule

    p = _Problems()
    _check_keys_and_nodes(cfg, "prepare", p)
    data = p.build("data", lambda: instantiate(cfg.data))
    if data is not None and not isinstance(data, ImageDataModule):
        p.add("data", f"{cfg.data._target_} draws its items in memory: it has no store to prepare")
    elif data is not None:
        p.build("data", data.num_train_items)  # damaged files, or a damaged store, are named
    p.raise_if_any("prepare")


def _checkpoint_job_problems(cfg: DictConfig, job: str, grids: dict[str, Optional[str]]):
    """The problems every job on a checkpoint can have (keys, the file, the data settings that replace its own,
    the device, the sampling groups and their guidance grids), with the `Checkpoint` and the data module (None
    when they cannot be read or built)."""
    p, ckpt, data = _Problems(), None, None
    _check_keys_and_nodes(cfg, job, p)
    ckpt_path, published = _value(cfg, "ckpt_path"), cfg.get("published")
    if published is not None and ckpt_path not in (None, _MISSING):
        p.add("ckpt_path", f"{ckpt_path!r} and published={published.get('_target_')}: give one model, not both")
    elif published is not None:  # its messages name their keys (published.path=...)
        ckpt = p.build("", lambda: PublishedModel.open(published))
    elif ckpt_path is None:
        p.add("ckpt_path", "null: give a checkpoint of train.py (ckpt_path=...) or a published model "
                           "(published=dit published.path=...)")
    elif ckpt_path is not _MISSING:
        ckpt = p.build("ckpt_path", lambda: Checkpoint.open(ckpt_path))
    if ckpt is not None and not isinstance(cfg.data, DictConfig):
        p.add("data", f"{cfg.data!r} must be a mapping of data settings, e.g. data.data_dir=/path")
    elif ckpt is not None:
        data = p.build("data", lambda: ckpt.datamodule(OmegaConf.to_container(cfg.data)))
        if data is not None:  # damaged files, or a damaged store, are named
            p.build("data", data.num_train_items)
    p.build("device", lambda: resolve_device(cfg.device))
    _check_sampling(cfg, p, data, ckpt.guidance_range if ckpt else None, ckpt.schedule() if ckpt else None,
                    ckpt.kind if ckpt else None, grids, ckpt.learned_variance if ckpt else None,
                    ckpt.in_channels if ckpt else None)
    return p, ckpt, data


def _check_sampling(cfg: DictConfig, p: _Problems, data, guidance_range, schedule, kind: Optional[dict],
                    grids: dict[str, Optional[str]], variance: Optional[bool] = None,
                    channels: Optional[int] = None) -> None:
    """The groups every sampling job has (sampler, guidance, sampling) and its guidance grids: `grids` maps the key
    of each list of strengths (sweep.ws) to the settings node that holds it (sweep; None: top level). `data`: the
    data module sampled (None if unknown); `guidance_range` and `schedule`: the model's (None if unknown);
    `kind`: the model's `model_kind`, which autoguidance's guide must share (None if unknown); `variance`: whether
    its network has a learned variance and `channels` the channels it takes (None if unknown)."""
    sampler = p.build("sampler", lambda: instantiate(cfg.sampler))
    if sampler is not None and schedule is not None:  # a spacing the schedule has (respaced: discrete ones)
        p.build("", lambda: sampler.grid(schedule))
    if sampler is not None and variance is not None:
        p.build("", lambda: sampler.check_network(variance))
    guidance = p.build("guidance", lambda: instantiate(cfg.guidance))
    sampling = p.build("sampling", lambda: instantiate(cfg.sampling))
    if sampling is not None and data is not None:
        p.build("sampling", lambda: sampling.resolve("cpu", data.data_range))
    if sampling is not None:
        p.build("", lambda: check_guided_channels(sampling.guided_channels, channels, guidance_range is not None))
    for key, node in grids.items():
        ws = OmegaConf.select(cfg, key)
        for index, message in ws_problems(ws, allow_empty=node == "grids"):
            if not p.reported(key + index):
                p.add(key + index, message)
        if node is not None and not p.reported(key):
            p.build(node, lambda node=node: instantiate(cfg[node]))
        if p.reported(key) or sampler is None or guidance is None:
            continue
        for i, w in enumerate(ws):
            # A distilled model's strengths per step are checked on its schedule; without one, the rest.
            p.build(f"{key}[{i}]", lambda w=w: check_sampling(guidance_range if schedule else None, schedule,
                                                              sampler, guidance, float(w)))
    if guidance is not None and guidance.guide_ckpt:
        guide = p.build("guidance.guide_ckpt", lambda: Checkpoint.open(guidance.guide_ckpt, GUIDE_ADVICE))
        if guide is not None and kind is not None:
            p.build("guidance.guide_ckpt", lambda: check_same_kind(kind, guide.kind, repr(guidance.guide_ckpt)))


def _check_metrics(cfg: DictConfig, data, p: _Problems, num_classes: Optional[int] = None) -> None:
    """The metrics group; with per-class metrics also the samples per class the sweep gives (balanced labels)."""
    from cfglab.metrics.fidelity import check_metrics_args, check_per_class
    from cfglab.sweep import balanced_labels

    node = cfg.metrics
    args = {k: node[k] for k in ("extractor", "reference_split", "weights_path", "allow_download", "per_class",
                                 "prc_neighborhood") if k in node}
    ok = p.build("metrics", lambda: check_metrics_args(datamodule=data, num_classes=num_classes, **args) or True)
    num_samples = _value(cfg.sweep, "num_samples") if "sweep" in cfg else None
    num_classes = getattr(data, "num_classes", num_classes)
    if ok and args.get("per_class") and num_classes and isinstance(num_samples, int) and num_samples > 0:
        counts = torch.bincount(balanced_labels(num_samples, num_classes), minlength=num_classes).tolist()
        p.build("sweep.num_samples", lambda: check_per_class(num_classes, args.get("prc_neighborhood", 3), counts,
                                                             f"samples of sweep.num_samples={num_samples}"))


def resume_path(cfg: DictConfig, ckpt_path: Any) -> Optional[Path]:
    """The checkpoint fit() would resume from: ckpt_path itself, or for 'last' the newest last*.ckpt in the
    checkpoint callback's folder (Lightning's own choice, made inside its private checkpoint connector, so it is
    repeated here); None when there is none."""
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


_MISSING = object()


def _value(cfg: DictConfig, key: str) -> Any:
    """cfg's value at `key`, or _MISSING for ??? (reported once by _check_keys_and_nodes)."""
    return _MISSING if OmegaConf.is_missing(cfg, key) else cfg[key]


def _show(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _depends_on_reported(node: DictConfig, p: _Problems) -> bool:
    """Whether a node interpolates a group (${sweep}) whose problems were already reported."""
    refs = [str(v) for v in OmegaConf.to_container(node, resolve=False).values()]
    return any(p.reported(r[2:-1]) for r in refs if r.startswith("${") and r.endswith("}"))


def _missing_keys(node: Any, path: str = "") -> list[str]:
    """The keys left at ??? in a config as written (unresolved: an interpolation of a ??? is reported at its
    source; OmegaConf.missing_keys would resolve every interpolation of the config to find them)."""
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _missing_keys(v, f"{path}.{key}" if path else str(key))]
    if isinstance(node, list):
        return [k for i, v in enumerate(node) for k in _missing_keys(v, f"{path}[{i}]")]
    return [path] if node == "???" else []


def _check_keys_and_nodes(cfg: DictConfig, config_name: str, p: _Problems) -> None:
    """??? values, credentials, top-level keys the job's yaml files do not declare, and every `_target_` node's
    arguments and their types."""
    for key in _missing_keys(OmegaConf.to_container(cfg, resolve=False)):
        p.add(key, f"??? is a required value: set it, e.g. {key}=<value>")
    for key in find_secrets(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)):
        p.add(key, "looks like a credential: configs are saved and logged, so set it in the environment "
                   "(e.g. WANDB_API_KEY) and not in the config")
    known, paths = job_keys(config_name), lambda: declared_paths(config_dir(), config_name)
    for key in sorted(set(cfg.keys()) - known):
        p.add(key, f"unknown key (value {OmegaConf.select(cfg, key)!r}); known keys: {sorted(known)}")
    for path, node in target_nodes(cfg):
        node_problems(path, node, paths, p.add)


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
    hydra.sweeper.params first, then the command line's task overrides). Hydra has no public API that expands a
    sweep without launching it, so this calls the basic sweeper's own `split_arguments` (hydra._internal)."""
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
