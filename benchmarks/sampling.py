"""Network evaluations and wall time per 1,000 guided samples, per sampler x guidance method.

    python benchmarks/sampling.py [--ckpt outputs/.../checkpoints/last.ckpt] [--samples 200] [--device cuda]

Without --ckpt a digits model is trained first (the default `python train.py` model, fewer steps). The
baseline row of each sampler is plain CFG with cond+uncond as two separate forward passes; every other row
is reported as a time ratio against it, measured in the same run. Samples go through
cfglab.diffusion.sampling.sample, as in every sweep. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from device import add_device_argument, describe, sync
from cfglab.diffusion.guidance import (APG, CFG, CFGPlusPlus, CFGRescale, DynamicThreshold, GuidanceInterval,
                                       ScheduledCFG)
from cfglab.diffusion.samplers import DDIM, DDPM, DPMSolverPP2M, Paper
from cfglab.diffusion.sampling import SamplingSettings, sample

W = 3.0
VARIANTS = [  # (name, guidance, w, batched 2B forward)
    ("cfg, 2 passes (baseline)", CFG(), W, False),
    ("cfg, batched 2B", CFG(), W, True),
    ("interval (0.28, 5.42]", GuidanceInterval(), W, True),
    ("rescale phi=0.7", CFGRescale(), W, True),
    ("dynamic threshold", DynamicThreshold(), W, True),
    ("linear w schedule", ScheduledCFG(shape="linear"), W, True),
    ("apg eta=0", APG(), W, True),
    ("cfg++ lambda=0.6", CFGPlusPlus(), 0.6, True),
    ("unguided (w=0)", CFG(), 0.0, True),
]
SAMPLERS = {"ddim": DDIM(steps=50), "dpmpp_2m": DPMSolverPP2M(steps=20), "ddpm": DDPM(steps=250),
            "paper": Paper(steps=256)}


def trained_module(ckpt: str | None, steps: int, device: str):
    if ckpt:
        from cfglab.checkpoints import Checkpoint

        dm, module = Checkpoint.open(ckpt).module()
        return dm, module.to(device)
    import lightning as L
    from hydra import compose, initialize_config_dir
    from pathlib import Path

    from cfglab.lightning.ema import EMA
    from cfglab.build import build

    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["~callbacks", "~logger"])
    L.seed_everything(0)
    dm, module = build(cfg)
    L.Trainer(max_steps=steps, accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1, logger=False,
              enable_checkpointing=False, callbacks=[EMA(decay=0.995)], enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(module, datamodule=dm)
    return dm, module.to(device).eval()


def measure(module, data_range, sampler, guidance, w: float, batched: bool, n: int) -> tuple[float, float]:
    """Network evaluations per sample and seconds per 1,000 samples."""
    labels = (torch.arange(n) % module.num_classes).to(module.device)
    settings = SamplingSettings(batched=batched).resolve(module.device, data_range)
    sync(module.device)
    t0 = time.perf_counter()
    _, nfe = sample(sampler=sampler, guidance=guidance, labels=labels, w=w, **module.sampling_args(), **settings,
                    generator=torch.Generator(device=module.device).manual_seed(0))
    sync(module.device)
    return nfe, (time.perf_counter() - t0) * 1000 / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--samples", type=int, default=200, help="samples per cell (times are scaled to 1,000)")
    ap.add_argument("--train-steps", type=int, default=1500)
    ap.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), default=list(SAMPLERS))
    add_device_argument(ap)
    args = ap.parse_args()
    torch.manual_seed(0)
    dm, module = trained_module(args.ckpt, args.train_steps, args.device)
    rows = []
    print(f"{'sampler':<28}{'guidance':<28}{'NFE/sample':>11}{'NFE/step':>9}{'s/1k samples':>14}{'vs baseline':>12}")
    for sampler in (SAMPLERS[name] for name in args.samplers):
        base = None
        for name, guidance, w, batched in VARIANTS:
            if guidance.renoise_with_uncond and not sampler.uses_eps:
                continue
            measure(module, dm.data_range, sampler, guidance, w, batched, min(10, args.samples))  # warm-up
            nfe, sec = measure(module, dm.data_range, sampler, guidance, w, batched, args.samples)
            base = sec if base is None else base
            row = {"sampler": repr(sampler), "guidance": name, "nfe_per_sample": nfe, "nfe_per_step": nfe / sampler.steps,
                   "seconds_per_1k": sec, "time_vs_baseline": sec / base}
            rows.append(row)
            print(f"{repr(sampler):<28}{name:<28}{nfe:>11.0f}{nfe / sampler.steps:>9.2f}{sec:>14.2f}{sec / base:>12.2f}")
    info = {**describe(args.device), "samples_per_cell": args.samples}
    print(json.dumps({"benchmark": "sampling", **info, "rows": rows}))


if __name__ == "__main__":
    main()
