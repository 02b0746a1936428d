"""Training throughput of the MNIST-scale models: images/s and achieved GFLOP/s, fast paths on and off.

    python benchmarks/train_throughput.py [--steps 30] [--batch 128] [--compile [MODE ...]] [--device cuda]

Every row runs the same training step as CFGDiffusion.training_step (label dropout, stratified t, noise, the
network, MSE) plus AdamW, gradient clipping and the EMA update, on one in-memory batch per step. The first row of
each model (fp32, contiguous, per-parameter EMA, batches through a DataLoader) is the baseline; every other row is
a ratio against it, measured in the same run. `--models mnist_study unet_mnist_cpu unet` adds the 1.1 M- and
7 M-parameter models (about 3 and 10 more minutes). FLOPs per image come from torch.utils.flop_counter (a forward at
batch 1); a training step is counted as 3 forwards (forward + backward), as is usual. On a GPU the DataLoader
baseline copies each batch from host memory and the other rows keep the data set on the GPU. Prints a table and a
JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from device import add_device_argument, describe, sync

from cfglab.data.loader import Batches
from cfglab.data.store import Items
from cfglab.diffusion.schedules import Cosine
from cfglab.lightning.ema import EMAUpdate
from cfglab.lightning.module import CFGDiffusion, drop_labels
from cfglab.models.unet import UNet

MODELS = {  # the configs in conf/model/; mnist_study is unet_mnist_cpu at 24 channels (conf/experiment/mnist_study)
    "mnist_study": dict(base_channels=24, channel_mult=(1, 2, 2), num_res_blocks=1),
    "unet_mnist_cpu": dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1),
    "unet": dict(base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_levels=(2,), dropout=0.1),
}
# (name, channels_last, bf16 autocast, foreach EMA, in-memory batches, torch.compile mode or None)
VARIANTS = [
    ("fp32, DataLoader, per-param EMA", False, False, False, False, None),
    ("fp32, in-memory batches", False, False, False, True, None),
    ("fp32, in-memory, foreach EMA", False, False, True, True, None),
    ("fp32, channels_last", True, False, True, True, None),
    ("bf16 autocast", False, True, True, True, None),
    ("bf16, channels_last", True, True, True, True, None),
]


def compiled_variant(mode: str) -> tuple:
    """bf16 under torch.compile in `mode`, with in-memory batches and the foreach EMA (as the rows from the 3rd)."""
    return (f"bf16, torch.compile ({mode})", False, True, True, True, mode)


def forward_flops(net: torch.nn.Module) -> float:
    x, t, y = torch.randn(1, 1, 28, 28), torch.rand(1), torch.zeros(1, dtype=torch.long)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, t, y)
    return counter.get_total_flops()


def per_parameter_ema(ema_params, params, decay):
    for e, p in zip(ema_params, params):  # what AveragedModel does with a per-parameter avg_fn
        e.copy_(decay * e + (1 - decay) * p)


def run(spec: dict, variant: tuple, x: torch.Tensor, y: torch.Tensor, batch: int, steps: int, warmup: int,
        device: torch.device) -> float:
    """Images per second of `steps` training steps after `warmup` ones; x, y in host memory."""
    _, channels_last, bf16, foreach_ema, in_memory, compile_mode = variant
    torch.manual_seed(0)
    module = CFGDiffusion(UNet(image_size=28, in_channels=1, num_classes=10, **spec), Cosine(), num_classes=10)
    net = module.net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    step_net = net if compile_mode is None else torch.compile(net, mode=compile_mode)
    module.net = step_net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    params = list(net.parameters())
    ema = [p.detach().clone() for p in params]
    ema_update = EMAUpdate(0.999)
    loader = (Batches(Items(x.to(device), y.to(device), np.arange(len(x))), batch) if in_memory
              else DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=True,
                              pin_memory=device.type == "cuda"))
    batches = iter(loader)
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        try:
            xb, yb = next(batches)
        except StopIteration:
            batches = iter(loader)
            xb, yb = next(batches)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = module.loss(xb, drop_labels(yb, 0.1, 10))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            if foreach_ema:
                ema_update(ema, params, None)
            else:
                per_parameter_ema(ema, params, 0.999)
    sync(device)
    return steps * batch / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--models", nargs="+", default=["mnist_study"], choices=list(MODELS))
    ap.add_argument("--compile", nargs="*", metavar="MODE", default=None,
                    help="also time torch.compile in these modes (default: 'default'; about 30 s each to compile); "
                         "'reduce-overhead' adds CUDA graphs on a GPU")
    add_device_argument(ap)
    args = ap.parse_args()
    device = torch.device(args.device)
    compile_modes = [] if args.compile is None else args.compile or ["default"]
    n = args.batch * 40
    x = torch.rand(n, 1, 28, 28) * 2 - 1  # throughput does not depend on the pixel values
    y = torch.randint(0, 10, (n,))
    rows = []
    print(f"{'model':<16}{'params':>9}{'GFLOP/img':>10}  {'variant':<32}{'img/s':>8}{'GFLOP/s':>9}{'vs baseline':>12}")
    for name in args.models:
        spec = MODELS[name]
        net = UNet(image_size=28, in_channels=1, num_classes=10, **spec)
        gflop = forward_flops(net) / 1e9
        params = sum(p.numel() for p in net.parameters())
        base = None
        for variant in VARIANTS + [compiled_variant(mode) for mode in compile_modes]:
            ips = run(spec, variant, x, y, args.batch, args.steps, args.warmup, device)
            base = base or ips
            achieved = 3 * gflop * ips
            rows.append({"model": name, "params": params, "gflop_per_image_forward": gflop, "variant": variant[0],
                         "images_per_s": ips, "achieved_gflop_per_s": achieved, "vs_baseline": ips / base})
            print(f"{name:<16}{params / 1e6:>8.2f}M{gflop:>10.3f}  {variant[0]:<32}{ips:>8.1f}{achieved:>9.1f}"
                  f"{ips / base:>11.2f}x", flush=True)
    info = {**describe(device), "batch": args.batch, "steps": args.steps}
    print(json.dumps({"benchmark": "train_throughput", **info, "rows": rows}))


if __name__ == "__main__":
    main()
