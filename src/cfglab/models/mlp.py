"""Small class-conditional MLP for low-dimensional toy data (x of shape (B, D))."""

from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from cfglab.models.base import DiffusionNet
from cfglab.models.embeddings import GuidanceEmbedding, add_guidance_embedding, timestep_embedding


class MLP(DiffusionNet):
    """forward(x (B, D), t (B,), labels (B,) in [0, num_classes]) -> (B, D); label num_classes is the null token.
    guidance_range: [w_min, w_max] for a guidance-distilled student, which takes w (B,) as a fourth input."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 256, depth: int = 3, image_size=None,
                 guidance_range: Optional[Sequence[float]] = None):
        super().__init__()
        self.in_channels, self.num_classes, self.hidden = in_channels, num_classes, hidden
        self.sample_shape = (in_channels,)
        self.label_emb = nn.Embedding(num_classes + 1, hidden)
        self.guidance_emb = GuidanceEmbedding(hidden, guidance_range) if guidance_range is not None else None
        self.time_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(in_channels, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, in_channels))

    def forward(self, x: Tensor, t: Tensor, labels: Tensor, w: Optional[Tensor] = None) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.hidden)) + self.label_emb(labels)
        h = self.inp(x) + add_guidance_embedding(emb, self.guidance_emb, w)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)
