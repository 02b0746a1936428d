"""Bad configurations are refused before any compute, each with a message naming the key and the bad value."""

import os
import subprocess
import sys

import pytest
import torch

from cfglab.config_checks import ConfigError, check_evaluate_config, check_train_config
from helpers import ROOT, composed


# (overrides, strings the message must contain: the key and the bad value)
BAD_TRAIN = [
    (["module.p_uncond=1.5"], ["module", "p_uncond=1.5"]),
    (["module.p_uncond=-0.1"], ["module", "p_uncond=-0.1"]),
    (["module.lr=0"], ["module", "lr=0"]),
    (["module.target=score"], ["module", "score"]),
    (["module.warmup_steps=-5"], ["module", "warmup_steps=-5"]),
    (["+module.foo=3"], ["module.foo", "3"]),
    (["+data.colour=red"], ["data.colour", "red"]),
    (["+top_level_typo=1"], ["top_level_typo", "1"]),
    (["sampler.steps=0"], ["sampler", "steps=0"]),
    (["sampler.eta=2"], ["sampler", "eta=2"]),
    (["sweep.ws=[0,-1]"], ["sweep.ws[1]", "w=-1"]),
    (["guidance=cfgpp"], ["sweep.ws[6]", "w=2"]),  # CFG++'s lambda lies in [0, 1]: the default grid is invalid
    (["guidance=cfgpp", "sweep.ws=[0,1]"], ["grids.ws[2]", "w=3"]),
    (["sweep.ws=[0,2,2]"], ["sweep.ws", "[0, 2, 2]"]),
    (["sweep.ws=[]"], ["sweep.ws", "is empty"]),
    (["grids.ws=[0,1,1]"], ["grids.ws", "[0, 1, 1]"]),
    (["grids.ws=[0,high]"], ["grids.ws[1]", "'high'"]),
    (["sweep.num_samples=0"], ["sweep", "num_samples=0"]),
    (["sampling.clip_x0=-1"], ["sampling", "clip_x0=-1"]),
    (["sampling.precision=fp8"], ["sampling", "precision='fp8'"]),
    (["sampling.batched=sometimes"], ["sampling", "batched='sometimes'"]),
    (["data.batch_size=0"], ["data", "batch_size=0"]),
    (["data.val_fraction=1.0"], ["data", "val_fraction=1.0"]),
    (["model.channel_mult=[1,2,2]", "data.image_size=6"], ["model", "image_size=6"]),
    (["+model.num_classes=5"], ["model.num_classes", "5"]),
    (["trainer.max_steps=0"], ["trainer.max_steps", "0"]),
    (["trainer.precision=fp8"], ["trainer.precision", "fp8"]),
    (["trainer.gradient_clip_val=-1"], ["trainer.gradient_clip_val", "-1"]),
    (["trainer.devices=0"], ["trainer.devices", "0"]),
    (["+trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches", "0"]),
    (["data=mnist", "data.data_dir=/nonexistent/mnist"], ["data", "data_dir='/nonexistent/mnist'"]),
    (["data=mnist", "data.split=validation"], ["data", "split='validation'"]),
    (["metrics=inception", "metrics.weights_path=/nonexistent/inception.pth"],
     ["metrics", "weights_path='/nonexistent/inception.pth'"]),
    (["metrics=inception"], ["metrics", "weights_path=None"]),
    (["metrics=exact"], ["metrics", "extractor='exact'"]),
    (["ckpt_path=/nonexistent/last.ckpt"], ["ckpt_path", "/nonexistent/last.ckpt"]),
    (["guidance=cfgpp", "sampler=dpmpp_2m", "sweep.ws=[0,0.5]", "grids.ws=[0]"], ["sampler", "CFGPlusPlus"]),
    (["+guidance.w=3"], ["guidance.w", "3", "sweep.ws", "grids.ws"]),
    (["+callbacks.sweep.ws=[0,1]"], ["callbacks.sweep.ws", "sweep.ws"]),
    (["+module.clip_x0=null"], ["module.clip_x0", "sampling.clip_x0"]),
    (["guidance=interval", "guidance.sigma_lo=5", "guidance.sigma_hi=1"], ["guidance", "sigma_lo=5"]),
    (["callbacks.ema.decay=1.0"], ["callbacks.ema", "decay=1.0"]),
    (["schedule.s=-1"], ["schedule", "s=-1"]),
    (["+callbacks.checkpoint.every_n_steps=5"], ["callbacks.checkpoint.every_n_steps", "5"]),
]
if not torch.cuda.is_available():
    BAD_TRAIN.append((["trainer=gpu"], ["trainer.accelerator", "gpu"]))


