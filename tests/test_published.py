"""Published models against diffusers, the peer implementation: tiny random models built with diffusers, saved to
folders, loaded by cfglab and sampled through cfglab's one sampling function, against diffusers' DiTPipeline and
its schedulers' own loops from the same initial noise.

Tolerance: every path runs in float32, and the two differ in the order of their float operations (cfglab's
coefficients come from float64 log-SNRs, diffusers' from a float32 cumprod of the betas, off by ~1e-6 relative at
the last of 1000 steps). A few float32 ulps (6e-8) per operation, carried through at most 10 steps and the VAE's
decoder, stay below 1e-5 on images in [0, 1]: 80 ulps of 1.0, and 1/400 of one of the 256 levels they are saved in.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cfglab.config_checks import ConfigError, check_evaluate_config, check_generate_config, check_train_config
from cfglab.diffusion.guidance import Guidance
from cfglab.diffusion.samplers import DDIM, DDPM, DPMSolverPP2M, LearnedRange
from cfglab.diffusion.sampling import sample
from cfglab.diffusion.schedules import DiscreteLinearBeta
from cfglab.published.dit import PublishedDiT
from cfglab.published.unet2d import PublishedUNet2D
from helpers import ROOT, composed, save_vae

diffusers = pytest.importorskip("diffusers")
ATOL = 1e-5
ANCESTRAL = 4 * ATOL  # relative: learned-range steps also take float32 logs and exps of variances, carried by the noise
LABELS = [3, 999]


def tiny_dit(seed=0, out_channels=8):
    """A random diffusers DiT (1000 classes: DiTPipeline's null class is 1000) whose blocks share one time and class
    embedder, as every DiT converted from DiT's weights does, with DiT's LayerNorm eps."""
    torch.manual_seed(seed)
    tr = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                         out_channels=out_channels, num_layers=2, sample_size=8, patch_size=2,
                                         num_embeds_ada_norm=1000, norm_eps=1e-6)
    with torch.no_grad():
        for p in tr.parameters():  # away from any zero initialisation, so every weight matters
            p.add_(0.05 * torch.randn_like(p))
        emb = tr.transformer_blocks[0].norm1.emb.state_dict()
        for block in tr.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(emb)
    return tr.eval()


def official_state(tr) -> dict:
    """The diffusers DiT's weights in the key layout of DiT's models.py (diffusers' conversion script, inverted)."""
    sd, out = tr.state_dict(), {}
    emb = "transformer_blocks.0.norm1.emb."
    out["x_embedder.proj.weight"], out["x_embedder.proj.bias"] = sd["pos_embed.proj.weight"], sd["pos_embed.proj.bias"]
    out["pos_embed"] = tr.pos_embed.pos_embed.clone()  # a non-persistent buffer in diffusers, a tensor in DiT
    for i, j in ((1, 0), (2, 2)):
        for k in ("weight", "bias"):
            out[f"t_embedder.mlp.{j}.{k}"] = sd[f"{emb}timestep_embedder.linear_{i}.{k}"]
    out["y_embedder.embedding_table.weight"] = sd[f"{emb}class_embedder.embedding_table.weight"]
    for n in range(len(tr.transformer_blocks)):
        b = f"transformer_blocks.{n}."
        for k in ("weight", "bias"):
            out[f"blocks.{n}.adaLN_modulation.1.{k}"] = sd[f"{b}norm1.linear.{k}"]
            out[f"blocks.{n}.attn.qkv.{k}"] = torch.cat([sd[f"{b}attn1.to_{q}.{k}"] for q in "qkv"])
            out[f"blocks.{n}.attn.proj.{k}"] = sd[f"{b}attn1.to_out.0.{k}"]
            out[f"blocks.{n}.mlp.fc1.{k}"] = sd[f"{b}ff.net.0.proj.{k}"]
            out[f"blocks.{n}.mlp.fc2.{k}"] = sd[f"{b}ff.net.2.{k}"]
    for k in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{k}"] = sd[f"proj_out_1.{k}"]
        out[f"final_layer.linear.{k}"] = sd[f"proj_out_2.{k}"]
    return out


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    """(pipeline folder, official .pt file, the diffusers transformer)."""
    root = tmp_path_factory.mktemp("dit")
    tr = tiny_dit()
    vae = diffusers.AutoencoderKL.from_pretrained(save_vae(root / "vae_src", seed=1))
    pipe = diffusers.DiTPipeline(transformer=tr, vae=vae, scheduler=diffusers.DDIMScheduler())
    pipe.save_pretrained(root / "pipeline")
    torch.save(official_state(tr), root / "DiT-tiny-32x32.pt")
    return root / "pipeline", root / "DiT-tiny-32x32.pt", tr


def cfglab_samples(model, sampler, w, seed=0, **kw):
    datamodule, module = model.module()
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(LABELS), *module.net.sample_shape), generator=g)
    x, _ = sample(sampler=sampler, guidance=Guidance(), labels=torch.tensor(LABELS), w=w, noise=noise, generator=g,
                  decode=datamodule.decoder, batched=True, **module.sampling_args(), **kw)
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


