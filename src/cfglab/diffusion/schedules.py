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

__all__ = ["Schedule", "LinearBeta", "Cosine", "PaperLogSNR", "DiscreteLinearBeta", "SPACINGS"]

SPACINGS = ("uniform", "respaced")
"""How a sampler's N steps are placed in time (`Schedule.time_grid`): uniform in t, or, on a discrete schedule,
guided-diffusion's respacing (DiT's evaluation protocol)."""


def check_grid(steps: int, spacing: str) -> None:
    """Refuse a step count or spacing no grid has (the sampler's settings), naming the key."""
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps={steps} must be an integer >= 1")
    if spacing not in SPACINGS:
        raise ValueError(f"sampler.spacing={spacing!r} must be one of {list(SPACINGS)}")


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

    def time_grid(self, steps: int, spacing: str = "uniform") -> Tensor:
        """The times t_0 = 1 > ... > t_steps = 0 a sampler of `steps` steps visits, float64, (steps + 1,):
        uniform in t ("uniform"; "respaced" is a discrete schedule's)."""
        check_grid(steps, spacing)
        if spacing != "uniform":
            raise ValueError(f"sampler.spacing={spacing!r} needs a discrete schedule (schedule=ddpm_discrete); "
                             f"{type(self).__name__} is continuous: use 'uniform'")
        return torch.linspace(1.0, 0.0, int(steps) + 1, dtype=torch.float64)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_"))
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


class DiscreteLinearBeta(Schedule):
    """DDPM's discrete schedule (Ho et al. 2020): T steps, beta_n = linspace(beta_start, beta_end, T), alpha_bar_n =
    prod_{m <= n} (1 - beta_m), in float64 as DiT's and ADM's code compute it. The schedule of DiT, ADM and
    diffusers' class-conditional models, whose networks take the step index n in {0, ..., T - 1} as their time.

    Continuous time maps to the index by n = t T - 1: t = 1 is the noisiest step n = T - 1, and t = 0 is n = -1,
    the clean data (alpha_bar = 1, log-SNR clipped to log_snr_max, 40 by default so that the final step lands on
    x0 to float32 rounding, as the DDPM and DDIM samplers of ADM, DiT and diffusers do). Between two indices the
    log-SNR is interpolated linearly; samplers visit only whole indices (`time_grid`).

    The noise levels of EDM-style settings (sigma = sqrt((1 - alpha_bar) / alpha_bar), e.g. a guidance interval)
    sit at `timestep_of_sigma(sigma)`; every guidance method reads the log-SNR of the step, not t, so such a
    setting means the same noise levels on every schedule.
    """

    def __init__(self, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 log_snr_min: float = -20.0, log_snr_max: float = 40.0):
        super().__init__(log_snr_min, log_snr_max)
        if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 2:
            raise ValueError(f"schedule.num_steps={num_steps} must be an integer >= 2")
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
        self.num_steps, self.beta_start, self.beta_end = int(num_steps), float(beta_start), float(beta_end)
        betas = torch.linspace(self.beta_start, self.beta_end, self.num_steps, dtype=torch.float64)
        alpha_bar = torch.cumprod(1 - betas, dim=0)
        # log-SNR at n = -1 (clean: the clip's maximum), 0, ..., T - 1
        self._table = torch.cat([torch.tensor([self.log_snr_max], dtype=torch.float64),
                                 torch.log(alpha_bar) - torch.log1p(-alpha_bar)])
        self._tables: dict[str, Tensor] = {}

    def alphas_cumprod(self) -> Tensor:
        """alpha_bar_n for n = 0 ... T - 1, float64, (T,)."""
        return torch.sigmoid(self._table[1:])

    def timestep(self, t: Tensor) -> Tensor:
        """The network's time input n = t T - 1, rounded to the nearest index: samplers visit whole indices only,
        and the rounding removes the float32 error of t."""
        return torch.round(torch.as_tensor(t, dtype=torch.float64) * self.num_steps - 1)

    def timestep_of_sigma(self, sigma: float) -> float:
        """The (fractional) index n whose sqrt((1 - alpha_bar_n) / alpha_bar_n) is `sigma` (EDM's noise level)."""
        lam = -2 * math.log(sigma)
        table = self._table[1:]
        if not float(table[-1]) <= lam <= float(table[0]):
            raise ValueError(f"sigma={sigma} lies outside this schedule's range "
                             f"[{math.exp(-float(table[0]) / 2):.4g}, {math.exp(-float(table[-1]) / 2):.4g}]")
        i = int(torch.searchsorted(-table, torch.tensor(-lam, dtype=torch.float64)))
        i = min(max(i, 1), len(table) - 1)
        return i - 1 + float((table[i - 1] - lam) / (table[i - 1] - table[i]))

    def _log_snr(self, t: Tensor) -> Tensor:
        key = str(t.device)  # a copy of the table on each device asked from: no host round trip per step
        if key not in self._tables:
            self._tables[key] = self._table.to(t.device)
        table = self._tables[key]
        pos = (t.double() * self.num_steps).clamp(0, self.num_steps)  # n + 1 in [0, T]
        lo = pos.floor().long().clamp(max=self.num_steps - 1)
        frac = pos - lo
        return (table[lo] * (1 - frac) + table[lo + 1] * frac).to(t.dtype)

    def time_grid(self, steps: int, spacing: str = "uniform") -> Tensor:
        """Whole indices only: "uniform" takes n_i = round(T - i T / N) - 1 (diffusers' "trailing" spacing, exactly
        uniform in t when N divides T); "respaced" takes guided-diffusion's `space_timesteps(T, [N])`, n_i =
        round(i (T - 1) / (N - 1)) (DiT's 250-step protocol). Both end at t = 0, the clean data."""
        check_grid(steps, spacing)
        steps, T = int(steps), self.num_steps
        if steps > T:
            raise ValueError(f"steps={steps} exceeds the schedule's {T} steps")
        if spacing == "uniform":
            n = [round(T - i * T / steps) - 1 for i in range(steps)]
        else:  # as space_timesteps writes it, the stride summed in floats, so the same indices come out
            stride, cur, n = (T - 1) / (steps - 1) if steps > 1 else 1.0, 0.0, []
            for _ in range(steps):
                n.insert(0, round(cur))
                cur += stride
        return torch.tensor([(k + 1) / T for k in n] + [0.0], dtype=torch.float64)
