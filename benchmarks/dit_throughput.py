"""DiT training and guided sampling speed on latents: cfglab's DiT against diffusers' DiTTransformer2DModel of the
same size, in the same run, precision and compile setting.

    python benchmarks/dit_throughput.py                        # on a GPU: DiT-B/2 and DiT-XL/2, 32x32x4 latents
    python benchmarks/dit_throughput.py --tiny --batch 4 --steps 2 --warmup 1 --sample-batch 2   # CPU smoke run

Training rows: the training step of CFGDiffusion (label dropout, stratified t, noise, the network under bf16
autocast, MSE) plus backward and AdamW, on one batch of random latents kept on the device (the data store's
loader is measured apart, in benchmarks/data_store.py). img/s over `--steps` steps after `--warmup`; peak memory
is torch.cuda.max_memory_allocated over the timed steps. Model FLOPs per step come from torch.utils.flop_counter
over one forward and backward of cfglab's network at the batch (the same architecture's FLOPs are credited to
both implementations); MFU = FLOP/s / the card's dense bf16 peak (`--peak-tflops`, else a table of known cards).
diffusers' network has its label dropout switched off in every block (cfglab drops labels once, in the module)
and gets t as its 0 ... 1000 timestep.

Sampling rows: guided DPM-Solver++ (2M, 20 steps; one forward of 2B per step) for DiT-XL/2 through
cfglab.diffusion.sampling.sample, decoding with an SD-architecture AutoencoderKL (random weights: the cost is
the architecture's) through cfglab.latent.vae.VAELatents; img/s includes the decoding, whose share is reported.
Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Optional

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from device import add_device_argument, describe, sync

from cfglab.diffusion.guidance import CFG
from cfglab.diffusion.samplers import DPMSolverPP2M
from cfglab.diffusion.sampling import sample
from cfglab.diffusion.schedules import LinearBeta
from cfglab.latent.vae import VAELatents
from cfglab.lightning.module import CFGDiffusion, drop_labels
from cfglab.models.dit import DiT, parse_variant

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, matched against the device name.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}
NUM_CLASSES = 1000
TINY = {"depth": 2, "hidden_size": 64, "num_heads": 2, "patch_size": 2}  # the CPU smoke run's network
SD_VAE = dict(latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
TINY_VAE = dict(latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


class DiffusersDiT(nn.Module):
    """diffusers' DiTTransformer2DModel behind cfglab's network interface (x_t, t in [0, 1], labels)."""

    def __init__(self, latent_size: int, depth: int, hidden_size: int, num_heads: int, patch_size: int):
        super().__init__()
        from diffusers import DiTTransformer2DModel

        self.model = DiTTransformer2DModel(
            sample_size=latent_size, num_layers=depth, attention_head_dim=hidden_size // num_heads,
            num_attention_heads=num_heads, patch_size=patch_size, in_channels=4, out_channels=4,
            num_embeds_ada_norm=NUM_CLASSES, norm_type="ada_norm_zero", norm_elementwise_affine=False)
        for m in self.model.modules():  # its blocks would each drop labels on their own in train mode
            if hasattr(m, "dropout_prob"):
                m.dropout_prob = 0.0
        self.sample_shape = (4, latent_size, latent_size)

    def forward(self, x, t, labels):
        return self.model(x, timestep=t * 1000, class_labels=labels).sample


def networks(name: str, latent_size: int, tiny: bool) -> dict[str, nn.Module]:
    shape = TINY if tiny else dict(zip(("depth", "hidden_size", "num_heads", "patch_size"), parse_variant(name)))
    torch.manual_seed(0)
    return {"cfglab": DiT(latent_size, 4, NUM_CLASSES, variant=None, **shape),
            "diffusers": DiffusersDiT(latent_size, **shape)}


def step_flops(net: nn.Module, batch: int, latent_size: int, device: torch.device) -> float:
    """FLOPs of one forward and backward at `batch` (eager, bf16 autocast). Attention is counted through the math
    kernel, whose matmuls the counter sees on every device (the CPU's fused kernel is not registered with it)."""
    x = torch.randn(batch, 4, latent_size, latent_size, device=device)
    t, y = torch.rand(batch, device=device), torch.randint(0, NUM_CLASSES, (batch,), device=device)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = net(x, t, y)
        out.float().square().mean().backward()
    net.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def train_rate(net: nn.Module, compiled: bool, batch: int, latent_size: int, steps: int, warmup: int,
               device: torch.device) -> tuple[float, Optional[float]]:
    """(img/s, peak GB) of the training step."""
    module = CFGDiffusion(net.to(device), LinearBeta(), num_classes=NUM_CLASSES)
    params = list(net.parameters())
    if compiled:
        module.net = torch.compile(net)
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    x0 = torch.randn(batch, 4, latent_size, latent_size, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = module.loss(x0, drop_labels(labels, 0.1, NUM_CLASSES))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    rate = steps * batch / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return rate, peak


def sampling_rate(net: nn.Module, compiled: bool, batch: int, repeats: int, vae: VAELatents,
                  device: torch.device) -> dict:
    """Guided DPM-Solver++ 20-step img/s including decoding, for one batch repeated, and the decoding's share."""
    net = net.to(device).eval()
    fn = torch.compile(net) if compiled else net
    fn.sample_shape = net.sample_shape
    labels = torch.arange(batch, device=device) % NUM_CLASSES
    kwargs = dict(schedule=LinearBeta(), sampler=DPMSolverPP2M(steps=20), guidance=CFG(), labels=labels, w=1.5,
                  null_label=NUM_CLASSES, batched=True, autocast=torch.bfloat16, decode=vae.decode)
    latents = torch.randn(batch, *net.sample_shape, device=device)
    seconds = {}
    for name, work in (("sample and decode", lambda: sample(fn, **kwargs)), ("decode", lambda: vae.decode(latents))):
        work()  # warm-up: compilation, the VAE's first call
        sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            work()
        sync(device)
        seconds[name] = (time.perf_counter() - t0) / repeats
    return {"img_per_s": batch / seconds["sample and decode"],
            "decode_share": seconds["decode"] / seconds["sample and decode"]}


def peak_tflops(device: torch.device, given: Optional[float]) -> Optional[float]:
    if given is not None:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["B/2", "XL/2"])
    ap.add_argument("--latent-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="eager rows only")
    ap.add_argument("--sample-model", default="XL/2")
    ap.add_argument("--sample-batch", type=int, default=64)
    ap.add_argument("--sample-repeats", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak (default: known cards)")
    ap.add_argument("--tiny", action="store_true", help="a 2-block network and a small VAE (the CPU smoke run)")
    add_device_argument(ap)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    peak = peak_tflops(device, args.peak_tflops)
    compiles = [False] if args.no_compile else [False, True]
    if args.tiny:
        args.models = ["tiny"]
    rows = []
    print(f"{'model':<8}{'impl':<11}{'compile':<9}{'img/s':>9}{'peak GB':>9}{'TFLOP/s':>9}{'MFU':>7}"
          f"{'vs diffusers':>14}{'vs diff. eager':>15}")
    for name in args.models:
        flops = step_flops(networks(name, args.latent_size, args.tiny)["cfglab"].to(device), args.batch,
                           args.latent_size, device)
        rates = {}
        for compiled in compiles:
            for impl in ("diffusers", "cfglab"):
                net = networks(name, args.latent_size, args.tiny)[impl]  # fresh weights and optimizer per row
                rate, mem = train_rate(net, compiled, args.batch, args.latent_size, args.steps, args.warmup, device)
                rates[impl, compiled] = rate
                tflops = flops / args.batch * rate / 1e12
                row = {"model": name if args.tiny else f"DiT-{name}", "impl": impl, "compile": compiled,
                       "batch": args.batch, "img_per_s": rate, "peak_gb": mem, "step_tflop": flops / 1e12,
                       "tflop_per_s": tflops, "mfu": None if peak is None else tflops / peak,
                       "vs_diffusers_same_setting": rate / rates["diffusers", compiled],
                       "vs_diffusers_eager": rate / rates["diffusers", False]}
                rows.append(row)
                mfu = "-" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
                print(f"{row['model']:<8}{impl:<11}{str(compiled):<9}{rate:>9.1f}{mem or 0:>9.1f}{tflops:>9.2f}"
                      f"{mfu:>7}{row['vs_diffusers_same_setting']:>13.2f}x{row['vs_diffusers_eager']:>14.2f}x")
                del net
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    from diffusers import AutoencoderKL

    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        AutoencoderKL.from_config(TINY_VAE if args.tiny else SD_VAE).save_pretrained(folder)
        vae = VAELatents(folder, batch_size=args.sample_batch)
        vae.set_stats({"shift": [0.0] * 4, "scale": [0.18215] * 4})
        net = networks("tiny" if args.tiny else args.sample_model, args.latent_size, args.tiny)["cfglab"]
        sampling = {}
        for compiled in compiles:
            r = sampling_rate(net, compiled, args.sample_batch, args.sample_repeats, vae, device)
            sampling[f"compile={compiled}"] = r
            print(f"sampling {'tiny' if args.tiny else 'DiT-' + args.sample_model} compile={compiled}: "
                  f"{r['img_per_s']:.1f} img/s including decoding ({100 * r['decode_share']:.0f}% of the time)")
    print(json.dumps({**describe(device), "peak_bf16_tflops": peak, "latent_size": args.latent_size, "rows": rows,
                      "sampling": {"model": args.sample_model, "sampler": "DPMSolverPP2M(steps=20)",
                                   "batch": args.sample_batch, **sampling}}))


if __name__ == "__main__":
    main()
