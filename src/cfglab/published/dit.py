"""DiT's published weights (Peebles & Xie 2023) with their VAE: the official files (DiT-XL-2-256x256.pt,
DiT-XL-2-512x512.pt: a state dict in the key layout of facebookresearch/DiT's models.py) loaded into cfglab's DiT,
or a diffusers folder (facebook/DiT-XL-2-256 saved by save_pretrained: transformer/, vae/, scheduler/) run by
diffusers' own DiTTransformer2DModel.

The two are not the same function of the same weights: diffusers' DiT computes its time features with
frequencies exp(-log(10^4) i / (half - 1)) (Timesteps with downscale_freq_shift=1) where DiT divides by half, and
normalises before its MLP with eps 1e-5 (`norm_eps`) where DiT uses 1e-6. Each layout is run as its own code runs
it, so a sweep on either reproduces that code's samples.

Both are eps prediction with a learned variance (8 output channels for 4 latent channels) on DDPM's 1000-step
linear-beta schedule, class-conditional over 1000 classes with the null class 1000.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from cfglab.diffusion.schedules import DiscreteLinearBeta
from cfglab.latent.vae import VAELatents
from cfglab.models.dit import VARIANTS, DiT
from cfglab.published.model import IndexedNet, PublishedModel

OFFICIAL_KEYS = ("x_embedder.proj.weight", "t_embedder.mlp.0.weight", "y_embedder.embedding_table.weight",
                 "pos_embed", "final_layer.linear.weight", "blocks.0.attn.qkv.weight")
DIFFUSERS_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")
HEADS = {hidden: heads for _, hidden, heads in VARIANTS.values()}  # Table 1: the heads of each width


def read_schedule(folder: Path, key: str) -> tuple[DiscreteLinearBeta, str]:
    """The schedule and prediction target of a diffusers scheduler folder (scheduler_config.json); only DDPM's
    linear betas are taken, the schedule these models were trained with."""
    file = folder / "scheduler_config.json"
    config = json.loads(file.read_text())
    if config.get("beta_schedule", "linear") != "linear" or config.get("trained_betas") is not None:
        raise ValueError(f"{key}: {file} has beta_schedule={config.get('beta_schedule')!r}; cfglab reads DDPM's "
                         "'linear' schedule (DiscreteLinearBeta)")
    targets = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in targets:
        raise ValueError(f"{key}: {file} has prediction_type={prediction!r}, not one of {list(targets)}")
    schedule = DiscreteLinearBeta(int(config.get("num_train_timesteps", 1000)),
                                  float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02)))
    return schedule, targets[prediction]


class PublishedDiT(PublishedModel):
    """A published DiT (conf/published/dit.yaml).

    path: the official .pt file, or a diffusers folder (a pipeline's, with transformer/ and vae/, or a transformer's
        alone). vae: the VAE's folder (AutoencoderKL.save_pretrained; the official files need
        stabilityai/sd-vae-ft-ema or -mse, as DiT's sample.py --vae); null: the pipeline folder's vae/.
    num_heads: attention heads of an official file, whose weights do not say them (null: DiT's Table 1 for its
        width). data: the reference images' settings (see PublishedModel).
    """

    def __init__(self, path: str, vae: Optional[str] = None, num_heads: Optional[int] = None,
                 data: Optional[dict] = None):
        self.path = Path(str(path)).expanduser()
        if not self.path.exists():
            raise ValueError(f"published.path={str(path)!r} does not exist")
        self.name = self.path.stem if self.path.is_file() else self.path.name
        if self.path.is_file():
            schedule, self.target = DiscreteLinearBeta(), "eps"
            self._official(num_heads)
        else:
            schedule = self._diffusers()
        super().__init__(schedule, data)
        if vae is None and self._vae_folder is None:
            raise ValueError(f"published.vae=null, but {self.path} comes without a VAE: give published.vae=<the "
                             "folder of stabilityai/sd-vae-ft-ema, written by AutoencoderKL.save_pretrained>")
        vae_path, subfolder = (str(vae), None) if vae is not None else (str(self._vae_folder), None)
        try:
            self.latents = VAELatents(vae_path, subfolder)
        except ValueError as e:
            raise ValueError(f"published.vae: {e}") from e
        self.latents.set_stats(self.latents.measure_stats([], []))  # DiT's scaling factor, the VAE config's
        if self.latents.channels != self.in_channels:
            raise ValueError(f"published.vae={vae_path!r} has {self.latents.channels} latent channels, but "
                             f"{self.path} takes {self.in_channels}")
        image_size = self.latent_size * self.latents.factor
        self.config["data"] = {**self.config["data"], "image_size": image_size}

    # -- the two layouts

    def _official(self, num_heads: Optional[int]) -> None:
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001  unpickling errors come in many types
            raise ValueError(f"published.path={str(self.path)!r} is not a readable torch file ({e})") from e
        if isinstance(state, dict) and isinstance(state.get("ema"), dict):  # a checkpoint of DiT's train.py
            state = state["ema"]
        missing = [k for k in OFFICIAL_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            raise ValueError(f"published.path={str(self.path)!r} is not in the key layout of DiT's models.py (no "
                             f"{missing[0]}); published=dit reads the official DiT-XL-2-*.pt files or a diffusers "
                             "folder")
        proj = state["x_embedder.proj.weight"]
        hidden, self.in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        grid = round(state["pos_embed"].shape[1] ** 0.5)
        out = state["final_layer.linear.weight"].shape[0] // patch**2
        self.num_classes = state["y_embedder.embedding_table.weight"].shape[0] - 1
        self.null_label, self.latent_size, self._vae_folder = self.num_classes, grid * patch, None
        heads = num_heads or HEADS.get(hidden)
        if heads is None:
            raise ValueError(f"published.num_heads=null, and width {hidden} of {self.path} is none of DiT's Table 1: "
                             "give the number of attention heads")
        self._build = dict(image_size=self.latent_size, in_channels=self.in_channels, num_classes=self.num_classes,
                           variant=None, depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch,
                           learned_variance=out == 2 * self.in_channels, timestep_scale=1.0)
        self.learned_variance = self._build["learned_variance"]
        self._state = state

    def _diffusers(self) -> DiscreteLinearBeta:
        pipeline = (self.path / "model_index.json").is_file()
        folder = self.path / "transformer" if pipeline else self.path
        file = folder / "config.json"
        config = json.loads(file.read_text()) if file.is_file() else {}
        if config.get("_class_name") not in DIFFUSERS_CLASSES or config.get("norm_type") != "ada_norm_zero":
            raise ValueError(f"published.path={str(self.path)!r}: {file} is not the config of a diffusers DiT "
                             f"({' or '.join(DIFFUSERS_CLASSES)} with norm_type ada_norm_zero); published=dit reads "
                             "the official DiT-XL-2-*.pt files or a diffusers folder")
        self._folder, self.in_channels = folder, int(config.get("in_channels", 4))
        self.num_classes = self.null_label = int(config["num_embeds_ada_norm"])  # DiTPipeline's null class
        self.latent_size = int(config["sample_size"])
        self.learned_variance = int(config.get("out_channels") or self.in_channels) == 2 * self.in_channels
        self._vae_folder = self.path / "vae" if pipeline and (self.path / "vae" / "config.json").is_file() else None
        if pipeline and (self.path / "scheduler").is_dir():
            schedule, self.target = read_schedule(self.path / "scheduler", "published.path")
            return schedule
        self.target = "eps"
        return DiscreteLinearBeta()

    def load_net(self) -> IndexedNet:
        shape = (self.in_channels, self.latent_size, self.latent_size)
        if self.path.is_file():
            net = DiT(**self._build)
            state = {k: v for k, v in self._state.items() if k != "pos_embed"}  # fixed sin-cos: cfglab computes it
            if not torch.allclose(self._state["pos_embed"].float(), net.pos_embed, atol=1e-5):
                raise ValueError(f"{self.path}: its pos_embed is not DiT's fixed sin-cos embedding")
            net.load_state_dict(state)
            self._state = None  # the weights now live in the network
            return IndexedNet(net, self._schedule, shape, self.learned_variance, diffusers=False, name=self.name)
        from diffusers import DiTTransformer2DModel

        inner = DiTTransformer2DModel.from_pretrained(self._folder, low_cpu_mem_usage=False)
        return IndexedNet(inner, self._schedule, shape, self.learned_variance, diffusers=True, name=self.name)
