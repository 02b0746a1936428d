"""The sampling functions every caller uses, their settings, and the package's import graph."""

import ast
import re

import pytest
import torch

from cfglab.diffusion.denoiser import GuidedDenoiser
from cfglab.diffusion.guidance import CFG, GuidanceInterval
from cfglab.diffusion.samplers import DDIM, DDPM
from cfglab.diffusion.sampling import SamplingSettings, sample, sample_batches
from cfglab.images import to_uint8
from helpers import ROOT, small_module


def test_sample_is_the_sampler_over_the_guided_denoiser_from_seeded_noise():
    """sample() adds nothing of its own: noise from the generator, then the sampler over GuidedDenoiser."""
    module = small_module()
    labels, guidance = torch.arange(6), GuidanceInterval(sigma_lo=0.5, sigma_hi=3.0)
    out, nfe = sample(sampler=DDPM(steps=8), guidance=guidance, labels=labels, w=2.0, clip_x0=1.0, batched=False,
                      generator=torch.Generator().manual_seed(4), **module.sampling_args())
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(6, 1, 8, 8, generator=g)
    den = GuidedDenoiser(module.net.eval(), module.schedule, guidance, 2.0, null_label=10, clip_x0=1.0, batched=False)
    with torch.inference_mode():
        ref = DDPM(steps=8)(den, module.schedule, noise, labels, g)
    assert torch.equal(out, ref) and nfe == den.nfe and 8 < nfe < 16


def test_sample_leaves_the_network_in_its_training_mode():
    module = small_module()
    module.net.train()
    sample(sampler=DDIM(steps=2), guidance=CFG(), w=1.0, labels=torch.arange(2), **module.sampling_args())
    assert module.net.training


def test_sharded_batches_put_together_equal_one_process():
    module, labels = small_module(), torch.arange(23) % 10
    kw = dict(sampler=DDIM(steps=3, eta=1.0), guidance=CFG(), w=1.5, labels=labels, batch_size=5, seed=7,
              clip_x0=1.0, **module.sampling_args())
    whole, nfe = sample_batches(**kw)
    shards = [sample_batches(**kw, rank=r, world=2)[0] for r in range(2)]
    assert whole.dtype == torch.uint8 and whole.shape == (23, 1, 8, 8) and nfe == 6
    # rank r holds batches r, r + 2, ...: interleave them back in batch order
    batches = [shards[i % 2][5 * (i // 2): 5 * (i // 2) + 5] for i in range(5)]
    assert torch.equal(torch.cat(batches), whole)
    # batch i does not depend on what ran before it
    g = torch.Generator().manual_seed(7 * 1_000_003 + 1)
    x, _ = sample(sampler=kw["sampler"], guidance=kw["guidance"], labels=labels[5:10], w=1.5, generator=g, clip_x0=1.0,
                  **module.sampling_args())
    assert torch.equal(to_uint8(x), whole[5:10])


def test_repeat_r_is_the_next_stretch_of_batch_seeds_and_shards_like_repeat_0():
    """Repeat 1 of 3 batches is batches 3-5 of the same labels twice over: disjoint from repeat 0's seeds."""
    module, labels = small_module(), torch.arange(12) % 10
    kw = dict(sampler=DDIM(steps=2), guidance=CFG(), w=1.0, batch_size=4, seed=3, clip_x0=1.0, **module.sampling_args())
    twice, _ = sample_batches(labels=torch.cat([labels, labels]), **kw)
    repeat1, _ = sample_batches(labels=labels, repeat=1, **kw)
    assert torch.equal(repeat1, twice[12:]) and not torch.equal(repeat1, twice[:12])
    shards = [sample_batches(labels=labels, repeat=1, rank=r, world=2, **kw)[0] for r in range(2)]
    assert torch.equal(torch.cat([shards[0][:4], shards[1][:4], shards[0][4:]]), repeat1)


def test_settings_resolve_for_the_device_and_the_data():
    auto = SamplingSettings()
    off = {"decode": None, "guided_channels": None}
    assert auto.resolve("cpu", 1.0) == {"clip_x0": 1.0, "batched": False, "autocast": None, **off}
    assert auto.resolve("cuda", None) == {"clip_x0": None, "batched": True, "autocast": None, **off}
    fixed = SamplingSettings(clip_x0=None, precision="bf16-mixed", batched=True, guided_channels=3)
    assert fixed.resolve("cpu", 1.0) == {"clip_x0": None, "batched": True, "autocast": torch.bfloat16,
                                         "decode": None, "guided_channels": 3}


@pytest.mark.parametrize("bad, match", [(dict(clip_x0=0), "clip_x0=0"), (dict(clip_x0="all"), "clip_x0='all'"),
                                        (dict(precision="16"), "precision='16'"), (dict(batched="yes"), "batched")])
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        SamplingSettings(**bad)


def test_the_documented_sampling_example_runs():
    text = (ROOT / "docs" / "diffusion-code.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "sample_batches" in b)
    module = small_module()
    scope = {"net": module.net}
    exec(compile(block, "docs/diffusion-code.md", "exec"), scope)
    assert scope["x0"].shape == (16, 1, 8, 8) and scope["nfe"] == 100
    assert scope["images"].shape == (100, 1, 8, 8) and scope["images"].dtype == torch.uint8


def cfglab_imports(path):
    """Modules of cfglab (and the top-level third-party packages) that a source file imports."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_import_graph_has_no_edge_back_up_and_the_diffusion_core_is_plain_pytorch():
    src = ROOT / "src" / "cfglab"
    jobs = {"cfglab.train", "cfglab.evaluate"}
    for path in src.rglob("*.py"):
        names = cfglab_imports(path)
        assert not names & jobs, f"{path.relative_to(src)} imports a job module: {names & jobs}"
        if path.parent.name == "diffusion":
            outside = {n for n in names if n.split(".")[0] not in ("torch", "__future__", "math", "dataclasses",
                                                                    "functools", "typing")}
            assert all(n.startswith("cfglab.diffusion") or n == "cfglab.images" for n in outside), (path.name, outside)
