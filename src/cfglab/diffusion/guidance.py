"""Classifier-free guidance: the guidance formula and the guidance methods (cfglab.diffusion.denoiser applies them).

Convention: the guidance strength is the paper's w (Ho & Salimans 2022, eq. 6),

    eps~(x, c) = (1 + w) eps(x, c) - w eps(x, null)        (w = 0: the plain conditional model)

DiT, k-diffusion and diffusers write the same combination with a scale s = 1 + w:

    eps~ = eps(x, null) + s (eps(x, c) - eps(x, null))    (s = 1: the plain conditional model)

so their `cfg_scale` / `guidance_scale` = 4 is w = 3 here.

Every method is a small dataclass holding its own parameters only; the strength w is an argument, supplied per
sweep point or grid column by the caller (as DiT's `cfg_scale`, EDM2's `guidance` and k-diffusion's `cond_scale`
are arguments of their samplers). A method (base class `Guidance`, whose defaults are plain CFG) answers:
  check_w(w)                                   -> raises if w is not a strength this method takes;
  strength(w, t, log_snr)                      -> the strength used at this step (0: guidance off, the
                                                  unconditional forward is skipped);
  needs_uncond(w_t)                            -> whether a step of strength w_t needs the guiding prediction;
  combine(cond, uncond, w_t, x, alpha, sigma, state) -> the guided Prediction(x0, eps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from cfglab.diffusion.targets import Prediction, broadcast

def guide(cond: Tensor, uncond: Tensor, w: float | Tensor) -> Tensor:
    """The guidance combination (1 + w) cond - w uncond, the only place it is written.

    Works on eps, v or x0 estimates alike: each is affine in the others with label-independent coefficients.
    `w` is a float or a tensor that broadcasts against `cond`.
    """
    return cond + w * (cond - uncond)


def eps_from_x0(x0: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The eps that keeps x_t = alpha x0 + sigma eps; alpha, sigma of shape (B,)."""
    return (x - broadcast(alpha, x) * x0) / broadcast(sigma, x)


class Guidance:
    """Base class of the guidance methods; its defaults are plain classifier-free guidance (Ho & Salimans 2022).

    renoise_with_uncond: the method's (x0, eps) pair re-noises along the unconditional eps (CFG++), so it needs a
        sampler that uses eps and clipping keeps that eps.
    guide_ckpt: the checkpoint of a second network that gives the guiding prediction instead of the network's
        own unconditional one (autoguidance); None: the network itself guides.
    """

    renoise_with_uncond = False
    guide_ckpt: Optional[str] = None

    def check_w(self, w: float) -> None:
        """Raise ValueError if `w` is not a guidance strength this method takes."""
        if not w >= 0:  # also rejects NaN
            raise ValueError(f"guidance strength w={w} must be >= 0 (paper convention, w = 0 is unguided)")

    def strength(self, w: float, t: float, log_snr: float) -> float:
        return w

    def needs_uncond(self, w_t: float) -> bool:
        return w_t != 0

    def combine(self, cond: Prediction, uncond: Prediction, w_t: float, x: Tensor, alpha: Tensor, sigma: Tensor,
                state: dict) -> Prediction:
        return Prediction(guide(cond.x0, uncond.x0, w_t), guide(cond.eps, uncond.eps, w_t))

    @property
    def combines_as_cfg(self) -> bool:
        """Whether the guided prediction is the CFG formula at each step's strength, with the network's own
        unconditional prediction: what a guidance-distilled network reproduces."""
        return type(self).combine is Guidance.combine and not isinstance(self, Autoguidance)


@dataclass
class CFG(Guidance):
    """Plain classifier-free guidance (Ho & Salimans 2022, eq. 6)."""


