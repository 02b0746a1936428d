"""Checkpoints of post-hoc EMA lengths: python reconstruct_ema.py <run dir> --sigma-rel 0.03 0.07 [--step N].

Each is the run's last.ckpt with its weights replaced by the sigma_rel EMA reconstructed from the run's
power-function EMA snapshots (train with callbacks=phema): a sampling checkpoint for evaluate.py, generate.py or
autoguidance's guide_ckpt, not one to resume training from (its optimizer and loop states are left out).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch

from cfglab.atomic import atomic_write
from cfglab.checkpoints import PHEMA, Checkpoint
from cfglab.phema import check_sigma_rel, reconstruct_all, with_weights

TRAINING_STATE = ("loops", "callbacks", "optimizer_states", "lr_schedulers", "current_model_state", "averaging_state")


def reconstruct_checkpoints(run_dir: str | Path, sigma_rels: Sequence[float], step: Optional[int] = None) -> list[Path]:
    """Write <run dir>/phema/sigma_rel-<s>[-step<N>].ckpt for each sigma_rel; returns their paths."""
    run_dir = Path(run_dir)
    for i, s in enumerate(sigma_rels):
        check_sigma_rel(s, f"--sigma-rel[{i}]")
    last = run_dir / "checkpoints" / "last.ckpt"
    Checkpoint.open(last)  # a readable cfglab checkpoint, or a ValueError naming the file
    base = {k: v for k, v in torch.load(last, map_location="cpu", weights_only=True).items() if k not in TRAINING_STATE}
    paths = []
    for s, (weights, info) in zip(sigma_rels, reconstruct_all(run_dir / "phema", sigma_rels, step)):
        state = with_weights(base["state_dict"], weights, run_dir / "phema")
        blob = {**base, "state_dict": state, "global_step": info["step"], PHEMA: info}
        name = f"sigma_rel-{s:.3f}" + ("" if step is None else f"-step{info['step']}") + ".ckpt"
        paths.append(atomic_write(run_dir / "phema" / name, lambda tmp, blob=blob: torch.save(blob, tmp)))
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--sigma-rel", type=float, nargs="+", required=True)
    parser.add_argument("--step", type=int, default=None, help="the EMA at this step (default: the last snapshot)")
    args = parser.parse_args(argv)
    try:
        paths = reconstruct_checkpoints(args.run_dir, args.sigma_rel, args.step)
    except ValueError as e:
        parser.exit(2, f"reconstruct_ema.py: {e}\n")
    for p in paths:
        print(p)
