"""Loss weightings over noise levels, and the draw of the training times (plain PyTorch).

A weighting is written, as in Kingma & Gao 2023 (eq. 3), on the eps-prediction loss as a function of
lambda = log SNR:  L = E_t[ w_eps(lambda_t) ||eps^ - eps||^2 ].  A network with another target minimises the same
objective with its own squared error times a factor, since for x_t = alpha x0 + sigma eps (VP) the estimates of
one prediction obey  ||eps^ - eps||^2 = SNR ||x0^ - x0||^2 = SNR / (1 + SNR) ||v^ - v||^2  (v = alpha eps - sigma x0).
`Uniform` is the exception: weight 1 on the target's own error, the simple loss (Ho et al. 2020, eq. 14).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from cfglab.diffusion.schedules import Schedule


def stratified_times(batch: int, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
    """t in [0, 1), one uniform draw per stratum [i/B, (i+1)/B) in random order: lower-variance loss estimates
    than i.i.d. uniform t (the low-discrepancy sampler of Kingma et al. 2021, appendix I.1)."""
    u = torch.rand((), generator=generator, device=device)
    t = (u + torch.arange(batch, device=device) / batch) % 1.0
    return t[torch.randperm(batch, generator=generator, device=device)]


def eps_error_factor(log_snr: Tensor, target: str) -> Tensor:
    """||eps^ - eps||^2 / ||target^ - target||^2 for one prediction (module docstring): 1, SNR, SNR / (1 + SNR)."""
    snr = log_snr.exp()
    return {"eps": torch.ones_like(snr), "x0": snr, "v": torch.sigmoid(log_snr)}[target]


class Weighting:
    """Base: stratified uniform times; a subclass gives its w_eps (`eps_weight`) and may draw other times."""

    def times(self, batch: int, schedule: Schedule, generator: Optional[torch.Generator], device) -> Tensor:
        """The training times t in [0, 1], (batch,)."""
        return stratified_times(batch, generator, device)

    def eps_weight(self, t: Tensor, schedule: Schedule) -> Optional[Tensor]:
        """w_eps at times t, (B,); None: weight 1 on the target's own error."""
        return None

    def check_target(self, target: str) -> None:
        """Raise ValueError when this weighting cannot train a network that predicts `target`."""

    def weight(self, t: Tensor, schedule: Schedule, target: str) -> Optional[Tensor]:
        """The weight of each example's mean squared error on `target`, (B,); None: all 1."""
        w = self.eps_weight(t, schedule)
        return None if w is None else w * eps_error_factor(schedule.log_snr(t), target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in vars(self).items())})"


class Uniform(Weighting):
    """Uniform times and weight 1 on the target's own squared error: Ho et al. 2020's simple loss (eq. 14)."""


class MinSNR(Weighting):
    """Min-SNR-gamma (Hang et al. 2023, eq. 7): w_eps = min(SNR, gamma) / SNR, that is min(SNR, gamma) on the x0
    error and min(SNR, gamma) / (SNR + 1) on the v error (sec. 3.4). gamma: 5 in the paper."""

    def __init__(self, gamma: float = 5.0):
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
            raise ValueError(f"gamma={gamma!r} must be a number > 0 (the paper's is 5)")
        self.gamma = float(gamma)

    def eps_weight(self, t: Tensor, schedule: Schedule) -> Tensor:
        snr = schedule.log_snr(t).exp()
        return snr.clamp(max=self.gamma) / snr


class TruncatedSNR(Weighting):
    """Truncated SNR weighting (Salimans & Ho 2022, sec. 4, "truncated SNR"): L = max(||x0^ - x0||^2, ||eps^ - eps||^2)
    = max(SNR, 1) ||x0^ - x0||^2, so w_eps = max(SNR, 1) / SNR. Like SNR + 1 (the v loss) it keeps a weight on the
    x0 error as SNR -> 0, where eps-prediction's loss puts none; the loss their progressive distillation uses."""

    def check_target(self, target: str) -> None:
        if target == "eps":  # its weight on the eps error, max(SNR, 1) / SNR, reaches 1 / SNR_min (~1e9) at t = 1
            raise ValueError("weighting=truncated_snr with module.target='eps' weights the eps error by 1 / SNR at low "
                             "SNR, so the loss explodes there; use module.target=v or x0 (Salimans & Ho 2022, sec. 4), "
                             "or weighting=uniform for an eps network")

    def eps_weight(self, t: Tensor, schedule: Schedule) -> Tensor:
        snr = schedule.log_snr(t).exp()
        return snr.clamp(min=1.0) / snr


class Sigmoid(Weighting):
    """The sigmoid weighting of Kingma & Gao 2023 (sec. 5): w(lambda) = sigmoid(bias - lambda) in their eq. 3,
    L = E_{t ~ U(0, 1)}[ w(lambda_t) (-d lambda / dt) ||eps^ - eps||^2 ], so w_eps = sigmoid(bias - lambda) times the
    schedule's -d lambda / dt (taken by autograd: any schedule). bias: their shift of the sigmoid, e.g. -2 or -3."""

    def __init__(self, bias: float = -2.0):
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
            raise ValueError(f"bias={bias!r} must be a finite number (Kingma & Gao use about -2 to -3)")
        self.bias = float(bias)

    def eps_weight(self, t: Tensor, schedule: Schedule) -> Tensor:
        with torch.enable_grad():
            tt = t.detach().double().requires_grad_(True)
            lam = schedule.log_snr(tt)
            (dlam,) = torch.autograd.grad(lam.sum(), tt)
        return (torch.sigmoid(self.bias - lam.detach()) * -dlam).to(t.dtype)


class EDM(Weighting):
    """EDM's training distribution and weight (Karras et al. 2022, Table 1): ln sigma ~ N(p_mean, p_std^2) with
    sigma = sigma/alpha of VP (exp(-lambda / 2)), and lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
    on the x0 error, so w_eps = lambda(sigma) / SNR = 1 + sigma^2 / sigma_data^2. Their defaults: -1.2, 1.2, 0.5."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = 0.5):
        for name, value in (("p_mean", p_mean), ("p_std", p_std), ("sigma_data", sigma_data)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}={value!r} must be a finite number")
        if not p_std > 0 or not sigma_data > 0:
            raise ValueError(f"p_std={p_std} and sigma_data={sigma_data} must be > 0")
        self.p_mean, self.p_std, self.sigma_data = float(p_mean), float(p_std), float(sigma_data)

    def times(self, batch: int, schedule: Schedule, generator: Optional[torch.Generator], device) -> Tensor:
        # stratified normal draws (the inverse CDF of stratified uniforms), then the schedule's t of each lambda
        u = stratified_times(batch, generator, device).double().clamp(1e-12, 1 - 1e-12)
        lam = -2 * (self.p_mean + self.p_std * torch.special.ndtri(u))
        return time_of_log_snr(schedule, lam).float()

    def eps_weight(self, t: Tensor, schedule: Schedule) -> Tensor:
        sigma2 = (-schedule.log_snr(t)).exp()
        return 1 + sigma2 / self.sigma_data**2


def time_of_log_snr(schedule: Schedule, log_snr: Tensor, iterations: int = 60) -> Tensor:
    """The t in [0, 1] where the schedule's (decreasing) lambda(t) equals `log_snr` (clipped to its range), by
    bisection in float64: schedules have no inverse of their own."""
    target = log_snr.double().clamp(schedule.log_snr_min, schedule.log_snr_max)
    lo, hi = torch.zeros_like(target), torch.ones_like(target)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        above = schedule.log_snr(mid) > target  # lambda(mid) too large: t lies later
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return (lo + hi) / 2
