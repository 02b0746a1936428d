"""Gaussian-mixture toy data with exact conditional and unconditional denoisers.

Class k is component k: x0 | k ~ N(mu_k, Sigma_k), p(k) = pi_k. Under x_t = alpha x0 + sigma eps every
component stays Gaussian, x_t | k ~ N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I), so E[x0 | x_t, k] and
E[x0 | x_t] (responsibility-weighted over components) are closed-form: the exact eps-prediction network.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import lightning as L
import numpy as np
import torch
from torch import Tensor

from cfglab.data.loader import training_batches
from cfglab.data.store import Items

from cfglab.diffusion.schedules import Schedule


class GaussianMixture:
    """means (K, D), covs (K, D, D), weights (K,), float64."""

    def __init__(self, means: Sequence, covs: Sequence, weights: Optional[Sequence] = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covs = torch.as_tensor(covs, dtype=torch.float64)
        k, d = self.means.shape
        if self.covs.shape != (k, d, d):
            raise ValueError(f"covs of shape {tuple(self.covs.shape)} do not match means of shape {(k, d)}")
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or (w <= 0).any():
            raise ValueError(f"weights {w.tolist()} must be {k} positive numbers")
        self.weights = w / w.sum()
        self.num_classes, self.dim = k, d

    def sample(self, labels: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """x0 of shape (N, D) for the given component labels (N,)."""
        z = torch.randn(len(labels), self.dim, generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covs)
        return self.means[labels] + torch.einsum("nij,nj->ni", chol[labels], z)

    def sample_labels(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        return torch.multinomial(self.weights, n, replacement=True, generator=generator)

    def _noisy(self, alpha: Tensor, sigma: Tensor):
        """Per-sample means (B, K, D) and covariances (B, K, D, D) of x_t | k."""
        eye = torch.eye(self.dim, dtype=torch.float64)
        mean = alpha[:, None, None] * self.means
        cov = alpha[:, None, None, None] ** 2 * self.covs + sigma[:, None, None, None] ** 2 * eye
        return mean, cov

    def posterior_means(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """E[x0 | x_t, k] for every k (B, K, D) and log p(k | x_t) (B, K)."""
        mean, cov = self._noisy(alpha, sigma)
        diff = x[:, None, :] - mean
        sol = torch.linalg.solve(cov, diff.unsqueeze(-1)).squeeze(-1)  # cov^-1 (x - alpha mu)
        x0 = self.means + alpha[:, None, None] * torch.einsum("kij,bkj->bki", self.covs, sol)
        log_lik = -0.5 * ((diff * sol).sum(-1) + torch.logdet(cov) + self.dim * math.log(2 * math.pi))
        log_post = torch.log_softmax(log_lik + self.weights.log(), dim=-1)
        return x0, log_post

    def log_posterior(self, x0: Tensor) -> Tensor:
        """log p(k | x0) of clean points (N, D) -> (N, K): the exact classifier."""
        one = torch.ones(len(x0), dtype=torch.float64)
        return self.posterior_means(x0.double(), one, torch.zeros_like(one) + 1e-6)[1]


class ExactGMMModel(torch.nn.Module):
    """The exact eps-prediction 'network' of a Gaussian mixture: (x_t (B, D), t (B,), labels (B,)) -> eps (B, D).

    Label K (= num_classes) is the null label and gives the unconditional prediction, as for a trained model.
    """

    def __init__(self, mixture: GaussianMixture, schedule: Schedule):
        super().__init__()
        self.mixture, self.schedule = mixture, schedule
        self.num_classes, self.sample_shape = mixture.num_classes, (mixture.dim,)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        alpha, sigma = self.schedule.alpha_sigma(t.double())
        x64 = x.double()
        x0_k, log_post = self.mixture.posterior_means(x64, alpha, sigma)
        uncond = (log_post.exp()[..., None] * x0_k).sum(1)
        cond = x0_k[torch.arange(len(x)), labels.clamp(max=self.num_classes - 1)]
        x0 = torch.where((labels == self.num_classes)[:, None], uncond, cond)
        return ((x64 - alpha[:, None] * x0) / sigma[:, None]).to(x.dtype)


def ring_mixture(num_classes: int = 4, radius: float = 2.0, std: float = 0.35, dim: int = 2) -> GaussianMixture:
    """Components on a circle, isotropic; overlapping enough that guidance visibly separates them."""
    angles = torch.arange(num_classes, dtype=torch.float64) * 2 * math.pi / num_classes
    means = torch.zeros(num_classes, dim, dtype=torch.float64)
    means[:, 0], means[:, 1] = radius * angles.cos(), radius * angles.sin()
    covs = std**2 * torch.eye(dim, dtype=torch.float64).expand(num_classes, dim, dim)
    return GaussianMixture(means, covs)


class GaussianMixtureDataModule(L.LightningDataModule):
    """Samples of a ring mixture (class = component), float32 (N, D); a seeded val_fraction is held out."""

    def __init__(self, num_classes: int = 4, radius: float = 2.0, std: float = 0.35, num_samples: int = 20_000,
                 batch_size: int = 256, val_fraction: float = 0.1, seed: int = 0):
        super().__init__()
        if num_classes < 1 or num_samples < 2 or not 0 <= val_fraction < 1:
            raise ValueError(f"bad mixture data: num_classes={num_classes}, num_samples={num_samples}, "
                             f"val_fraction={val_fraction}")
        self.mixture = ring_mixture(num_classes, radius, std)
        self.num_classes, self.channels, self.image_size = num_classes, 2, None
        self.data_range = None  # unbounded: sampling's clip_x0 "auto" does not clip
        self.num_samples, self.batch_size, self.val_fraction, self.seed = num_samples, batch_size, val_fraction, seed
        self.split = f"ring-{num_classes}-{radius}-{std}-{num_samples}"
        self._splits = None

    def model_input(self) -> tuple[int, None]:
        """(dimension, no image size): what the model takes."""
        return self.channels, None

    decoder = None  # samples are points already: nothing to decode

    def num_train_items(self) -> int:
        return self.num_samples - int(round(self.val_fraction * self.num_samples))

    def _points(self) -> tuple[Tensor, Tensor]:
        """The sampled points (N, D) float32 and their components (N,), drawn once."""
        if self._splits is None:
            g = torch.Generator().manual_seed(self.seed)
            y = self.mixture.sample_labels(self.num_samples, g)
            self._splits = self.mixture.sample(y, g).float(), y
        return self._splits

    def items(self, name: str) -> Items:
        """'val': the first round(val_fraction * N) points, 'train': the rest."""
        n_val = int(round(self.val_fraction * self.num_samples))
        index = np.arange(n_val, self.num_samples) if name == "train" else np.arange(n_val)
        return Items(*self._points(), index)

    def train_dataloader(self):
        return training_batches(self.trainer, self.items("train"), self.batch_size, self.seed)

    def val_dataloader(self):
        return self.items("val").batches(self.batch_size)
