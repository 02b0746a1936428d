"""Samplers and guidance methods against references written in this file from the papers' equations.

One step: given x_t and an oracle that knows x0, the mean and variance of x_s over many draws (Ho et al. 2020,
eq. 6-7; Song et al. 2021, eq. 12 and 16; Ho & Salimans 2022, sec. 4), at early, middle and final steps.
A few guided steps: for Gaussian data the guided sampler is affine in x_t, so the mean and variance of its output
are propagated exactly step by step. Per sample: the guided probability-flow ODE of a 2-D Gaussian mixture,
integrated by scipy. Variants: CFG++ (Chung et al. 2024), APG (Sadat et al. 2024), clipping (Ho et al. 2020).

Notation of the tests: abar(t) = alpha(t)^2 (DDPM's cumulative product), s < t the next grid time.
Tolerances: 5 standard errors of the statistic for the number of draws.
"""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from cfglab.diffusion.denoiser import GuidedDenoiser
from cfglab.diffusion.guidance import APG, CFG, CFGPlusPlus
from cfglab.diffusion.samplers import DDIM, DDPM, DPMSolverPP2M, Paper
from cfglab.diffusion.sampling import sample
from cfglab.diffusion.schedules import Cosine
from cfglab.diffusion.targets import Prediction

SCHEDULE = Cosine()
F64 = torch.float64


def abar(t: float) -> float:
    return float(SCHEDULE.alpha(torch.tensor(t, dtype=F64))) ** 2


def grid(steps: int) -> list[float]:
    return [1 - i / steps for i in range(steps + 1)]


