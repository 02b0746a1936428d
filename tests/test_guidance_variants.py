"""Each guidance method's defining property, on a toy net whose output depends on the label."""

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cfglab.diffusion.denoiser import GuidedDenoiser
from cfglab.diffusion.guidance import (APG, CFG, Autoguidance, CFGPlusPlus, CFGRescale, DynamicThreshold,
                                       GuidanceInterval, ScheduledCFG)
from cfglab.diffusion.sampling import sample
from cfglab.diffusion.samplers import DDIM, DPMSolverPP2M
from cfglab.diffusion.schedules import Cosine
from cfglab.diffusion.targets import Prediction
from helpers import Recorder

SCHEDULE = Cosine()


def at(t, guidance, w=0.0, net=None, labels=None, **kw):
    net = net or Recorder()
    den = GuidedDenoiser(net, SCHEDULE, guidance, w, null_label=10, **kw)
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6) if labels is None else labels
    return den(x, t, y), den, net


def edm_sigma(t):
    """EDM's noise level of time t from alpha alone: x_t / alpha = x0 + (sigma / alpha) eps, sigma^2 = 1 - alpha^2
    (Karras et al. 2022, VP in their notation)."""
    a = float(SCHEDULE.alpha(torch.tensor(t, dtype=torch.float64)))
    return math.sqrt(1 - a * a) / a


def test_interval_outside_is_conditional_without_uncond_call():
    g = GuidanceInterval(sigma_lo=0.5, sigma_hi=2.0)
    t_out, t_in = 0.05, 0.5
    assert not 0.5 < edm_sigma(t_out) <= 2.0 and 0.5 < edm_sigma(t_in) <= 2.0
    pred, den, net = at(t_out, g, 3.0)
    plain, _, _ = at(t_out, CFG(), 0.0)
    torch.testing.assert_close(pred.eps, plain.eps)
    assert den.nfe == 1 and len(net.calls) == 1 and (net.calls[0] != 10).all()
    inside, den_in, _ = at(t_in, g, 3.0)
    torch.testing.assert_close(inside.eps, at(t_in, CFG(), 3.0)[0].eps)
    assert den_in.nfe == 2


def test_interval_counts_network_evaluations_over_a_sampling_run():
    g = GuidanceInterval(sigma_lo=0.5, sigma_hi=2.0)
    den = GuidedDenoiser(Recorder(), SCHEDULE, g, 2.0, null_label=10)
    DDIM(steps=20)(den, SCHEDULE, torch.randn(4, 3), torch.arange(4), None)
    inside = sum(0.5 < edm_sigma(1 - i / 20) <= 2.0 for i in range(20))
    assert 0 < inside < 20 and den.nfe == 20 + inside


@pytest.mark.parametrize("name, steps", [("interval_high", [0, 1, 2, 3, 4]), ("interval_narrow", [3, 4, 5, 6, 7])])
def test_short_interval_configs_guide_five_of_twenty_steps(name, steps):
    g = instantiate(OmegaConf.load(Path(__file__).parents[1] / f"conf/guidance/{name}.yaml"))
    den = GuidedDenoiser(Recorder(), SCHEDULE, g, 1.0, null_label=10)
    nets = []
    DPMSolverPP2M(steps=20)(den, SCHEDULE, torch.randn(4, 3), torch.arange(4), None,
                            callback=lambda i: nets.append(den.nfe))
    guided = [i for i in range(20) if nets[i] - (nets[i - 1] if i else 0) == 2]
    assert guided == steps and den.nfe / 20 == 1.25


def test_samplers_hand_the_step_time_to_the_denoiser_as_a_float():
    """Samplers call the denoiser with the grid's time as a Python float (so time-dependent guidance never reads
    t from the device); the network still receives t as a (B,) tensor on x's device."""
    g = GuidanceInterval(sigma_lo=0.5, sigma_hi=2.0)
    seen, net = [], Recorder()

    class Watched(GuidedDenoiser):
        def __call__(self, x, t, labels):
            seen.append(t)
            return super().__call__(x, t, labels)

    def net_times(x, t, labels):
        assert t.shape == (x.shape[0],) and t.device == x.device and (t == t[0]).all()
        return net(x, t, labels)

    watched = Watched(net_times, SCHEDULE, g, 2.0, null_label=10)
    x, y = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)), torch.arange(4)
    DPMSolverPP2M(steps=10)(watched, SCHEDULE, x, y)
    assert all(type(t) is float for t in seen)
    assert seen == pytest.approx([1 - i / 10 for i in range(10)], abs=1e-12)
    inside = sum(0.5 < edm_sigma(t) <= 2.0 for t in seen)
    assert 0 < inside < 10 and watched.nfe == 10 + inside


def test_rescale_phi_zero_is_cfg():
    a, _, _ = at(0.4, CFGRescale(phi=0.0), 2.5)
    b, _, _ = at(0.4, CFG(), 2.5)
    torch.testing.assert_close(a.x0, b.x0)
    torch.testing.assert_close(a.eps, b.eps, rtol=1e-4, atol=1e-5)


def test_rescale_phi_one_matches_conditional_std():
    net = Recorder()
    pred, _, _ = at(0.4, CFGRescale(phi=1.0), 4.0, net=net)
    cond, _, _ = at(0.4, CFG(), 0.0)
    torch.testing.assert_close(pred.x0.std(dim=(1, 2, 3)), cond.x0.std(dim=(1, 2, 3)), rtol=1e-4, atol=1e-6)


