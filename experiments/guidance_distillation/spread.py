"""How far one 1,000-sample FID is from the next: the study's models at one w over several noise sets.

    python experiments/guidance_distillation/spread.py --teacher <teacher ckpt> --student <stage one>
        --few-step <4-step ckpt> ... [--w 0] [--repeats 4] [--samples 1000] [--data-dir <mnist>]

The teacher and the stage-one student sample with DPM-Solver++(2M) `--steps`, each few-step student with DDIM at
its distilled steps, all at strength `--w`, with the benchmark's labels and batches; repeat r draws the noise set r
(`sample_batches(repeat=r)`: repeat 0 is the benchmark's own). Each model's FID / the teacher's is paired repeat by
repeat (the same noise set). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from cfglab.checkpoints import Checkpoint
from cfglab.diffusion.guidance import CFG
from cfglab.diffusion.samplers import DDIM, DPMSolverPP2M
from cfglab.diffusion.sampling import SamplingSettings, sample_batches
from cfglab.metrics.fidelity import build_metrics
from cfglab.sweep import balanced_labels

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from distillation import few_step_settings  # noqa: E402


def fids(module, dm, sampler, metrics, args) -> list[float]:
    """FID of `module` at --w for each of --repeats noise sets."""
    labels = balanced_labels(args.samples, module.num_classes)
    settings = SamplingSettings().resolve(module.device, dm.data_range)
    out = []
    for r in range(args.repeats):
        images, _ = sample_batches(sampler=sampler, guidance=CFG(), w=args.w, labels=labels, batch_size=args.batch,
                                   seed=args.seed, repeat=r, **module.sampling_args(), **settings)
        out.append(float(metrics(images, labels)["fid"]))
    return out


def summary(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--few-step", nargs="*", default=[])
    parser.add_argument("--w", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache", default=os.environ.get("CFGLAB_CACHE", ".cache/cfglab"))
    args = parser.parse_args()
    if args.repeats < 1:
        raise SystemExit(f"--repeats={args.repeats} must be >= 1")

    data = {"data_dir": args.data_dir} if args.data_dir else None
    dm, teacher = Checkpoint.open(args.teacher).module(data)
    metrics = build_metrics(dm, extractor="domain", cache_dir=args.cache)
    models = [("teacher", teacher, DPMSolverPP2M(steps=args.steps)),
              ("stage one", Checkpoint.open(args.student).module(data)[1], DPMSolverPP2M(steps=args.steps))]
    for path in args.few_step:
        stored = Checkpoint.open(path)
        settings = few_step_settings(path)  # named as in the benchmark's rows
        models.append((settings["model"], stored.module(data)[1], DDIM(steps=settings["student_steps"])))
    rows = {name: fids(module, dm, sampler, metrics, args) for name, module, sampler in models}
    base = rows["teacher"]
    print(f"w = {args.w:g}, {args.repeats} noise sets of {args.samples} samples")
    print(f"{'model':<30}{'FID per repeat':<40}{'FID mean +- sd':>18}{'/ teacher, paired':>22}")
    report = []
    for name, values in rows.items():
        ratio = [v / b for v, b in zip(values, base)]
        print(f"{name:<30}{' '.join(f'{v:.2f}' for v in values):<40}{summary(values):>18}{summary(ratio):>22}")
        report.append({"model": name, "fid": values, "fid_vs_teacher": ratio})
    print(json.dumps({"w": args.w, "samples": args.samples, "repeats": args.repeats, "rows": report}))


if __name__ == "__main__":
    main()
