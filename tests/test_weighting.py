"""Loss weightings against their papers' formulas, written here from the equations (PaperLogSNR's lambda(t) and
its derivative in closed form), and the training objective they define, whatever the network's target."""

import math

import pytest
import torch

from cfglab.diffusion.schedules import Cosine, PaperLogSNR
from cfglab.diffusion.weighting import (EDM, MinSNR, Sigmoid, TruncatedSNR, Uniform, stratified_times,
                                       time_of_log_snr)
from cfglab.lightning.module import CFGDiffusion

SCHEDULE = PaperLogSNR()
B = math.atan(math.exp(-SCHEDULE.log_snr_max / 2))
A = math.atan(math.exp(-SCHEDULE.log_snr_min / 2)) - B
T = torch.tensor([0.05, 0.2, 0.4, 0.5, 0.6, 0.8, 0.95], dtype=torch.float64)
LAM = -2 * torch.log(torch.tan(A * T + B))  # Ho & Salimans 2022, sec. 4
SNR = LAM.exp()
FACTOR = {"eps": torch.ones_like(SNR), "x0": SNR, "v": SNR / (1 + SNR)}  # ||eps err||^2 / ||target err||^2


def test_the_schedule_spans_low_and_high_snr():
    assert SNR.min() < 0.05 and SNR.max() > 20  # both sides of gamma = 5 and of the sigmoid's bias


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_min_snr_weights_are_hang_et_als(target):
    """Hang et al. 2023: min(SNR, gamma) / SNR on eps, min(SNR, gamma) on x0, min(SNR, gamma) / (SNR + 1) on v."""
    gamma = 5.0
    expected = {"eps": torch.minimum(SNR, torch.tensor(gamma)) / SNR, "x0": torch.minimum(SNR, torch.tensor(gamma)),
                "v": torch.minimum(SNR, torch.tensor(gamma)) / (SNR + 1)}[target]
    assert torch.allclose(MinSNR(gamma).weight(T, SCHEDULE, target), expected, rtol=1e-10)


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_sigmoid_weights_are_kingma_and_gaos(target):
    """Kingma & Gao 2023, eq. 3 with w(lambda) = sigmoid(b - lambda) and t ~ U(0, 1): the eps loss's weight is
    w(lambda) (-d lambda / dt), here -d lambda / dt = 4 a / sin(2 (a t + b))."""
    bias = -2.0
    neg_dlam = 4 * A / torch.sin(2 * (A * T + B))
    expected = torch.sigmoid(bias - LAM) * neg_dlam * FACTOR[target]
    assert torch.allclose(Sigmoid(bias).weight(T, SCHEDULE, target), expected, rtol=1e-8)


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_edm_weights_are_karras_et_als(target):
    """Karras et al. 2022, Table 1: lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on the denoiser's
    (x0's) error, with EDM's sigma^2 = 1 / SNR."""
    sd = 0.5
    sigma2 = 1 / SNR
    on_x0 = (sigma2 + sd**2) / (sigma2 * sd**2)
    expected = on_x0 / FACTOR["x0"] * FACTOR[target]
    assert torch.allclose(EDM(sigma_data=sd).weight(T, SCHEDULE, target), expected, rtol=1e-10)


def test_uniform_is_the_targets_own_mean_squared_error():
    assert Uniform().weight(T, SCHEDULE, "v") is None


@pytest.mark.parametrize("schedule", [SCHEDULE, Cosine()])
def test_edm_times_draw_log_sigma_from_its_normal(schedule):
    """ln sigma ~ N(p_mean, p_std^2) (sigma = exp(-lambda / 2)): mean and standard deviation of 4096 stratified draws
    within 3 standard errors of i.i.d. draws (stratified ones are closer still)."""
    n, p_mean, p_std = 4096, -1.2, 1.2
    t = EDM(p_mean, p_std).times(n, schedule, torch.Generator().manual_seed(0), "cpu")
    assert t.shape == (n,) and 0 <= t.min() and t.max() <= 1
    log_sigma = -schedule.log_snr(t.double()) / 2
    assert abs(log_sigma.mean() - p_mean) < 3 * p_std / math.sqrt(n)
    assert abs(log_sigma.std() - p_std) < 3 * p_std / math.sqrt(2 * n)


def test_time_of_log_snr_inverts_the_schedule():
    lam = torch.linspace(-15, 15, 31, dtype=torch.float64)
    for schedule in (SCHEDULE, Cosine()):
        assert torch.allclose(schedule.log_snr(time_of_log_snr(schedule, lam)), lam, atol=1e-8)


