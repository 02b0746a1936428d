"""generate.py: ADM-layout npz, PNG folder and metadata per w; resume after a kill; sharding over processes;
evaluate.py on a checkpoint whose data moved; run stamps."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from cfglab.config_checks import ConfigError, check_generate_config
from helpers import ROOT, composed, make_mnist

TINY_TRAIN = ["trainer.max_steps=20", "model.base_channels=16", "~callbacks.sweep", "grids.ws=[0]", "grids.per_class=1",
              "sampler.steps=2", "logger=none", "trainer.enable_progress_bar=false"]


def run(script, *overrides, env=None, check=True):
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, overrides)], capture_output=True, text=True,
                          cwd=ROOT, env=env or os.environ.copy(), timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("train")
    run("train.py", f"hydra.run.dir={run_dir}", *TINY_TRAIN)
    return run_dir / "checkpoints" / "last.ckpt"


def generate(ckpt, out, *overrides, env=None):
    return run("generate.py", f"ckpt_path={ckpt}", f"hydra.run.dir={out}", "sampler.steps=3", "device=cpu",
               *overrides, env=env)


@pytest.mark.slow
def test_generate_writes_adm_npz_pngs_and_metadata_for_each_w(ckpt, tmp_path):
    out = tmp_path / "gen"
    proc = generate(ckpt, out, "ws=[0,2]", "num_samples=12", "batch_size=5", "labels=[3,5]", "png=true")
    for w in ("0", "2"):
        wdir = out / f"w{w}"
        npz = np.load(wdir / "samples.npz")
        assert npz["arr_0"].dtype == np.uint8 and npz["arr_0"].shape == (12, 8, 8, 1)  # N x H x W x C
        assert npz["arr_1"].tolist() == [3, 5] * 6
        pngs = sorted((wdir / "images").glob("*.png"))
        assert [p.name for p in pngs[:3]] == ["000000_3.png", "000001_5.png", "000002_3.png"] and len(pngs) == 12
        assert np.array_equal(np.array(Image.open(pngs[4])), npz["arr_0"][4, ..., 0])
        meta = json.loads((wdir / "samples.json").read_text())
        req = meta["request"]
        assert req["w"] == float(w) and req["seed"] == 0 and req["num_samples"] == 12 and req["step"] == 20
        assert req["ckpt_sha256"] == __import__("hashlib").sha256(ckpt.read_bytes()).hexdigest()
        assert "DDIM(steps=3" in req["sampler"] and req["guidance"] == "CFG()"
        assert meta["class_counts"][3] == meta["class_counts"][5] == 6 and meta["nfe_per_sample"] == (3 if w == "0" else 6)
        assert not (wdir / "batches").exists()
    assert "samples:" in proc.stdout and "w2/samples.npz" in proc.stdout
    stamp = json.loads((out / "stamp.json").read_text())
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert stamp["git_commit"] == head and stamp["torch"] and stamp["device"].startswith("cpu")
    assert isinstance(stamp["git_dirty"], bool)


@pytest.mark.slow
def test_a_killed_generation_resumes_to_the_uninterrupted_result(ckpt, tmp_path):
    args = ["ws=[1]", "num_samples=48", "batch_size=4", "sampler=ddpm", "sampler.steps=20"]
    generate(ckpt, tmp_path / "whole", *args)
    out = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "generate.py"), f"ckpt_path={ckpt}", f"hydra.run.dir={out}", "device=cpu", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, batches = time.time() + 300, out / "w1" / "batches"
    while time.time() < deadline and proc.poll() is None:
        if batches.is_dir() and len(list(batches.glob("*.pt"))) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    written = len(list(batches.glob("*.pt")))
    assert 3 <= written < 12 and not (out / "w1" / "samples.npz").exists(), "should have been killed midway"
    generate(ckpt, out, *args)
    a, b = np.load(tmp_path / "whole" / "w1" / "samples.npz"), np.load(out / "w1" / "samples.npz")
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])


@pytest.mark.slow
def test_two_processes_together_make_what_one_process_makes(ckpt, tmp_path):
    args = ["ws=[0.5]", "num_samples=23", "batch_size=5", "sampler=ddpm", "sampler.steps=4"]
    generate(ckpt, tmp_path / "one", *args)
    shared = tmp_path / "two"
    for rank in (1, 0):  # one after the other: rank 0 finds rank 1's batches and puts all together
        generate(ckpt, shared, *args, env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
        assert (shared / "w0.5" / "samples.npz").exists() == (rank == 0)
    a, b = np.load(tmp_path / "one" / "w0.5" / "samples.npz"), np.load(shared / "w0.5" / "samples.npz")
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])


@pytest.mark.slow
def test_a_folder_holding_another_request_is_refused(ckpt, tmp_path):
    generate(ckpt, tmp_path, "ws=[1]", "num_samples=4", "batch_size=4")
    proc = run("generate.py", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path}", "sampler.steps=3", "device=cpu",
               "ws=[1]", "num_samples=4", "batch_size=4", "seed=1", check=False)
    assert proc.returncode == 1 and "holds samples of another request" in proc.stderr and "seed" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("override, expected", [
    ("labels=banana", ["labels", "'banana'"]), ("labels=[]", ["labels", "[]"]), ("labels=[1,-2]", ["labels"]),
    ("num_samples=0", ["num_samples", "0"]), ("device=tpu", ["device", "'tpu'"]), ("ws=[0,-1]", ["ws[1]", "w=-1"]),
    ("ws=[1,1]", ["ws", "repeats"]), ("+guidance.w=2", ["guidance.w: unknown key", "did you mean ws?"]),
    ("+data.colour=red", ["data.colour", "not a setting"]), ("data.data_dir=/x", ["data.data_dir", "not a setting"]),
    ("png=maybe", ["png", "'maybe'"]), ("sampling.batched=2", ["sampling.batched: 2: should be a valid boolean"]),
])
def test_bad_generate_configs_are_refused(ckpt, tmp_path, override, expected):
    cfg = composed("generate", [f"ckpt_path={ckpt}", override], tmp_path / "out")
    with pytest.raises(ConfigError) as err:
        check_generate_config(cfg)
    assert all(s in str(err.value) for s in expected), str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("labels", ["12", "[3,12]"])
def test_a_class_the_checkpoint_lacks_is_refused_before_anything_is_written(ckpt, tmp_path, labels):
    """The check resolves the labels with the code that resolves them when generating (generate.requested_labels)."""
    out = tmp_path / "gen"
    proc = run("generate.py", f"ckpt_path={ckpt}", f"hydra.run.dir={out}", f"labels={labels}", "num_samples=10",
               "device=cpu", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "class 12 is not one of the checkpoint's classes 0 ... 9" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


@pytest.mark.slow
def test_one_generate_run_opens_the_checkpoint_once(ckpt, tmp_path):
    """The check, the model, the sha256 and the run identity all come from one read of the file (an audit hook
    sees every open() of Python code; torch.load is never handed the path, so no C++ reader opens it either)."""
    wrapper = f"""
