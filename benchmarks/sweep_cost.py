"""What a guidance sweep costs, and what the fast settings give up in quality, on a trained checkpoint.

    python benchmarks/sweep_cost.py --ckpt outputs/.../checkpoints/last.ckpt [--parts settings sweep solver interval]
                                    [--device cuda] [--batch 500]

Parts (all by default; minutes on the 2-core CPU of BENCHMARKS.md at the default sizes):
  settings  (1)   sampling settings, timed on the same 100 guided samples (w = 1): fp32 and bf16 autocast, one
                  batched 2B forward or two B forwards; the fastest is used by the other parts (without this
                  part they use the default `sampling` settings: fp32, batched on CUDA only).
  sweep     (9)   the full sweep, end to end: 7 guidance strengths x `--samples` samples, DPM-Solver++(2M)
                  20 steps, domain FID / IS / KID / precision / recall (feature extractor and reference statistics
                  included). Baseline: the paper's sampler (256 ancestral steps, cond and uncond as two fp32
                  forwards), timed on 50 samples and scaled to the same sweep.
  solver    (7)   domain FID of the 20-step solver against 250-step ancestral sampling (DDPM) at w = 1, same
                  `--quality-samples` labels and seeds.
  interval  (12)  guidance intervals (`--intervals LO,HI ...`) against plain CFG over the `--quality-ws` grid: FID
                  per w, best FID and network evaluations per step, same labels and seeds in every cell.
Prints tables and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

from device import add_device_argument, describe
from cfglab.checkpoints import Checkpoint
from cfglab.diffusion.guidance import CFG, GuidanceInterval
from cfglab.diffusion.samplers import DDPM, DPMSolverPP2M, Paper
from cfglab.diffusion.sampling import SamplingSettings, sample_batches
from cfglab.metrics.fidelity import build_metrics
from cfglab.sweep import SweepRecord, SweepSettings, balanced_labels, run_points

WS = [0.0, 0.3, 0.5, 1.0, 2.0, 3.0, 4.0]
PARTS = ["settings", "sweep", "solver", "interval"]
QUALITY_WS = [0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
# EDM sigma ranges: Kynkaenniemi et al.'s ImageNet-512 interval, and high noise only (conf/guidance/interval_high)
INTERVALS = [(0.28, 5.42), (2.0, math.inf), (3.0, math.inf)]


def sigma_interval(text: str) -> tuple[float, float]:
    """'LO,HI' -> (lo, hi), checked as GuidanceInterval checks it (argparse reports the ValueError)."""
    lo, hi = map(float, text.split(","))
    GuidanceInterval(sigma_lo=lo, sigma_hi=hi)
    return lo, hi


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def generate(module, dm, settings: SamplingSettings, labels, sampler, guidance, w, batch, seed):
    """Samples of `module` for `labels` at strength `w` and their NFE per sample, as a sweep point makes them."""
    return sample_batches(sampler=sampler, guidance=guidance, labels=labels, w=w, batch_size=batch, seed=seed,
                          **module.sampling_args(), **settings.resolve(module.device, dm.data_range))


def fid_of(module, dm, settings, metrics, sampler, guidance, w, n, batch, seed):
    labels = balanced_labels(n, module.num_classes)
    images, nfe = generate(module, dm, settings, labels, sampler, guidance, w, batch, seed)
    return metrics(images, labels)["fid"], nfe


def part_settings(module, dm, fast, report) -> SamplingSettings:
    labels = balanced_labels(100, module.num_classes)
    times = {}
    print(f"{'setting (100 samples, w=1, DPM++ 20)':<40}{'s':>8}{'vs fp32 2 passes':>18}")
    for precision in ("32-true", "bf16-mixed"):
        for batched in (False, True):
            settings = SamplingSettings(precision=precision, batched=batched)
            generate(module, dm, settings, labels[:20], fast, CFG(), 1.0, 20, seed=0)  # warm-up
            _, sec = timed(lambda: generate(module, dm, settings, labels, fast, CFG(), 1.0, 100, seed=0))
            times[settings] = sec
            base = times[SamplingSettings(precision="32-true", batched=False)]
            print(f"{precision + (', batched 2B' if batched else ', 2 passes'):<40}{sec:>8.2f}{sec / base:>17.2f}x")
    report["settings"] = {f"{s.precision}/{'batched' if s.batched else 'two_passes'}": t for s, t in times.items()}
    return min(times, key=times.get)


def part_sweep(module, dm, settings, fast, args, report):
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        metrics = build_metrics(dm, extractor="domain", cache_dir=args.cache, device=args.device)
        points = run_points(module, SweepSettings(WS, num_samples=args.samples, batch_size=args.batch), fast, CFG(),
                            settings.resolve(module.device, dm.data_range), metrics, SweepRecord(tmp))
        sweep_s = time.perf_counter() - t0
    baseline_n = 50
    labels = balanced_labels(baseline_n, module.num_classes)
    paper = SamplingSettings(precision="32-true", batched=False)
    _, paper_s = timed(lambda: generate(module, dm, paper, labels, Paper(steps=256), CFG(), 1.0, baseline_n, seed=0))
    paper_sweep_s = paper_s / baseline_n * args.samples * len(WS)
    batched = settings.resolve(module.device, dm.data_range)["batched"]
    print(f"\nfull sweep: {len(WS)} points x {args.samples} samples, DPM++ 20, {settings.precision}, "
          f"{'batched' if batched else '2 passes'}: {sweep_s:.0f} s end to end "
          f"({sweep_s / 60:.1f} min; budget 15 min)")
    print(f"paper regime (256 ancestral steps x 2 fp32 passes) for the same samples: {paper_sweep_s:.0f} s "
          f"(scaled from {baseline_n}); ratio {paper_sweep_s / sweep_s:.1f}x")
    print(f"{'w':>5}{'FID':>9}{'IS':>8}{'prec':>7}{'recall':>8}{'NFE':>6}{'s':>7}")
    for p in points:
        print(f"{p['w']:>5g}{p['fid']:>9.2f}{p['is']:>8.2f}{p['precision']:>7.3f}{p['recall']:>8.3f}{p['nfe']:>6.0f}"
              f"{p['seconds']:>7.1f}")
    report.update(sweep_seconds=sweep_s, paper_regime_seconds=paper_sweep_s,
                  points=[{k: p[k] for k in ("w", "fid", "is", "precision", "recall", "nfe", "seconds")} for p in points])


def part_solver(module, dm, settings, metrics, fast, args, report):
    n = args.quality_samples
    fid = lambda sampler: fid_of(module, dm, settings, metrics, sampler, CFG(), 1.0, n, args.batch, args.seed)  # noqa: E731
    (fid_fast, nfe_fast), s_fast = timed(lambda: fid(fast))
    (fid_anc, nfe_anc), s_anc = timed(lambda: fid(DDPM(steps=250)))
    print(f"\nw=1, {n} samples: DPM++ 20 FID {fid_fast:.2f} ({nfe_fast:.0f} NFE, {s_fast:.0f} s); "
          f"DDPM 250 FID {fid_anc:.2f} ({nfe_anc:.0f} NFE, {s_anc:.0f} s); ratio {fid_fast / fid_anc:.3f} (target <= 1.10)")
    report["solver_vs_ancestral"] = {"samples": n, "w": 1.0, "fid_dpmpp20": fid_fast, "fid_ddpm250": fid_anc,
                                     "nfe_dpmpp20": nfe_fast, "nfe_ddpm250": nfe_anc}


def part_interval(module, dm, settings, metrics, fast, args, report):
    n, ws = args.quality_samples, args.quality_ws
    rows = {"cfg": CFG()} | {f"interval ({lo:g}, {hi:g}]": GuidanceInterval(sigma_lo=lo, sigma_hi=hi)
                             for lo, hi in args.intervals}
    unguided, _ = fid_of(module, dm, settings, metrics, fast, CFG(), 0.0, n, args.batch, args.seed)
    print(f"\n{n} samples per cell, DPM++ 20; unguided (w=0) FID {unguided:.2f}")
    print(f"{'guidance':<22}" + "".join(f"{'w=' + format(w, 'g'):>9}" for w in ws)
          + f"{'best':>9}{'NFE/step':>10}{'s/cell':>8}")
    report["interval"] = {"samples": n, "unguided_fid": unguided}
    for name, g in rows.items():
        (fids, nfes), sec = timed(lambda: zip(*(fid_of(module, dm, settings, metrics, fast, g, w, n, args.batch,
                                                       args.seed) for w in ws)))
        guided_nfe = max(nfes) / fast.steps
        report["interval"][name] = {"fid": dict(zip(ws, fids)), "best_fid": min(fids), "nfe_per_step": guided_nfe,
                                    "seconds_per_cell": sec / len(ws)}
        print(f"{name:<22}" + "".join(f"{f:>9.2f}" for f in fids)
              + f"{min(fids):>9.2f}{guided_nfe:>10.2f}{sec / len(ws):>8.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--parts", nargs="+", default=PARTS, choices=PARTS)
    ap.add_argument("--samples", type=int, default=1000, help="per sweep point")
    ap.add_argument("--quality-samples", type=int, default=500, help="per solver / interval cell")
    ap.add_argument("--quality-ws", type=float, nargs="+", default=QUALITY_WS)
    ap.add_argument("--seed", type=int, default=1, help="of the solver / interval samples")
    ap.add_argument("--intervals", nargs="+", type=sigma_interval, default=INTERVALS, metavar="LO,HI",
                    help="EDM sigma intervals to compare with plain CFG (hi may be inf)")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--cache", default=".cache/cfglab")
    add_device_argument(ap)
    args = ap.parse_args()
    t_start = time.perf_counter()
    dm, module = Checkpoint.open(args.ckpt).module()
    module.to(args.device)
    fast = DPMSolverPP2M(steps=20)
    report = {}
    settings = part_settings(module, dm, fast, report) if "settings" in args.parts else SamplingSettings()
    report["chosen"] = {"precision": settings.precision,
                        "batched": settings.resolve(module.device, dm.data_range)["batched"]}
    if "sweep" in args.parts:
        part_sweep(module, dm, settings, fast, args, report)
    if {"solver", "interval"} & set(args.parts):
        metrics = build_metrics(dm, extractor="domain", cache_dir=args.cache, device=args.device)
        if "solver" in args.parts:
            part_solver(module, dm, settings, metrics, fast, args, report)
        if "interval" in args.parts:
            part_interval(module, dm, settings, metrics, fast, args, report)
    info = {**describe(args.device), "ckpt": args.ckpt, "parts": args.parts, "batch": args.batch,
            "total_seconds": time.perf_counter() - t_start}
    print(json.dumps({"benchmark": "sweep_cost", **info, **report}))


if __name__ == "__main__":
    main()
