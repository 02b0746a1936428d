"""Embeddings of the networks' scalar inputs: the time t and, for a guidance-distilled network, the guidance
strength w (Meng et al. 2023, "On Distillation of Guided Diffusion Models", sec. 4.1: the student takes w as an
input, so one forward gives the guided prediction)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0, scale: float = 1000.0) -> Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000 to the range of discrete DDPM steps; a network that
    takes the step index itself uses scale 1): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() if scale == 1 else scale * t.float())[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def check_guidance_range(guidance_range: Optional[Sequence[float]]) -> Optional[tuple[float, float]]:
    """(w_min, w_max) with 0 <= w_min < w_max, or None (a network without a w input)."""
    if guidance_range is None:
        return None
    lo, hi = (float(v) for v in guidance_range)
    if not 0 <= lo < hi:
        raise ValueError(f"guidance_range={list(guidance_range)} must be [w_min, w_max] with 0 <= w_min < w_max")
    return lo, hi


class GuidanceEmbedding(nn.Module):
    """w (B,) -> (B, dim): sinusoidal features of w / w_max through a two-layer MLP, added by the network to its
    time and class embedding. The last layer starts at zero, so a network with this embedding added starts as
    the network without it: loaded with a teacher's weights, the student predicts the teacher's conditional
    output at every w (the initialisation of Meng et al. 2023)."""

    def __init__(self, dim: int, guidance_range: Sequence[float], features: int = 64):
        super().__init__()
        self.guidance_range = check_guidance_range(guidance_range)
        self.features = features
        self.mlp = nn.Sequential(nn.Linear(features, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.mlp[-1].weight), nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, w: Tensor) -> Tensor:
        # Scaled to [0, 1] over the trained range, the features resolve w as finely as the time embedding does t.
        return self.mlp(timestep_embedding(w / self.guidance_range[1], self.features))


def add_guidance_embedding(emb: Tensor, guidance_emb: Optional[GuidanceEmbedding], w: Optional[Tensor]) -> Tensor:
    """emb (B, dim) plus the embedding of w (B,) for a network with a w input; emb itself for one without."""
    if guidance_emb is None:
        if w is not None:
            raise ValueError("w was given to a network without a guidance input (guidance_range is None)")
        return emb
    if w is None:
        raise ValueError(f"this network was distilled for guidance strengths {list(guidance_emb.guidance_range)} "
                         "and needs w as its fourth input")
    return emb + guidance_emb(w.float())