SCHEDULERS = {
    "ddim": (lambda: diffusers.DDIMScheduler(timestep_spacing="trailing", clip_sample=False), lambda n: DDIM(n)),
    "dpmpp_2m": (lambda: diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                                               timestep_spacing="trailing", final_sigmas_type="zero"),
                 lambda n: DPMSolverPP2M(n)),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_guided_samples_of_a_diffusers_dit_folder_equal_ditpipeline(dit, name):
    folder, _, _ = dit
    make_scheduler, make_sampler = SCHEDULERS[name]
    pipe = diffusers.DiTPipeline.from_pretrained(folder, scheduler=make_scheduler(), low_cpu_mem_usage=False)
    scale, steps = 4.0, 10
    theirs = pipe(class_labels=LABELS, guidance_scale=scale, generator=torch.Generator().manual_seed(0),
                  num_inference_steps=steps, output_type="np").images
    ours = cfglab_samples(PublishedDiT(str(folder)), make_sampler(steps), w=scale - 1)
    assert np.abs(ours - theirs).max() < ATOL
    assert np.abs(ours - cfglab_samples(PublishedDiT(str(folder)), make_sampler(steps), w=0.0)).max() > 100 * ATOL


def scheduler_loop(model_fn, scheduler, steps, shape, labels, scale, generator, null, timesteps=None):
    """A diffusers scheduler's own loop, guided as DiTPipeline guides (every channel of eps); a learned-range
    DDPMScheduler also gets the conditional prediction's variance half, the others eps alone."""
    if timesteps is None:
        scheduler.set_timesteps(steps)
    else:
        scheduler.set_timesteps(timesteps=timesteps)
    x = torch.randn(shape, generator=generator)
    y = torch.cat([labels, torch.full_like(labels, null)])
    learned = getattr(scheduler.config, "variance_type", None) == "learned_range"
    for t in scheduler.timesteps:
        out = model_fn(torch.cat([x, x]), t.expand(2 * len(x)), y)
        c = x.shape[1]
        cond, uncond = out[:, :c].chunk(2)
        eps = uncond + scale * (cond - uncond)
        x = scheduler.step(torch.cat([eps, out[: len(x), c:]], 1) if learned else eps, t, x,
                           generator=generator).prev_sample
    return x


