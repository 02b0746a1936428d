"""What every published model gives the jobs that sample: the `Checkpoint` interface of a cfglab checkpoint (module,
datamodule, run, step, sha256, kind), so that evaluate.py and generate.py, their configuration checks, the sweep
records, the report and W&B treat it as they treat cfglab's own models.

A published network takes DDPM's step index n (0 ... T - 1) as its time; `IndexedNet` calls it with
n = schedule.timestep(t) for cfglab's t in [0, 1], so every sampler and guidance method runs on it unchanged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from cfglab.checkpoints import Checkpoint, merge_data_config, model_kind
from cfglab.diffusion.schedules import DiscreteLinearBeta


IMAGE_FOLDER = "cfglab.data.image_folder.ImageFolderDataModule"


class IndexedNet(nn.Module):
    """A network (x (B, C, H, W), n (B,) step indices, labels (B,)) -> (B, C or 2C, H, W) as cfglab's NetFn.

    `learned_variance`: the output holds the variance after the prediction (2C channels). `diffusers`: the network
    is a diffusers model, called with class_labels= and returning .sample; else cfglab's DiT, which takes n as a
    float tensor. `name`: the published model's, for reports and W&B tables."""

    guidance_range = None  # a joint conditional/unconditional model, not a guidance-distilled one

    def __init__(self, inner: nn.Module, schedule: DiscreteLinearBeta, sample_shape: tuple[int, int, int],
                 learned_variance: bool, diffusers: bool, name: str):
        super().__init__()
        self.inner, self.schedule, self.sample_shape = inner, schedule, tuple(sample_shape)
        self.learned_variance, self.diffusers, self.name = bool(learned_variance), bool(diffusers), name

    def forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        n = self.schedule.timestep(t).to(x.device)
        if self.diffusers:
            return self.inner(x, n.long(), class_labels=labels).sample
        return self.inner(x, n.to(x.dtype), labels)


class PublishedModule(nn.Module):
    """What a sampling job needs of a model (the part of CFGDiffusion it reads): net, schedule, classes, target."""

    p_uncond = None  # not known: the model was trained elsewhere
    checkpoint_step = 0

    def __init__(self, net: IndexedNet, schedule: DiscreteLinearBeta, num_classes: int, null_label: int,
                 target: str):
        super().__init__()
        self.net, self.schedule, self.target = net, schedule, target
        self.num_classes, self.null_label = int(num_classes), int(null_label)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def sampling_args(self) -> dict:
        return {"net": self.net, "schedule": self.schedule, "null_label": self.null_label, "target": self.target}


@dataclass
class ModelData:
    """The data module of a published model when no reference images are given (generate.py needs none): the
    classes, the range its samples are clipped to, and its decoder. The metrics of evaluate.py need the images
    themselves: `items` refuses, naming the key that gives them."""

    num_classes: int
    data_range: Optional[float]
    decoder: Optional[Callable[[Tensor], Tensor]]

    def num_train_items(self) -> None:
        return None

    def items(self, name: str, latents: bool = False):
        raise ValueError("data.data_dir=null: the metrics compare the samples with the model's training images; give "
                         "their folder (data.data_dir=/path/to/imagenet/train for DiT)")


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a folder's files (their relative paths and contents, in sorted order)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()


class PublishedModel:
    """Base class: a subclass reads the files' configs at construction (so the configuration check refuses a bad
    file, layout or VAE before anything runs) and builds the network in `load_net`.

    path: the file or folder given (published.path). name: the model's name in run names and reports.
    data: the data settings of the images the model was trained on, the metrics' reference (published.data, an
    image folder unless it names a _target_; replaced by evaluate.py's data.<key>); without a data_dir, a
    `ModelData`.
    """

    step, distillation, guidance_range, is_images = 0, None, None, True
    _opened: dict[str, "PublishedModel"] = {}

    @classmethod
    def open(cls, node) -> "PublishedModel":
        """The model of a `published` config node, built once per process for the same settings (the
        configuration check and the job share it)."""
        config = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else node
        tag = json.dumps(config, sort_keys=True, default=str)
        if tag not in cls._opened:
            cls._opened[tag] = instantiate(config, _recursive_=False)  # data: settings, built by `datamodule`
        return cls._opened[tag]

    # set by subclasses
    name: str
    path: Path
    num_classes: int
    null_label: int
    target: str = "eps"
    learned_variance: bool
    data_range: Optional[float] = None
    latents = None  # the VAELatents of a latent model

    def __init__(self, schedule: DiscreteLinearBeta, data: Optional[dict]):
        data = OmegaConf.to_container(data, resolve=True) if isinstance(data, DictConfig) else dict(data or {})
        # An image folder unless told otherwise; the yaml leaves the target out so that a folder not given yet
        # (generate.py needs none) is not a data module the configuration check would build.
        self._schedule, self.config = schedule, {"data": {"_target_": IMAGE_FOLDER, **data}}
        self._module: Optional[PublishedModule] = None
        self._sha256: Optional[str] = None

    def load_net(self) -> IndexedNet:
        raise NotImplementedError

    def schedule(self) -> DiscreteLinearBeta:
        return self._schedule

    @property
    def run(self) -> dict:
        return {"name": self.name, "group": None}

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = sha256_of(self.path)
        return self._sha256

    @property
    def kind(self) -> dict:
        return model_kind(self.num_classes, self.target, self._schedule)

    @property
    def decoder(self):
        return None if self.latents is None else self.latents.decode

    def data_config(self, data: Optional[dict] = None) -> dict:
        return merge_data_config(self.config["data"], data, "published.data")

    def datamodule(self, data: Optional[dict] = None):
        """The reference images' data module (with the model's latent space), or a `ModelData` without them."""
        config = self.data_config(data)
        if not config.get("data_dir"):
            return ModelData(self.num_classes, self.data_range, self.decoder)
        datamodule = instantiate(config, **({"latent": self.latents} if self.latents is not None else {}))
        if datamodule.num_classes != self.num_classes:
            raise ValueError(f"data.data_dir={config['data_dir']!r} holds {datamodule.num_classes} classes, but "
                             f"{self.name} has {self.num_classes}")
        return datamodule

    def module(self, data: Optional[dict] = None) -> tuple[object, PublishedModule]:
        if self._module is None:
            self._module = PublishedModule(self.load_net().eval(), self._schedule, self.num_classes, self.null_label,
                                           self.target).eval()
        return self.datamodule(data), self._module


def open_model(cfg: DictConfig):
    """The model a sampling job's config names: `published` (a PublishedModel) or `ckpt_path` (a Checkpoint), each
    opened once per process. The configuration check refuses both or neither."""
    if cfg.get("published") is not None:
        return PublishedModel.open(cfg.published)
    return Checkpoint.open(cfg.ckpt_path)
