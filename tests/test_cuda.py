"""GPU paths: guided sampling without host synchronisation, CPU/GPU agreement, and a training run on the GPU.
Skipped where no CUDA device is present."""

import subprocess
import sys

import pytest
import torch

from cfglab.checkpoints import Checkpoint
from cfglab.diffusion.denoiser import GuidedDenoiser
from cfglab.diffusion.guidance import CFG, GuidanceInterval, ScheduledCFG
from cfglab.diffusion.samplers import DDIM, DPMSolverPP2M, time_grid
from cfglab.diffusion.schedules import Cosine, DiscreteLinearBeta
from cfglab.models.unet import UNet
from helpers import ROOT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def small_net(device):
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=1, num_classes=10, base_channels=16, channel_mult=(1, 2), num_res_blocks=1)
    return net.to(device).eval()


@pytest.mark.parametrize("schedule", [Cosine(), DiscreteLinearBeta()], ids=["cosine", "discrete"])
@pytest.mark.parametrize("sampler", [DPMSolverPP2M(steps=10), DDIM(steps=10, eta=1.0)])
@pytest.mark.parametrize("guidance", [CFG(), GuidanceInterval(sigma_lo=0.5, sigma_hi=2.0), ScheduledCFG(shape="cosine")])
def test_guided_sampling_never_synchronises_with_the_host(sampler, guidance, schedule):
    dev = torch.device("cuda")
    schedule.log_snr(torch.zeros(1, device=dev))  # the discrete schedule copies its table to the device once
    den = GuidedDenoiser(small_net(dev), schedule, guidance, 2.0, null_label=10, clip_x0=1.0, autocast=torch.bfloat16)
    g = torch.Generator(device=dev).manual_seed(0)
    x, y = torch.randn(8, 1, 8, 8, device=dev, generator=g), torch.arange(8, device=dev) % 10
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any device-to-host read inside the loop raises
    try:
        with torch.inference_mode():
            out = sampler(den, schedule, x, y, g)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_gpu_samples_match_cpu_samples(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # full fp32 convolutions on the GPU
    guidance = GuidanceInterval(sigma_lo=0.5, sigma_hi=10.0)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(16) % 10
    outs = {}
    for dev in ("cpu", "cuda"):
        den = GuidedDenoiser(small_net(dev), Cosine(), guidance, 1.5, null_label=10, clip_x0=1.0)
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
    _, module = Checkpoint.open(run / "checkpoints" / "last.ckpt").module()
    assert module.checkpoint_step == 40
    assert (run / "sweep.json").is_file() and (run / "samples_w1.png").is_file()


def test_evaluate_and_generate_on_the_gpu_agree_with_the_cpu(tmp_path):
    """The same checkpoint, seeds and settings give the same samples (deterministic DDIM from noise drawn on the
    CPU) and so the same metrics on either device, up to float rounding."""
    import json
    import os

    import numpy as np

    env = {**os.environ, "CFGLAB_CACHE": str(tmp_path / "cache"), "NVIDIA_TF32_OVERRIDE": "0"}  # full fp32 on the GPU
    run = lambda script, *args: subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, timeout=600,  # noqa: E731
                                               capture_output=True, text=True)
    train = run("train.py", f"hydra.run.dir={tmp_path / 'train'}", "trainer.max_steps=200", "~callbacks.sweep",
                "grids.ws=[0]", "grids.per_class=1", "logger=none", "trainer.enable_progress_bar=false")
    assert train.returncode == 0, train.stderr[-3000:]
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    points, arrays = {}, {}
    for dev in ("cpu", "cuda"):
        ev = run("evaluate.py", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / dev / 'eval'}", f"device={dev}",
                 "sweep.ws=[0,2]", "sweep.num_samples=500", "sampler.steps=20", "sampling.batched=true")
        assert ev.returncode == 0, ev.stderr[-3000:]
        points[dev] = json.loads((tmp_path / dev / "eval" / "sweep.json").read_text())["points"]
        gen = run("generate.py", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / dev / 'gen'}", f"device={dev}",
                  "ws=[2]", "num_samples=500", "sampler.steps=20", "sampling.batched=true")
        assert gen.returncode == 0, gen.stderr[-3000:]
        arrays[dev] = np.load(tmp_path / dev / "gen" / "w2" / "samples.npz")["arr_0"].astype(int)
        assert json.loads((tmp_path / dev / "eval" / "stamp.json").read_text())["device"].startswith(dev)
    diff = np.abs(arrays["cuda"] - arrays["cpu"])
    print(f"generate: pixels differing {np.mean(diff > 0):.4f}, by more than 2 levels {np.mean(diff > 2):.5f}")
    assert np.mean(diff > 2) < 0.01
    for cpu, gpu in zip(points["cpu"], points["cuda"]):
        print({k: (cpu[k], gpu[k]) for k in ("w", "fid", "is", "precision", "recall", "accuracy")})
        assert gpu["fid"] == pytest.approx(cpu["fid"], rel=0.05, abs=0.2)
        assert gpu["is"] == pytest.approx(cpu["is"], rel=0.02)
        for k in ("precision", "recall", "accuracy"):
            assert gpu[k] == pytest.approx(cpu[k], abs=0.02)


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m"])
def test_a_published_dit_folder_samples_as_ditpipeline_on_the_gpu(tmp_path, name):
    """tests/test_published.py's equivalence with diffusers, on CUDA: both from the same CPU-drawn noise."""
    import diffusers
    import numpy as np

    from cfglab.diffusion.guidance import Guidance
    from cfglab.diffusion.sampling import sample
    from cfglab.published.dit import PublishedDiT
    from helpers import save_vae
    from test_published import ATOL, LABELS, SCHEDULERS, tiny_dit

    vae = diffusers.AutoencoderKL.from_pretrained(save_vae(tmp_path / "vae", seed=1))
    diffusers.DiTPipeline(transformer=tiny_dit(), vae=vae, scheduler=diffusers.DDIMScheduler()).save_pretrained(
        tmp_path / "pipeline")
    make_scheduler, make_sampler = SCHEDULERS[name]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 on both sides
    pipe = diffusers.DiTPipeline.from_pretrained(tmp_path / "pipeline", scheduler=make_scheduler(),
                                                 low_cpu_mem_usage=False).to("cuda")
    theirs = pipe(class_labels=LABELS, guidance_scale=4.0, generator=torch.Generator().manual_seed(0),
                  num_inference_steps=10, output_type="np").images
    datamodule, module = PublishedDiT(str(tmp_path / "pipeline")).module()
    module.to("cuda")
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0)).cuda()
    x, _ = sample(sampler=make_sampler(10), guidance=Guidance(), labels=torch.tensor(LABELS, device="cuda"), w=3.0,
                  noise=noise, decode=datamodule.decoder, batched=True, **module.sampling_args())
    ours = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    assert np.abs(ours - theirs).max() < ATOL
