"""A data set encoded once into a VAE's latent space, as a store beside its images (cfglab.data.store).

Each item is kept as the VAE posterior's mean and std of the image and of its mirror image, float16
(N, 2, 2c, h, w): [unflipped, flipped] x [mean (c channels), std (c channels)]. Training draws a fresh sample
mean + std * noise every time it sees an item (as DiT's train.py does by running the VAE every step), and a
left-right flip picks the flipped image's encoding: the encoding of a flipped image is not the flipped encoding
of the image, so flips survive pre-encoding only by encoding both. float16 keeps a store of ImageNet at 256x256
(32x32x4 latents) at 42 GB.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cfglab.atomic import atomic_write_text
from cfglab.data.store import CHUNK, Rows, Store, prepare, store_name
from cfglab.images import to_model_range
from cfglab.latent.vae import VAELatents

log = logging.getLogger(__name__)


@dataclass
class EncodedSource:
    """The items of an image store, encoded with `vae` when read (batched, on vae's encoding device)."""

    key: dict
    images: Rows
    labels: np.ndarray
    vae: VAELatents
    latent_size: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return 2, 2 * self.vae.channels, self.latent_size, self.latent_size

    def __len__(self) -> int:
        return len(self.images)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        device, out, step = self.vae.encode_device(), [], self.vae.batch_size
        for a in range(start, stop, step):  # a batch of images at a time in float32, not the whole chunk
            x = to_model_range(torch.from_numpy(self.images[np.arange(a, min(stop, a + step))]), self.images.shape[-1])
            both = self.vae.encode(torch.cat([x, x.flip(-1)]), device)
            out.append(torch.stack(both.chunk(2), dim=1).half())
        return torch.cat(out).numpy(), np.asarray(self.labels[start:stop], dtype=np.int64)


def channel_moments(latents: np.ndarray, channels: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and variance of posterior samples z = mean + std * noise over every item and both flips:
    E[z] = E[mean], Var[z] = Var[mean] + E[std^2], from the stored (N, 2, 2c, h, w) in float64 sums."""
    total, s1, s2 = 0, np.zeros(channels), np.zeros(channels)
    for start in range(0, len(latents), chunk):
        block = np.asarray(latents[start:start + chunk], dtype=np.float64)
        mean, std = block[:, :, :channels], block[:, :, channels:]
        s1 += mean.sum(axis=(0, 1, 3, 4))
        s2 += (mean**2 + std**2).sum(axis=(0, 1, 3, 4))
        total += mean.size // channels
    m = s1 / total
    return m, s2 / total - m**2


def encode_store(images: Store, vae: VAELatents, image_size: int, chunk: int = CHUNK) -> Store:
    """The latent store of the image store `images` with `vae`, in `images`' folder under a name of the VAE's key,
    encoded if it is not there (resumable, like any prepare: kill it, rerun, and it continues; concurrent runs take
    turns). Its normalisation is measured once, kept in stats.json beside it, and given to `vae`."""
    key = {"images": images.header["key"], **vae.key()}
    path = images.path / store_name("latents", key)
    source = EncodedSource(key, images.rows, images.labels, vae, vae.latent_size(image_size))
    if not (path / "header.json").exists():
        log.info("encoding %d images with the VAE %s on %s", len(images), vae.pretrained, vae.encode_device())
    store = prepare(source, path, workers=1, chunk=chunk, array="latents", dtype=np.float16)
    stats_file = path / "stats.json"
    if not stats_file.exists():
        m, v = channel_moments(store.array, vae.channels)
        atomic_write_text(stats_file, json.dumps(vae.measure_stats(m, v), indent=1))
    vae.set_stats(json.loads(Path(stats_file).read_text()))
    return store


def draw_latents(pairs: torch.Tensor, flip: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Stored items (B, 2, 2c, h, w) -> VAE latents (B, c, h, w): the flipped image's encoding where `flip`
    (B,) bool, the posterior's mean + std * noise (B, c, h, w)."""
    pair = pairs[torch.arange(len(pairs)), flip.long()].float()
    mean, std = pair.chunk(2, dim=1)
    return mean + std * noise
