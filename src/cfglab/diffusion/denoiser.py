"""The guided denoiser: a joint conditional/unconditional network and a guidance method, as samplers call it.

Contract between samplers and denoisers: a `Denoiser` is called as `denoiser(x_t, t, labels)` with t a Python
float (all samples of a batch step together) and returns `Prediction(x0, eps)`. The denoiser builds whatever
device tensor of t its network needs, so time-dependent guidance (intervals, schedules) reads the time from the
float and sampling never waits on the device between steps.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
from torch import Tensor

from cfglab.diffusion.guidance import Guidance
from cfglab.diffusion.schedules import Schedule
from cfglab.diffusion.targets import Prediction, broadcast, check_target, to_prediction

NetFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""A network: (x_t of shape (B, ...), t of shape (B,) in [0, 1], labels of shape (B,) int64) -> output like x_t.
It has a `sample_shape`, e.g. (C, H, W); a guidance-distilled one also a `guidance_range` (see `guidance_range`)."""

Denoiser = Callable[[Tensor, float, Optional[Tensor]], Prediction]
"""What samplers call: (x_t (B, ...), t in [0, 1] as a float, labels (B,) or None) -> Prediction(x0, eps)."""


def guidance_range(net: NetFn) -> Optional[tuple[float, float]]:
    """The [w_min, w_max] a guidance-distilled network takes as its input w (Meng et al. 2023), None for a joint
    conditional/unconditional network. Any callable may be a network here, so an absent attribute means None."""
    return getattr(net, "guidance_range", None)


def check_guided_channels(k: Optional[int], channels: Optional[int], distilled: bool) -> None:
    """Refuse a `guided_channels` that would be ignored: guiding k of a model's `channels` needs k below them
    (null guides all) and two predictions to combine, which a guidance-distilled network does not make."""
    if k is None:
        return
    if distilled:
        raise ValueError(f"sampling.guided_channels={k}: a guidance-distilled network makes one prediction, already "
                         "guided in every channel; use null")
    if channels is not None and k >= channels:
        raise ValueError(f"sampling.guided_channels={k} must be below the model's {channels} channels (null guides "
                         "every channel)")


def learned_variance(net: NetFn) -> bool:
    """Whether the network's output holds a learned variance after its prediction (2C channels for C: DiT, ADM)."""
    return bool(getattr(net, "learned_variance", False))


def clip_prediction(pred: Prediction, x: Tensor, alpha: Tensor, sigma: Tensor, clip_x0: Optional[float],
                    keep_eps: bool = False) -> Prediction:
    """The prediction with x0 clipped to [-clip_x0, clip_x0] (None: unchanged) and eps shifted so that
    x_t = alpha x0 + sigma eps still holds, or kept as it is (`keep_eps`, for CFG++); alpha, sigma (B,)."""
    if clip_x0 is None:
        return pred
    x0 = pred.x0.clamp(-clip_x0, clip_x0)
    if keep_eps:
        return pred._replace(x0=x0)
    return pred._replace(x0=x0, eps=pred.eps + broadcast(alpha / sigma, x) * (pred.x0 - x0))


