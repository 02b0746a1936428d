"""What a guidance sweep costs, and what the fast settings give up in quality, on a trained checkpoint.

    python benchmarks/sweep_cost.py --ckpt outputs/.../checkpoints/last.ckpt [--samples 1000] [--quality-samples 500]

1. Sampling settings, timed on the same 100 guided samples (w = 1): fp32 and bf16 autocast, one batched 2B forward
   or two B forwards; the fastest is used below.
2. The full sweep, end to end: 7 guidance strengths x `--samples` samples, DPM-Solver++(2M) 20 steps, domain
   FID / IS / KID / precision / recall (feature extractor and reference statistics included). The baseline is the
   paper's sampler (256 ancestral steps, cond and uncond as two fp32 forwards), timed on 50 samples and scaled to
   the same sweep.
3. Quality at equal sample count (`--quality-samples`, same seeds): domain FID of the 20-step sampler against
   250-step ancestral sampling (DDPM) at w = 1, and of guidance intervals against plain CFG over the w grid
   (best FID of each, and network evaluations per step).
Prints tables and one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time

import torch

from cfglab.checkpoints import load_module
from cfglab.diffusion.guidance import CFG, GuidanceInterval
from cfglab.diffusion.samplers import DDPM, DPMSolverPP2M, Paper
from cfglab.metrics.fidelity import build_metrics
from cfglab.sweep import SweepRecord, balanced_labels, generate, run_points

WS = [0.0, 0.3, 0.5, 1.0, 2.0, 3.0, 4.0]
INTERVALS = [(0.28, 5.42), (0.5, 2.0), (0.7, 2.0)]  # EDM sigma ranges; the first is Kynkaenniemi et al.'s


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def fid_of(module, metrics, sampler, guidance, n, batch):
    labels = balanced_labels(n, module.num_classes)
    images, nfe = generate(module, labels, sampler, guidance, batch, seed=1)
    return metrics(images, labels)["fid"], nfe


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--quality-samples", type=int, default=500)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--cache", default=".cache/cfglab")
    args = ap.parse_args()
    t_start = time.perf_counter()
    dm, module = load_module(args.ckpt)
    fast = DPMSolverPP2M(steps=20)
    report = {}

    # 1. sampling settings on identical work
    labels = balanced_labels(100, module.num_classes)
    settings = {}
    print(f"{'setting (100 samples, w=1, DPM++ 20)':<40}{'s':>8}{'vs fp32 2 passes':>18}")
    for precision in ("32-true", "bf16-mixed"):
        for batched in (False, True):
            module.sample_precision, module.batched_guidance = precision, batched
            generate(module, labels[:20], fast, CFG(w=1.0), 20, seed=0)  # warm-up
            _, sec = timed(lambda: generate(module, labels, fast, CFG(w=1.0), 100, seed=0))
            settings[(precision, batched)] = sec
            base = settings[("32-true", False)]
            print(f"{precision + (', batched 2B' if batched else ', 2 passes'):<40}{sec:>8.2f}{sec / base:>17.2f}x")
    precision, batched = min(settings, key=settings.get)
    module.sample_precision, module.batched_guidance = precision, batched
    report["settings"] = {f"{p}/{'batched' if b else 'two_passes'}": s for (p, b), s in settings.items()}
    report["chosen"] = {"sample_precision": precision, "batched_guidance": batched}

    # 2. the full sweep, end to end, and the paper-regime baseline on the same work
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        metrics = build_metrics(dm, extractor="domain", cache_dir=args.cache)
        points = run_points(module, WS, fast, CFG(), metrics, SweepRecord(tmp), args.samples, args.batch, seed=0)
        sweep_s = time.perf_counter() - t0
    module.sample_precision, module.batched_guidance = "32-true", False
    baseline_n = 50
    _, paper_s = timed(lambda: generate(module, labels[:baseline_n], Paper(steps=256), CFG(w=1.0), baseline_n, seed=0))
    paper_sweep_s = paper_s / baseline_n * args.samples * len(WS)
    module.sample_precision, module.batched_guidance = precision, batched
    print(f"\nfull sweep: {len(WS)} points x {args.samples} samples, DPM++ 20, {precision}, "
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

    # 3. quality at equal sample count
    n = args.quality_samples
    (fid_fast, nfe_fast), s_fast = timed(lambda: fid_of(module, metrics, fast, CFG(w=1.0), n, args.batch))
    (fid_anc, nfe_anc), s_anc = timed(lambda: fid_of(module, metrics, DDPM(steps=250), CFG(w=1.0), n, args.batch))
    print(f"\nw=1, {n} samples: DPM++ 20 FID {fid_fast:.2f} ({nfe_fast:.0f} NFE, {s_fast:.0f} s); "
          f"DDPM 250 FID {fid_anc:.2f} ({nfe_anc:.0f} NFE, {s_anc:.0f} s); ratio {fid_fast / fid_anc:.3f} (target <= 1.10)")
    report["solver_vs_ancestral"] = {"samples": n, "w": 1.0, "fid_dpmpp20": fid_fast, "fid_ddpm250": fid_anc,
                                     "nfe_dpmpp20": nfe_fast, "nfe_ddpm250": nfe_anc}
    rows = {"cfg": CFG()} | {f"interval ({lo:g}, {hi:g}]": GuidanceInterval(sigma_lo=lo, sigma_hi=hi)
                             for lo, hi in INTERVALS}
    print(f"\n{'guidance':<22}" + "".join(f"{'w=' + format(w, 'g'):>9}" for w in WS) + f"{'best':>9}{'NFE/step':>10}")
    report["interval"] = {}
    for name, g in rows.items():
        fids, nfes = zip(*(fid_of(module, metrics, fast, dataclasses.replace(g, w=w), n, args.batch) for w in WS))
        guided_nfe = max(nfes) / fast.steps
        report["interval"][name] = {"fid": dict(zip(WS, fids)), "best_fid": min(fids), "nfe_per_step": guided_nfe}
        print(f"{name:<22}" + "".join(f"{f:>9.2f}" for f in fids) + f"{min(fids):>9.2f}{guided_nfe:>10.2f}")
    info = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "ckpt": args.ckpt, "total_seconds": time.perf_counter() - t_start}
    print(json.dumps({"benchmark": "sweep_cost", **info, **report}))


if __name__ == "__main__":
    main()
