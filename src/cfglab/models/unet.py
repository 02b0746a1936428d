"""Class-conditional U-Net for the joint conditional/unconditional model of classifier-free guidance.

The class embedding has num_classes + 1 rows: row `num_classes` is the learned null token that stands for
"no label" (Ho & Salimans 2022, sec. 3.2). Time and class embeddings are summed and modulate every residual
block with a scale and shift after its second normalisation (Dhariwal & Nichol 2021, "AdaGN").
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from cfglab.models.base import DiffusionNet
from cfglab.models.embeddings import GuidanceEmbedding, add_guidance_embedding, timestep_embedding


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.drop = nn.GroupNorm(groups, cout), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight), nn.init.zeros_(self.conv2.bias)  # each block starts as the identity
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.drop(F.silu(h)))


class Attention(nn.Module):
    def __init__(self, channels: int, groups: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm, self.qkv = nn.GroupNorm(groups, channels), nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight), nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, hh * ww).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, hh, ww)
        return x + self.proj(out)


class UNet(DiffusionNet):
    """eps/v network: forward(x (B, C, H, W), t (B,) in [0, 1], labels (B,) in [0, num_classes]) -> (B, C, H, W).

    guidance_range: [w_min, w_max] for a guidance-distilled student, which takes w (B,) as a fourth input
    (cfglab.models.guidance_embedding); None (the joint conditional/unconditional model): no w input.

    Resolution halves after every level but the last, so H and W must be divisible by 2^(len(channel_mult) - 1).
    `attention_levels` lists the level indices (0 = full resolution) that get self-attention.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        num_classes: int,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] = (),
        dropout: float = 0.0,
        groups: int = 8,
        guidance_range: Optional[Sequence[float]] = None,
    ):
        super().__init__()
        factor = 2 ** (len(channel_mult) - 1)
        if image_size % factor:
            raise ValueError(
                f"image_size={image_size} is not divisible by 2^(len(channel_mult)-1)={factor} "
                f"for channel_mult={list(channel_mult)}"
            )
        chans = [base_channels * m for m in channel_mult]
        if any(c % groups for c in chans):
            raise ValueError(f"channels {chans} must be divisible by groups={groups}")
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be >= 1")
        self.image_size, self.in_channels, self.num_classes = image_size, in_channels, num_classes
        emb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim)  # last row: the null label
        self.guidance_emb = GuidanceEmbedding(emb_dim, guidance_range) if guidance_range is not None else None
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        self.down, skips, c = nn.ModuleList(), [base_channels], base_channels
        for level, cout in enumerate(chans):
            for _ in range(num_res_blocks):
                attn = Attention(cout, groups) if level in attention_levels else nn.Identity()
                self.down.append(nn.ModuleList([ResBlock(c, cout, emb_dim, groups, dropout), attn]))
                c = cout
                skips.append(c)
            if level < len(chans) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList(
            [ResBlock(c, c, emb_dim, groups, dropout), Attention(c, groups), ResBlock(c, c, emb_dim, groups, dropout)]
        )
        self.up = nn.ModuleList()
        for level, cout in reversed(list(enumerate(chans))):
            for _ in range(num_res_blocks + 1):
                attn = Attention(cout, groups) if level in attention_levels else nn.Identity()
                self.up.append(nn.ModuleList([ResBlock(c + skips.pop(), cout, emb_dim, groups, dropout), attn]))
                c = cout
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)))
        self.out = nn.Sequential(nn.GroupNorm(groups, c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight), nn.init.zeros_(self.out[-1].bias)
        self.base_channels = base_channels
        self.sample_shape = (in_channels, image_size, image_size)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor, w: Optional[Tensor] = None) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.base_channels)) + self.label_emb(labels)
        emb = add_guidance_embedding(emb, self.guidance_emb, w)
        h = self.stem(x)
        hs = [h]
        for block in self.down:
            if isinstance(block, nn.ModuleList):
                h = block[1](block[0](h, emb))
            else:
                h = block(h)
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for block in self.up:
            if isinstance(block, nn.ModuleList):
                h = block[1](block[0](torch.cat([h, hs.pop()], dim=1), emb))
            else:
                h = block(h)
        return self.out(h)