class GuidedDenoiser:
    """Wraps a joint conditional/unconditional network into the `Denoiser` that samplers call, guided by
    `guidance` at strength `w` (the method may vary it per step: `Guidance.strength`).

    A guidance-distilled network (one with a `guidance_range`, Meng et al. 2023) takes the step's strength w as its
    input: one forward of batch B per step, no unconditional pass.

    The conditional and unconditional predictions come from one forward of batch 2B (`batched=True`) or from
    two forwards of batch B. Where a step needs no guiding prediction (w = 0, outside a guidance interval) or
    no label is given, only one forward of batch B runs. `guide_net` replaces the unconditional prediction by a
    second network called with the same labels (autoguidance). `nfe` counts network evaluations per sample
    since the last `reset()`.

    autocast: run the network (only) under torch.autocast with this dtype, e.g. torch.bfloat16; the guidance
    combination and the sampler's updates stay in the input's precision.

    clip_x0: if set, the final x0 estimate is clipped to [-clip_x0, clip_x0] (the data range) and eps is shifted
    so that x_t = alpha x0 + sigma eps still holds (static thresholding, Ho et al. 2020; Saharia et al. 2022):
    an ancestral step then moves to the posterior mean of the clipped x0, as in Ho et al.'s sampler. Without it,
    an eps-prediction network's x0 = (x_t - sigma eps) / alpha amplifies errors by 1/alpha ~ 1e4 at the noisiest
    steps. Guidance that re-noises with the unconditional eps (CFG++) keeps that eps: only its x0 is clipped, since
    its (x0, eps) pair does not satisfy x_t = alpha x0 + sigma eps by design, and shifting eps would re-noise
    along another direction than the one that defines the method.

    guided_channels: guide only the first k channels (the others keep the conditional prediction), DiT's
    sampling code's choice of 3 of its 4 latent channels (DiT's `forward_with_cfg`, kept for reproducing its
    published FIDs); None: every channel, the method as written.

    A network with a `learned_variance` returns 2C channels: the prediction, then its variance output (`Prediction.v`,
    taken from the conditional prediction, as DiT's and ADM's guided sampling do).

    The network's output is cast to the dtype of x_t: a float64 run stays float64 end to end.
    """

    def __init__(
        self,
        net: NetFn,
        schedule: Schedule,
        guidance: Guidance,
        w: float,
        null_label: int,
        target: str = "eps",
        batched: bool = True,
        clip_x0: Optional[float] = None,
        guide_net: Optional[NetFn] = None,
        autocast: Optional[torch.dtype] = None,
        guided_channels: Optional[int] = None,
    ):
        self.net, self.schedule, self.guidance, self.guide_net = net, schedule, guidance, guide_net
        self.guided_channels = guided_channels
        self.w, self.autocast, self.distilled = float(w), autocast, guidance_range(net) is not None
        check_guided_channels(guided_channels, getattr(net, "sample_shape", (None,))[0], self.distilled)
        self.null_label, self.target, self.batched = int(null_label), check_target(target), bool(batched)
        if clip_x0 is not None and not clip_x0 > 0:
            raise ValueError(f"clip_x0={clip_x0} must be > 0 or None")
        self.clip_x0 = clip_x0
        self.reset()

    def reset(self) -> None:
        self.nfe, self.state = 0, {}

    def _predict(self, net: NetFn, x: Tensor, t: Tensor, labels: Tensor, alpha: Tensor, sigma: Tensor) -> Prediction:
        with torch.autocast(x.device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            out = net(x, t, labels).to(x.dtype)
        if learned_variance(net):
            out, v = out.chunk(2, dim=1)
            return to_prediction(out, x, alpha, sigma, self.target)._replace(v=v)
        return to_prediction(out, x, alpha, sigma, self.target)

    def __call__(self, x: Tensor, t: float, labels: Optional[Tensor]) -> Prediction:
        """x: (B, ...); t: the step's time as a float; labels: (B,) int64 or None (unconditional)."""
        t_dev = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        alpha, sigma = self.schedule.alpha_sigma(t_dev)  # once per step, shared by prediction, guidance, clipping
        pred = self._guided(x, t, t_dev, labels, alpha, sigma)
        return clip_prediction(pred, x, alpha, sigma, self.clip_x0, self.guidance.renoise_with_uncond)

    def _guided(self, x: Tensor, t: float, t_dev: Tensor, labels: Optional[Tensor], alpha: Tensor,
                sigma: Tensor) -> Prediction:
        null = torch.full((x.shape[0],), self.null_label, dtype=torch.long, device=x.device)
        log_snr = float(self.schedule.log_snr(torch.tensor(t, dtype=torch.float64)))  # on the host: no device read
        w = self.guidance.strength(self.w, t, log_snr) if labels is not None else 0.0
        if self.distilled:  # a guidance-distilled network: the step's strength is its input
            self.nfe += 1
            net = partial(self.net, w=torch.full_like(t_dev, w))
            return self._predict(net, x, t_dev, null if labels is None else labels, alpha, sigma)
        if labels is None:
            self.nfe += 1
            return self._predict(self.net, x, t_dev, null, alpha, sigma)
        if not self.guidance.needs_uncond(w):
            self.nfe += 1
            return self._predict(self.net, x, t_dev, labels, alpha, sigma)
        self.nfe += 2
        if self.guide_net is not None:
            cond = self._predict(self.net, x, t_dev, labels, alpha, sigma)
            uncond = self._predict(self.guide_net, x, t_dev, labels, alpha, sigma)
        elif self.batched:
            both = self._predict(self.net, torch.cat([x, x]), torch.cat([t_dev, t_dev]), torch.cat([labels, null]),
                                 torch.cat([alpha, alpha]), torch.cat([sigma, sigma]))
            cond = Prediction(*(None if p is None else p[: x.shape[0]] for p in both))
            uncond = Prediction(*(None if p is None else p[x.shape[0] :] for p in both))
        else:
            cond = self._predict(self.net, x, t_dev, labels, alpha, sigma)
            uncond = self._predict(self.net, x, t_dev, null, alpha, sigma)
        guided = self.guidance.combine(cond, uncond, w, x, alpha, sigma, self.state)
        k = self.guided_channels
        if k is not None:  # channels k: keep the conditional prediction (DiT's forward_with_cfg)
            guided = Prediction(torch.cat([guided.x0[:, :k], cond.x0[:, k:]], 1),
                                torch.cat([guided.eps[:, :k], cond.eps[:, k:]], 1))
        return guided._replace(v=cond.v)
