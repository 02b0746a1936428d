"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", sec. 3
and App. C): power-function EMA tracks kept during training, snapshots of them, and the least-squares
reconstruction of an EMA of any length from the snapshots afterwards.

An EMA profile of exponent gamma at training time T weighs the weights of time t <= T by (gamma + 1) t^gamma /
T^(gamma + 1); its width relative to T is sigma_rel (eq. 123). Time is counted in optimizer steps: with a fixed
batch size this is EDM2's count of images, scaled. Plain numpy and torch: no Lightning here.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

SIGMA_REL_MAX = math.sqrt(1 / 12)  # gamma -> 0 (a flat average of the whole run): eq. 123 at gamma = 0
SNAPSHOT = re.compile(r"snapshot-(\d+)\.pt$")


def gamma_to_sigma_rel(gamma: float) -> float:
    """sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))) (eq. 123)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent of a profile of width sigma_rel: the largest real root of
    gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + (12 - sigma_rel^-2) = 0 (eq. 126, Algorithm 2)."""
    check_sigma_rel(sigma_rel)
    s = sigma_rel ** -2
    return float(np.roots([1.0, 7.0, 16.0 - s, 12.0 - s]).real.max())


def check_sigma_rel(sigma_rel, key: str = "sigma_rel") -> None:
    if isinstance(sigma_rel, bool) or not isinstance(sigma_rel, (int, float)) or not 0 < sigma_rel < SIGMA_REL_MAX:
        raise ValueError(f"{key}={sigma_rel!r} must lie in (0, {SIGMA_REL_MAX:.4f}): a power-function EMA is at most "
                         "as long as the flat average of the whole run (EDM2 uses 0.05 and 0.10)")


def power_beta(step: int, gamma: float) -> float:
    """The decay of the update that takes a gamma-profile EMA to step `step` (1, 2, ...): (1 - 1/step)^(gamma + 1)
    (eq. 127 with one step per update); 0 at step 1, where the EMA is the weights themselves."""
    return (1.0 - 1.0 / step) ** (gamma + 1.0)


def profile_inner_products(a_t, a_gamma, b_t, b_gamma) -> np.ndarray:
    """Inner products of normalised power-function profiles, ended at times a_t and b_t (Algorithm 3, eq. 151):
    (a_gamma + 1)(b_gamma + 1) (a_t / b_t)^e / ((a_gamma + b_gamma + 1) max(a_t, b_t)), e = b_gamma if a_t < b_t
    else -a_gamma. Arguments broadcast."""
    a_t, a_gamma, b_t, b_gamma = (np.asarray(v, np.float64) for v in (a_t, a_gamma, b_t, b_gamma))
    e = np.where(a_t < b_t, b_gamma, -a_gamma)
    return (a_gamma + 1) * (b_gamma + 1) * (a_t / b_t) ** e / ((a_gamma + b_gamma + 1) * np.maximum(a_t, b_t))


def reconstruction_weights(steps: Sequence[int], gammas: Sequence[float], step: int, gamma: float) -> np.ndarray:
    """Coefficients x (summing to 1) of snapshots taken at `steps` of tracks of exponents `gammas` whose sum
    sum_i x_i snapshot_i best approximates, in L2 over time, the gamma-profile EMA at `step` (Algorithm 3)."""
    steps, gammas = np.asarray(steps, np.float64), np.asarray(gammas, np.float64)
    a = profile_inner_products(steps[:, None], gammas[:, None], steps[None, :], gammas[None, :])
    b = profile_inner_products(steps, gammas, float(step), float(gamma))
    x = np.linalg.lstsq(a, b, rcond=None)[0]  # lstsq: snapshots of two tracks at one step can be near-dependent
    return x / x.sum()


def snapshot_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"snapshot-{step:08d}.pt"


def snapshot_files(folder: str | Path) -> list[Path]:
    """The snapshots in `folder`, by step."""
    return sorted(p for p in Path(folder).glob("snapshot-*.pt") if SNAPSHOT.search(p.name))


def snapshot_steps(folder: str | Path) -> list[int]:
    """The steps of the snapshots in `folder`, read from their names (nothing is loaded)."""
    return [int(SNAPSHOT.search(p.name).group(1)) for p in snapshot_files(folder)]