class Denoiser(torch.nn.Module):
    """One fixed estimate x0^ = 0.3 x_t + 0.1 (any function would do), output as the target `target` asks."""

    def __init__(self, target):
        super().__init__()
        self.target, self.scale = target, torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x, t, labels):
        lam = SCHEDULE.log_snr(t).reshape(-1, 1, 1, 1)
        alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        x0 = self.scale * x + 0.1
        eps = (x - alpha * x0) / sigma
        return {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}[self.target]


@pytest.mark.parametrize("weighting", [MinSNR(), Sigmoid(), EDM()], ids=repr)
def test_one_estimate_has_one_weighted_loss_whichever_target_outputs_it(weighting):
    """The weighting is of the objective, not of a parameterisation: the same (x0, eps) estimate, output as eps,
    x0 or v, gives the same weighted loss (and the same gradient) at the same draws."""
    x0 = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    labels = torch.zeros(64, dtype=torch.long)
    losses, grads = {}, {}
    for target in ("eps", "x0", "v"):
        module = CFGDiffusion(Denoiser(target), SCHEDULE, num_classes=1, target=target, weighting=weighting)
        loss = module.loss(x0.double(), labels, torch.Generator().manual_seed(2))
        (grads[target],) = torch.autograd.grad(loss, module.net.scale)
        losses[target] = loss.item()
    assert losses["eps"] == pytest.approx(losses["x0"], rel=1e-6) == pytest.approx(losses["v"], rel=1e-6)
    assert grads["eps"].item() == pytest.approx(grads["v"].item(), rel=1e-6)
    # ... which uniform weighting, the target's own error, does not give
    plain = {t: CFGDiffusion(Denoiser(t), SCHEDULE, 1, target=t).loss(x0.double(), labels,
                                                                       torch.Generator().manual_seed(2)).item()
             for t in ("eps", "x0")}
    assert plain["eps"] != pytest.approx(plain["x0"], rel=1e-2)


@pytest.mark.parametrize("target", ["x0", "v"])
def test_truncated_snr_is_salimans_and_hos_max_of_the_x0_and_eps_errors(target):
    """Salimans & Ho 2022, sec. 4: L = max(||x0^ - x0||^2, ||eps^ - eps||^2), written here on the Denoiser's own
    estimates at the module's draws: max(SNR, 1) on x0's error, max(SNR, 1) / (SNR + 1) on v's."""
    expected = {"x0": SNR.clamp(min=1), "v": SNR.clamp(min=1) / (SNR + 1)}[target]
    assert torch.allclose(TruncatedSNR().weight(T, SCHEDULE, target), expected, rtol=1e-10)

    x0 = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(1)).clamp(-1, 1).double()
    module = CFGDiffusion(Denoiser(target), SCHEDULE, num_classes=1, target=target, weighting=TruncatedSNR())
    loss = module.loss(x0, torch.zeros(64, dtype=torch.long), torch.Generator().manual_seed(2)).item()
    g = torch.Generator().manual_seed(2)  # the same draws: stratified times, then the noise
    t = stratified_times(64, g).double()
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    lam = SCHEDULE.log_snr(t).reshape(-1, 1, 1, 1)
    alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
    xt = alpha * x0 + sigma * eps
    x0_hat = 0.3 * xt + 0.1
    eps_hat = (xt - alpha * x0_hat) / sigma
    paper = torch.maximum((x0_hat - x0).pow(2).mean((1, 2, 3)), (eps_hat - eps).pow(2).mean((1, 2, 3))).mean()
    assert loss == pytest.approx(paper.item(), rel=1e-6)


def test_truncated_snr_refuses_an_eps_network():
    with pytest.raises(ValueError, match="weighting=truncated_snr with module.target='eps'"):
        CFGDiffusion(Denoiser("eps"), SCHEDULE, num_classes=1, target="eps", weighting=TruncatedSNR())


@pytest.mark.parametrize("cls, kwargs, message", [
    (MinSNR, {"gamma": 0}, "gamma=0 must be a number > 0"),
    (MinSNR, {"gamma": True}, "gamma=True must be a number > 0"),
    (Sigmoid, {"bias": float("inf")}, "bias=inf must be a finite number"),
    (EDM, {"p_std": 0}, "p_std=0 and sigma_data=0.5 must be > 0"),
    (EDM, {"p_mean": "a"}, "p_mean='a' must be a finite number"),
])
def test_bad_weightings_are_refused(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)
