"""The main job end to end: `python train.py` as a user runs it."""

import subprocess
import sys

import numpy as np
import csv
import json
import os
import re

import pytest
import torch
from PIL import Image

from cfglab.checkpoints import Checkpoint
from cfglab.diffusion.guidance import CFG
from cfglab.diffusion.samplers import DDIM
from helpers import ROOT, sample_module


def run_train(run_dir, *overrides, progress=False, cache=None):
    """train.py as a user runs it; `cache`: $CFGLAB_CACHE (None: a fresh one in the run folder)."""
    cmd = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}",
           *([] if progress else ["trainer.enable_progress_bar=false"]), *overrides]
    env = {**os.environ, "CFGLAB_CACHE": str(cache or run_dir / "cache")}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_debug_preset_runs_the_whole_job_small_and_reports_it(tmp_path):
    """experiment=debug: train, checkpoint, sweep and grids end to end; the run says what it measured and what
    produced it, and nothing that is not about the run (no tip, no warning, no zero FLOPs), with its progress bars
    on as a user sees them and a logging interval longer than an epoch (12 batches)."""
    proc = run_train(tmp_path, "experiment=debug", "trainer.log_every_n_steps=20", progress=True)
    points = json.loads((tmp_path / "sweep.json").read_text())["points"]
    assert [(p["step"], p["w"], p["num_samples"]) for p in points] == [(10, 0.0, 50), (10, 1.0, 50)]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    out = proc.stdout + proc.stderr
    assert "sweep point done: step=10  w=1" in out  # one line per point
    for noise in ("Tip", "litlogger", "LeafSpec", "no last checkpoint", "Warning", "warn(", "v_num", "TPU available",
                  "srun",
                  "Skipping setting a default"):
        assert noise not in out, noise
    flops = re.search(r"\n([\d.]+ [KMG]?) +Total Flops", out)
    assert flops and float(flops.group(1).split()[0]) > 0  # one forward of one sample, counted
    assert "training steps (epoch 0): 100%" in out and "10/10" in out
    assert "domain classifier: step 0 of" in out
    table = proc.stdout[proc.stdout.index("guidance sweep at step 10"):]
    assert all(c in table for c in ("fid", "precision", "recall", "accuracy", "nfe"))
    assert f"{tmp_path / 'sweep.csv'}" in table and f"{tmp_path / 'tradeoff.png'}" in table
    stamp = json.loads((tmp_path / "stamp.json").read_text())
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert stamp["git_commit"] == head and stamp["lightning"] and stamp["device"].startswith("cpu")
    logged = next((tmp_path / "csv").rglob("hparams.yaml")).read_text()
    assert "git_commit" in logged  # the loggers' config holds the stamp too


@pytest.mark.slow
def test_short_run_writes_grids_checkpoint_and_logs(tmp_path, digits_cache):
    proc = run_train(tmp_path, "trainer.max_steps=12", "sampler.steps=3", "grids.per_class=2",
                     "callbacks.checkpoint.every_n_train_steps=5", "trainer.log_every_n_steps=4",
                     "sweep.ws=[0,1]", "sweep.num_samples=20", cache=digits_cache)
    for w in (0, 1, 3):
        png = tmp_path / f"samples_w{w}.png"
        assert f"guided samples: {png}" in proc.stdout
        img = Image.open(png)
        # 10 rows (classes) x 2 columns of 8x8 images upscaled x4, 1-pixel padding
        assert img.size == (2 * 33 + 1, 10 * 33 + 1)
    rows = list(csv.DictReader(open(next((tmp_path / "csv").rglob("metrics.csv")))))
    assert any(r.get("train/loss") for r in rows)
    _, module = Checkpoint.open(tmp_path / "checkpoints" / "last.ckpt").module()
    assert module.p_uncond == 0.1 and module.num_classes == 10
    # the final step, not the last periodic save (step 10)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12
    assert (tmp_path / "sweep.csv").is_file() and (tmp_path / "tradeoff.png").is_file()


@pytest.mark.slow
def test_overrides_reach_the_objects(tmp_path):
    run_train(tmp_path, "trainer.max_steps=2", "sampler=ddpm", "sampler.steps=2", "grids.per_class=1",
              "schedule=paper", "module.target=v", "module.p_uncond=0.3", "model.base_channels=16",
              "~callbacks.sweep")
    _, module = Checkpoint.open(tmp_path / "checkpoints" / "last.ckpt").module()
    assert module.target == "v" and module.p_uncond == 0.3 and module.net.base_channels == 16
    assert type(module.schedule).__name__ == "PaperLogSNR"


@pytest.mark.slow
def test_bad_override_fails_before_training(tmp_path):
    cmd = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={tmp_path}", "module.p_uncond=1.5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode != 0 and "p_uncond=1.5" in proc.stderr
    assert not (tmp_path / "checkpoints").exists()


def digits_classifier():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    d = load_digits()
    return LogisticRegression(max_iter=5000).fit(d.images.reshape(len(d.images), -1) / 8 - 1, d.target)


@pytest.mark.slow
def test_default_recipe_samples_follow_their_labels(tmp_path):
    """`python train.py`'s recipe for 600 of its 3,000 steps (measured: class accuracy 0.92 unguided, 1.0 at
    w = 3), its end-of-fit sweep left to the smaller runs here: a classifier fitted on real digits recognises
    guided samples' classes, better with guidance."""
    run_train(tmp_path, "~callbacks.sweep", "trainer.max_steps=600")
    _, module = Checkpoint.open(tmp_path / "checkpoints" / "last.ckpt").module()
    clf = digits_classifier()
    labels = torch.arange(10).repeat_interleave(50)
    acc = {}
    for w in (0.0, 3.0):
        x = sample_module(module, labels, DDIM(steps=50), CFG(), w, torch.Generator().manual_seed(0))
        acc[w] = float(np.mean(clf.predict(x.reshape(len(x), -1).numpy()) == labels.numpy()))
    print(f"classifier accuracy on guided samples: {acc}")
    assert acc[3.0] >= 0.9
    assert acc[3.0] > acc[0.0]


@pytest.mark.slow
def test_toy_mixture_job_trains_and_sweeps(tmp_path):
    run_train(tmp_path, "data=gmm", "model=mlp", "metrics=exact", "module.target=v",
              "trainer.max_steps=60", "sweep.ws=[0,3]", "sweep.num_samples=100",
              "grids.per_class=2", "sampler.steps=10")
    points = json.loads((tmp_path / "sweep.json").read_text())["points"]
    assert [p["w"] for p in points] == [0.0, 3.0] and all(p["nfe"] > 0 for p in points)
    assert (tmp_path / "samples_w3.png").is_file() and (tmp_path / "sweep_grids" / "step60_w3.png").is_file()


class Exploit:
    def __reduce__(self):
        return (exec, ("raise SystemExit('arbitrary code ran')",))


def test_malicious_checkpoint_is_refused(tmp_path):
    import pickle

    bad = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "cfglab_config": {}, "payload": Exploit()}, bad)
    with pytest.raises(ValueError, match="holds objects that only arbitrary code can unpickle") as err:
        Checkpoint.open(bad).module()
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)
    with pytest.raises(ValueError, match="'/nowhere.ckpt' is not a file"):
        Checkpoint.open("/nowhere.ckpt")
