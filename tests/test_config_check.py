"""Bad configurations are refused before any compute, each with a message naming the key and the bad value."""

import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from cfglab.config import ConfigError, check_evaluate_config, check_train_config
from conftest import ROOT


def composed(config_name, overrides, run_dir):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.pop("hydra")
    return cfg


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
    (["callbacks.sweep.ws=[0,-1]"], ["callbacks.sweep", "w=-1"]),
    (["guidance=cfgpp"], ["callbacks.sweep", "w=2"]),  # CFG++'s lambda lies in [0, 1]: the default grid is invalid
    (["grids.ws=[0,1,1]"], ["grids.ws", "[0, 1, 1]"]),
    (["grids.ws=[0,high]"], ["grids.ws[1]", "'high'"]),
    (["callbacks.sweep.num_samples=0"], ["callbacks.sweep", "num_samples=0"]),
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
    (["guidance=cfgpp", "sampler=dpmpp_2m", "callbacks.sweep.ws=[0,0.5]"], ["sampler", "CFGPlusPlus"]),
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
    [], ["data=gmm", "model=mlp", "metrics=exact", "module.clip_x0=null"],
    ["guidance=cfgpp", "callbacks.sweep.ws=[0,0.5,1]", "grids.ws=[0,1]"], ["sampler=paper", "schedule=paper"],
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
    (["sweep.w=[0,-2]"], ["sweep.w[1]", "w=-2"]),
    (["sweep.num_samples=0"], ["sweep.num_samples", "0"]),
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
