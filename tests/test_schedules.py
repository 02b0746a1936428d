import math

import pytest
import torch

from cfglab.diffusion.schedules import Cosine, LinearBeta, PaperLogSNR

SCHEDULES = [LinearBeta(), Cosine(), PaperLogSNR(), PaperLogSNR(log_snr_min=-15, log_snr_max=10)]
T = torch.linspace(0, 1, 2001, dtype=torch.float64)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_variance_preserving(schedule):
    a, s = schedule.alpha(T), schedule.sigma(T)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(T), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.log(a**2 / s**2), schedule.log_snr(T), atol=1e-6, rtol=1e-9)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_log_snr_monotone_and_clipped(schedule):
    lam = schedule.log_snr(T)
    diff = lam[1:] - lam[:-1]
    assert (diff <= 0).all(), "log-SNR must not increase with t"
    inside = (lam[1:] < schedule.log_snr_max) & (lam[:-1] > schedule.log_snr_min)
    assert (diff[inside] < 0).all(), "log-SNR must strictly decrease where it is not clipped"
    assert lam.max() <= schedule.log_snr_max and lam.min() >= schedule.log_snr_min
    assert lam[0] == schedule.log_snr_max  # t = 0 is (almost) clean data
    assert torch.isfinite(lam).all()


def test_paper_schedule_endpoints_and_formula():
    s = PaperLogSNR(log_snr_min=-20, log_snr_max=20)
    torch.testing.assert_close(s.log_snr(torch.tensor([0.0, 1.0], dtype=torch.float64)),
                               torch.tensor([20.0, -20.0], dtype=torch.float64), atol=1e-9, rtol=0)
    b = math.atan(math.exp(-10))
    a = math.atan(math.exp(10)) - b
    assert float(s.log_snr(torch.tensor(0.3, dtype=torch.float64))) == pytest.approx(-2 * math.log(math.tan(a * 0.3 + b)))


def test_linear_beta_matches_discrete_ddpm():
    # Discrete DDPM: alpha_bar_n = prod(1 - beta_i), beta linear in [1e-4, 0.02] over 1000 steps.
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    cont = LinearBeta().alpha(t) ** 2
    # log alpha_bar: sum of log(1 - beta) vs the integral of beta; they differ by sum(beta^2)/2 < 1 %.
    torch.testing.assert_close(cont.log()[99::100], alpha_bar.log()[99::100], rtol=1e-2, atol=1e-4)


def test_cosine_matches_nichol_dhariwal():
    t = torch.linspace(0, 0.99, 50, dtype=torch.float64)
    f = lambda u: torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    torch.testing.assert_close(Cosine().alpha(t) ** 2, (f(t) / f(torch.zeros(1, dtype=torch.float64))).clamp(max=1 - 1e-9),
                               rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("bad", [dict(log_snr_min=5, log_snr_max=5), dict(log_snr_min=10, log_snr_max=-10)])
def test_bad_clip_range(bad):
    with pytest.raises(ValueError, match="log_snr_min"):
        PaperLogSNR(**bad)


def test_bad_linear_betas():
    with pytest.raises(ValueError, match="beta_min"):
        LinearBeta(beta_min=20, beta_max=0.1)