import runpy, sys, torch
from pathlib import Path
target, opens, loads = Path({str(ckpt)!r}).resolve(), [], []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, Path)) and Path(str(args[0])).resolve() == target:
        opens.append(args[1])
sys.addaudithook(hook)
load = torch.load
def counted(f, *a, **k):
    loads.append(not hasattr(f, "read") and Path(str(f)).resolve() == target)
    return load(f, *a, **k)
torch.load = counted
sys.argv = ["generate.py", "ckpt_path={ckpt}", "hydra.run.dir={tmp_path / 'gen'}", "ws=[0,1]", "num_samples=4",
            "batch_size=4", "sampler.steps=2", "device=cpu"]
try:
    runpy.run_path({str(ROOT / 'generate.py')!r}, run_name="__main__")
finally:
    print("OPENS", len(opens), "LOADS_BY_PATH", sum(loads))
"""
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert "OPENS 1 LOADS_BY_PATH 0" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (tmp_path / "gen" / "w1" / "samples.npz").is_file()


@pytest.mark.slow
def test_png_is_refused_for_data_that_are_not_images(tmp_path):
    run("train.py", f"hydra.run.dir={tmp_path / 'gmm'}", "data=gmm", "model=mlp", "metrics=exact", "module.target=v",
        *(o for o in TINY_TRAIN if not o.startswith("model.")))
    cfg = composed("generate", [f"ckpt_path={tmp_path / 'gmm' / 'checkpoints' / 'last.ckpt'}", "png=true"],
                   tmp_path / "out")
    with pytest.raises(ConfigError, match="png: true, but this checkpoint's data .*GaussianMixture.* are not images"):
        check_generate_config(cfg)


@pytest.mark.slow
def test_evaluate_overrides_the_data_location_of_a_checkpoint_trained_elsewhere(tmp_path):
    data = tmp_path / "mnist_here"
    make_mnist(data, "t10k", n=200)
    env = {**os.environ, "CFGLAB_CACHE": str(tmp_path / "cache")}
    run("train.py", f"hydra.run.dir={tmp_path / 'train'}", "data=mnist", f"data.data_dir={data}", "data.split=test",
        "data.batch_size=32", "data.image_size=8", "model=unet_small", *TINY_TRAIN, env=env)
    moved = tmp_path / "mnist_moved"
    shutil.move(data, moved)  # the path stored in the checkpoint no longer exists
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    common = [f"ckpt_path={ckpt}", "sweep.ws=[0,1]", "sweep.num_samples=20", "sweep.batch_size=20", "sampler.steps=2",
              "device=cpu", "metrics.classifier_epochs=1", "metrics.reference_size=100"]
    proc = run("evaluate.py", f"hydra.run.dir={tmp_path / 'eval'}", f"data.data_dir={moved}", *common, env=env)
    points = json.loads((tmp_path / "eval" / "sweep.json").read_text())["points"]
    assert [p["w"] for p in points] == [0.0, 1.0] and all(p["fid"] > 0 for p in points)
    assert "fid" in proc.stdout and "tradeoff.png" in proc.stdout  # the table and the result paths at the end
    assert json.loads((tmp_path / "eval" / "stamp.json").read_text())["git_commit"]
    refused = run("evaluate.py", f"hydra.run.dir={tmp_path / 'eval2'}", "+data.data_path=/x", *common, env=env,
                  check=False)
    assert refused.returncode == 2 and "data.data_path: not a setting of this checkpoint's data" in refused.stderr
