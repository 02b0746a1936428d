import math

import pytest
import torch

from cfglab.diffusion.samplers import DDIM, DDPM, DPMSolverPP2M, Paper, time_grid
from cfglab.diffusion.schedules import Cosine, LinearBeta, PaperLogSNR
from helpers import gaussian_denoiser

MEAN, STD = 0.7, 0.3
SAMPLERS = [DDIM(steps=7), DDIM(steps=7, eta=0.5), DDPM(steps=7), Paper(steps=7), DPMSolverPP2M(steps=7)]


def run(sampler, schedule=None, n=64, seed=0, shape=(1, 4, 4)):
    schedule = schedule or Cosine()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=g, dtype=torch.float64)
    return sampler(gaussian_denoiser(schedule, MEAN, STD), schedule, x, None, g)


@pytest.mark.parametrize("sampler", SAMPLERS, ids=repr)
def test_deterministic_under_seed_and_shape(sampler):
    a, b, c = run(sampler, seed=1), run(sampler, seed=1), run(sampler, seed=2)
    assert a.shape == (64, 1, 4, 4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("cls", [DDIM, DDPM, Paper, DPMSolverPP2M])
@pytest.mark.parametrize("steps", [1, 2, 13])
def test_any_step_count(cls, steps):
    calls = []
    schedule = Cosine()
    den = gaussian_denoiser(schedule, MEAN, STD)

    def counting(x, t, labels):
        calls.append(t)
        return den(x, t, labels)

    out = cls(steps=steps)(counting, schedule, torch.randn(8, 3, dtype=torch.float64), None, torch.Generator())
    assert out.shape == (8, 3) and torch.isfinite(out).all()
    assert len(calls) == steps and calls[0] == 1.0 and calls == sorted(calls, reverse=True)


def test_ddpm_is_ddim_with_eta_one():
    torch.testing.assert_close(run(DDPM(steps=20)), run(DDIM(steps=20, eta=1.0)))


def test_paper_sampler_v0_is_ddpm():
    torch.testing.assert_close(run(Paper(steps=20, v=0.0)), run(DDPM(steps=20)))


@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match=f"steps={steps}"):
        time_grid(steps)


@pytest.mark.parametrize("bad", [lambda: DDIM(eta=1.5), lambda: Paper(v=-0.1)])
def test_bad_sampler_parameters(bad):
    with pytest.raises(ValueError):
        bad()


def exact_flow_map(schedule, x1):
    """The probability-flow ODE of N(m, s^2) data carries x_1 to m + s (x_1 - alpha_1 m) / sqrt(alpha_1^2 s^2 + sigma_1^2)."""
    a1, s1 = (float(v) for v in schedule.alpha_sigma(torch.tensor(1.0, dtype=torch.float64)))
    return MEAN + STD * (x1 - a1 * MEAN) / math.sqrt(a1**2 * STD**2 + s1**2)


@pytest.mark.parametrize("schedule", [Cosine(), PaperLogSNR(), LinearBeta()], ids=repr)
@pytest.mark.parametrize("sampler, tol", [(DDIM(steps=400), 0.05), (DPMSolverPP2M(steps=100), 0.02)], ids=repr)
def test_deterministic_samplers_follow_the_exact_flow(schedule, sampler, tol):
    x1 = torch.randn(256, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = sampler(gaussian_denoiser(schedule, MEAN, STD), schedule, x1.clone(), None, None)
    torch.testing.assert_close(out, exact_flow_map(schedule, x1), atol=tol * STD, rtol=0)


@pytest.mark.parametrize("sampler", [DDIM(steps=200), DDIM(steps=200, eta=0.5), DDPM(steps=1000), Paper(steps=1000),
                                     DPMSolverPP2M(steps=50)], ids=repr)
def test_samplers_reproduce_the_data_distribution(sampler):
    n = 20_000
    out = run(sampler, n=n, shape=(1,)).flatten()
    # 5 standard errors of the sample mean and of the sample standard deviation (normal data)
    assert abs(out.mean().item() - MEAN) < 5 * STD / math.sqrt(n)
    assert abs(out.std().item() - STD) < 5 * STD / math.sqrt(2 * n) + 3e-3  # + discretisation error
