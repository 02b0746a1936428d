"""Samplers: short loops over any `Denoiser` (x_t, t, labels) -> Prediction(x0, eps) and a `Schedule`; the
denoiser gets the step's time t as a Python float (cfglab.diffusion.denoiser).

All samplers walk the schedule's grid t_0 = 1 > t_1 > ... > t_N = 0 (`Schedule.time_grid`: uniform in t, or on a
discrete schedule its whole step indices, `spacing`), with one denoiser call per step, and return x at t = 0.
Per-step coefficients are computed once, in float64, before the loop. With
lambda = log-SNR, r = exp(lambda_t - lambda_s) < 1 for a step t -> s < t:

  posterior variance   var~ = sigma_s^2 (1 - r)     of q(x_s | x_t, x0) (Ho et al. 2020, eq. 7)
  forward variance     var  = sigma_t^2 (1 - r)     of q(x_t | x_s)

The ancestral family steps x_s = alpha_s x0 + c_eps eps + std z, z ~ N(0, I):
  DDIM(eta)   c_eps = sqrt(sigma_s^2 - eta^2 var~),  std = eta sqrt(var~)     (Song et al. 2021, eq. 12)
  DDPM        the posterior mean and variance: DDIM with eta = 1
  Paper(v)    the posterior mean with variance var~^(1-v) var^v (Ho & Salimans 2022, sec. 4; Nichol & Dhariwal 2021)
  LearnedRange the posterior mean with the network's own variance exp(f log var + (1-f) log var~),
              f = (v + 1) / 2 from its variance output v (Nichol & Dhariwal 2021, eq. 15; DiT, ADM)
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from cfglab.diffusion.denoiser import Denoiser
from cfglab.diffusion.schedules import Schedule, check_grid

__all__ = ["Sampler", "DDIM", "DDPM", "Paper", "LearnedRange", "DPMSolverPP2M", "time_grid"]


def time_grid(steps: int) -> Tensor:
    """t_0 = 1 > ... > t_steps = 0, uniform, float64, shape (steps + 1,): the grid of every continuous schedule."""
    return Schedule().time_grid(steps)


class Sampler:
    """Base class. `__call__(denoiser, schedule, x, labels, generator)` returns samples shaped like `x`.

    x: initial noise x_1 ~ N(0, I), shape (B, ...). labels: (B,) int64 or None (unconditional).
    generator: the torch.Generator for the noise added along the way (ancestral samplers).
    spacing: where the steps lie, "uniform" in t or "respaced" (guided-diffusion's, on a discrete schedule).
    uses_eps: whether a step moves along the denoiser's eps as well as its x0 (guidance that re-noises with the
    unconditional eps, CFG++, needs one that does); a sampler that does not say is assumed to.
    """

    uses_eps = True

    def __init__(self, steps: int, spacing: str = "uniform"):
        check_grid(steps, spacing)
        self.steps, self.spacing = int(steps), spacing

    def check_network(self, learned_variance: bool) -> None:
        """Raise ValueError if this sampler cannot step a network with (or without) a learned variance."""

    def grid(self, schedule: Schedule) -> Tensor:
        """The times this sampler visits on `schedule`, (steps + 1,) float64."""
        return schedule.time_grid(self.steps, self.spacing)

    def __call__(
        self,
        denoiser: Denoiser,
        schedule: Schedule,
        x: Tensor,
        labels: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
        callback: Optional[Callable[[int], None]] = None,
    ) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:  # spacing only when not uniform: the keys of points finished before it existed hold
        shown = {k: v for k, v in vars(self).items() if (k, v) != ("spacing", "uniform")}
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in shown.items())})"


class _Ancestral(Sampler):
    """The ancestral family: subclasses give c_eps and std from the step's variances."""

    def _coefficients(self, sigma_s2: Tensor, post_var: Tensor, fwd_var: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _std(self, std: float, post_var: float, fwd_var: float, pred) -> float | Tensor:
        """The step's noise scale: the schedule's (a float), unless the network gives its own."""
        return std

    def __call__(self, denoiser, schedule, x, labels=None, generator=None, callback=None):
        ts = self.grid(schedule)
        lam = schedule.log_snr(ts)
        alpha2, sigma2 = torch.sigmoid(lam), torch.sigmoid(-lam)
        r = torch.exp(lam[:-1] - lam[1:])
        post_var, fwd_var = sigma2[1:] * (1 - r), sigma2[:-1] * (1 - r)
        c_eps, std = self._coefficients(sigma2[1:], post_var, fwd_var)
        alpha_s = alpha2[1:].sqrt()
        for i in range(self.steps):
            pred = denoiser(x, float(ts[i]), labels)
            x = float(alpha_s[i]) * pred.x0 + float(c_eps[i]) * pred.eps
            if std[i] > 0 and i < self.steps - 1:  # no noise is added on the final step to t = 0
                scale = self._std(float(std[i]), float(post_var[i]), float(fwd_var[i]), pred)
                x = x + scale * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            if callback is not None:
                callback(i)
        return x


class DDIM(_Ancestral):
    """DDIM (Song et al. 2021); eta = 0 is deterministic, eta = 1 is ancestral DDPM."""

    def __init__(self, steps: int = 50, eta: float = 0.0, spacing: str = "uniform"):
        super().__init__(steps, spacing)
        if not 0 <= eta <= 1:
            raise ValueError(f"DDIM eta={eta} must lie in [0, 1]")
        self.eta = float(eta)

    def _coefficients(self, sigma_s2, post_var, fwd_var):
        var = self.eta**2 * post_var
        return (sigma_s2 - var).clamp_min(0).sqrt(), var.sqrt()


class DDPM(_Ancestral):
    """Ancestral sampling with the posterior q(x_s | x_t, x0) (Ho et al. 2020, Alg. 2), any number of steps."""

    def __init__(self, steps: int = 250, spacing: str = "uniform"):
        super().__init__(steps, spacing)

    def _coefficients(self, sigma_s2, post_var, fwd_var):
        return (sigma_s2 - post_var).clamp_min(0).sqrt(), post_var.sqrt()


class LearnedRange(DDPM):
    """DDPM with the network's learned variance (Nichol & Dhariwal 2021, eq. 15): the posterior mean, and the log
    variance f log var + (1 - f) log var~ with f = (v + 1) / 2 per element from the network's variance output v
    (`Prediction.v`). var and var~ are those of the step taken, so respaced steps use the respaced betas, as
    guided-diffusion's respacing does. DiT's evaluation protocol: 250 steps, spacing "respaced"."""

    def __init__(self, steps: int = 250, spacing: str = "respaced"):
        super().__init__(steps, spacing)

    def check_network(self, learned_variance):
        if not learned_variance:
            raise ValueError("sampler=ddpm_learned needs a network with a learned variance (DiT's 8 output channels); "
                             "this one predicts none: use sampler=ddpm")

    def _std(self, std, post_var, fwd_var, pred):
        self.check_network(pred.v is not None)
        frac = (pred.v + 1) / 2
        return torch.exp(0.5 * (frac * math.log(fwd_var) + (1 - frac) * math.log(post_var)))


class Paper(_Ancestral):
    """The sampler of Ho & Salimans 2022 (sec. 4): posterior mean, variance var~^(1-v) var^v (v = 0.3 at 64px)."""

    def __init__(self, steps: int = 256, v: float = 0.3, spacing: str = "uniform"):
        super().__init__(steps, spacing)
        if not 0 <= v <= 1:
            raise ValueError(f"variance interpolation v={v} must lie in [0, 1]")
        self.v = float(v)

    def _coefficients(self, sigma_s2, post_var, fwd_var):
        std = (post_var ** (1 - self.v) * fwd_var**self.v).sqrt()
        return (sigma_s2 - post_var).clamp_min(0).sqrt(), std


class DPMSolverPP2M(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): multistep second order in the data prediction x0.

    Uses the half log-SNR h = (lambda_s - lambda_t) / 2 of that paper; the first and the last step are first
    order (the first equals DDIM), which keeps the global error second order and the final step stable.
    Uses only x0 from the denoiser. A step of zero length (two grid times with the same log-SNR, where the
    schedule's clipping flattens lambda(t)) leaves x unchanged and costs no network evaluation; the next step's
    multistep ratio refers to the last step that moved.
    """

    uses_eps = False

    def __init__(self, steps: int = 20, spacing: str = "uniform"):
        super().__init__(steps, spacing)

    def __call__(self, denoiser, schedule, x, labels=None, generator=None, callback=None):
        ts = self.grid(schedule)
        lam = schedule.log_snr(ts)
        alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        h = (lam[1:] - lam[:-1]) / 2
        x0_prev, h_prev = None, None
        for i in range(self.steps):
            if h[i] > 0:
                x0 = denoiser(x, float(ts[i]), labels).x0
                if x0_prev is None or i == self.steps - 1:
                    d = x0
                else:
                    r = float(h_prev / h[i])
                    d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
                x = float(sigma[i + 1] / sigma[i]) * x - float(alpha[i + 1] * torch.expm1(-h[i])) * d
                x0_prev, h_prev = x0, h[i]
            if callback is not None:
                callback(i)
        return x