def test_dits_protocol_learned_range_ddpm_on_respaced_steps_equals_diffusers_ddpmscheduler(dit):
    folder, _, tr = dit
    model = PublishedDiT(str(folder))
    _, module = model.module()
    steps, scale = 7, 2.5
    sampler = LearnedRange(steps)  # respaced, as DiT's create_diffusion(str(N))
    n = model.schedule().timestep(sampler.grid(model.schedule())[:-1]).long().tolist()
    assert n == [999, 832, 666, 500, 333, 166, 0]  # space_timesteps(1000, [7]): round(k * 166.5), halves to even
    with torch.no_grad():
        theirs = scheduler_loop(lambda x, t, y: tr(x, t, class_labels=y).sample,
                                diffusers.DDPMScheduler(variance_type="learned_range", clip_sample=False), None,
                                (2, 4, 8, 8), torch.tensor(LABELS), scale, torch.Generator().manual_seed(5), 1000, n)
    g = torch.Generator().manual_seed(5)
    noise = torch.randn((2, 4, 8, 8), generator=g)
    ours, _ = sample(sampler=sampler, guidance=Guidance(), labels=torch.tensor(LABELS), w=scale - 1, noise=noise,
                     generator=g, batched=True, **module.sampling_args())
    assert (ours - theirs).abs().max() < ANCESTRAL * theirs.abs().max()
    # the variance is the network's: plain DDPM on the same steps adds other noise
    plain, _ = sample(sampler=DDPM(steps, spacing="respaced"), guidance=Guidance(), labels=torch.tensor(LABELS),
                      w=scale - 1, noise=noise, generator=torch.Generator().manual_seed(5), batched=True,
                      **module.sampling_args())
    assert (plain - theirs).abs().max() > 100 * ANCESTRAL * theirs.abs().max()


def test_learned_range_refuses_a_network_without_a_variance(tmp_path):
    from cfglab.diffusion.targets import Prediction

    den = lambda x, t, y: Prediction(torch.zeros_like(x), x)  # noqa: E731
    with pytest.raises(ValueError, match="learned variance"):
        LearnedRange(3)(den, DiscreteLinearBeta(), torch.zeros(1, 1, 2, 2), None, torch.Generator())


def test_the_official_key_layout_loads_to_dits_own_function_of_the_same_weights(dit):
    folder, official, tr = dit
    net = PublishedDiT(str(official), vae=str(folder / "vae"), num_heads=2).module()[1].net
    assert net.learned_variance and net.sample_shape == (4, 8, 8)
    reference = copy.deepcopy(tr)  # diffusers' DiT with DiT's own time features: frequencies over half, not half - 1
    for block in reference.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    g = torch.Generator().manual_seed(3)
    x, n, y = torch.randn(4, 4, 8, 8, generator=g), torch.tensor([999, 500, 17, 0]), torch.tensor([0, 5, 999, 1000])
    t = (n + 1) / 1000  # cfglab's time of step n
    with torch.no_grad():
        ours, official_fn, diffusers_fn = net(x, t, y), reference(x, n, class_labels=y).sample, tr(x, n, class_labels=y).sample
    assert ours.shape == (4, 8, 8, 8)
    assert (ours - official_fn).abs().max() < 1e-5 * official_fn.abs().max()
    # diffusers' own DiT is another function of these weights (its time frequencies): each layout runs as its code
    assert (ours - diffusers_fn).abs().max() > 1e-3 * official_fn.abs().max()


def test_three_of_four_channels_guided_as_dits_forward_with_cfg(dit):
    folder, _, tr = dit
    _, module = PublishedDiT(str(folder)).module()
    x, t, y = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), 0.5, torch.tensor(LABELS)
    from cfglab.diffusion.denoiser import GuidedDenoiser

    kw = dict(net=module.net, schedule=module.schedule, guidance=Guidance(), w=0.5, null_label=1000)
    three, full = GuidedDenoiser(**kw, guided_channels=3)(x, t, y), GuidedDenoiser(**kw)(x, t, y)
    with torch.no_grad():  # DiT's forward_with_cfg at cfg_scale 1.5: eps[:, :3] guided, the rest the conditional
        out = tr(torch.cat([x, x]), torch.tensor([499] * 4), class_labels=torch.tensor([*LABELS, 1000, 1000])).sample
    cond, uncond = out[:2, :3], out[2:, :3]
    expected = torch.cat([uncond + 1.5 * (cond - uncond), out[:2, 3:4]], 1)
    assert torch.allclose(three.eps, expected, atol=1e-5)
    assert torch.allclose(three.eps[:, :3], full.eps[:, :3]) and not torch.allclose(three.eps[:, 3], full.eps[:, 3])
    assert torch.allclose(three.v, out[:2, 4:], atol=1e-6)
    with pytest.raises(ValueError, match="sampling.guided_channels=4 must be below the model's 4 channels"):
        GuidedDenoiser(**kw, guided_channels=4)
    module.net.guidance_range = (0.0, 4.0)  # as a guidance-distilled network: one prediction, guided everywhere
    with pytest.raises(ValueError, match="sampling.guided_channels=3: a guidance-distilled network"):
        GuidedDenoiser(**kw, guided_channels=3)
    del module.net.guidance_range


