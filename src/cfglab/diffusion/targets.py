"""What the network predicts (eps, v or x0), and the conversion of its output to (x0, eps) estimates.

With x_t = alpha x0 + sigma eps and alpha^2 + sigma^2 = 1 (VP):
  v = alpha eps - sigma x0 (Salimans & Ho 2022),   x0 = alpha x_t - sigma v,   eps = sigma x_t + alpha v.
Every conversion is affine in the network output with coefficients that do not depend on the label, so
classifier-free guidance gives the same sample whichever target the network was trained on.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from torch import Tensor

TARGETS = ("eps", "v", "x0")


class Prediction(NamedTuple):
    """Estimates of the clean image and of the noise at (x_t, t), both shaped like x_t.

    Samplers move x_t along these; for a plain network they satisfy x_t = alpha x0 + sigma eps.
    Guidance methods such as CFG++ deliberately return a pair that does not.
    v: a network's learned-variance output in [-1, 1] (Nichol & Dhariwal 2021, eq. 15), shaped like x_t, for the
    learned-range sampler; None for networks without one. Guidance leaves it the conditional prediction's.
    """

    x0: Tensor
    eps: Tensor
    v: Optional[Tensor] = None


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"prediction target {target!r} is not one of {TARGETS}")
    return target


def broadcast(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape per-sample coefficients of shape (B,) to (B, 1, ..., 1) to multiply x of shape (B, ...)."""
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim)).to(x.dtype)


def training_target(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor, target: str) -> Tensor:
    """Regression target for the network; alpha, sigma of shape (B,)."""
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    if target == "v":
        return broadcast(alpha, x0) * eps - broadcast(sigma, x0) * x0
    raise ValueError(f"prediction target {target!r} is not one of {TARGETS}")


def to_prediction(out: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor, target: str) -> Prediction:
    """Turn a network output for target `target` at x_t = `x` into (x0, eps); alpha, sigma of shape (B,)."""
    a, s = broadcast(alpha, x), broadcast(sigma, x)
    if target == "eps":
        return Prediction(x0=(x - s * out) / a, eps=out)
    if target == "v":
        return Prediction(x0=a * x - s * out, eps=s * x + a * out)
    if target == "x0":
        return Prediction(x0=out, eps=(x - a * out) / s)
    raise ValueError(f"prediction target {target!r} is not one of {TARGETS}")
