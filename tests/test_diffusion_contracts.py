"""The diffusion code's smaller contracts: parameter checks and their messages, defaults, reprs (sweep records are
keyed by them), callbacks, precision, empty shards. Each test here was written against a mutant that the exact
references left alive (docs/mutation-testing.md)."""

import pytest
import torch

from cfglab.diffusion.denoiser import GuidedDenoiser
from cfglab.diffusion.guidance import (APG, CFG, CFGPlusPlus, CFGRescale, DynamicThreshold, GuidanceInterval,
                                       ScheduledCFG, check_sampler_guidance)
from cfglab.diffusion.samplers import DDIM, DDPM, DPMSolverPP2M, Paper, Sampler
from cfglab.diffusion.sampling import SamplingSettings, device_of, sample, sample_batch, sample_batches
from cfglab.diffusion.schedules import Cosine, LinearBeta, Schedule
from cfglab.diffusion.targets import Prediction, broadcast, check_target, to_prediction


@pytest.mark.parametrize("make,message", [
    (lambda: GuidanceInterval(sigma_lo=2, sigma_hi=1), "need 0 <= sigma_lo < sigma_hi, got sigma_lo=2"),
    (lambda: GuidanceInterval(sigma_lo=1, sigma_hi=1), "sigma_hi=1"),
    (lambda: ScheduledCFG(shape="exp"), "shape='exp'"),
    (lambda: CFGRescale(phi=2), "phi=2"),
    (lambda: DynamicThreshold(percentile=1.5), "percentile=1.5"),
    (lambda: APG(norm_threshold=0), "norm_threshold=0"),
    (lambda: CFGPlusPlus().check_w(1.5), "w=1.5"),
    (lambda: DDIM(eta=1.5), "eta=1.5"),
    (lambda: Paper(v=1.5), "v=1.5"),
    (lambda: Cosine(s=-1), "s=-1"),
    (lambda: LinearBeta(beta_min=0.0), "beta_min=0.0"),
    (lambda: LinearBeta(beta_min=5.0, beta_max=5.0), "beta_max=5.0"),
    (lambda: SamplingSettings(clip_x0=0), "clip_x0=0"),
    (lambda: GuidedDenoiser(lambda *a: a[0], Cosine(), CFG(), 0.0, null_label=1, clip_x0=0.0), "clip_x0=0.0"),
    (lambda: check_target("score"), "'score'"),
    (lambda: to_prediction(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1), "score"), "'score'"),
])
def test_bad_parameters_are_refused_naming_the_value(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        make()


@pytest.mark.parametrize("make", [lambda: GuidanceInterval(sigma_lo=0.0, sigma_hi=1.0), lambda: Cosine(s=0.0),
                                  lambda: DynamicThreshold(percentile=1.0), lambda: CFGPlusPlus().check_w(1.0),
                                  lambda: Paper(v=1.0), lambda: SamplingSettings(clip_x0=0.5)])
def test_edge_values_are_accepted(make):
    make()


def test_defaults_and_reprs_are_stable():
    """Sweep records are keyed by these reprs: a changed repr would recompute every finished point."""
    assert [DDIM().steps, DDPM().steps, Paper().steps, Paper().v, DPMSolverPP2M().steps] == [50, 250, 256, 0.3, 20]
    assert repr(DDIM(10, eta=0.5)) == "DDIM(steps=10, eta=0.5)"
    assert repr(Cosine()) == "Cosine(log_snr_min=-20.0, log_snr_max=20.0, s=0.008)"
    assert (Schedule().log_snr_min, Schedule().log_snr_max) == (-20.0, 20.0)
    assert repr(CFG()) == "CFG()" and repr(GuidanceInterval()) == "GuidanceInterval(sigma_lo=0.28, sigma_hi=5.42)"


def test_guidance_interval_is_open_below_and_closed_above():
    """sigma = exp(-lambda / 2) is exactly 1 at lambda = 0: guided in (0.5, 1], not in (1, 2]."""
    assert GuidanceInterval(sigma_lo=0.5, sigma_hi=1.0).strength(2.0, 0.5, 0.0) == 2.0
    assert GuidanceInterval(sigma_lo=1.0, sigma_hi=2.0).strength(2.0, 0.5, 0.0) == 0.0


def test_time_dependent_guidance_gets_the_step_time_through_the_denoiser():
    seen = []

    class Spy(ScheduledCFG):
        def strength(self, w, t, log_snr):
            seen.append(t)
            return super().strength(w, t, log_snr)

    den = GuidedDenoiser(lambda x, t, y: x, Cosine(), Spy(), 1.0, null_label=1)
    den(torch.zeros(2, 1), 0.25, torch.zeros(2, dtype=torch.long))
    assert seen == [0.25]


def test_dynamic_threshold_is_per_sample_and_keeps_eps_consistent():
    x0_net = lambda x, t, y: torch.stack([torch.full((4,), 0.5), torch.full((4,), 3.0)])[:len(x)].view(2, 1, 2, 2)  # noqa: E731
    den = GuidedDenoiser(x0_net, Cosine(), DynamicThreshold(), 1.0, null_label=1, target="x0", batched=False)
    x = torch.zeros(2, 1, 2, 2)
    pred = den(x, 0.5, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(pred.x0[0], torch.full((1, 2, 2), 0.5))  # inside [-1, 1]: untouched by the other sample
    torch.testing.assert_close(pred.x0[1], torch.full((1, 2, 2), 1.0))
    alpha, sigma = Cosine().alpha_sigma(torch.tensor([0.5]))
    torch.testing.assert_close(pred.eps, (x - alpha * pred.x0) / sigma)


def test_rescale_and_apg_with_small_predictions():
    """Norms and standard deviations far below 1: the guards against division by zero must not bias them."""
    cond = Prediction(0.01 * torch.arange(8.0).view(2, 1, 2, 2), torch.zeros(2, 1, 2, 2))
    uncond = Prediction(0.005 * torch.arange(8.0).flip(0).view(2, 1, 2, 2), torch.zeros(2, 1, 2, 2))
    x, one = torch.zeros(2, 1, 2, 2), torch.ones(2)
    rescaled = CFGRescale(phi=1.0).combine(cond, uncond, 2.0, x, one, one, {})
    torch.testing.assert_close(rescaled.x0.std(dim=(1, 2, 3)), cond.x0.std(dim=(1, 2, 3)))
    apg = APG(eta=0.0).combine(cond, uncond, 2.0, x, one, one, {})
    diff = cond.x0 - uncond.x0
    unit = cond.x0 / cond.x0.flatten(1).norm(dim=1).view(2, 1, 1, 1)
    par = (diff * unit).sum(dim=(1, 2, 3), keepdim=True) * unit
    torch.testing.assert_close(apg.x0, cond.x0 + 2.0 * (diff - par))


def test_apg_momentum_one_accumulates_every_difference():
    g = APG(eta=1.0, momentum=1.0)
    state, x, one = {}, torch.zeros(1, 1, 1, 2), torch.ones(1)
    for k in (1.0, 2.0):
        cond = Prediction(torch.tensor([[[[1.0, 0.0]]]]), x)
        out = g.combine(cond, Prediction(cond.x0 - k, x), 1.0, x, one, one, state)
    torch.testing.assert_close(out.x0, cond.x0 + 3.0)  # running = 1 * 1 + 2


def test_sampler_guidance_check_assumes_eps_for_samplers_that_do_not_say():
    class Custom(Sampler):  # a user's sampler without the uses_eps attribute
        pass

    check_sampler_guidance(Custom(steps=2), CFGPlusPlus())
    with pytest.raises(ValueError, match=r"CFGPlusPlus re-noises with the unconditional eps, which "
                                         r"DPMSolverPP2M\(steps=2\) does not use: pick a DDIM, DDPM or Paper sampler"):
        check_sampler_guidance(DPMSolverPP2M(steps=2), CFGPlusPlus())


@pytest.mark.parametrize("sampler", [DDIM(3, eta=1.0), DPMSolverPP2M(3)], ids=repr)
def test_samplers_report_each_step_to_the_callback(sampler):
    steps = []
    den = lambda x, t, y: Prediction(torch.zeros_like(x), x)  # noqa: E731
    sampler(den, Cosine(), torch.ones(2, 1), callback=steps.append)
    assert steps == [0, 1, 2]


class Linear(torch.nn.Module):
    """A network with a matrix product, which CPU autocast runs in bf16."""

    sample_shape = (8,)

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 8)
        self.dtypes = []

    def forward(self, x, t, labels):
        out = self.layer(x)
        self.dtypes.append(out.dtype)
        return out


def test_autocast_runs_the_network_only_in_bf16_and_returns_the_input_precision():
    net, x = Linear(), torch.randn(4, 8)
    labels = torch.zeros(4, dtype=torch.long)
    full = GuidedDenoiser(net, Cosine(), CFG(), 0.0, null_label=1)(x, 0.5, labels)
    half = GuidedDenoiser(net, Cosine(), CFG(), 0.0, null_label=1, autocast=torch.bfloat16)(x, 0.5, labels)
    assert net.dtypes == [torch.float32, torch.bfloat16]
    assert full.eps.dtype == half.eps.dtype == torch.float32
    assert not torch.equal(full.eps, half.eps)
    with torch.no_grad():
        torch.testing.assert_close(full.eps, net.layer(x), rtol=0, atol=0)


def test_broadcast_keeps_the_precision_of_x():
    assert broadcast(torch.ones(3, dtype=torch.float64), torch.zeros(3, 2)).dtype == torch.float32


def test_integer_times_are_turned_into_floats():
    torch.testing.assert_close(Cosine().log_snr(torch.tensor([0, 1])), Cosine().log_snr(torch.tensor([0.0, 1.0])))


def test_parameter_free_networks_run_on_the_cpu():
    assert device_of(lambda x, t, y: x) == torch.device("cpu")


class Toy2D(torch.nn.Module):
    sample_shape = (2,)

    def forward(self, x, t, labels):
        return 0.1 * x


def test_batches_of_non_image_data_stay_float_and_empty_shards_are_empty():
    labels = torch.arange(6) % 2
    kw = {"null_label": 2, "batch_size": 4, "seed": 0}
    x, nfe = sample_batch(Toy2D(), Cosine(), DDIM(2), CFG(), labels, w=1.0, index=0, **kw)
    assert x.dtype == torch.float32 and x.shape == (4, 2) and nfe == 4
    counted = []
    both, _ = sample_batches(Toy2D(), Cosine(), DDIM(2), CFG(), labels, w=1.0, progress=counted.append, **kw)
    assert counted == [4, 2] and both.shape == (6, 2)
    empty, nfe = sample_batches(Toy2D(), Cosine(), DDIM(2), CFG(), labels, w=1.0, rank=3, world=4, **kw)
    assert empty.shape == (0, 2) and empty.dtype == torch.get_default_dtype() and nfe == 0.0


def test_empty_image_shards_are_uint8():
    class Images(torch.nn.Module):
        sample_shape = (1, 2, 2)

        def forward(self, x, t, labels):
            return x

    empty, _ = sample_batches(Images(), Cosine(), DDIM(2), CFG(), torch.arange(2), w=0.0, null_label=2, batch_size=2, seed=0,
                              rank=1, world=2)
    assert empty.shape == (0, 1, 2, 2) and empty.dtype == torch.uint8


def test_scheduled_guidance_samples_through_the_sampling_function():
    x, nfe = sample(Toy2D(), Cosine(), DDIM(4), ScheduledCFG(shape="linear"), torch.zeros(3, dtype=torch.long), w=1.0,
                    null_label=2, noise=torch.ones(3, 2))
    # s(t) = 2 (1 + w)(1 - t) = 1 at t = 0.75: w(t) = 0 there, so that step skips the unconditional forward
    assert torch.isfinite(x).all() and nfe == 7
