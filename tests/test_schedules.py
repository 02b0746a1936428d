import math

import numpy as np
import pytest
import torch

from cfglab.diffusion.schedules import Cosine, DiscreteLinearBeta, LinearBeta, PaperLogSNR

SCHEDULES = [LinearBeta(), Cosine(), PaperLogSNR(), PaperLogSNR(log_snr_min=-15, log_snr_max=10), DiscreteLinearBeta()]
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


# -- DDPM's discrete schedule (published models)

def test_discrete_schedule_is_ddpms_alpha_bar_at_whole_steps_and_clean_at_t0():
    betas = np.linspace(1e-4, 0.02, 1000)  # Ho et al. 2020: alpha_bar_n = prod (1 - beta_m), in float64
    alpha_bar = np.cumprod(1 - betas)
    s = DiscreteLinearBeta()
    n = np.array([0, 1, 17, 500, 998, 999])
    alpha, sigma = s.alpha_sigma(torch.tensor((n + 1) / 1000, dtype=torch.float64))
    assert np.allclose(alpha.numpy() ** 2, alpha_bar[n], rtol=1e-12) and np.allclose(sigma.numpy() ** 2, 1 - alpha_bar[n])
    assert s.timestep(torch.tensor((n + 1) / 1000, dtype=torch.float32)).tolist() == n.tolist()
    assert float(s.sigma(torch.tensor(0.0))) < 1e-8  # the last step lands on x0 to float32 rounding


@pytest.mark.parametrize("steps", [7, 10, 50, 250])
def test_uniform_grid_on_the_discrete_schedule_is_diffusers_trailing_spacing(steps):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(timestep_spacing="trailing")
    sched.set_timesteps(steps)
    s = DiscreteLinearBeta()
    grid = s.time_grid(steps)
    assert s.timestep(grid[:-1]).long().tolist() == sched.timesteps.tolist() and grid[-1] == 0
    assert np.allclose(s.alphas_cumprod().numpy(), sched.alphas_cumprod.numpy(), rtol=1e-5)  # theirs: float32


def test_respaced_grid_is_guided_diffusions_space_timesteps_and_refused_on_continuous_schedules():
    s = DiscreteLinearBeta()
    n = s.timestep(s.time_grid(250, "respaced")[:-1]).long().tolist()
    assert len(n) == 250 and n[0] == 999 and n[-1] == 0 and n[-3:] == [8, 4, 0] and n[:3] == [999, 995, 991]
    with pytest.raises(ValueError, match="sampler.spacing='respaced' needs a discrete schedule"):
        LinearBeta().time_grid(10, "respaced")
    with pytest.raises(ValueError, match="exceeds the schedule's 1000 steps"):
        s.time_grid(1001)


def test_a_guidance_interval_guides_the_same_noise_levels_on_the_discrete_schedule():
    from cfglab.diffusion.guidance import GuidanceInterval
    from cfglab.diffusion.samplers import DDIM
    from cfglab.diffusion.sampling import step_strengths

    s, sampler = DiscreteLinearBeta(), DDIM(100)
    alpha_bar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    n = s.timestep(sampler.grid(s)[:-1]).long().numpy()
    sigma_edm = np.sqrt((1 - alpha_bar[n]) / alpha_bar[n])
    guided = np.array(step_strengths(GuidanceInterval(0.28, 5.42), 2.0, s, sampler)) > 0
    assert np.array_equal(guided, (sigma_edm > 0.28) & (sigma_edm <= 5.42)) and 0 < guided.sum() < len(n)
    lo, hi = s.timestep_of_sigma(0.28), s.timestep_of_sigma(5.42)  # the README's conversion to DiT timesteps
    assert np.array_equal(guided, (n > lo) & (n <= hi))