def reference_step(sampler, t: float, s: float, x_t, x0):
    """Mean and variance of x_s given x_t and the x0 estimate, from the papers (not from cfglab's code)."""
    a_t, a_s = abar(t), abar(s)
    beta = 1 - a_t / a_s  # variance of q(x_t | x_s)
    beta_tilde = (1 - a_s) / (1 - a_t) * beta  # variance of q(x_s | x_t, x0), Ho et al. eq. 7
    posterior_mean = math.sqrt(a_s) * beta / (1 - a_t) * x0 + math.sqrt(a_t / a_s) * (1 - a_s) / (1 - a_t) * x_t
    if isinstance(sampler, DDIM):  # Song et al. eq. 12, with sigma_t(eta)^2 = eta^2 beta_tilde (eq. 16)
        var = sampler.eta**2 * beta_tilde
        eps = (x_t - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
        return math.sqrt(a_s) * x0 + math.sqrt(1 - a_s - var) * eps, var
    if isinstance(sampler, Paper):  # Ho & Salimans sec. 4: posterior mean, variance beta_tilde^(1-v) beta^v
        return posterior_mean, beta_tilde ** (1 - sampler.v) * beta**sampler.v
    assert isinstance(sampler, DDPM)  # Ho et al. Alg. 2: the posterior mean and variance
    return posterior_mean, beta_tilde


class Oracle:
    """A denoiser that knows x0: returns it with the eps that makes x_t = alpha x0 + sigma eps, and keeps every
    x_t it is called with (so x_s of step i is the input of call i + 1)."""

    def __init__(self, x0: torch.Tensor):
        self.x0, self.seen = x0, []

    def __call__(self, x, t, labels):
        self.seen.append(x.clone())
        alpha, sigma = (float(v) for v in SCHEDULE.alpha_sigma(torch.tensor(t, dtype=F64)))
        return Prediction(self.x0.expand_as(x), (x - alpha * self.x0) / sigma)


def check_moments(residual: torch.Tensor, var: float, what: str) -> None:
    """residual = x_s - reference mean: zero mean and variance `var`, within 5 standard errors."""
    n = residual.numel()
    if var == 0:
        assert float(residual.abs().max()) < 1e-9, what
        return
    assert abs(float(residual.mean())) < 5 * math.sqrt(var / n), what
    assert abs(float(residual.var()) / var - 1) < 5 * math.sqrt(2 / (n - 1)), what


STEPS = 10
ONE_STEP = [DDIM(STEPS), DDIM(STEPS, eta=0.5), DDIM(STEPS, eta=1.0), DDPM(STEPS), Paper(STEPS, v=0.0),
            Paper(STEPS, v=0.3), Paper(STEPS, v=1.0)]


@pytest.mark.parametrize("sampler", ONE_STEP, ids=repr)
def test_one_step_moments_match_the_papers(sampler):
    x0 = torch.linspace(-0.8, 0.8, 5, dtype=F64)  # a different clean value per coordinate
    oracle = Oracle(x0)
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(40_000, 5, generator=g, dtype=F64)
    final = sampler(oracle, SCHEDULE, x1, None, g)
    ts = grid(STEPS)
    for i in (0, 2, 5, 8, STEPS - 1):  # the first step from pure noise, middle ones, and the final step to t = 0
        x_t = oracle.seen[i]
        x_s = oracle.seen[i + 1] if i + 1 < STEPS else final
        mean, var = reference_step(sampler, ts[i], ts[i + 1], x_t, x0)
        check_moments(x_s - mean, 0.0 if i == STEPS - 1 else var, f"step {i}: t={ts[i]:.2f} -> {ts[i + 1]:.2f}")


def gaussian_x0(x, alpha, sigma, mu, s2):
    """E[x0 | x_t] for x0 ~ N(mu, s2): mu + alpha s2 / (alpha^2 s2 + sigma^2) (x_t - alpha mu)."""
    return mu + alpha * s2 / (alpha**2 * s2 + sigma**2) * (x - alpha * mu)


MU_C, S2_C, MU_U, S2_U = 0.6, 0.09, 0.0, 0.5  # the class and the unconditional distribution, both Gaussian


class TwoGaussians(torch.nn.Module):
    """The exact eps network of Gaussian data: label 0 is N(MU_C, S2_C), label 1 (the null label) N(MU_U, S2_U)."""

    sample_shape = (1,)

    def forward(self, x, t, labels):
        alpha, sigma = (v.to(x.dtype)[:, None] for v in SCHEDULE.alpha_sigma(t.to(F64)))
        cond = labels[:, None] == 0
        x0 = torch.where(cond, gaussian_x0(x, alpha, sigma, MU_C, S2_C), gaussian_x0(x, alpha, sigma, MU_U, S2_U))
        return (x - alpha * x0) / sigma


def propagated_moments(sampler, w: float, steps: int) -> tuple[float, float]:
    """Mean and variance of the guided sampler's output from x_1 ~ N(0, 1): each step maps x_t to A x_t + B plus
    noise of variance V, with the guided x0 estimate (1 + w) x0_c - w x0_u affine in x_t."""
    m, v = 0.0, 1.0
    ts = grid(steps)
    for i in range(steps):
        alpha, sigma = math.sqrt(abar(ts[i])), math.sqrt(1 - abar(ts[i]))
        # guided x0 = P x_t + Q
        kc, ku = (alpha * s2 / (alpha**2 * s2 + sigma**2) for s2 in (S2_C, S2_U))
        p = (1 + w) * kc - w * ku
        q = (1 + w) * MU_C * (1 - alpha * kc) - w * MU_U * (1 - alpha * ku)
        b, var = reference_step(sampler, ts[i], ts[i + 1], 0.0, q)  # the map at x_t = 0 ...
        a = reference_step(sampler, ts[i], ts[i + 1], 1.0, p + q)[0] - b  # ... and its slope
        m, v = a * m + b, a * a * v + (var if i < steps - 1 else 0.0)
    return m, v


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("w", [0.0, 3.0])
@pytest.mark.parametrize("sampler_cls,kw", [(DDPM, {}), (DDIM, {}), (DDIM, {"eta": 0.5}), (Paper, {"v": 0.3}),
                                            (Paper, {"v": 1.0})])
def test_few_guided_steps_match_exact_moment_propagation(sampler_cls, kw, w, steps):
    sampler = sampler_cls(steps, **kw)
    n = 200_000
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(n, 1, generator=g, dtype=F64)
    x, nfe = sample(TwoGaussians(), SCHEDULE, sampler, CFG(), torch.zeros(n, dtype=torch.long), w=w, null_label=1,
                    generator=g, noise=noise)
    m, v = propagated_moments(sampler, w, steps)
    assert x.dtype == F64 and nfe == steps * (2 if w else 1)
    assert abs(float(x.mean()) - m) < 5 * math.sqrt(v / n), (float(x.mean()), m)
    assert abs(float(x.var()) / v - 1) < 5 * math.sqrt(2 / (n - 1)), (float(x.var()), v)


# The 2-D ring mixture: four isotropic components, equal weights.
ANGLES = np.arange(4) * np.pi / 2
MEANS = 2.0 * np.stack([np.cos(ANGLES), np.sin(ANGLES)], 1)
S2 = 0.35**2


def mixture_x0(x: np.ndarray, alpha: float, sigma: float, label: int) -> np.ndarray:
    """E[x0 | x_t] of component `label`, or of the whole mixture for label 4 (responsibility-weighted)."""
    per = MEANS[None] + alpha * S2 / (alpha**2 * S2 + sigma**2) * (x[:, None] - alpha * MEANS[None])  # (N, K, 2)
    if label < 4:
        return per[:, label]
    logits = -((x[:, None] - alpha * MEANS[None]) ** 2).sum(-1) / (2 * (alpha**2 * S2 + sigma**2))
    r = np.exp(logits - logits.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    return (r[..., None] * per).sum(1)


class MixtureNet(torch.nn.Module):
    sample_shape = (2,)

    def forward(self, x, t, labels):
        alpha, sigma = (float(v) for v in SCHEDULE.alpha_sigma(t[:1].to(F64)))
        xn, out = x.numpy(), np.empty(x.shape)
        for k in range(5):
            rows = labels.numpy() == k
            out[rows] = (xn[rows] - alpha * mixture_x0(xn[rows], alpha, sigma, k)) / sigma
        return torch.from_numpy(out)


def ode_reference(x1: np.ndarray, labels: np.ndarray, w: float) -> np.ndarray:
    """x_0 of the guided probability-flow ODE, in lambda = log-SNR: with alpha^2 = sigmoid(lambda),
    dx/dlambda = (sigma^2 x - sigma eps~(x)) / 2, eps~ = (1 + w) eps_c - w eps_u (Song et al. 2021, DDIM sec. 4.3)."""
    lam = [float(SCHEDULE.log_snr(torch.tensor(t, dtype=F64))) for t in (1.0, 0.0)]
    out = np.empty_like(x1)
    for i, (x, c) in enumerate(zip(x1, labels)):
        def rhs(lmb, y):
            alpha, sigma = math.sqrt(1 / (1 + math.exp(-lmb))), math.sqrt(1 / (1 + math.exp(lmb)))
            eps = [(y - alpha * mixture_x0(y[None], alpha, sigma, k)[0]) / sigma for k in (c, 4)]
            return 0.5 * (sigma**2 * y - sigma * ((1 + w) * eps[0] - w * eps[1]))

        out[i] = solve_ivp(rhs, lam, x, rtol=1e-10, atol=1e-12, method="DOP853").y[:, -1]
    return out


def test_guided_samplers_follow_the_mixture_ode_per_sample():
    w, n = 2.0, 24
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(n, 2, generator=g, dtype=F64)
    labels = torch.arange(n) % 4
    ref = torch.from_numpy(ode_reference(x1.numpy(), labels.numpy(), w))

    def error(sampler):
        x, _ = sample(MixtureNet(), SCHEDULE, sampler, CFG(), labels, w=w, null_label=4, noise=x1.clone())
        return float((x - ref).norm(dim=1).max())

    ddim = [error(DDIM(n)) for n in (100, 200, 400)]
    dpm = [error(DPMSolverPP2M(n)) for n in (100, 200, 400)]
    assert ddim[-1] < 5e-3 and dpm[-1] < 1e-4, (ddim, dpm)
    # each halving of the step size divides the error by 2 (DDIM, first order) or by 2^2 or a little more
    # (DPM-Solver++(2M): second order, its first-order end steps still shrinking at these step counts)
    assert all(1.8 < a / b < 2.2 for a, b in zip(ddim, ddim[1:])), ddim
    assert all(3.5 < a / b < 8 for a, b in zip(dpm, dpm[1:])), dpm


def test_dpm_solver_skips_steps_of_zero_length():
    """Clipping log-SNR at -5 makes the first grid times share one lambda (h = 0 there)."""
    schedule = Cosine(log_snr_min=-5.0)
    lam = schedule.log_snr(torch.linspace(1, 0, 51, dtype=F64))
    flat = int((lam[1:] == lam[:-1]).sum())
    assert flat >= 2  # two zero-length steps in a row: a division by zero, then NaN, before the fix
    calls = []

    def denoiser(x, t, labels):
        calls.append(t)
        alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(t, dtype=F64)))
        x0 = gaussian_x0(x, alpha, sigma, MU_C, S2_C)
        return Prediction(x0, (x - alpha * x0) / sigma)

    x1 = torch.linspace(-2, 2, 9, dtype=F64)[:, None]
    x = DPMSolverPP2M(50)(denoiser, schedule, x1.clone())
    assert torch.isfinite(x).all() and len(calls) == 50 - flat
    # the exact flow of N(MU_C, S2_C) from lambda = -5: y = x / alpha moves along eps, d y / d rho = eps (rho =
    # sigma / alpha), which for Gaussian data gives y(rho) - mu = (y_1 - mu) sqrt((s2 + rho^2) / (s2 + rho_1^2))
    a1, s1 = (float(v) for v in schedule.alpha_sigma(torch.tensor(1.0, dtype=F64)))
    a0, s0 = (float(v) for v in schedule.alpha_sigma(torch.tensor(0.0, dtype=F64)))
    rho1, rho0 = s1 / a1, s0 / a0
    exact = a0 * (MU_C + (x1 / a1 - MU_C) * math.sqrt((S2_C + rho0**2) / (S2_C + rho1**2)))
    assert float((x - exact).abs().max()) < 1e-3