@pytest.mark.parametrize("overrides,expected", BAD_TRAIN, ids=[" ".join(o) for o, _ in BAD_TRAIN])
def test_bad_train_config_is_refused_naming_key_and_value(overrides, expected, tmp_path):
    cfg = composed("config", overrides, tmp_path / "run")
    with pytest.raises(ConfigError) as err:
        check_train_config(cfg)
    for s in expected:
        assert s in str(err.value), str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides", [
    [], ["data=gmm", "model=mlp", "metrics=exact", "sampling.clip_x0=null"],
    ["guidance=cfgpp", "sweep.ws=[0,0.5,1]", "grids.ws=[0,1]"], ["sampler=paper", "schedule=paper"],
    ["sampling.batched=true", "sampling.precision=bf16-mixed", "sampling.clip_x0=2"],
    ["guidance=interval_high"], ["guidance=interval_narrow"],
    ["strategy=ddp", "trainer.devices=2"], ["logger=none", "~callbacks.sweep"],
])
def test_good_train_configs_pass(overrides, tmp_path):
    check_train_config(composed("config", overrides, tmp_path))


def test_every_problem_is_listed_at_once(tmp_path):
    cfg = composed("config", ["module.p_uncond=2", "sampler.steps=0", "trainer.max_steps=0"], tmp_path)
    with pytest.raises(ConfigError) as err:
        check_train_config(cfg)
    assert all(s in str(err.value) for s in ("p_uncond=2", "steps=0", "trainer.max_steps"))


@pytest.mark.parametrize("overrides,expected", [
    (["ckpt_path=/nonexistent/last.ckpt"], ["ckpt_path", "/nonexistent/last.ckpt"]),
    (["sweep.ws=[0,-2]"], ["sweep.ws[1]", "w=-2"]),
    (["sweep.num_samples=0"], ["sweep", "num_samples=0"]),
    (["+sweep.w=[0,1]"], ["sweep.w", "sweep.ws"]),
    (["+guidance.w=3"], ["guidance.w", "sweep.ws"]),
    (["sampling.batched=2"], ["sampling", "batched=2"]),
    (["+sweep_typo=1"], ["sweep_typo", "1"]),
])
def test_bad_evaluate_config_is_refused(overrides, expected, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"")
    cfg = composed("evaluate", [f"ckpt_path={ckpt}", *overrides], tmp_path / "run")
    with pytest.raises(ConfigError) as err:
        check_evaluate_config(cfg)
    for s in expected:
        assert s in str(err.value), str(err.value)


def run_script(script, *overrides):
    cmd = [sys.executable, str(ROOT / script), *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "HYDRA_FULL_ERROR": "0"})


def test_train_py_refuses_before_hydra_writes_anything(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_script("train.py", f"hydra.run.dir={run_dir}", "module.p_uncond=1.5", "+module.foo=bar")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "module.foo: unknown key (value 'bar')" in proc.stderr and "Traceback" not in proc.stderr
    assert not run_dir.exists()


def test_bad_config_leaves_an_earlier_run_untouched(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("earlier run\n")
    proc = run_script("train.py", f"hydra.run.dir={run_dir}", "sampler.steps=0")
    assert proc.returncode == 2 and "steps=0" in proc.stderr
    assert [p.name for p in run_dir.rglob("*")] == [".hydra", "config.yaml"]
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "earlier run\n"


def test_evaluate_py_refuses_before_hydra_writes_anything(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_script("evaluate.py", f"hydra.run.dir={run_dir}", f"ckpt_path={tmp_path / 'missing.ckpt'}")
    assert proc.returncode == 2 and "missing.ckpt" in proc.stderr
    assert not run_dir.exists()


@pytest.mark.parametrize("script, override, expected", [
    ("train.py", "guidance.w=3", ["guidance.w: 3", "sweep.ws", "grids.ws"]),
    ("train.py", "callbacks.sweep.ws=[0,1]", ["callbacks.sweep.ws", "set sweep.ws"]),
    ("train.py", "module.batched_guidance=false", ["module.batched_guidance", "sampling.batched"]),
    ("evaluate.py", "sweep.w=[0,1]", ["sweep.w: [0,1]", "sweep.ws"]),
    ("generate.py", "guidance.w=2", ["guidance.w: 2", "the strengths are ws"]),
    ("evaluate.py", "guidance.w=2", ["guidance.w: 2", "sweep.ws"]),
    ("evaluate.py", "+guidance.w=2", ["guidance.w: 2", "sweep.ws"]),
])
def test_a_w_that_would_be_ignored_is_refused_naming_where_it_belongs(script, override, expected, tmp_path):
    """Hydra alone would either apply such a value to nothing or fail with an error that does not say where the
    value belongs; both scripts refuse it before Hydra composes anything."""
    run_dir = tmp_path / "run"
    proc = run_script(script, f"hydra.run.dir={run_dir}", "ckpt_path=null" if script == "train.py" else
                      f"ckpt_path={tmp_path / 'x.ckpt'}", override)  # refused before the missing file matters
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert all(s in proc.stderr for s in expected), proc.stderr
    assert "Traceback" not in proc.stderr and not run_dir.exists()


def test_guidance_configs_carry_no_strength():
    """The strength comes from sweep.ws / grids.ws: every guidance config builds its method without a w."""
    from omegaconf import OmegaConf

    for path in sorted((ROOT / "conf" / "guidance").glob("*.yaml")):
        node = OmegaConf.load(path)
        assert "w" not in node and node._partial_ is True, path.name
