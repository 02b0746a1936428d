"""Faults injected into real training processes: SIGKILL at an arbitrary step, SIGTERM and SIGUSR1 preemption.

Each interrupted run is resumed with the same command and must end with weights, EMA weights and optimizer
state bit-identical to an uninterrupted run.
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import ROOT

STEPS = 80
ARGS = [f"trainer.max_steps={STEPS}", "callbacks.checkpoint.every_n_train_steps=10", "~callbacks.sweep",
        "grids.ws=[]", "logger=none", "trainer.enable_progress_bar=false", "model.base_channels=16"]


def command(run_dir, *extra):
    return [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}", *ARGS, *extra]


def run(run_dir, *extra):
    proc = subprocess.run(command(run_dir, *extra), capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def last(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def start_and_wait_for_checkpoint(run_dir, *extra):
    """Start training; return the process once its first periodic checkpoint exists."""
    proc = subprocess.Popen(command(run_dir, *extra), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    return proc


def assert_same_training_state(a, b):
    assert a["global_step"] == b["global_step"] == STEPS
    for key in ("state_dict", "current_model_state"):  # EMA weights, trained weights
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["lr_schedulers"] == b["lr_schedulers"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run(run_dir)
    return last(run_dir)


def sigkill_and_resume(run_dir, *extra):
    proc = start_and_wait_for_checkpoint(run_dir, *extra)
    time.sleep(random.Random(os.getpid()).uniform(0, 1.5))  # any step after the first checkpoint
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    killed_at = last(run_dir)["global_step"]
    assert 10 <= killed_at < STEPS
    run(run_dir, *extra)
    return last(run_dir)


@pytest.mark.slow
def test_sigkill_at_an_arbitrary_step_then_resume_is_bit_identical(tmp_path, uninterrupted):
    assert_same_training_state(uninterrupted, sigkill_and_resume(tmp_path))


@pytest.mark.slow
def test_sigkill_mid_epoch_with_flips_then_resume_is_bit_identical(tmp_path, uninterrupted):
    """Flips are drawn from (seed, epoch, step): the resumed run mirrors the images the uninterrupted one did
    (digits: 12 batches of 128 an epoch and a checkpoint every 10 steps, so the resumed run starts inside an
    epoch unless it was killed between steps 60 and 69)."""
    flip = ("data.hflip=true",)
    run(tmp_path / "whole", *flip)
    whole = last(tmp_path / "whole")
    assert any(not torch.equal(v, uninterrupted["state_dict"][k]) for k, v in whole["state_dict"].items())
    assert_same_training_state(whole, sigkill_and_resume(tmp_path / "killed", *flip))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_checkpoints_stops_cleanly_and_resumes(tmp_path, uninterrupted, sig):
    proc = start_and_wait_for_checkpoint(tmp_path)
    time.sleep(0.3)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, out[-3000:]  # unfinished, as a process ended by the signal
    step = last(tmp_path)["global_step"]
    assert f"stopped by {sig.name} after step {step}" in out
    assert "Traceback" not in out
    assert 10 <= step < STEPS
    run(tmp_path)
    assert_same_training_state(uninterrupted, last(tmp_path))


# Run train.py with torch.save replaced by one that writes half of the checkpoint of step KILL_AT, then SIGKILLs
# its own process: a kill (or a crash, a full disk) in the middle of writing the checkpoint file.
DIE_WHILE_WRITING = """
import io, os, runpy, signal, sys, torch
real_save, kill_at = torch.save, int(sys.argv[1])
def save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("global_step") == kill_at and not isinstance(f, io.IOBase):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        with open(f, "wb") as out:
            out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            out.flush()
            os.fsync(out.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_kill_while_writing_a_checkpoint_leaves_the_previous_one_and_resumes_bit_identically(tmp_path, uninterrupted):
    kill_at = 30
    proc = subprocess.run([sys.executable, "-c", DIE_WHILE_WRITING, str(kill_at), *command(tmp_path)[1:]],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    folder = tmp_path / "checkpoints"
    partial = list(folder.glob(".last.ckpt.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # the write was cut off half-way ...
    assert last(tmp_path)["global_step"] == kill_at - 10  # ... and last.ckpt is the previous, whole checkpoint
    run(tmp_path)
    assert not list(folder.glob(".*.tmp"))
    assert_same_training_state(uninterrupted, last(tmp_path))


@pytest.mark.slow
def test_sigkill_with_power_ema_tracks_then_resume_is_bit_identical(tmp_path):
    """The tracks resume from the checkpoint: the resumed run's tracks and every snapshot equal an uninterrupted
    run's, including the snapshots the killed run wrote after its last checkpoint (written again on resume)."""
    phema = ("callbacks=phema", "callbacks.phema.snapshot_every=20", "callbacks.phema.snapshot_dtype=float32")
    run(tmp_path / "whole", *phema)
    whole, killed = last(tmp_path / "whole"), sigkill_and_resume(tmp_path / "killed", *phema)
    assert_same_training_state(whole, killed)
    tracks = [next(v for k, v in c["callbacks"].items() if "PowerEMA" in k) for c in (whole, killed)]
    assert tracks[0]["step"] == tracks[1]["step"] == STEPS
    for a, b in zip(tracks[0]["tracks"], tracks[1]["tracks"]):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    snapshots = [sorted((d / "phema").glob("snapshot-*.pt")) for d in (tmp_path / "whole", tmp_path / "killed")]
    assert [p.name for p in snapshots[0]] == [p.name for p in snapshots[1]] == [
        f"snapshot-{k:08d}.pt" for k in range(20, STEPS + 1, 20)]
    for x, y in zip(*snapshots):
        x, y = (torch.load(p, weights_only=True) for p in (x, y))
        assert x["step"] == y["step"] and all(torch.equal(a[k], b[k]) for a, b in zip(x["tracks"], y["tracks"]) for k in a)
