"""A quick look at a few checkpoints: domain-classifier FID, precision and recall at a few w, with DDIM at chosen
steps, sampled as the benchmark's rows are (the same labels, seeds and batches), so its numbers match theirs.

    python experiments/guidance_distillation/screen.py [--data-dir <mnist>] [--ws 0 4] [--steps 16 32] <ckpt> ...

Without --steps a few-step student samples at the steps it was distilled for (any other model needs --steps).
Prints one line per (checkpoint, steps, w).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cfglab.checkpoints import Checkpoint
from cfglab.diffusion.samplers import DDIM
from cfglab.metrics.fidelity import build_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from distillation import few_step_settings, sweep_row  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="where the checkpoints' data set lives on this machine")
    parser.add_argument("--ws", nargs="+", type=float, default=[0.0, 4.0])
    parser.add_argument("--steps", nargs="*", type=int, default=[], help="DDIM steps (default: the distilled ones)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=os.environ.get("CFGLAB_CACHE", ".cache/cfglab"))
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    data, metrics = ({"data_dir": args.data_dir} if args.data_dir else None), None
    for path in args.checkpoints:
        steps = args.steps or [few_step_settings(path)["student_steps"]]  # refuses a model not distilled to few
        dm, module = Checkpoint.open(path).module(data)
        metrics = metrics or build_metrics(dm, extractor="domain", cache_dir=args.cache)
        for n in steps:
            for p in sweep_row(path, module, dm, lambda w: DDIM(steps=n), args.ws, metrics, args)["points"]:
                print(f"{path}  DDIM {n}  w={p['w']:g}  FID {p['fid']:.2f}  precision {p['precision']:.3f}  "
                      f"recall {p['recall']:.3f}", flush=True)


if __name__ == "__main__":
    main()