def test_clipped_ddpm_step_is_the_posterior_mean_of_the_clipped_x0():
    """Ho et al. 2020's sampler clips x0 to [-1, 1] and steps to the posterior mean q(x_s | x_t, clip(x0))."""

    class Overshooting(torch.nn.Module):  # its x0 estimate 1.5 tanh(3 x_t) leaves [-1, 1]
        def forward(self, x, t, labels):
            alpha, sigma = (v.to(x.dtype)[:, None] for v in SCHEDULE.alpha_sigma(t.to(F64)))
            return (x - alpha * 1.5 * torch.tanh(3 * x)) / sigma

    den = GuidedDenoiser(Overshooting(), SCHEDULE, CFG(), 0.0, null_label=1, clip_x0=1.0)
    seen = []

    def recording(x, t, labels):
        seen.append(x.clone())
        return den(x, t, labels)

    g = torch.Generator().manual_seed(4)
    sampler = DDPM(STEPS)
    final = sampler(recording, SCHEDULE, torch.randn(100_000, 1, generator=g, dtype=F64), None, g)
    ts = grid(STEPS)
    for i in (3, 7, STEPS - 1):
        x_t = seen[i]
        x_s = seen[i + 1] if i + 1 < STEPS else final
        assert (1.5 * torch.tanh(3 * x_t)).abs().max() > 1.2  # clipping is active
        mean, var = reference_step(sampler, ts[i], ts[i + 1], x_t, (1.5 * torch.tanh(3 * x_t)).clamp(-1, 1))
        check_moments(x_s - mean, 0.0 if i == STEPS - 1 else var, f"step {i}")