def test_apg_reduces_to_cfg():
    a, _, _ = at(0.4, APG(eta=1.0, norm_threshold=float("inf"), momentum=0.0), 2.0)
    b, _, _ = at(0.4, CFG(), 2.0)
    torch.testing.assert_close(a.x0, b.x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.eps, b.eps, rtol=1e-4, atol=1e-4)


def test_apg_eta_zero_removes_the_parallel_part():
    pred, _, _ = at(0.4, APG(eta=0.0), 2.0)
    cond, _, _ = at(0.4, CFG(), 0.0)
    update = (pred.x0 - cond.x0).flatten(1)
    assert torch.allclose((update * cond.x0.flatten(1)).sum(1), torch.zeros(6), atol=1e-4)


def test_apg_norm_cap():
    pred, _, _ = at(0.4, APG(eta=1.0, norm_threshold=0.01), 1.0)
    cond, _, _ = at(0.4, CFG(), 0.0)
    assert ((pred.x0 - cond.x0).flatten(1).norm(dim=1) <= 0.01 + 1e-5).all()


def test_dynamic_threshold_bounds_x0_and_is_cfg_when_inside():
    pred, _, _ = at(0.9, DynamicThreshold(percentile=0.9), 5.0)
    assert pred.x0.abs().max() <= 1 + 1e-6
    net = lambda x, t, y: 0.1 * torch.tanh(x) + 0.01 * y.float()[:, None, None, None]  # noqa: E731 -- an x0 net, |x0| < 1
    a, _, _ = at(0.05, DynamicThreshold(), 1.0, net=net, target="x0")
    b, _, _ = at(0.05, CFG(), 1.0, net=net, target="x0")
    assert a.x0.abs().max() < 1
    torch.testing.assert_close(a.x0, b.x0)


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_weight_schedules_follow_the_paper(shape):
    """Wang et al. 2024 schedule the scale s of eps_u + s (eps_c - eps_u): s(t) = 2 s (1 - t) or s (1 + cos(pi t)),
    whose mean over t is the static s = 1 + w; the strength used here is w(t) = s(t) - 1."""
    w = 3.0
    s = 1 + w
    paper = {"linear": lambda t: 2 * s * (1 - t), "cosine": lambda t: s * (1 + math.cos(math.pi * t))}[shape]
    g = ScheduledCFG(shape=shape)
    ts = torch.linspace(0, 1, 10001, dtype=torch.float64)
    for t in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert 1 + g.strength(w, t, 0.0) == pytest.approx(paper(t), abs=1e-12)
    scales = torch.tensor([1 + g.strength(w, float(t), 0.0) for t in ts])
    assert float(torch.trapezoid(scales, ts)) == pytest.approx(s, rel=1e-6)
    assert ScheduledCFG(shape="constant").strength(3.0, 0.3, 0.0) == 3.0


def test_scheduled_guidance_starts_from_the_unconditional_prediction():
    cond = Prediction(torch.ones(2, 3), torch.zeros(2, 3))
    uncond = Prediction(torch.full((2, 3), 5.0), torch.ones(2, 3))
    g = ScheduledCFG(shape="linear")
    w = g.strength(2.0, 1.0, 0.0)
    assert g.needs_uncond(w)
    out = g.combine(cond, uncond, w, torch.zeros(2, 3), torch.ones(2), torch.ones(2), {})
    torch.testing.assert_close(out.x0, uncond.x0)


def test_cfgpp_lambda_zero_is_unconditional_ddim():
    schedule, net = Cosine(), Recorder()
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    guided = DDIM(steps=10)(GuidedDenoiser(net, schedule, CFGPlusPlus(), 0.0, null_label=10), schedule, x, torch.arange(6))
    uncond = DDIM(steps=10)(GuidedDenoiser(net, schedule, CFG(), 0.0, null_label=10), schedule, x, None)
    torch.testing.assert_close(guided, uncond)


def test_cfgpp_renoises_with_uncond_and_needs_an_eps_sampler():
    pred, _, net = at(0.4, CFGPlusPlus(), 0.5)
    uncond, _, _ = at(0.4, CFG(), labels=torch.full((6,), 10))
    torch.testing.assert_close(pred.eps, uncond.eps)
    with pytest.raises(ValueError, match="DPMSolverPP2M"):
        sample(Recorder(), SCHEDULE, DPMSolverPP2M(steps=2), CFGPlusPlus(), torch.arange(2), w=0.5, null_label=10)
    with pytest.raises(ValueError, match="lambda w=1.5"):
        CFGPlusPlus().check_w(1.5)


def test_autoguidance_guides_with_the_weak_model_on_the_same_label():
    good, bad = Recorder(), Recorder()
    bad_fn = lambda x, t, y: 0.5 * bad(x, t, y)  # noqa: E731
    pred, den, _ = at(0.4, Autoguidance(), 2.0, net=good, guide_net=bad_fn)
    assert (bad.calls[0] == torch.arange(6)).all() and (good.calls[0] == torch.arange(6)).all()
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.full((6,), 0.4)
    torch.testing.assert_close(pred.eps, good(x, t, torch.arange(6)) * 3 - 2 * bad_fn(x, t, torch.arange(6)))
    assert den.nfe == 2


@pytest.mark.parametrize("bad", [lambda: GuidanceInterval(sigma_lo=2, sigma_hi=1), lambda: CFGRescale(phi=2),
                                 lambda: DynamicThreshold(percentile=0), lambda: ScheduledCFG(shape="exp"),
                                 lambda: APG(norm_threshold=0), lambda: APG().check_w(-1)])
def test_bad_variant_settings(bad):
    with pytest.raises(ValueError):
        bad()
