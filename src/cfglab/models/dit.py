"""Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers", arXiv 2212.09748):
the image (or VAE latent) cut into p x p patches, a ViT over the patch tokens with adaLN-Zero conditioning on
time and class, and the tokens put back together.

The class embedding has num_classes + 1 rows: row `num_classes` is the learned null token of classifier-free
guidance. Labels are dropped by the LightningModule (cfglab.lightning.module.drop_labels), never here: a network
that drops labels in train mode by itself (as diffusers' DiTTransformer2DModel does, independently in every
block) trains another p_uncond than the configured one. The output is the eps or v prediction, shaped like the
input: cfglab trains the simple MSE loss, DiT's L_simple. Built with `learned_variance` (the published weights'
form, cfglab.published.dit) it returns twice the channels: the prediction, then DiT's variance output.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from cfglab.models.base import DiffusionNet
from cfglab.models.embeddings import GuidanceEmbedding, add_guidance_embedding, timestep_embedding

# Peebles & Xie 2023, Table 1: depth (blocks), hidden size, attention heads.
VARIANTS = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
FREQUENCY_DIM = 256  # the sinusoidal time features before the MLP (DiT's TimestepEmbedder)


def parse_variant(variant: str) -> tuple[int, int, int, int]:
    """"XL/2" -> (depth, hidden_size, num_heads, patch_size)."""
    size, _, patch = str(variant).partition("/")
    if size not in VARIANTS or patch not in ("2", "4", "8"):
        raise ValueError(f"model.variant={variant!r} must be <size>/<patch> with size in {list(VARIANTS)} and patch in "
                         "2, 4, 8 (Peebles & Xie 2023, Table 1), e.g. 'B/2' or 'XL/2'")
    return (*VARIANTS[size], int(patch))


def sincos_pos_embed(dim: int, grid: int) -> Tensor:
    """The fixed 2-D sine-cosine position embedding of a grid x grid token map (DiT, after MAE): (grid^2, dim),
    half of the features for the row, half for the column."""
    def one_axis(d: int, pos: Tensor) -> Tensor:
        omega = 1.0 / 10_000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
        out = pos.double().flatten()[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([one_axis(dim // 2, cols), one_axis(dim // 2, rows)], dim=1).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, scale: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.scale = scale

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, FREQUENCY_DIM, scale=self.scale))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiTBlock(nn.Module):
    """Self-attention and MLP, each after a LayerNorm modulated by the conditioning (shift, scale) and gated
    (gate): adaLN-Zero, whose modulation starts at zero so that every block starts as the identity."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(DiffusionNet):
    """forward(x (B, C, H, W), t (B,) in [0, 1], labels (B,) in [0, num_classes], w=None) -> (B, C, H, W).

    variant: "S/2" ... "XL/8" (Table 1); depth, hidden_size, num_heads, patch_size override its numbers (a tiny
    network for tests: variant=None and all four given). image_size (H = W) must be divisible by the patch size.
    grad_checkpointing: recompute each block's activations in the backward pass instead of storing them (less
    memory, about a third more compute). guidance_range: [w_min, w_max] of a guidance-distilled student, which
    takes w (B,) as a fourth input; None: the joint model. learned_variance: 2C output channels (published DiT
    weights). timestep_scale: what t is multiplied by before the sinusoids: 1000 for cfglab's t in [0, 1], 1 for
    published weights, which take DDPM's step index n.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        num_classes: int,
        variant: Optional[str] = "B/2",
        depth: Optional[int] = None,
        hidden_size: Optional[int] = None,
        num_heads: Optional[int] = None,
        patch_size: Optional[int] = None,
        mlp_ratio: float = 4.0,
        grad_checkpointing: bool = False,
        guidance_range: Optional[Sequence[float]] = None,
        learned_variance: bool = False,
        timestep_scale: float = 1000.0,
    ):
        super().__init__()
        preset = parse_variant(variant) if variant is not None else (None,) * 4
        depth, hidden_size, num_heads, patch_size = (
            v if v is not None else p for v, p in zip((depth, hidden_size, num_heads, patch_size), preset))
        if None in (depth, hidden_size, num_heads, patch_size):
            raise ValueError("model.variant=null needs model.depth, model.hidden_size, model.num_heads and "
                             "model.patch_size")
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} (the model's input, latent size for latent diffusion) is not "
                             f"divisible by patch_size={patch_size}")
        if hidden_size % num_heads or (hidden_size // num_heads) % 2 or hidden_size % 4:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by 4 and by num_heads={num_heads} into an "
                             "even head size")
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be >= 1")
        self.image_size, self.in_channels, self.num_classes = image_size, in_channels, num_classes
        self.patch_size, self.grad_checkpointing = patch_size, bool(grad_checkpointing)
        self.learned_variance, self.out_channels = bool(learned_variance), in_channels * (2 if learned_variance else 1)
        self.sample_shape = (in_channels, image_size, image_size)
        grid = image_size // patch_size
        # Module names are those of DiT's reference code, so its published weights load by name.
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed(hidden_size, grid)[None], persistent=False)
        self.t_embedder = TimestepEmbedder(hidden_size, float(timestep_scale))
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(num_classes + 1, hidden_size)  # last row: the null label
        self.guidance_emb = GuidanceEmbedding(hidden_size, guidance_range) if guidance_range is not None else None
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size * patch_size * self.out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT's initialisation: Xavier-uniform linear layers, N(0, 0.02) embeddings, and zero for every adaLN
        # modulation and for the output layer (adaLN-Zero: the network outputs zeros at initialisation).
        guidance = set(self.guidance_emb.modules()) if self.guidance_emb is not None else set()
        for m in self.modules():
            if isinstance(m, nn.Linear) and m not in guidance:
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        proj = self.x_embedder.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for m in [*self.blocks, self.final_layer]:
            nn.init.zeros_(m.adaLN_modulation[-1].weight), nn.init.zeros_(m.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight), nn.init.zeros_(self.final_layer.linear.bias)

    def patchify(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, H/p * W/p, p * p * C), row-major tokens, each (p, p, C) flattened: the layout of
        `unpatchify` (the patch embedding itself is a strided convolution)."""
        b, c, h, w = x.shape
        p = self.patch_size
        return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), -1)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        """(B, T, p * p * C) -> (B, C, H, W)."""
        b, n, _ = tokens.shape
        p, c, g = self.patch_size, self.out_channels, math.isqrt(n)
        return tokens.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor, w: Optional[Tensor] = None) -> Tensor:
        c = self.t_embedder(t) + self.y_embedder.embedding_table(labels)
        c = add_guidance_embedding(c, self.guidance_emb, w)
        h = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, c, use_reentrant=False)
            else:
                h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))
