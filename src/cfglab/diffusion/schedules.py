"""Variance-preserving noise schedules over continuous time t in [0, 1].

A schedule is defined by its log signal-to-noise ratio lambda(t) = log(alpha^2 / sigma^2), decreasing in t.
alpha and sigma follow from it as alpha^2 = sigmoid(lambda) and sigma^2 = sigmoid(-lambda), so
alpha^2 + sigma^2 = 1 holds exactly for every schedule (x_t = alpha(t) x_0 + sigma(t) eps).

log_snr is clipped to [lambda_min, lambda_max] (default [-20, 20], the range of Ho & Salimans 2022, sec. 4):
t = 0 is then almost clean data (sigma ~ 4.5e-5) and t = 1 almost pure noise, and nothing is infinite.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["Schedule", "LinearBeta", "Cosine", "PaperLogSNR"]


class Schedule:
    """Base class: subclasses implement `_log_snr(t)` (unclipped, decreasing in t)."""

    def __init__(self, log_snr_min: float = -20.0, log_snr_max: float = 20.0):
        if not log_snr_min < log_snr_max:
            raise ValueError(f"log_snr_min={log_snr_min} must be below log_snr_max={log_snr_max}")
        self.log_snr_min = float(log_snr_min)
        self.log_snr_max = float(log_snr_max)

    def _log_snr(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(alpha^2 / sigma^2), same shape as `t`, float64-safe."""
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        return self._log_snr(t).clamp(self.log_snr_min, self.log_snr_max)

    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale alpha(t) = sqrt(sigmoid(lambda(t)))."""
        return torch.sigmoid(self.log_snr(t)).sqrt()

    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale sigma(t) = sqrt(sigmoid(-lambda(t)))."""
        return torch.sigmoid(-self.log_snr(t)).sqrt()

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        lam = self.log_snr(t)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class LinearBeta(Schedule):
    """Continuous-time limit of DDPM's linear beta schedule (Ho et al. 2020; Song et al. 2021, VP-SDE).

    beta(t) = beta_min + t (beta_max - beta_min), alpha^2(t) = exp(-gamma(t)) with
    gamma(t) = beta_min t + (beta_max - beta_min) t^2 / 2. beta_min=0.1, beta_max=20 match 1000 discrete steps
    of beta in [1e-4, 0.02].
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, **clip):
        super().__init__(**clip)
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def _log_snr(self, t: Tensor) -> Tensor:
        gamma = self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2
        # log(alpha^2 / (1 - alpha^2)) with alpha^2 = exp(-gamma), written to stay finite for small gamma.
        return -gamma - torch.log(-torch.expm1(-gamma))


class Cosine(Schedule):
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): alpha^2(t) = f(t) / f(0), f(t) = cos^2(pi/2 (t+s)/(1+s))."""

    def __init__(self, s: float = 0.008, **clip):
        super().__init__(**clip)
        if s < 0:
            raise ValueError(f"cosine offset s={s} must be >= 0")
        self.s = float(s)

    def _log_snr(self, t: Tensor) -> Tensor:
        f = lambda u: torch.cos(0.5 * math.pi * (u + self.s) / (1 + self.s)) ** 2  # noqa: E731
        alpha2 = (f(t) / f(torch.zeros_like(t))).clamp(0.0, 1.0)
        return torch.log(alpha2) - torch.log1p(-alpha2)


class PaperLogSNR(Schedule):
    """The schedule of Ho & Salimans 2022 (sec. 4): lambda(t) = -2 log tan(a t + b),

    b = arctan(exp(-lambda_max / 2)), a = arctan(exp(-lambda_min / 2)) - b, so lambda(0) = lambda_max and
    lambda(1) = lambda_min exactly (a cosine schedule stretched to the clip range).
    """

    def _log_snr(self, t: Tensor) -> Tensor:
        b = math.atan(math.exp(-self.log_snr_max / 2))
        a = math.atan(math.exp(-self.log_snr_min / 2)) - b
        return -2.0 * torch.log(torch.tan(a * t + b))
