"""Guidance distillation against its teacher: sampling time and quality of a guidance sweep, in one run.

    python benchmarks/distillation.py --teacher <teacher ckpt> --student <stage-one ckpt>
                                      [--few-step <8-step ckpt> <4-step ckpt> ...] [--samples 1000]
                                      [--ws 0 0.5 1 2 4] [--data-dir <mnist>] [--device cuda]

Rows, each sampling `--samples` balanced-label images at every w with the labels and seeds of a sweep:
  teacher, DPM-Solver++(2M) `--steps` (the baseline: two forwards per guided step, one at w = 0);
  stage-one student, the same sampler and steps (one forward per step at every w);
  each few-step student (progressive or consistency distillation) at DDIM with the steps N it was distilled for
  (one row per checkpoint: methods and rounds of different lengths can be compared), and, once per N, the teacher
  with DDIM and with DPM-Solver++ at N steps (2N NFE when guided) and at N NFE (N / 2 steps when guided, N at
  w = 0): what few steps give without distillation.
Times cover sampling alone (no metrics), in batches of `--batch` with the default `sampling` settings, and are
given as ratios to the baseline measured in this run; the domain classifier's FID / IS / precision / recall /
accuracy come after. The few-step student with the fewest steps is then timed at each of `--batch-sizes`.

Training cost: seconds per optimizer step (loss, backward, AdamW; batch `--train-batch`, bf16 autocast as the
presets train) of the teacher's own training loss (the baseline), of stage one, of a progressive round and of
consistency distillation, each timed over `--train-steps` steps in this run, then multiplied by the presets' step
counts (`--budget`); a progressive student of --few-step distilled from a finer teacher grid than the halving's
adds its round, timed at that grid and multiplied by its own optimizer steps.
Prints tables and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable

import torch

from device import add_device_argument, describe, sync
from cfglab.checkpoints import Checkpoint
from cfglab.diffusion.guidance import CFG
from cfglab.diffusion.samplers import DDIM, DPMSolverPP2M
from cfglab.diffusion.sampling import SamplingSettings, sample_batches
from cfglab.diffusion.weighting import TruncatedSNR, Uniform
from cfglab.lightning.distillation import ConsistencyDistillation, GuidanceDistillation, ProgressiveDistillation
from cfglab.models.student import student_net
from cfglab.metrics.fidelity import build_metrics
from cfglab.sweep import balanced_labels


def sweep_row(name, module, dm, sampler_at: Callable, ws, metrics, args) -> dict:
    """Sample every w of `ws` with `module` and the sampler `sampler_at(w)`; sampling seconds (all w) and metrics
    per w."""
    labels = balanced_labels(args.samples, module.num_classes)
    settings = SamplingSettings().resolve(module.device, dm.data_range)
    row = {"model": name, "sampler": repr(sampler_at(max(ws))), "seconds": 0.0, "points": []}
    for w in ws:
        sampler = sampler_at(w)
        sync(module.device)
        t0 = time.perf_counter()
        images, nfe = sample_batches(sampler=sampler, guidance=CFG(), w=w, labels=labels, batch_size=args.batch,
                                     seed=args.seed, **module.sampling_args(), **settings)
        sync(module.device)
        seconds = time.perf_counter() - t0
        row["seconds"] += seconds
        m = metrics(images, labels)
        row["points"].append({"w": w, "steps": sampler.steps, "nfe": nfe, "seconds": seconds,
                              "seconds_per_100": 100 * seconds / args.samples,
                              **{k: m[k] for k in ("fid", "is", "precision", "recall", "accuracy")}})
    return row


def batch_seconds(module, dm, steps: int, w: float, args) -> dict[int, float]:
    """Seconds per 100 images of `module` sampled with DDIM `steps` at strength `w`, at each of --batch-sizes
    (times alone, the same labels and seeds as the rows): the cost of the sampling batch size on this machine."""
    labels = balanced_labels(args.samples, module.num_classes)
    settings = SamplingSettings().resolve(module.device, dm.data_range)
    out = {}
    for batch in args.batch_sizes:
        sync(module.device)
        t0 = time.perf_counter()
        sample_batches(sampler=DDIM(steps=steps), guidance=CFG(), w=w, labels=labels, batch_size=batch,
                       seed=args.seed, **module.sampling_args(), **settings)
        sync(module.device)
        out[batch] = 100 * (time.perf_counter() - t0) / args.samples
    return out


def teacher_rows(teacher, dm, steps: int, ws, metrics, args) -> list[dict]:
    """The teacher with DDIM and DPM-Solver++(2M) at `steps` steps, and at `steps` network evaluations (half the
    steps when guided, two forwards each)."""
    rows = []
    for label, cls in (("DDIM", DDIM), ("DPM++", DPMSolverPP2M)):
        rows.append(sweep_row(f"teacher, {label} {steps}", teacher, dm, lambda w: cls(steps=steps), ws, metrics, args))
        if steps >= 2:
            rows.append(sweep_row(f"teacher, {label} at {steps} NFE", teacher, dm,
                                  lambda w: cls(steps=steps if w == 0 else steps // 2), ws, metrics, args))
    return rows


def step_seconds(module, shape, args) -> float:
    """Seconds per training step of `module.loss` at batch --train-batch, after one warm-up step."""
    x = torch.rand((args.train_batch, *shape), device=args.device) * 2 - 1
    labels = torch.arange(args.train_batch, device=args.device) % module.num_classes
    module.to(args.device).train()
    opt = torch.optim.AdamW([p for p in module.net.parameters() if p.requires_grad])
    for i in range(args.train_steps + 1):
        if i == 1:
            sync(args.device)
            t0 = time.perf_counter()
        with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16):
            loss = module.loss(x, labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
    sync(args.device)
    return (time.perf_counter() - t0) / args.train_steps


def training_cost(args, teacher, shape, direct=None) -> dict:
    """Per-step seconds of teacher training, stage one, a progressive round and consistency distillation, and the
    presets' totals; direct: (teacher steps, optimizer steps) of a progressive round from a finer teacher grid,
    timed and totalled as well."""
    # the presets' loss: truncated SNR, which an eps teacher distils without
    weighting = Uniform() if teacher.target == "eps" else TruncatedSNR()
    stage1 = GuidanceDistillation(student_net(args.teacher, shape[-1], shape[0], teacher.num_classes, [0, 4]),
                                  teacher.schedule, teacher.num_classes, args.teacher, weighting=weighting)
    def few_step(cls, **kw):
        return cls(student_net(args.student, shape[-1], shape[0], teacher.num_classes), teacher.schedule,
                   teacher.num_classes, args.student, student_steps=4, weighting=weighting, **kw)

    modules = {"teacher": teacher, "stage one": stage1, "progressive round": few_step(ProgressiveDistillation),
               "consistency": few_step(ConsistencyDistillation)}
    steps = dict(zip(modules, args.budget[:3] + args.budget[4:]))
    if direct is not None:
        name = f"progressive round of {direct[0]} teacher steps"
        modules[name], steps[name] = few_step(ProgressiveDistillation, teacher_steps=direct[0]), direct[1]
    for m in list(modules.values())[1:]:
        m.teacher.to(args.device)
    seconds = {name: step_seconds(m, shape, args) for name, m in modules.items()}
    rounds = args.budget[3]
    total = {"teacher": seconds["teacher"] * steps["teacher"], "stage one": seconds["stage one"] * steps["stage one"],
             f"stage two ({rounds} rounds)": seconds["progressive round"] * steps["progressive round"] * rounds,
             "stage two (consistency)": seconds["consistency"] * steps["consistency"]}
    if direct is not None:
        total[f"stage two (one round of {direct[0]} teacher steps)"] = seconds[name] * steps[name]
    print(f"\n{'training (batch ' + str(args.train_batch) + ', bf16)':<50}{'s/step':>8}{'vs T':>7}")
    for name, sec in seconds.items():
        print(f"{name:<50}{sec:>8.3f}{sec / seconds['teacher']:>7.2f}")
    print(f"\n{'job at the presets steps':<50}{'minutes':>8}{'vs T':>7}")
    for name, sec in total.items():
        print(f"{name:<50}{sec / 60:>8.1f}{sec / total['teacher']:>7.2f}")
    return {"step_seconds": seconds, "steps": steps, "rounds": rounds, "job_seconds": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True, help="the stage-one (w-conditioned) student")
    parser.add_argument("--few-step", nargs="*", default=[], help="progressive or consistency students (their "
                        "method and DDIM steps are read from the checkpoint's distillation settings)")
    parser.add_argument("--ws", nargs="+", type=float, default=[0.0, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--samples", type=int, default=1000)
    # a CPU samples small batches faster per image, their activations staying in cache (--batch-sizes measures it)
    parser.add_argument("--batch", type=int, default=100, help="sampling batch size of every row")
    parser.add_argument("--batch-sizes", nargs="*", type=int, default=[50, 100, 250, 500],
                        help="batch sizes at which the few-step student with the fewest steps is timed "
                        "(guided, at the largest w)")
    parser.add_argument("--steps", type=int, default=20, help="DPM-Solver++(2M) steps of teacher and student")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="where the teacher's data set lives on this machine")
    parser.add_argument("--cache", default=os.environ.get("CFGLAB_CACHE", ".cache/cfglab"),
                        help="domain classifier cache (default: $CFGLAB_CACHE or .cache/cfglab)")
    parser.add_argument("--train-steps", type=int, default=10, help="timed training steps per module")
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--budget", nargs=5, type=int, default=[1776, 2000, 500, 2, 1000],
                        metavar=("TEACHER", "STAGE1", "ROUND", "ROUNDS", "CONSISTENCY"),
                        help="training steps of the presets (mnist_study, distill_mnist, progressive_mnist), the "
                        "number of progressive rounds, and the steps of consistency_mnist")
    add_device_argument(parser)
    args = parser.parse_args()
    bad = [b for b in (args.batch, *args.batch_sizes) if b < 1]
    if bad:
        raise SystemExit(f"--batch / --batch-sizes: {bad} must be >= 1")

    data = {"data_dir": args.data_dir} if args.data_dir else None
    dm, teacher = Checkpoint.open(args.teacher).module(data)
    models = {"teacher": teacher.to(args.device),
              "student": Checkpoint.open(args.student).module(data)[1].to(args.device)}
    metrics = build_metrics(dm, extractor="domain", cache_dir=args.cache, device=args.device)
    solver = lambda w: DPMSolverPP2M(steps=args.steps)  # noqa: E731
    rows = [sweep_row("teacher", models["teacher"], dm, solver, args.ws, metrics, args),
            sweep_row("student", models["student"], dm, solver, args.ws, metrics, args)]
    compared, fewest = set(), None  # fewest: (steps, name, module) of the student with the fewest steps
    direct = None  # (teacher steps, optimizer steps) of the first progressive round from a finer teacher grid
    for path in args.few_step:
        settings = few_step_settings(path)
        steps, finer = settings["student_steps"], settings.pop("finer")
        if finer and direct is None:
            direct = (settings["teacher_steps"], settings["round_steps"])
        student = Checkpoint.open(path).module(data)[1].to(args.device)
        rows.append({**sweep_row(settings["model"], student, dm, lambda w: DDIM(steps=steps), args.ws, metrics,
                                 args), **settings})
        if fewest is None or steps < fewest[0]:
            fewest = (steps, rows[-1]["model"], student)
        if steps not in compared:
            compared.add(steps)
            rows += teacher_rows(models["teacher"], dm, steps, args.ws, metrics, args)
    base = rows[0]
    for row in rows:
        row["time_vs_teacher"] = row["seconds"] / base["seconds"]
        for p, q in zip(row["points"], base["points"]):
            p["fid_vs_teacher"] = p["fid"] / q["fid"]
    print(f"{'model':<50}{'sampler':<26}{'w':>5}{'NFE':>6}{'FID':>8}{'vs T':>7}{'IS':>7}{'prec':>7}{'rec':>7}"
          f"{'acc':>7}{'s/100':>7}")
    for row in rows:
        for p in row["points"]:
            print(f"{row['model']:<50}{row['sampler']:<26}{p['w']:>5g}{p['nfe']:>6.0f}{p['fid']:>8.2f}"
                  f"{p['fid_vs_teacher']:>7.2f}{p['is']:>7.2f}{p['precision']:>7.3f}{p['recall']:>7.3f}"
                  f"{p['accuracy']:>7.3f}{p['seconds_per_100']:>7.2f}")
        print(f"{'':<76}sweep sampling {row['seconds']:.1f} s = {row['time_vs_teacher']:.3f} x the teacher's")
    batches = {}
    if fewest is not None and args.batch_sizes:
        steps, name, student = fewest
        batches = {"model": name, "w": max(args.ws),
                   "seconds_per_100": batch_seconds(student, dm, steps, max(args.ws), args)}
        print(f"\n{name} at w = {max(args.ws):g}: s / 100 images by sampling batch size")
        for batch, sec in batches["seconds_per_100"].items():
            print(f"batch {batch:<6}{sec:>7.2f}")
    cost = training_cost(args, teacher, tuple(teacher.net.sample_shape), direct)
    print(json.dumps({**describe(args.device), "samples": args.samples, "batch": args.batch, "ws": args.ws,
                      "rows": rows, "batch_sizes": batches, "training": cost}))


METHODS = {ProgressiveDistillation.__name__: "progressive", ConsistencyDistillation.__name__: "consistency"}


def few_step_settings(path: str) -> dict:
    """What a few-step student was distilled with (stored with its distillation settings): its method
    ("progressive" or "consistency"), DDIM steps, teacher grid and optimizer steps, and the row name they make."""
    stored = Checkpoint.open(path, "point --few-step at a progressive or consistency distillation checkpoint")
    method = METHODS.get(str((stored.distillation or {}).get("_target_", "")).rsplit(".", 1)[-1])
    if method is None:
        raise SystemExit(f"{path} is not a progressive or consistency distillation checkpoint")
    steps = int(stored.distillation["student_steps"])
    # a progressive round stored before teacher_steps existed, or with null, halves its teacher's
    teacher_steps = int(stored.distillation.get("teacher_steps") or 2 * steps)
    finer = method == "progressive" and teacher_steps != 2 * steps  # one round from a finer teacher grid
    name = f"{method} {steps}" + (f" of {teacher_steps} teacher steps" if finer else "") + f", {stored.step}-step round"
    return {"model": name, "method": method, "student_steps": steps, "teacher_steps": teacher_steps,
            "round_steps": stored.step, "finer": finer}


if __name__ == "__main__":
    main()
