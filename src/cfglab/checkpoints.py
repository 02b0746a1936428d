"""A checkpoint written by train.py, as one object: read once per process, its cfglab fields written and read here.

Besides Lightning's own entries (`state_dict` with the EMA weights when training kept an EMA, `global_step`,
optimizer and loop states), a cfglab checkpoint holds
  cfglab_config        the config groups that rebuild its module (data, model with the data's shape, schedule,
                       module), resolved: what evaluate.py, generate.py, a student and autoguidance rebuild from;
  cfglab_run           the training run's name and group (and W&B project and id), which eval and generate
                       runs join;
  cfglab_distillation  for a distilled student, the distillation module's settings (its config rebuilds a plain
                       model: the student needs no teacher to sample);
and, under its data module's class name, Lightning's copy of the data module's state: for latent diffusion, the
latent normalisation, so that a model decodes its samples without its data.
"""

from __future__ import annotations

import copy
import hashlib
import json
import mmap
import pickle
from pathlib import Path
from typing import Optional

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cfglab.build import build

CONFIG, RUN, DISTILLATION = "cfglab_config", "cfglab_run", "cfglab_distillation"
PHEMA = "cfglab_phema"  # a post-hoc EMA checkpoint's sigma_rel, step, snapshot count and coefficients

SAMPLE_ADVICE = "point ckpt_path at another checkpoint (e.g. an earlier one of the same run)"
GUIDE_ADVICE = "point guidance.guide_ckpt at another checkpoint"
RESUME_ADVICE = ("move it aside to start afresh (or to resume from an earlier checkpoint: ckpt_path=<its path>); "
                 "checkpoints are written atomically, so this file was damaged after it was written")


def write_fields(checkpoint: dict, config: Optional[dict], run: Optional[dict],
                 distillation: Optional[dict] = None) -> None:
    """Add cfglab's fields to a checkpoint Lightning is about to save (the module's `on_save_checkpoint`)."""
    for key, value in ((CONFIG, config), (RUN, run), (DISTILLATION, distillation)):
        if value is not None:
            checkpoint[key] = value


def model_kind(num_classes: int, target: str, schedule) -> dict:
    """What makes two models of the same kind, as autoguidance and distillation need: the classes (the null
    label is num_classes), the prediction target and the noise schedule."""
    return {"num_classes": int(num_classes), "target": target, "schedule": repr(schedule)}


def check_same_kind(ours: dict, theirs: dict, name: str) -> None:
    """Raise ValueError naming `name` (e.g. "guidance.guide_ckpt='a.ckpt'") and every way the two kinds differ."""
    differ = [f"{k} {theirs[k]!r} (this model: {ours[k]!r})" for k in ours if ours[k] != theirs[k]]
    if differ:
        raise ValueError(f"{name} has {', '.join(differ)}: it must be a model of the same kind (the same classes, "
                         "prediction target and noise schedule)")


def merge_data_config(stored: dict, data: Optional[dict], whose: str) -> dict:
    """`stored` data settings with the non-null values of `data` replacing some of them; each must be one of
    `stored`'s (whose: what holds them, for the error)."""
    data = {k: v for k, v in (data or {}).items() if v is not None}
    unknown = sorted(set(data) - set(stored))
    if unknown:
        raise ValueError(f"data.{unknown[0]}: not a setting of {whose} ({stored.get('_target_')}); "
                         f"it has {sorted(k for k in stored if not k.startswith('_'))}")
    # A nested setting (data.latent.pretrained: the VAE's folder on this machine) replaces only itself.
    return {**stored, **{k: {**stored[k], **v} if isinstance(v, dict) and isinstance(stored[k], dict) else v
                         for k, v in data.items()}}