@dataclass
class GuidanceInterval(Guidance):
    """Guidance only for noise levels sigma_lo < sigma <= sigma_hi (Kynkäänniemi et al. 2024), sigma in EDM's
    units sigma = sigma_t / alpha_t = exp(-lambda / 2). Outside the interval the step is unguided and the
    unconditional forward is skipped. Their ImageNet-512 EDM2 interval is (0.28, 5.42]; sigma_hi = inf guides
    only the high-noise steps, where a small model's class is decided (conf/guidance/interval_high.yaml)."""

    sigma_lo: float = 0.28
    sigma_hi: float = 5.42

    def __post_init__(self):
        if not 0 <= self.sigma_lo < self.sigma_hi:
            raise ValueError(f"need 0 <= sigma_lo < sigma_hi, got sigma_lo={self.sigma_lo}, sigma_hi={self.sigma_hi}")

    def strength(self, w, t, log_snr):
        sigma = math.exp(-log_snr / 2)
        return w if self.sigma_lo < sigma <= self.sigma_hi else 0.0


@dataclass
class ScheduledCFG(Guidance):
    """Guidance whose scale varies over sampling time (Wang et al. 2024, "Analysis of Classifier-Free Guidance
    Weight Schedulers", sec. 3). That paper schedules the scale s of eps_u + s (eps_c - eps_u), i.e. s = 1 + w
    here, not w: s(t) = (1 + w) shape(t) with shape(t) = 1 (constant), 2 (1 - t) (linear) or 1 + cos(pi t)
    (cosine). Each shape averages to 1 over t in [0, 1], so the mean scale is the static 1 + w; the strength
    used at t is w(t) = s(t) - 1, which starts at -1 (the unconditional prediction) at t = 1 and reaches 1 + 2w
    at t = 0."""

    shape: str = "linear"

    def __post_init__(self):
        if self.shape not in ("constant", "linear", "cosine"):
            raise ValueError(f"guidance shape={self.shape!r} must be 'constant', 'linear' or 'cosine'")

    def strength(self, w, t, log_snr):
        if self.shape == "linear":
            return (1 + w) * 2 * (1 - t) - 1
        if self.shape == "cosine":
            return (1 + w) * (1 + math.cos(math.pi * t)) - 1
        return w


@dataclass
class CFGRescale(Guidance):
    """CFG with the guided x0 rescaled to the standard deviation of the conditional x0 (Lin et al. 2024,
    "Common Diffusion Noise Schedules and Sample Steps are Flawed", Alg. 2), mixed by phi (0.7 there).
    phi = 0 is plain CFG. Standard deviations are per sample over all pixels."""

    phi: float = 0.7

    def __post_init__(self):
        if not 0 <= self.phi <= 1:
            raise ValueError(f"rescale phi={self.phi} must lie in [0, 1]")

    def combine(self, cond, uncond, w_t, x, alpha, sigma, state):
        x0 = guide(cond.x0, uncond.x0, w_t)
        dims = tuple(range(1, x.ndim))
        ratio = cond.x0.std(dim=dims, keepdim=True) / x0.std(dim=dims, keepdim=True).clamp_min(1e-12)
        x0 = self.phi * x0 * ratio + (1 - self.phi) * x0
        return Prediction(x0, eps_from_x0(x0, x, alpha, sigma))


@dataclass
class DynamicThreshold(Guidance):
    """CFG, then Imagen's dynamic thresholding of the guided x0 (Saharia et al. 2022, sec. 2.3): s = the
    `percentile` quantile of |x0| per sample, s = max(s, 1), x0 <- clip(x0, -s, s) / s."""

    percentile: float = 0.995

    def __post_init__(self):
        if not 0 < self.percentile <= 1:
            raise ValueError(f"thresholding percentile={self.percentile} must lie in (0, 1]")

    def combine(self, cond, uncond, w_t, x, alpha, sigma, state):
        x0 = guide(cond.x0, uncond.x0, w_t)
        s = torch.quantile(x0.abs().flatten(1).float(), self.percentile, dim=1).clamp_min(1.0).to(x0.dtype)
        s = broadcast(s, x0)
        x0 = torch.maximum(torch.minimum(x0, s), -s) / s
        return Prediction(x0, eps_from_x0(x0, x, alpha, sigma))


