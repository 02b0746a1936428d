"""Sweep time of a published DiT: guided DPM-Solver++(2M) at 20 steps with decoding, per 1,000 samples, through
cfglab's `published=dit` (both layouts) against diffusers' DiTPipeline on the same architecture, in the same run.

    python benchmarks/published_dit.py                       # on a GPU: random-weight DiT-XL/2 at 256 px, SD's VAE
    python benchmarks/published_dit.py --tiny --samples 4 --batch 2   # CPU smoke run

The weights are random (the cost is the architecture's: DiT-XL/2 on 32x32x4 latents, 8 output channels, an
SD-architecture AutoencoderKL), written as the official file layout and as a diffusers pipeline folder, and read
back through cfglab.published, as a user's files would be. Rows:
  DiTPipeline            diffusers' pipeline with DPMSolverMultistepScheduler (dpmsolver++, order 2, trailing), fp32
  cfglab official fp32   published.path=<file>: cfglab's DiT, `sample_batches` (what a sweep point runs), fp32
  cfglab diffusers fp32  published.path=<folder>: diffusers' DiTTransformer2DModel inside cfglab's sampling
  cfglab official bf16   sampling.precision=bf16-mixed (the network under bf16 autocast)
Every row: one batch first as warm-up, then `--samples` samples at w = 1.5 (s = 2.5) in batches of `--batch`,
the conditional and unconditional predictions in one forward of 2B, decoding included. TF32 matmuls are on for
every row. Prints a table and a JSON line with seconds per 1,000 samples and each row's ratio to DiTPipeline.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from device import add_device_argument, describe, sync

from cfglab.diffusion.guidance import CFG
from cfglab.diffusion.samplers import DPMSolverPP2M
from cfglab.diffusion.sampling import sample_batches
from cfglab.models.dit import DiT, parse_variant
from cfglab.published.dit import PublishedDiT

SD_VAE = dict(latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
TINY_VAE = dict(latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
XL2 = dict(zip(("depth", "hidden_size", "num_heads", "patch_size"), parse_variant("XL/2")))
TINY = {"depth": 2, "hidden_size": 64, "num_heads": 2, "patch_size": 2}
W = 1.5


def write_models(root: Path, tiny: bool) -> tuple[Path, Path]:
    """(the official-layout file, the diffusers pipeline folder), random weights of the same architecture."""
    from diffusers import AutoencoderKL, DiTPipeline, DiTTransformer2DModel, DPMSolverMultistepScheduler

    shape, latent = (TINY, 8) if tiny else (XL2, 32)
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(TINY_VAE if tiny else SD_VAE)
    dit = DiT(latent, 4, 1000, variant=None, learned_variance=True, timestep_scale=1.0, **shape)
    for p in dit.parameters():  # away from adaLN-Zero's zeros, so that every block computes
        torch.nn.init.normal_(p, std=0.02)
    torch.save({**dit.state_dict(), "pos_embed": dit.pos_embed}, root / "DiT-random.pt")
    vae.save_pretrained(root / "vae")
    transformer = DiTTransformer2DModel(
        num_attention_heads=shape["num_heads"], attention_head_dim=shape["hidden_size"] // shape["num_heads"],
        in_channels=4, out_channels=8, num_layers=shape["depth"], sample_size=latent, patch_size=shape["patch_size"],
        num_embeds_ada_norm=1000)
    DiTPipeline(transformer=transformer, vae=vae, scheduler=DPMSolverMultistepScheduler()).save_pretrained(
        root / "pipeline")
    return root / "DiT-random.pt", root / "pipeline"


def timed(work, batches: list[list[int]], device: torch.device) -> float:
    """Seconds for work(labels) over every batch, after one warm-up batch."""
    work(batches[0])
    sync(device)
    t0 = time.perf_counter()
    for labels in batches:
        work(labels)
    sync(device)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tiny", action="store_true", help="a 2-block DiT and a small VAE (the CPU smoke run)")
    add_device_argument(ap)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    labels = [i % 1000 for i in range(args.samples)]
    batches = [labels[i:i + args.batch] for i in range(0, args.samples, args.batch)]
    from diffusers import DiTPipeline, DPMSolverMultistepScheduler

    with tempfile.TemporaryDirectory() as tmp:
        official, folder = write_models(Path(tmp), args.tiny)
        scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                                timestep_spacing="trailing", final_sigmas_type="zero")
        pipe = DiTPipeline.from_pretrained(folder, scheduler=scheduler, low_cpu_mem_usage=False).to(device)
        pipe.set_progress_bar_config(disable=True)
        rows = {"DiTPipeline": timed(lambda y: pipe(class_labels=y, guidance_scale=1 + W,
                                                    num_inference_steps=args.steps, output_type="np"),
                                     batches, device)}
        pipe.to("cpu")  # its memory back for the next rows
        for name, path, autocast in (("cfglab official fp32", official, None), ("cfglab diffusers fp32", folder, None),
                                     ("cfglab official bf16", official, torch.bfloat16)):
            model = PublishedDiT(str(path), vae=str(Path(tmp) / "vae"), num_heads=(TINY if args.tiny else XL2)["num_heads"])
            datamodule, module = model.module()
            module.to(device)
            kwargs = dict(**module.sampling_args(), sampler=DPMSolverPP2M(args.steps), guidance=CFG(), w=W,
                          batch_size=args.batch, seed=0, batched=True, autocast=autocast, decode=datamodule.decoder)
            rows[name] = timed(lambda y: sample_batches(labels=torch.tensor(y), **kwargs), batches, device)
            module.cpu()
    per_1000 = {k: v / args.samples * 1000 for k, v in rows.items()}
    print(f"{'':<24}{'s / 1000 samples':>18}{'vs DiTPipeline':>16}")
    for k, v in per_1000.items():
        print(f"{k:<24}{v:>18.2f}{per_1000['DiTPipeline'] / v:>15.2f}x")
    print(json.dumps({**describe(device), "model": "tiny" if args.tiny else "DiT-XL/2 256px", "w": W,
                      "sampler": f"DPMSolverPP2M(steps={args.steps})", "samples": args.samples, "batch": args.batch,
                      "seconds_per_1000": per_1000,
                      "speedup_vs_ditpipeline": {k: per_1000["DiTPipeline"] / v for k, v in per_1000.items()}}))


if __name__ == "__main__":
    main()
