"""GPU paths: guided sampling without host synchronisation, CPU/GPU agreement, and a training run on the GPU.
Skipped where no CUDA device is present."""

import subprocess
import sys

import pytest
import torch

from cfglab.checkpoints import load_module
from cfglab.diffusion.denoiser import GuidedDenoiser
from cfglab.diffusion.guidance import CFG, GuidanceInterval, ScheduledCFG
from cfglab.diffusion.samplers import DDIM, DPMSolverPP2M, time_grid
from cfglab.diffusion.schedules import Cosine
from cfglab.models.unet import UNet
from helpers import ROOT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def small_net(device):
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=1, num_classes=10, base_channels=16, channel_mult=(1, 2), num_res_blocks=1)
    return net.to(device).eval()


@pytest.mark.parametrize("sampler", [DPMSolverPP2M(steps=10), DDIM(steps=10, eta=1.0)])
@pytest.mark.parametrize("guidance", [CFG(w=2.0), GuidanceInterval(w=2.0, sigma_lo=0.5, sigma_hi=2.0),
                                      ScheduledCFG(w=2.0, shape="cosine")])
def test_guided_sampling_never_synchronises_with_the_host(sampler, guidance):
    dev = torch.device("cuda")
    den = GuidedDenoiser(small_net(dev), Cosine(), guidance, null_label=10, clip_x0=1.0, autocast=torch.bfloat16)
    g = torch.Generator(device=dev).manual_seed(0)
    x, y = torch.randn(8, 1, 8, 8, device=dev, generator=g), torch.arange(8, device=dev) % 10
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any device-to-host read inside the loop raises
    try:
        with torch.inference_mode():
            out = sampler(den, Cosine(), x, y, g)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_gpu_samples_match_cpu_samples(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # full fp32 convolutions on the GPU
    guidance = GuidanceInterval(w=1.5, sigma_lo=0.5, sigma_hi=10.0)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(16) % 10
    outs = {}
    for dev in ("cpu", "cuda"):
        den = GuidedDenoiser(small_net(dev), Cosine(), guidance, null_label=10, clip_x0=1.0)
        with torch.inference_mode():
            outs[dev] = DPMSolverPP2M(steps=10)(den, Cosine(), x.to(dev), y.to(dev)).cpu()
        assert den.nfe == 10 + sum(0.5 < s <= 10.0 for s in sigmas(10))
    torch.testing.assert_close(outs["cuda"], outs["cpu"], atol=1e-3, rtol=1e-3)


def sigmas(steps):
    return torch.exp(-Cosine().log_snr(time_grid(steps)[:-1]) / 2).tolist()


def test_train_py_on_the_gpu_trains_sweeps_and_checkpoints(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", "trainer=gpu", "trainer.max_steps=40", f"hydra.run.dir={run}",
         "sweep.ws=[0,1]", "sweep.num_samples=50", "sweep.batch_size=25",
         "metrics.device=cuda", "grids.ws=[1]", "grids.per_class=2", "trainer.enable_progress_bar=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, module = load_module(run / "checkpoints" / "last.ckpt")
    assert module.checkpoint_step == 40
    assert (run / "sweep.json").is_file() and (run / "samples_w1.png").is_file()