@pytest.mark.parametrize("lam", [0.3, 0.8])
@pytest.mark.parametrize("clip", [None, 0.5])
def test_ddim_cfgpp_trajectory_matches_the_paper(lam, clip):
    """DDIM-CFG++ (Chung et al. 2024, Alg. 1): x0 from eps_u + lam (eps_c - eps_u), re-noised with eps_u:
    x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) eps_u. With clipping, x0 is clipped and eps_u kept."""
    net, steps = TwoGaussians(), 20
    x1 = torch.linspace(-3, 3, 41, dtype=F64)[:, None]
    labels = torch.zeros(len(x1), dtype=torch.long)
    x = x1.clone()
    ts = grid(steps)
    for i in range(steps):
        t = torch.full((len(x),), ts[i], dtype=F64)
        eps_c, eps_u = net(x, t, labels), net(x, t, labels + 1)
        eps_lam = eps_u + lam * (eps_c - eps_u)
        x0 = (x - math.sqrt(1 - abar(ts[i])) * eps_lam) / math.sqrt(abar(ts[i]))
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        x = math.sqrt(abar(ts[i + 1])) * x0 + math.sqrt(1 - abar(ts[i + 1])) * eps_u
    out, _ = sample(net, SCHEDULE, DDIM(steps), CFGPlusPlus(), labels, w=lam, null_label=1, noise=x1.clone(),
                    clip_x0=clip)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-10)