def tiny_unet(path, seed=0, out_channels=6):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=out_channels, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, num_class_embeds=11)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    unet.save_pretrained(path)
    return unet.eval()


UNET_SAMPLERS = {  # diffusers' clip_sample is cfglab's clip_x0 on images in [-1, 1] for the DDPM posterior mean
    "ddim": (lambda: diffusers.DDIMScheduler(timestep_spacing="trailing", clip_sample=False), lambda: DDIM(5), None),
    "dpmpp_2m": (SCHEDULERS["dpmpp_2m"][0], lambda: DPMSolverPP2M(5), None),
    "learned_range": (lambda: diffusers.DDPMScheduler(variance_type="learned_range", clip_sample=True),
                      lambda: LearnedRange(6), 1.0),
}


@pytest.mark.parametrize("name", list(UNET_SAMPLERS))
def test_a_class_conditional_unet2dmodel_samples_as_diffusers_schedulers_step_it(tmp_path, name):
    unet = tiny_unet(tmp_path / "unet")
    model = PublishedUNet2D(str(tmp_path / "unet"))
    assert (model.num_classes, model.null_label, model.data_range) == (10, 10, 1.0)
    _, module = model.module()
    make_scheduler, make_sampler, clip = UNET_SAMPLERS[name]
    labels, scale, sampler = torch.tensor([2, 9]), 3.0, make_sampler()
    n = model.schedule().timestep(sampler.grid(model.schedule())[:-1]).long().tolist()
    with torch.no_grad():
        theirs = scheduler_loop(lambda x, t, y: unet(x, t, class_labels=y).sample, make_scheduler(), sampler.steps,
                                (2, 3, 8, 8), labels, scale, torch.Generator().manual_seed(1), 10,
                                n if clip else None)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn((2, 3, 8, 8), generator=g)
    ours, _ = sample(sampler=sampler, guidance=Guidance(), labels=labels, w=scale - 1, noise=noise, generator=g,
                     clip_x0=clip, **module.sampling_args())
    assert (ours - theirs).abs().max() < ANCESTRAL * theirs.abs().max()


@pytest.mark.parametrize("change, message", [
    (lambda root: torch.save({"weight": torch.zeros(2)}, root / "other.pt"), "not in the key layout of DiT"),
    (lambda root: (root / "other.pt").write_bytes(b"not a torch file"), "not a readable torch file"),
])
def test_a_file_of_an_unknown_layout_is_refused_naming_it(tmp_path, change, message):
    change(tmp_path)
    with pytest.raises(ValueError, match=message) as e:
        PublishedDiT(str(tmp_path / "other.pt"), vae=str(tmp_path))
    assert "published.path=" in str(e.value) and "other.pt" in str(e.value)


