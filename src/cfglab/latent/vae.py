"""A VAE's latent space as the space a diffusion model trains and samples in (Rombach et al. 2022, "High-Resolution
Image Synthesis with Latent Diffusion Models"): diffusers' AutoencoderKL, loaded from a local folder or a hub id.

The model sees normalised latents z_n = (z - shift) * scale, per channel. `normalise` and `denormalise` are the
only places where (shift, scale) are applied: the training batches go through the one, `decode` through the
other. Two choices of (shift, scale):
  scaling_factor  the VAE config's own: shift_factor (0 when it has none) and scaling_factor (SD's 0.18215, SDXL's
                  0.13025, SD3's and FLUX's shift and scale); what DiT and most latent models use;
  per_channel     shift = the mean and scale = 1 / std of each latent channel over the training data, measured
                  when the data set is encoded (LightningDiT's choice), so every channel has unit variance.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

NORMALISATIONS = ("scaling_factor", "per_channel")


def _is_path(name: str) -> bool:
    """A value meant as a folder (absolute, relative with ./ or ../, home), not a hub id such as
    stabilityai/sd-vae-ft-ema."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().is_dir()


class VAELatents:
    """The latent space of an AutoencoderKL (conf/latent/sd_vae.yaml; the data module's `latent`).

    pretrained: a folder written by `save_pretrained` or a hub id (fetched by diffusers into its cache when the
        machine has a network; a folder works offline). subfolder: e.g. "vae" inside a pipeline's folder.
    normalisation: "scaling_factor" or "per_channel" (see the module docstring).
    batch_size: images per VAE forward when the data set is encoded and samples are decoded.
    device: where the data set is encoded: "auto" (the GPU when there is one) or a torch device.
    stats: {"shift": [...], "scale": [...]} per channel, measured when the data set was encoded; given by a
        checkpoint (its data module's state), so that a model decodes without its data; null until then.

    channels (the latent's), factor (the spatial downsampling: 2^(len(block_out_channels) - 1)) are read from the
    VAE's config when this is built, so a configuration check refuses a folder that is not there, or a latent
    that does not fit the data and the model, before anything runs.
    """

    def __init__(self, pretrained: str, subfolder: Optional[str] = None, normalisation: str = "scaling_factor",
                 batch_size: int = 64, device: str = "auto", stats: Optional[dict] = None):
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"data.latent.normalisation={normalisation!r} must be one of {list(NORMALISATIONS)}")
        if batch_size < 1:
            raise ValueError(f"data.latent.batch_size={batch_size} must be >= 1")
        if device != "auto":
            try:
                torch.device(device)
            except (RuntimeError, TypeError) as e:
                raise ValueError(f"data.latent.device={device!r} must be 'auto' or a torch device (cpu, cuda, "
                                 "cuda:N)") from e
        self.pretrained, self.subfolder = str(pretrained), subfolder
        self.normalisation, self.batch_size, self.device = normalisation, int(batch_size), device
        if _is_path(self.pretrained):
            folder = Path(self.pretrained).expanduser() / (subfolder or "")
            if not (folder / "config.json").is_file():
                raise ValueError(f"data.latent.pretrained={self.pretrained!r}"
                                 + (f" (subfolder {subfolder!r})" if subfolder else "")
                                 + f": {folder} holds no config.json of a VAE (write one with "
                                   "AutoencoderKL.save_pretrained, or give a hub id)")
            self.pretrained = str(Path(self.pretrained).expanduser().resolve())
        self.config = self._load_config()
        if self.config.get("_class_name") not in (None, "AutoencoderKL"):
            raise ValueError(f"data.latent.pretrained={self.pretrained!r} is a {self.config['_class_name']}, not an "
                             "AutoencoderKL")
        self.channels = int(self.config["latent_channels"])
        self.factor = 2 ** (len(self.config["block_out_channels"]) - 1)
        self.stats: Optional[dict] = None
        if stats is not None:
            self.set_stats(stats)
        self._modules: dict[str, torch.nn.Module] = {}
        self._weights_sha256: Optional[str] = None

    def _load_config(self) -> dict:
        from diffusers import AutoencoderKL

        try:
            return dict(AutoencoderKL.load_config(self.pretrained, subfolder=self.subfolder))
        except (OSError, ValueError) as e:
            raise ValueError(f"data.latent.pretrained={self.pretrained!r}: the VAE's config cannot be read "
                             f"({str(e).splitlines()[0]}); give a local folder, or a hub id on a machine with a "
                             "network") from e

    # -- what the data and the model must fit

    def latent_size(self, image_size: int) -> int:
        """The side of the latent of an image_size x image_size image; refuses a size the VAE cannot halve
        `log2(factor)` times exactly."""
        if image_size % self.factor:
            raise ValueError(f"data.image_size={image_size} is not divisible by the downsampling factor {self.factor} "
                             f"of data.latent.pretrained={self.pretrained!r}")
        return image_size // self.factor

    def check_image_channels(self, channels: int) -> None:
        if int(self.config.get("in_channels", 3)) != channels:
            raise ValueError(f"data.latent.pretrained={self.pretrained!r} encodes images of "
                             f"{self.config.get('in_channels', 3)} channels, but the data have {channels}")

    # -- identity

    def module(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        """The AutoencoderKL on `device` in eval mode, loaded once per device."""
        key = str(torch.device(device))
        if key not in self._modules:
            from diffusers import AutoencoderKL

            # low_cpu_mem_usage=False: the plain load, which needs no `accelerate`
            vae = AutoencoderKL.from_pretrained(self.pretrained, subfolder=self.subfolder, low_cpu_mem_usage=False)
            self._modules[key] = vae.to(device).eval().requires_grad_(False)
        return self._modules[key]

    def key(self) -> dict:
        """What identifies the encoding: the VAE's config and the sha256 of its weights (a folder whose weights
        were replaced encodes to other latents) and the normalisation chosen. Part of the latent store's key."""
        if self._weights_sha256 is None:
            h = hashlib.sha256()
            for name, tensor in sorted(self.module("cpu").state_dict().items()):
                h.update(name.encode())
                h.update(memoryview(tensor.detach().contiguous().view(torch.uint8).numpy()).cast("B"))
            self._weights_sha256 = h.hexdigest()
        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        return {"vae": json.loads(json.dumps(config, default=str)), "weights_sha256": self._weights_sha256,
                "normalisation": self.normalisation}

    def check_key(self, key: dict) -> None:
        """Refuse a model (a checkpoint's data state, a store) made with another VAE or normalisation."""
        ours = self.key()
        differ = sorted(k for k in set(ours) | set(key) if ours.get(k) != key.get(k))
        if differ:
            raise ValueError(f"data.latent.pretrained={self.pretrained!r} (normalisation {self.normalisation!r}) is not "
                             f"the latent space this model was trained in (they differ in {differ}): point "
                             "data.latent.pretrained at the VAE it was trained with")

    # -- the normalisation

    def set_stats(self, stats: dict) -> None:
        """Take the per-channel (shift, scale) measured at encoding (or stored in a checkpoint); a second, other
        value is refused: the model was trained on latents normalised by the first."""
        stats = {"shift": [float(v) for v in stats["shift"]], "scale": [float(v) for v in stats["scale"]]}
        if len(stats["shift"]) != self.channels or len(stats["scale"]) != self.channels:
            raise ValueError(f"latent stats {stats} do not have one shift and one scale per latent channel "
                             f"({self.channels})")
        if self.stats is not None and not np.allclose(self.stats["shift"] + self.stats["scale"],
                                                      stats["shift"] + stats["scale"], rtol=1e-6, atol=0):
            raise ValueError(f"the latent normalisation {stats} differs from the model's {self.stats}: its data "
                             "were encoded with another VAE or normalisation "
                             f"(data.latent.pretrained={self.pretrained!r})")
        self.stats = stats

    def measure_stats(self, means: Sequence[np.ndarray], variances: Sequence[np.ndarray]) -> dict:
        """(shift, scale) of the chosen normalisation, from per-chunk sums (see cfglab.latent.encode)."""
        if self.normalisation == "scaling_factor":
            shift = float(self.config.get("shift_factor") or 0.0)
            return {"shift": [shift] * self.channels, "scale": [float(self.config["scaling_factor"])] * self.channels}
        return {"shift": [float(m) for m in means], "scale": [float(1 / np.sqrt(v)) for v in variances]}

    def _affine(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if self.stats is None:
            raise RuntimeError("the latent normalisation is not known yet: encode the data set (prepare) or load a "
                               "checkpoint first")
        shape = (1, self.channels) + (1,) * (z.ndim - 2)
        shift, scale = (torch.tensor(self.stats[k], device=z.device, dtype=torch.float32).view(shape)
                        for k in ("shift", "scale"))
        return shift, scale

    def normalise(self, z: Tensor) -> Tensor:
        """VAE latents (B, c, h, w) -> the model's latents (z - shift) * scale, float32."""
        shift, scale = self._affine(z)
        return (z.float() - shift) * scale

    def denormalise(self, z: Tensor) -> Tensor:
        shift, scale = self._affine(z)
        return z.float() / scale + shift

    # -- the VAE

    @torch.inference_mode()
    def encode(self, images: Tensor, device: torch.device | str) -> Tensor:
        """Images in [-1, 1] (B, 3, H, W) -> the posterior's mean and std (B, 2c, H/f, W/f), float32, on the CPU."""
        vae = self.module(device)
        out = []
        for batch in images.split(self.batch_size):
            dist = vae.encode(batch.to(device)).latent_dist
            out.append(torch.cat([dist.mean, dist.std], dim=1).float().cpu())
        return torch.cat(out)

    @torch.inference_mode()
    def decode(self, z: Tensor) -> Tensor:
        """The model's latents (B, c, h, w) -> images (B, 3, h f, w f) in [-1, 1], float32, on z's device."""
        vae = self.module(z.device)
        x = torch.cat([vae.decode(self.denormalise(batch)).sample.float() for batch in z.split(self.batch_size)])
        return x.clamp(-1, 1)

    def encode_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)
