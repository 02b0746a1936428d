"""GuidanceSweep under real DDP (2 CPU processes, gloo) gives the single-process sweep."""

import json
import subprocess
import sys

import pytest
import torch

from helpers import ROOT


def sweep(out, devices):
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_sweep_script.py"), str(out), str(devices)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "sweep.json").read_text())["points"]


@pytest.mark.slow
def test_ddp_sweep_equals_single_process(tmp_path):
    single = sweep(tmp_path / "single", 1)
    ddp = sweep(tmp_path / "ddp", 2)
    assert [p["w"] for p in ddp] == [p["w"] for p in single] == [0.0, 1.5]
    for a, b in zip(single, ddp):
        assert a["num_samples"] == b["num_samples"] == 70 and a["nfe"] == b["nfe"]
        for k in ("fid", "is", "kid", "precision", "recall", "accuracy"):
            assert b[k] == pytest.approx(a[k], rel=1e-9, abs=1e-12), k  # the very same images


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_train_py_with_two_ddp_processes(tmp_path, strategy, digits_cache):
    """`python train.py strategy=ddp trainer.devices=2` on CPU: one run directory, sharded sweep, rank-0 grids."""
    import os

    cmd = [sys.executable, str(ROOT / "train.py"), f"strategy={strategy}", "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.max_steps=30", "sweep.num_samples=60", "sweep.ws=[0,2]", "grids.per_class=2",
           "sampler.steps=5", f"hydra.run.dir={tmp_path / 'run'}", "trainer.enable_progress_bar=false"]
    env = {**os.environ, "CFGLAB_CACHE": str(digits_cache)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # rank 1 wrote into the same run dir
    if strategy == "ddp":  # rank 1 re-ran train.py into the same run directory
        assert (run / "train_ddp_process_1.log").is_file()
    points = json.loads((run / "sweep.json").read_text())["points"]
    assert [p["w"] for p in points] == [0.0, 2.0] and all(p["num_samples"] == 60 for p in points)
    assert proc.stdout.count("guided samples:") == 3  # grids from rank 0 only
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 30
