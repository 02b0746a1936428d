"""Training speed with post-hoc EMA's power-function tracks on, against the same training without them.

    python benchmarks/phema_overhead.py [--steps 60] [--repeats 3] [--snapshot-every 20] [--device cuda]

Real Lightning fits of the mnist_study model (0.64 M parameters, batch 128, bf16 autocast, the fixed EMA 0.99
in both arms), on one in-memory data set of random 28x28 images: the baseline has the callbacks of
callbacks=default that touch a step (the EMA), the other arm adds PowerEMA with EDM2's two tracks and a snapshot
every `--snapshot-every` steps (written to a temporary folder; more often than a real run's, so that their cost
shows). Seconds per step are taken between the starts of successive steps after `--warmup` (every callback's
work and every snapshot written counted); the arms alternate, `--repeats` times each. Prints a table and a JSON
line with the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from device import add_device_argument, describe, sync

from cfglab.diffusion.schedules import Cosine
from cfglab.lightning.ema import EMA
from cfglab.lightning.module import CFGDiffusion
from cfglab.lightning.phema import PowerEMA
from cfglab.models.unet import UNet

MNIST_STUDY = dict(image_size=28, in_channels=1, num_classes=10, base_channels=24, channel_mult=(1, 2, 2),
                   num_res_blocks=1)  # conf/experiment/mnist_study.yaml


class StepClock(L.Callback):
    """The wall time from the start of step `warmup` to the start of the last step, per step."""

    def __init__(self, warmup: int, device: torch.device):
        self.warmup, self.device, self.starts = warmup, device, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        sync(self.device)
        self.starts.append(time.perf_counter())

    def seconds_per_step(self) -> float:
        starts = self.starts[self.warmup:]
        return (starts[-1] - starts[0]) / (len(starts) - 1)


def fit(tracks: bool, loader, args, device: torch.device, folder: str) -> float:
    torch.manual_seed(0)
    module = CFGDiffusion(UNet(**MNIST_STUDY), Cosine(), num_classes=10, lr=2e-3)
    clock = StepClock(args.warmup, device)
    callbacks = [clock, EMA(decay=0.99)]
    if tracks:
        callbacks.append(PowerEMA(folder, snapshot_every=args.snapshot_every))
    trainer = L.Trainer(max_steps=args.warmup + args.steps + 1, accelerator=device.type, devices=1, logger=False,
                        precision="bf16-mixed", callbacks=callbacks, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader)
    return clock.seconds_per_step()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--snapshot-every", type=int, default=20)
    add_device_argument(ap)
    args = ap.parse_args()
    device = torch.device(args.device)
    n = args.batch * (args.warmup + args.steps + 1)
    data = TensorDataset(torch.rand(n, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (n,)))  # speed: values do not matter
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True)
    times = {False: [], True: []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for tracks in (False, True):
                times[tracks].append(fit(tracks, loader, args, device, folder))
    base, with_tracks = statistics.median(times[False]), statistics.median(times[True])
    print(f"{'arm':<34}{'s/step (median)':>16}{'runs':>26}")
    for name, arm in (("EMA 0.99 (baseline)", False), ("EMA 0.99 + power-function tracks", True)):
        print(f"{name:<34}{statistics.median(times[arm]):>16.4f}   {', '.join(f'{t:.4f}' for t in times[arm])}")
    print(f"tracks on / off: {with_tracks / base:.3f}")
    print(json.dumps({"benchmark": "phema_overhead", **describe(device), "batch": args.batch, "steps": args.steps,
                      "snapshot_every": args.snapshot_every, "repeats": args.repeats, "seconds_per_step": {
                          "baseline": times[False], "tracks": times[True]}, "ratio": with_tracks / base}))


if __name__ == "__main__":
    main()
