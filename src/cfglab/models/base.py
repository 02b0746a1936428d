"""What cfglab's networks share: the shape they sample and, for a guidance-distilled student, the w input."""

from __future__ import annotations

from typing import Optional

from torch import nn

from cfglab.models.embeddings import GuidanceEmbedding


class DiffusionNet(nn.Module):
    """Base class: forward(x_t (B, *sample_shape), t (B,) in [0, 1], labels (B,) in [0, num_classes], w=None) ->
    the prediction, shaped like x_t; label num_classes is the learned null token. A network built with a
    guidance_range (a guidance-distilled student, Meng et al. 2023) takes w (B,) as its fourth input."""

    sample_shape: tuple[int, ...]
    guidance_emb: Optional[GuidanceEmbedding]  # set by every subclass (None: no w input)

    @property
    def guidance_range(self) -> Optional[tuple[float, float]]:
        """(w_min, w_max) of a guidance-distilled network, which takes w as an input; None for the joint model."""
        return None if self.guidance_emb is None else self.guidance_emb.guidance_range
