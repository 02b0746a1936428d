"""Samplers and guidance verified against exact answers: Gaussian-mixture scores and the probability-flow ODE."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from cfglab.data.gmm import ExactGMMModel, GaussianMixtureDataModule, ring_mixture
from cfglab.diffusion.denoiser import GuidedDenoiser
from cfglab.diffusion.guidance import CFG
from cfglab.diffusion.samplers import DDIM, DDPM, DPMSolverPP2M, Paper
from cfglab.diffusion.schedules import Cosine
from helpers import sample_module

SCHEDULE = Cosine()


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| (Székely & Rizzo): zero iff the distributions agree."""
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


# The 1,000-step runs are slow; the one-step and few-step references (test_sampler_references.py) test the same
# samplers more sharply in the fast part.
SLOW = pytest.mark.slow


@pytest.mark.parametrize("sampler", [DDIM(steps=200), DDIM(steps=200, eta=0.5),
                                     pytest.param(DDPM(steps=1000), marks=SLOW), pytest.param(Paper(steps=1000), marks=SLOW),
                                     DPMSolverPP2M(steps=50)], ids=repr)
def test_unguided_samplers_reproduce_the_mixture(sampler):
    mix = ring_mixture()
    n = 4000
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % mix.num_classes
    den = GuidedDenoiser(ExactGMMModel(mix, SCHEDULE), SCHEDULE, CFG(), 0.0, null_label=mix.num_classes)
    x = sampler(den, SCHEDULE, torch.randn(n, 2, generator=g, dtype=torch.float64), labels, g)
    truth = mix.sample(labels, torch.Generator().manual_seed(1))
    other = mix.sample(labels, torch.Generator().manual_seed(2))
    for k in range(mix.num_classes):
        xs, m = x[labels == k], len(labels[labels == k])
        std = math.sqrt(float(mix.covs[k, 0, 0]))
        assert (xs.mean(0) - mix.means[k]).abs().max() < 5 * std / math.sqrt(m)
        cov = torch.cov(xs.T)
        assert (cov - mix.covs[k]).abs().max() < 5 * std**2 * math.sqrt(2 / m) + 2e-3  # + discretisation
    # the two-sample statistic against exact samples, compared with its size between two exact samples
    null = energy_distance(truth, other)
    assert energy_distance(x, truth) < 3 * null + 1e-3


def test_unconditional_sampling_keeps_mixture_weights():
    mix = ring_mixture()
    n = 4000
    g = torch.Generator().manual_seed(0)
    den = GuidedDenoiser(ExactGMMModel(mix, SCHEDULE), SCHEDULE, CFG(), 3.0, null_label=mix.num_classes)
    x = DDIM(steps=100)(den, SCHEDULE, torch.randn(n, 2, generator=g, dtype=torch.float64), None, g)
    assert den.nfe == 100  # no label: one forward per step, whatever w is
    frac = torch.bincount(mix.log_posterior(x).argmax(1), minlength=4).double() / n
    truth = mix.sample(mix.sample_labels(n, torch.Generator().manual_seed(1)), torch.Generator().manual_seed(2))
    frac_true = torch.bincount(mix.log_posterior(truth).argmax(1), minlength=4).double() / n
    assert (frac - frac_true).abs().max() < 5 * math.sqrt(2 * 0.25 * 0.75 / n)


# Single Gaussian class N(MU_C, S_C^2) guided against a Gaussian unconditional N(MU_U, S_U^2), in 1-D.
MU_C, S_C, MU_U, S_U, W = 1.0, 0.5, 0.0, 1.0, 1.0


class TwoGaussians(torch.nn.Module):
    """Exact eps for label 0 (the class) and label 1 (null: the unconditional Gaussian): eps = (y - mu) rho / (s^2 + rho^2)
    with y = x / alpha and rho = sigma / alpha."""

    def forward(self, x, t, labels):
        alpha, sigma = (v.to(x.dtype)[:, None] for v in SCHEDULE.alpha_sigma(t.double()))
        rho, y = sigma / alpha, x / alpha
        mu = torch.where(labels[:, None] == 0, MU_C, MU_U).to(x.dtype)
        s2 = torch.where(labels[:, None] == 0, S_C**2, S_U**2).to(x.dtype)
        return (y - mu) * rho / (s2 + rho**2)


def exact_guided_map():
    """The guided probability-flow ODE dy/drho = eps~(y) (Song et al. 2021, DDIM eq. 14) is linear in y:
    y(rho) = a(rho) y_1 + b(rho). Integrate a and b from t = 1 to t = 0 with scipy; return x_0 = A x_1 + B."""
    a1, s1 = (float(v) for v in SCHEDULE.alpha_sigma(torch.tensor(1.0, dtype=torch.float64)))
    a0, s0 = (float(v) for v in SCHEDULE.alpha_sigma(torch.tensor(0.0, dtype=torch.float64)))

    def rhs(u, ab):  # u = log rho
        rho = math.exp(u)
        kc, ku = rho / (S_C**2 + rho**2), rho / (S_U**2 + rho**2)
        p = (1 + W) * kc - W * ku
        q = -(1 + W) * MU_C * kc + W * MU_U * ku
        return [rho * p * ab[0], rho * (p * ab[1] + q)]

    sol = solve_ivp(rhs, (math.log(s1 / a1), math.log(s0 / a0)), [1.0, 0.0], rtol=1e-12, atol=1e-14, method="DOP853")
    a, b = sol.y[:, -1]
    return a0 * a / a1, a0 * b  # x0 = alpha_0 (a x_1 / alpha_1 + b)