def last_snapshot_step(folder: str | Path, step: Optional[int] = None, key: str = "step") -> int:
    """The step of the last snapshot in `folder` at or before `step` (default: the last one): where an EMA is
    reconstructed. No snapshot there is a ValueError naming `key`."""
    steps = snapshot_steps(folder)
    if not steps:
        raise ValueError(f"{key}: {str(folder)!r} holds no power-function EMA snapshots (snapshot-*.pt): train with "
                         "callbacks=phema")
    before = [s for s in steps if step is None or s <= step]
    if not before:
        raise ValueError(f"{key}={step}: the first snapshot in {str(folder)!r} is at step {steps[0]}")
    return before[-1]


def reconstruct(folder: str | Path, sigma_rel: float, step: Optional[int] = None) -> tuple[dict, dict]:
    """The weights of the sigma_rel EMA at `step` (default: the last snapshot's) from the snapshots in `folder`
    taken up to it: (state_dict in float32, {"sigma_rel", "step", "snapshots", "coefficients"})."""
    return reconstruct_all(folder, [sigma_rel], step)[0]


def reconstruct_all(folder: str | Path, sigma_rels: Sequence[float], step: Optional[int] = None) -> list[tuple[dict, dict]]:
    """`reconstruct` for several lengths in one pass over the snapshots: each is read once (memory: one float32
    copy of the weights per length)."""
    for i, s in enumerate(sigma_rels):
        check_sigma_rel(s, f"sigma_rels[{i}]" if len(sigma_rels) > 1 else "sigma_rel")
    last = last_snapshot_step(folder, step)
    step = last if step is None else int(step)
    files = [f for f, k in zip(snapshot_files(folder), snapshot_steps(folder)) if k <= step]
    # mmap: the tensors are read when summed, one snapshot at a time, not all at once
    blobs = [torch.load(f, map_location="cpu", weights_only=True, mmap=True) for f in files]
    steps = [b["step"] for b in blobs for _ in b["sigma_rels"]]
    gammas = [sigma_rel_to_gamma(s) for b in blobs for s in b["sigma_rels"]]
    coefficients = [reconstruction_weights(steps, gammas, step, sigma_rel_to_gamma(s)) for s in sigma_rels]
    outs: list[dict] = [{} for _ in sigma_rels]
    tracks = (track for b in blobs for track in b["tracks"])
    for j, track in enumerate(tracks):
        for x, out in zip(coefficients, outs):
            for k, v in track.items():
                term = v.float() * float(x[j])
                out[k] = out[k].add_(term) if k in out else term
    return [(out, {"sigma_rel": float(s), "step": step, "snapshots": len(blobs), "coefficients": x.tolist()})
            for s, out, x in zip(sigma_rels, outs, coefficients)]


def with_weights(state: dict, weights: dict, folder: str | Path) -> dict:
    """`state` (a module's state_dict) with the reconstructed `weights` in place of its entries, in their dtypes;
    weights it has no entry for are snapshots of another model, a ValueError."""
    missing = sorted(set(weights) - set(state))
    if missing:
        raise ValueError(f"the snapshots in {str(folder)!r} hold weights this model has not ({missing[:3]}): "
                         "snapshots of another model")
    return {k: weights[k].to(v.dtype) if k in weights else v for k, v in state.items()}


def sweep_lengths(sigma_rels, key: str = "sigma_rels") -> list[Optional[float]]:
    """The EMA lengths of a sweep over sigma_rel, checked: a non-empty list without repeats of valid sigma_rels
    and None, the checkpoint's own weights (its fixed-decay EMA)."""
    if isinstance(sigma_rels, (str, bytes)) or not isinstance(sigma_rels, Sequence) or not sigma_rels:
        raise ValueError(f"{key}={sigma_rels!r} must be a non-empty list of EMA lengths, e.g. [null,0.05,0.1] "
                         "(null: the checkpoint's own weights)")
    for i, s in enumerate(sigma_rels):
        if s is not None:
            check_sigma_rel(s, f"{key}[{i}]")
    if len(set(sigma_rels)) != len(sigma_rels):
        raise ValueError(f"{key}={list(sigma_rels)} repeats a value")
    return [None if s is None else float(s) for s in sigma_rels]