def test_a_folder_of_another_model_and_a_vae_of_other_channels_are_refused(dit, tmp_path):
    folder, official, _ = dit
    with pytest.raises(ValueError, match="not the config of a diffusers DiT"):
        PublishedDiT(str(folder / "vae"))
    with pytest.raises(ValueError, match="not the config of a diffusers UNet2DModel"):
        PublishedUNet2D(str(folder / "transformer"))
    with pytest.raises(ValueError, match="published.vae=null"):
        PublishedDiT(str(official), num_heads=2)
    vae8 = diffusers.AutoencoderKL(latent_channels=8, block_out_channels=(8, 8), norm_num_groups=4,
                                   down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    vae8.save_pretrained(tmp_path / "vae8")
    with pytest.raises(ValueError, match="has 8 latent channels, but .* takes 4"):
        PublishedDiT(str(official), vae=str(tmp_path / "vae8"), num_heads=2)


# -- the jobs: evaluate.py and generate.py on a published model

def run(script, *overrides):
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, overrides)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_generate_writes_the_npz_of_an_official_dit_file_guided_on_three_channels(dit, tmp_path):
    folder, official, _ = dit
    args = ["published=dit", f"published.path={official}", f"published.vae={folder / 'vae'}", "published.num_heads=2",
            "ws=[0,1.5]", "num_samples=6", "batch_size=4", "sampler=ddpm_learned", "sampler.steps=10",
            "sampling.guided_channels=3", "device=cpu"]
    run("generate.py", *args, f"hydra.run.dir={tmp_path}")
    unguided, guided = (np.load(tmp_path / f"w{w}" / "samples.npz") for w in ("0", "1.5"))
    assert guided["arr_0"].shape == (6, 32, 32, 3) and guided["arr_0"].dtype == np.uint8
    assert guided["arr_1"].tolist() == [0, 1, 2, 3, 4, 5]  # balanced over the model's 1000 classes
    assert not np.array_equal(guided["arr_0"], unguided["arr_0"])
    request = json.loads((tmp_path / "w1.5" / "samples.json").read_text())["request"]
    assert request["ckpt_path"] == str(official) and request["sampling"]["guided_channels"] == 3
    assert request["sampler"] == "LearnedRange(steps=10, spacing=respaced)"


@pytest.fixture(scope="module")
def unet_and_images(tmp_path_factory):
    """A tiny UNet2DModel over 10 classes and an image folder of 10 classes of 8 x 8 images to measure against."""
    root = tmp_path_factory.mktemp("unet")
    tiny_unet(root / "unet")
    rng = np.random.default_rng(0)
    for c in range(10):
        (root / "images" / f"class{c}").mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "images" / f"class{c}" / f"{i}.png")
    return root / "unet", root / "images"


