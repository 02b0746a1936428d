"""Classifier-free guidance: the guidance formula and the guided denoiser that samplers call.

Convention: the guidance strength is the paper's w (Ho & Salimans 2022, eq. 6),

    eps~(x, c) = (1 + w) eps(x, c) - w eps(x, null)        (w = 0: the plain conditional model)

DiT, k-diffusion and diffusers write the same combination with a scale s = 1 + w:

    eps~ = eps(x, null) + s (eps(x, c) - eps(x, null))    (s = 1: the plain conditional model)

so their `cfg_scale` / `guidance_scale` = 4 is w = 3 here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from cfglab.diffusion.schedules import Schedule
from cfglab.diffusion.targets import Prediction, broadcast, check_target, to_prediction

ModelFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""A network: (x_t of shape (B, ...), t of shape (B,) in [0, 1], labels of shape (B,) int64) -> output like x_t."""

Denoiser = Callable[[Tensor, Tensor, Optional[Tensor]], Prediction]
"""What samplers call: (x_t (B, ...), t (B,), labels (B,) or None) -> Prediction(x0, eps)."""


def guide(cond: Tensor, uncond: Tensor, w: float | Tensor) -> Tensor:
    """The guidance combination (1 + w) cond - w uncond, the only place it is written.

    Works on eps, v or x0 estimates alike: each is affine in the others with label-independent coefficients.
    `w` is a float or a tensor that broadcasts against `cond`.
    """
    return cond + w * (cond - uncond)


@dataclass
class CFG:
    """Plain classifier-free guidance with constant strength w >= 0."""

    w: float = 0.0

    def __post_init__(self):
        if not self.w >= 0:  # also rejects NaN
            raise ValueError(f"guidance strength w={self.w} must be >= 0 (paper convention, w = 0 is unguided)")

    def weight(self, t: float, log_snr: float) -> float:
        """Guidance strength at this step; 0 means the unconditional forward is skipped."""
        return self.w

    def combine(self, cond: Prediction, uncond: Prediction, w: float) -> Prediction:
        return Prediction(guide(cond.x0, uncond.x0, w), guide(cond.eps, uncond.eps, w))


class GuidedDenoiser:
    """Wraps a joint conditional/unconditional network into the `Denoiser` that samplers call.

    The conditional and unconditional predictions come from one forward of batch 2B (`batched=True`) or from
    two forwards of batch B. Where guidance is off at a step (w = 0) or no label is given, only one forward of
    batch B runs. `nfe` counts network evaluations per sample since the last `reset()`.

    clip_x0: if set, the final x0 estimate is clipped to [-clip_x0, clip_x0] (the data range) and eps is shifted
    so that x_t = alpha x0 + sigma eps still holds (static thresholding, Ho et al. 2020; Saharia et al. 2022).
    Without it, an eps-prediction network's x0 = (x_t - sigma eps) / alpha amplifies errors by 1/alpha ~ 1e4
    at the noisiest steps.
    """

    def __init__(
        self,
        model: ModelFn,
        schedule: Schedule,
        guidance: CFG,
        null_label: int,
        target: str = "eps",
        batched: bool = True,
        clip_x0: Optional[float] = None,
    ):
        self.model, self.schedule, self.guidance = model, schedule, guidance
        self.null_label, self.target, self.batched = int(null_label), check_target(target), batched
        if clip_x0 is not None and not clip_x0 > 0:
            raise ValueError(f"clip_x0={clip_x0} must be > 0 or None")
        self.clip_x0 = clip_x0
        self.nfe = 0

    def reset(self) -> None:
        self.nfe = 0

    def _predict(self, x: Tensor, t: Tensor, labels: Tensor) -> Prediction:
        alpha, sigma = self.schedule.alpha_sigma(t)
        return to_prediction(self.model(x, t, labels), x, alpha, sigma, self.target)

    def __call__(self, x: Tensor, t: Tensor, labels: Optional[Tensor]) -> Prediction:
        pred = self._guided(x, t, labels)
        if self.clip_x0 is None:
            return pred
        x0 = pred.x0.clamp(-self.clip_x0, self.clip_x0)
        alpha, sigma = self.schedule.alpha_sigma(t)
        return Prediction(x0, pred.eps + broadcast(alpha / sigma, x) * (pred.x0 - x0))

    def _guided(self, x: Tensor, t: Tensor, labels: Optional[Tensor]) -> Prediction:
        t0 = float(t[0])  # one noise level for the whole batch: samplers step all samples together
        null = torch.full((x.shape[0],), self.null_label, dtype=torch.long, device=x.device)
        w = 0.0 if labels is None else self.guidance.weight(t0, float(self.schedule.log_snr(torch.tensor(t0))))
        if w == 0:
            self.nfe += 1
            return self._predict(x, t, null if labels is None else labels)
        self.nfe += 2
        if self.batched:
            both = self._predict(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
            cond = Prediction(*(p[: x.shape[0]] for p in both))
            uncond = Prediction(*(p[x.shape[0] :] for p in both))
        else:
            cond, uncond = self._predict(x, t, labels), self._predict(x, t, null)
        return self.guidance.combine(cond, uncond, w)