class Toy(torch.nn.Module):
    """A deterministic eps network on 1x4x4 images whose output depends on the label."""

    sample_shape = (1, 4, 4)

    def forward(self, x, t, labels):
        shape = (-1, 1, 1, 1)
        return torch.tanh(x + 0.3 * labels.to(x.dtype).view(shape)) * (1 + 0.1 * t.view(shape)) + 0.05 * labels.view(shape)


@pytest.mark.parametrize("eta,norm_threshold,momentum", [(0.0, 0.5, -0.5), (0.3, float("inf"), 0.4), (1.0, 0.2, 0.0)])
def test_apg_over_ddim_steps_matches_the_paper(eta, norm_threshold, momentum):
    """APG (Sadat et al. 2024, Alg. 1) on the denoised estimate D: diff = D_c - D_u, running = momentum * running +
    diff, diff = running, diff *= min(1, r / ||diff||), split into parts parallel and orthogonal to D_c,
    D = D_c + (s - 1) (orth + eta par) with s - 1 = w; then a DDIM step (eta = 0) from D."""
    w, steps, net = 2.0, 8, Toy()
    x1 = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    labels = torch.arange(6) % 3
    x, running = x1.clone(), torch.zeros_like(x1)
    ts = grid(steps)
    dims = (-1, -2, -3)
    for i in range(steps):
        a_t, a_s = abar(ts[i]), abar(ts[i + 1])
        t = torch.full((len(x),), ts[i], dtype=F64)
        d_c, d_u = ((x - math.sqrt(1 - a_t) * net(x, t, y)) / math.sqrt(a_t) for y in (labels, torch.full_like(labels, 3)))
        running = momentum * running + (d_c - d_u)
        diff = running
        if math.isfinite(norm_threshold):
            diff = diff * torch.clamp(norm_threshold / torch.linalg.vector_norm(diff, dim=dims, keepdim=True), max=1.0)
        unit = d_c / torch.linalg.vector_norm(d_c, dim=dims, keepdim=True)
        par = (diff * unit).sum(dim=dims, keepdim=True) * unit
        d = d_c + w * ((diff - par) + eta * par)
        eps = (x - math.sqrt(a_t) * d) / math.sqrt(1 - a_t)
        x = math.sqrt(a_s) * d + math.sqrt(1 - a_s) * eps
    out, _ = sample(net, SCHEDULE, DDIM(steps), APG(eta=eta, norm_threshold=norm_threshold, momentum=momentum),
                    labels, w=w, null_label=3, noise=x1.clone())
    torch.testing.assert_close(out, x, rtol=0, atol=1e-9)


def test_float64_sampling_stays_float64_at_the_network_boundary():
    """A float32 cast of the network's output would round eps to about 1e-8 relative."""
    den = GuidedDenoiser(TwoGaussians(), SCHEDULE, CFG(), 1.5, null_label=1)
    x = torch.linspace(-2, 2, 11, dtype=F64)[:, None] + 1e-9
    pred = den(x, 0.4, torch.zeros(11, dtype=torch.long))
    alpha, sigma = math.sqrt(abar(0.4)), math.sqrt(1 - abar(0.4))
    x0 = 2.5 * gaussian_x0(x, alpha, sigma, MU_C, S2_C) - 1.5 * gaussian_x0(x, alpha, sigma, MU_U, S2_U)
    assert pred.x0.dtype == F64
    torch.testing.assert_close(pred.x0, x0, rtol=1e-13, atol=1e-13)