def guided_samples(sampler, x1):
    den = GuidedDenoiser(TwoGaussians(), SCHEDULE, CFG(), W, null_label=1)
    return sampler(den, SCHEDULE, x1.clone(), torch.zeros(len(x1), dtype=torch.long), None)


def test_guided_ddim_matches_the_integrated_probability_flow():
    A, B = exact_guided_map()
    x1 = torch.randn(20_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x0 = guided_samples(DDIM(steps=500), x1)
    # the exact guided distribution from x_1 ~ N(0, 1): N(B, A^2); compare with sampling tolerance and per sample
    # sampling error (5 standard errors) plus DDIM's discretisation error (first order, ~2 % of A at 500 steps)
    n = len(x1)
    assert abs(float(x0.mean()) - B) < 5 * abs(A) / math.sqrt(n) + 0.03 * abs(A)
    assert abs(float(x0.var()) / A**2 - 1) < 5 * math.sqrt(2 / n) + 0.03
    assert float((x0 - (A * x1 + B)).abs().max()) < 0.05 * abs(A)
    # guidance narrows the class and pushes it away from the unconditional mean
    assert A**2 < S_C**2 and B > MU_C


def convergence_order(sampler_cls, steps):
    A, B = exact_guided_map()
    x1 = torch.linspace(-3, 3, 61, dtype=torch.float64)[:, None]
    errs = [float((guided_samples(sampler_cls(steps=n), x1) - (A * x1 + B)).abs().max()) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    return slope, errs


def test_ddim_is_first_order():
    slope, errs = convergence_order(DDIM, [50, 100, 200, 400])
    assert errs[-1] < errs[0] and 0.8 < slope < 1.4, (slope, errs)


def test_dpm_solver_pp_2m_is_second_order():
    slope, errs = convergence_order(DPMSolverPP2M, [50, 100, 200, 400])
    assert errs[-1] < errs[0] and 1.6 < slope < 2.6, (slope, errs)


@pytest.mark.slow  # trains a model
def test_learned_mlp_agrees_with_the_exact_model_under_the_same_noise(tmp_path):
    import lightning as L

    from cfglab.lightning.module import CFGDiffusion
    from cfglab.models.mlp import MLP

    L.seed_everything(0)
    dm = GaussianMixtureDataModule(num_samples=20_000, batch_size=512)
    # v-prediction: x0 = alpha x - sigma v stays finite at t = 1, where eps-prediction divides by alpha ~ 1e-5
    module = CFGDiffusion(MLP(2, 4, hidden=128, depth=3), SCHEDULE, num_classes=4, target="v", p_uncond=0.2,
                          lr=3e-3, warmup_steps=50)
    trainer = L.Trainer(max_steps=1500, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    exact = ExactGMMModel(dm.mixture, SCHEDULE)
    labels = torch.arange(2000) % 4
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(3))
    learned, ref = {}, {}
    for w in (0.0, 2.0):
        learned[w] = sample_module(module, labels, DDIM(steps=50), CFG(), w, torch.Generator().manual_seed(3),
                                   clip_x0=None).double()
        den = GuidedDenoiser(exact, SCHEDULE, CFG(), w, null_label=4)
        ref[w] = DDIM(steps=50)(den, SCHEDULE, noise.double(), labels)
    gap0 = float((learned[0.0] - ref[0.0]).norm(dim=1).median())
    gap2 = float((learned[2.0] - ref[2.0]).norm(dim=1).median())
    move = float((ref[2.0] - ref[0.0]).norm(dim=1).median())  # how far guidance moves each exact sample
    print(f"median gap learned vs exact: w=0 {gap0:.3f}, w=2 {gap2:.3f}; guidance moves samples by {move:.3f}")
    std = math.sqrt(float(dm.mixture.covs[0, 0, 0]))
    assert gap0 < 0.3 * std
    # guided eps = 3 eps_c - 2 eps_u: branch errors add up to at most (1 + w) + w = 5 times the unguided one
    assert gap2 < 5 * gap0 and gap2 < 0.6 * move
    # and guidance moves learned samples towards their class as it moves the exact ones
    post = lambda x: dm.mixture.log_posterior(x)[torch.arange(2000), labels].exp().mean()  # noqa: E731
    assert float(post(learned[2.0])) > float(post(learned[0.0])) and float(post(learned[2.0])) > 0.9