@pytest.mark.slow
def test_evaluate_multirun_over_guidance_methods_on_a_unet2dmodel_folder_then_aggregate(unet_and_images, tmp_path):
    unet, images = unet_and_images
    run("evaluate.py", "-m", "published=unet2d", f"published.path={unet}", f"data.data_dir={images}",
        "guidance=cfg,interval", "sweep.ws=[0,2]", "sweep.num_samples=20", "sweep.batch_size=10", "sampler.steps=4",
        "metrics.classifier_epochs=1", "metrics.reference_size=100", "device=cpu",
        f"metrics.cache_dir={tmp_path / 'cache'}", f"published.data.store_root={tmp_path / 'stores'}",
        f"hydra.sweep.dir={tmp_path / 'multi'}")
    for job in ("0", "1"):
        points = json.loads((tmp_path / "multi" / job / "sweep.json").read_text())["points"]
        assert [p["w"] for p in points] == [0, 2] and all(math.isfinite(p["fid"]) for p in points)
        assert f"published.path={unet}" in (tmp_path / "multi" / job / ".hydra" / "overrides.yaml").read_text()
    run("aggregate.py", str(tmp_path / "multi"))
    with open(tmp_path / "multi" / "aggregate.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted({r["run"] for r in rows}) == ["guidance=cfg", "guidance=interval"] and len(rows) == 4
    assert (tmp_path / "multi" / "report.html").is_file()


@pytest.mark.parametrize("job, overrides, expected", [
    ("generate", ["labels=1000"], ["labels", "1000"]),
    ("generate", ["labels=[3,1000]"], ["labels", "1000"]),
    ("evaluate", [], ["data.data_dir", "null"]),
    ("generate", ["ckpt_path=x.ckpt"], ["ckpt_path", "give one model"]),
    ("generate", ["published.path=/nonexistent/DiT.pt"], ["published.path='/nonexistent/DiT.pt' does not exist"]),
    ("generate", ["published.vae=null"], ["published.vae=null", "without a VAE"]),
    ("generate", ["sampling.guided_channels=4"], ["sampling.guided_channels=4 must be below the model's 4 channels"]),
])
def test_bad_published_model_configs_are_refused_before_anything_runs(dit, tmp_path, job, overrides, expected):
    folder, official, _ = dit
    base = ["published=dit", f"published.path={official}", f"published.vae={folder / 'vae'}", "published.num_heads=2"]
    cfg = composed(job, [*base, *overrides], tmp_path / "out")
    with pytest.raises(ConfigError) as err:
        (check_generate_config if job == "generate" else check_evaluate_config)(cfg)
    assert all(s in str(err.value) for s in expected), str(err.value)
    assert not (tmp_path / "out").exists()


def test_no_model_and_a_learned_variance_sampler_for_a_model_without_one_are_refused(tmp_path):
    cfg = composed("generate", [], tmp_path / "out")
    with pytest.raises(ConfigError, match="ckpt_path: null: give a checkpoint"):
        check_generate_config(cfg)
    # training a cfglab model: neither the respaced steps (a continuous schedule) nor a learned variance
    cfg = composed("config", ["sampler=ddpm_learned"], tmp_path / "train")
    with pytest.raises(ConfigError) as err:
        check_train_config(cfg)
    assert "sampler.spacing='respaced' needs a discrete schedule" in str(err.value)
    assert "sampler=ddpm_learned needs a network with a learned variance" in str(err.value)
    with pytest.raises(ConfigError, match="sampling.guided_channels=1 must be below the model's 1 channels"):
        check_train_config(composed("config", ["sampling.guided_channels=1"], tmp_path / "t1"))
    cfg = composed("config", ["sampler=ddpm", "sampler.spacing=respaced", "schedule=ddpm_discrete"], tmp_path / "t2")
    check_train_config(cfg)  # DDPM on DiT's respaced steps of the discrete schedule: a cfglab model may


def test_every_sampler_and_guidance_method_samples_a_published_dit(dit):
    """Each config of conf/sampler and conf/guidance (autoguidance needs a weaker model of the same kind: not one
    here) on the published DiT, through the one sampling function: finite latents of the model's shape."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    folder, _, _ = dit
    _, module = PublishedDiT(str(folder)).module()
    labels = torch.tensor(LABELS)
    samplers = {p.stem: instantiate(OmegaConf.load(p), steps=3) for p in sorted((ROOT / "conf" / "sampler").glob("*.yaml"))}
    methods = {p.stem: instantiate(OmegaConf.load(p)) for p in sorted((ROOT / "conf" / "guidance").glob("*.yaml"))
               if p.stem != "autoguidance"}
    runs = [(s, "cfg") for s in samplers] + [("ddim", m) for m in methods]
    for sampler, method in runs:
        w = 0.5 if method == "cfgpp" else 1.5  # CFG++'s lambda lies in [0, 1]
        x, nfe = sample(sampler=samplers[sampler], guidance=methods[method], labels=labels, w=w,
                        generator=torch.Generator().manual_seed(0), **module.sampling_args())
        assert x.shape == (2, 4, 8, 8) and torch.isfinite(x).all() and nfe > 0, (sampler, method)
    assert len(runs) == len(samplers) + len(methods) >= 14


def test_reference_images_of_other_classes_are_refused(unet_and_images, tmp_path):
    unet, images = unet_and_images
    few = tmp_path / "three_classes"
    for c in range(3):
        shutil.copytree(images / f"class{c}", few / f"class{c}")
    cfg = composed("evaluate", ["published=unet2d", f"published.path={unet}", f"data.data_dir={few}",
                                f"published.data.store_root={tmp_path / 'stores'}"], tmp_path / "out")
    with pytest.raises(ConfigError, match="holds 3 classes, but unet has 10"):
        check_evaluate_config(cfg)
