"""Sample grids: one row per class, one column per sample, for a list of guidance strengths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from cfglab.diffusion.guidance import Guidance
from cfglab.diffusion.samplers import Sampler
from cfglab.diffusion.sampling import sample, seeded_noise
from cfglab.sweep import ws_problems


@dataclass(frozen=True)
class GridSettings:
    """The guided sample grids saved at the end of a training job (conf/grids/default.yaml): one PNG per w of
    `ws` (may be empty: no grids), `per_class` samples of every class each, from the noise of `seed`."""

    ws: Sequence[float] = (0.0, 1.0, 3.0)
    per_class: int = 10
    seed: int = 0

    def __post_init__(self):
        problems = ws_problems(self.ws, allow_empty=True)
        if problems:
            raise ValueError("; ".join(f"ws{i}: {m}" for i, m in problems))
        object.__setattr__(self, "ws", tuple(float(w) for w in self.ws))
        if isinstance(self.per_class, bool) or not isinstance(self.per_class, int) or self.per_class < 1:
            raise ValueError(f"per_class={self.per_class!r} must be an integer >= 1")


def class_grid_labels(num_classes: int, per_class: int) -> torch.Tensor:
    """Labels 0,0,...,1,1,... (per_class each): row c of a grid with nrow=per_class shows class c."""
    return torch.arange(num_classes).repeat_interleave(per_class)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int, min_size: int = 32) -> Path:
    """Save images (N, C, H, W) in [-1, 1] as a PNG grid, upscaled (nearest) so each image is >= min_size px."""
    scale = max(1, -(-min_size // images.shape[-1]))
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.clamp(-1, 1), path, nrow=nrow, normalize=True, value_range=(-1, 1), padding=1)
    return path


def save_scatter(points: torch.Tensor, labels: torch.Tensor, path: str | Path) -> Path:
    """2-D samples (N, 2) as a scatter plot coloured by label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=4, vmin=0, vmax=9)
    ax.set_aspect("equal")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_samples(samples: torch.Tensor, labels: torch.Tensor, path: str | Path, per_class: int) -> Path:
    """Images (N, C, H, W; uint8 or in [-1, 1]) as a grid with one row per class; 2-D points as a scatter plot."""
    if samples.ndim == 2:
        return save_scatter(samples.float(), labels, path)
    num_classes = int(labels.max()) + 1
    idx = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(num_classes)])
    images = samples[idx].float()
    if samples.dtype == torch.uint8:
        images = images / 127.5 - 1
    return save_grid(images, path, nrow=per_class)


def guided_grids(module, sampler: Sampler, guidance: Guidance, grids: GridSettings, out_dir: str | Path,
                 sample_kwargs: dict, guide_net=None) -> list[Path]:
    """For each w of `grids.ws`: sample `grids.per_class` images of every class from the same noise and save
    `samples_w{w}.png`. sample_kwargs: `sample`'s settings (SamplingSettings.resolve)."""
    labels = class_grid_labels(module.num_classes, grids.per_class)
    if len(module.net.sample_shape) == 1:  # low-dimensional data: more points make a readable scatter plot
        labels = class_grid_labels(module.num_classes, 50 * grids.per_class)
    labels = labels.to(module.device)
    paths = []
    for w in grids.ws:
        noise, g = seeded_noise((len(labels), *module.net.sample_shape), grids.seed, module.device)
        samples, _ = sample(sampler=sampler, guidance=guidance, labels=labels, w=w, generator=g, noise=noise,
                            guide_net=guide_net, **module.sampling_args(), **sample_kwargs)
        paths.append(save_samples(samples.cpu(), labels.cpu(), Path(out_dir) / f"samples_w{w:g}.png", grids.per_class))
    return paths
