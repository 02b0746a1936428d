"""Conversions between stored 8-bit images and the model's range [-1, 1] (plain PyTorch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def to_model_range(images: Tensor, image_size: int) -> Tensor:
    """uint8 (N, C, H, W) in [0, 255] -> float32 (N, C, image_size, image_size) in [-1, 1]."""
    x = images.float().div(127.5).sub(1.0)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(-1.0, 1.0)


def to_uint8(x: Tensor) -> Tensor:
    """float images in [-1, 1] -> uint8 in [0, 255] (what image files and feature extractors take)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