def _identity(path: Path) -> tuple:
    """The same file, unchanged: its resolved path, size and modification time."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


class Checkpoint:
    """A cfglab checkpoint, opened once per process: `Checkpoint.open(path)` returns the same object for the same
    unchanged file, so the configuration check and the job read it once between them.

    path, sha256 (of the file, computed on first use from the one mapping of it), step (the training step it was
    written at), config (the build config, `cfglab_config`), run (the training run's identity), distillation,
    kind (`model_kind`), and `module(data)`: the (data module, CFGDiffusion) rebuilt and loaded, built once.
    Loading uses `weights_only=True`: a checkpoint that needs arbitrary code to unpickle is refused.
    """

    _opened: dict[tuple, "Checkpoint"] = {}
    learned_variance = False  # cfglab trains the simple loss: no variance output

    @classmethod
    def open(cls, path: str | Path, advice: str = SAMPLE_ADVICE) -> "Checkpoint":
        """The checkpoint at `path`; a missing, damaged or foreign file is a ValueError naming the file and what to
        do (`advice`)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{str(path)!r} is not a file")
        ident = _identity(path)
        if ident not in cls._opened:
            cls._opened[ident] = cls(path, advice)
        return cls._opened[ident]

    @classmethod
    def take(cls, path: str | Path) -> Optional[dict]:
        """The whole contents of the checkpoint at `path` if this process opened it and built nothing from it
        (else None), handed over: the object is forgotten, so that the contents are not held twice (Lightning
        resuming a fit)."""
        path = Path(path)
        ident = _identity(path) if path.is_file() else None
        opened = cls._opened.get(ident)
        if opened is None or opened._built:
            return None
        del cls._opened[ident]
        return opened.contents

    def __init__(self, path: Path, advice: str):
        self.path = path
        try:
            with open(path, "rb") as f:  # the only open: hashing and unpickling both read this mapping
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self.contents: dict = torch.load(self._map, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "Weights only load failed" in str(e):  # whole, but it needs arbitrary code to unpickle
                raise ValueError(f"{str(path)!r} holds objects that only arbitrary code can unpickle, and "
                                 f"cfglab loads checkpoints with weights_only=True: {advice}") from e
            raise ValueError(f"{str(path)!r} is truncated or corrupt, not a readable checkpoint ({e}): "
                             f"{advice}") from e
        except (RuntimeError, EOFError, OSError, ValueError) as e:  # mmap of an empty file: ValueError
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"{str(path)!r} is truncated or corrupt, not a readable checkpoint ({first}): "
                             f"{advice}") from e
        if not isinstance(self.contents, dict) or not isinstance(self.contents.get(CONFIG), dict):
            raise ValueError(f"{str(path)!r} has no {CONFIG!r}: not a checkpoint written by cfglab's train.py")
        self.config: dict = self.contents[CONFIG]
        self.step = int(self.contents.get("global_step", 0))
        stored = self.contents.get(RUN)
        self.run: dict = dict(stored) if stored else {"name": path.resolve().parent.parent.name, "group": None}
        self.distillation: Optional[dict] = self.contents.get(DISTILLATION)
        self._sha256: Optional[str] = None
        self._built: dict[str, tuple] = {}

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(self._map).hexdigest()
        return self._sha256

    @property
    def is_images(self) -> bool:
        """Whether the model's data are images (their data config has an image size)."""
        return "image_size" in self.config["data"]

    @property
    def guidance_range(self) -> Optional[tuple[float, float]]:
        """The w range of a guidance-distilled network, None for a joint model."""
        w_range = self.config["model"].get("guidance_range")
        return None if w_range is None else tuple(float(w) for w in w_range)

    @property
    def in_channels(self) -> Optional[int]:
        """The channels of what the network takes (images', or latents'); None for points."""
        return self.config["model"].get("in_channels")

    def schedule(self):
        return instantiate(self.config["schedule"])

    @property
    def kind(self) -> dict:
        return model_kind(self.config["model"]["num_classes"], self.config["module"]["target"], self.schedule())

    def data_config(self, data: Optional[dict] = None) -> dict:
        """The checkpoint's data settings with the non-null values of `data` replacing some of them (the data
        set's location on this machine, say); each must be one it has."""
        return merge_data_config(self.config["data"], data, "this checkpoint's data")

    def datamodule(self, data: Optional[dict] = None):
        """The data module of the checkpoint's data settings (replaced by `data`), not loaded."""
        return instantiate(self.data_config(data))

    def net_weights(self) -> dict:
        """The network's weights (the EMA weights when training kept an EMA), without building the module."""
        if self._built:
            return next(iter(self._built.values()))[1].net.state_dict()
        return {k[len("net."):]: v for k, v in self.contents["state_dict"].items() if k.startswith("net.")}

    def module(self, data: Optional[dict] = None):
        """(data module, CFGDiffusion in eval mode with the checkpoint's weights), built once per `data`; the
        module's `checkpoint_step` is `step`. The weights are released from `contents` once loaded."""
        tag = json.dumps(data or {}, sort_keys=True, default=str)
        if tag not in self._built:
            config = {**copy.deepcopy(self.config), "data": self.data_config(data)}
            datamodule, module = build(OmegaConf.create(config))
            data_state = type(datamodule).__qualname__  # where Lightning saves the data module's state_dict()
            if data_state in self.contents:
                datamodule.load_state_dict(self.contents[data_state])
            if self._built:  # built before with other data settings
                module.load_state_dict(next(iter(self._built.values()))[1].state_dict())
            else:
                module.load_state_dict(self.contents["state_dict"])
                # The weights now live in the module; optimizer and loop states serve no sampling job.
                keep = (CONFIG, RUN, DISTILLATION, PHEMA, data_state)
                self.contents = {k: v for k, v in self.contents.items() if k in keep}
            module.checkpoint_step = self.step
            self._built[tag] = (datamodule, module.eval())
        return self._built[tag]


def load_guide_net(guidance, module) -> Optional[torch.nn.Module]:
    """The network that guides instead of the model's own unconditional prediction (autoguidance's weaker
    version of the model, `guidance.guide_ckpt`), on `module`'s device; None for methods without one. It must be a
    model of the same kind as `module`."""
    if guidance.guide_ckpt is None:
        return None
    guide = Checkpoint.open(guidance.guide_ckpt, GUIDE_ADVICE)
    check_same_kind(model_kind(module.num_classes, module.target, module.schedule), guide.kind,
                    f"guidance.guide_ckpt={guidance.guide_ckpt!r}")
    return guide.module()[1].net.to(module.device).eval()

