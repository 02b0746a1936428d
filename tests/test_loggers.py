"""Loggers from train.py: W&B offline runs named after the Hydra job, the resolved config, and no credentials."""

import os
import subprocess
import sys

import pytest

from cfglab.loggers import find_secrets, wandb_api_key_configured
from helpers import ROOT, wandb_run

SECRET = "cfglab-test-secret-5f0c2a9e71d4"


def train(run_dir, *overrides, **env):
    cmd = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}", "trainer.max_steps=4",
           "~callbacks.sweep", "grids.ws=[0]", "grids.per_class=1", "sampler.steps=2", "model.base_channels=16",
           "trainer.enable_progress_bar=false", *overrides]
    env = {**os.environ, "WANDB_SILENT": "true", "CFGLAB_CACHE": str(run_dir / "cache"), **env}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


@pytest.mark.slow
def test_wandb_run_is_named_after_the_job_holds_the_config_and_no_api_key(tmp_path):
    run_dir = tmp_path / "run"
    proc = train(run_dir, "logger=[csv,wandb,tensorboard]", "logger.wandb.mode=offline", "module.p_uncond=0.3",
                 WANDB_API_KEY=SECRET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    raw = next((run_dir / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
    run = wandb_run(next((run_dir / "wandb").glob("offline-run-*")))
    # the job's overrides, shortened (no paths: hydra.run.dir is not among them), at most 128 characters
    assert run.display_name.startswith("max_steps=4 sweep ws=[0] per_class=1 steps=2 base_channels=16")
    assert len(run.display_name) <= 128 and "/" not in run.display_name
    assert b"data:digits" in raw and b"guidance:cfg" in raw  # tags: the config group choices
    assert b"warmup_steps" in raw and b"p_uncond" in raw  # the resolved config
    assert "p_uncond: 0.3" in next((run_dir / "csv").rglob("hparams.yaml")).read_text()
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    leaked = [p for p in run_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaked and SECRET not in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("override,key", [
    ("+logger.wandb.api_key=abc123", "logger.wandb.api_key"),
    ("logger.wandb.tags=[${oc.env:WANDB_API_KEY}]", "logger.wandb.tags[0]"),
])
def test_credentials_in_the_config_are_refused_before_anything_is_written(tmp_path, override, key):
    proc = train(tmp_path / "run", "logger=wandb", override, WANDB_API_KEY=SECRET)
    assert proc.returncode == 2 and f"{key}: looks like a credential" in proc.stderr
    assert SECRET not in proc.stderr and not (tmp_path / "run").exists()


def test_wandb_is_offline_without_an_api_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not wandb_api_key_configured()
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_api_key_configured()
    monkeypatch.setenv("WANDB_API_KEY", "x")
    assert wandb_api_key_configured()


def test_find_secrets(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    cfg = {"a": {"token": "t", "ok": 1, "list": ["x", f"pre-{SECRET}"]}, "password": None}
    assert find_secrets(cfg) == ["a.token", "a.list[1]"]