@dataclass
class CFGPlusPlus(Guidance):
    """CFG++ (Chung et al. 2024): x0 from the interpolated prediction eps_u + w (eps_c - eps_u) with w = lambda in
    [0, 1], but the sampler re-noises with the unconditional eps. w = 0 is unconditional sampling. Needs a
    sampler that re-noises with eps (DDIM, DDPM, Paper), not DPM-Solver++, which uses x0 alone."""

    renoise_with_uncond = True

    def check_w(self, w):
        super().check_w(w)
        if w > 1:
            raise ValueError(f"CFG++ lambda w={w} must lie in [0, 1]")

    def needs_uncond(self, w_t):
        return True

    def combine(self, cond, uncond, w_t, x, alpha, sigma, state):
        # eps_u + w (eps_c - eps_u) is the guidance formula with strength w - 1
        return Prediction(guide(cond.x0, uncond.x0, w_t - 1), uncond.eps)


@dataclass
class APG(Guidance):
    """Adaptive projected guidance (Sadat et al. 2024, Alg. 1) on x0 predictions: the update
    D_c - D_u, optionally with momentum and capped in norm at `norm_threshold`, is split into its parts parallel
    and orthogonal to D_c; the parallel part is scaled by `eta`. x0 = D_c + w (orth + eta * par).
    eta = 1, momentum = 0 and no cap give plain CFG."""

    eta: float = 0.0
    norm_threshold: float = float("inf")
    momentum: float = 0.0

    def __post_init__(self):
        if not self.norm_threshold > 0:
            raise ValueError(f"APG norm_threshold={self.norm_threshold} must be > 0")

    def combine(self, cond, uncond, w_t, x, alpha, sigma, state):
        diff = cond.x0 - uncond.x0
        if self.momentum != 0:
            diff = diff + self.momentum * state.get("apg_running", torch.zeros_like(diff))
            state["apg_running"] = diff
        dims = tuple(range(1, x.ndim))
        if math.isfinite(self.norm_threshold):
            norm = torch.linalg.vector_norm(diff, dim=dims, keepdim=True)
            diff = diff * (self.norm_threshold / norm.clamp_min(1e-12)).clamp(max=1.0)
        unit = cond.x0 / torch.linalg.vector_norm(cond.x0, dim=dims, keepdim=True).clamp_min(1e-12)
        par = (diff * unit).sum(dim=dims, keepdim=True) * unit
        x0 = cond.x0 + w_t * (diff - par + self.eta * par)
        return Prediction(x0, eps_from_x0(x0, x, alpha, sigma))


@dataclass
class Autoguidance(Guidance):
    """Autoguidance (Karras et al. 2024): the guiding prediction comes from a weaker version of the same model
    (an earlier or smaller checkpoint, `guide_ckpt`), conditioned on the same label; x0 = guide(good, bad, w).
    The caller loads the guiding network (cfglab.checkpoints.Checkpoint.guide_net) and hands it to sampling as
    `guide_net`."""

    guide_ckpt: Optional[str] = None


def check_sampler_guidance(sampler, guidance: Guidance) -> None:
    """Guidance that re-noises with the unconditional eps (CFG++) needs a sampler that uses eps."""
    if guidance.renoise_with_uncond and not sampler.uses_eps:
        raise ValueError(f"{type(guidance).__name__} re-noises with the unconditional eps, which {sampler!r} "
                         "does not use: pick a DDIM, DDPM or Paper sampler")


def check_student_guidance(guidance_range: Optional[tuple[float, float]], guidance: Guidance, w: float,
                           strengths) -> None:
    """A guidance-distilled network (w as its input, `guidance_range` = the [w_min, w_max] it was distilled for;
    None: a joint model, nothing to check) reproduces only guidance whose combination is the CFG formula with a
    per-step strength (CFG, intervals, schedules), at strengths it was trained on. `strengths`: the strength of
    every step at the point's strength `w` (`step_strengths` over the sampler's grid)."""
    if guidance_range is None:
        return
    if not guidance.combines_as_cfg:
        raise ValueError(f"{type(guidance).__name__} cannot be sampled from a guidance-distilled network: it learnt "
                         "the CFG combination (1 + w) eps_c - w eps_u alone; use guidance=cfg, interval or scheduled")
    lo, hi = guidance_range
    outside = sorted({s for s in strengths if not lo <= s <= hi})
    if outside:
        raise ValueError(f"guidance strength w={outside[0]:g} ({type(guidance).__name__} at w={w:g}) lies "
                         f"outside [{lo:g}, {hi:g}], the range this network was distilled for")
