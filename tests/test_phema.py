"""Post-hoc EMA against EDM2's equations (Karras et al. 2024, App. C), written here: eq. 123 for sigma_rel, eq. 127
for the per-step decay, and the continuous power-function average as the reference of a reconstruction."""

import math
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch

from cfglab.build import build
from cfglab.checkpoints import Checkpoint
from cfglab.lightning.checkpoint import ModelCheckpoint
from cfglab.lightning.phema import PowerEMA
from cfglab.phema import SIGMA_REL_MAX, gamma_to_sigma_rel, reconstruct, sigma_rel_to_gamma, snapshot_path
from helpers import ROOT, composed


def eq123(gamma):
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def test_sigma_rel_and_gamma_are_eq_123_both_ways():
    # EDM2 sec. 3.1: sigma_rel 0.05 and 0.10 are gamma = 16.97 and 6.94
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    for gamma in (0.5, 3.0, 6.94, 16.97, 50.0):
        assert gamma_to_sigma_rel(gamma) == pytest.approx(eq123(gamma), rel=1e-12)
        assert sigma_rel_to_gamma(eq123(gamma)) == pytest.approx(gamma, rel=1e-9)
    assert SIGMA_REL_MAX == pytest.approx(eq123(0.0))


@pytest.mark.parametrize("bad", [0.0, -0.1, 0.289, 0.5, True, "a"])
def test_sigma_rel_outside_the_valid_range_is_refused_naming_the_key(bad, tmp_path):
    with pytest.raises(ValueError, match=r"sigma_rels\[1\]=.* must lie in \(0, 0.2887\)"):
        PowerEMA(str(tmp_path), sigma_rels=[0.05, bad])
    with pytest.raises(ValueError, match=r"sigma_rel=.* must lie in"):
        sigma_rel_to_gamma(bad)


def trajectory(k, T):
    """Weights theta(t) at step k of T: three functions of u = t / T with known power-function averages."""
    u = k / T
    return torch.tensor([u, u**2, math.sin(3 * u)], dtype=torch.float64)


def continuous_average(gamma):
    """(gamma + 1) int_0^1 u^gamma theta(u) du: the gamma profile's average at the end (EDM2 eq. 121)."""
    u = np.linspace(0, 1, 200_001)
    w = (gamma + 1) * u**gamma
    sin = np.trapezoid(w * np.sin(3 * u), u)
    return torch.tensor([(gamma + 1) / (gamma + 2), (gamma + 1) / (gamma + 3), sin], dtype=torch.float64)


def write_snapshots(folder, T, every, sigma_rels):
    """Tracks updated with eq. 127's beta = (1 - 1/k)^(gamma + 1) and saved as PowerEMA saves them."""
    gammas = [sigma_rel_to_gamma(s) for s in sigma_rels]
    tracks = [torch.zeros(3, dtype=torch.float64) for _ in gammas]
    for k in range(1, T + 1):
        theta = trajectory(k, T)
        for i, g in enumerate(gammas):
            beta = (1 - 1 / k) ** (g + 1)
            tracks[i] = beta * tracks[i] + (1 - beta) * theta
        if k % every == 0:
            torch.save({"step": k, "sigma_rels": list(sigma_rels), "tracks": [{"w": t.clone()} for t in tracks]},
                       snapshot_path(folder, k))
    return tracks


def test_a_tracked_length_reconstructs_to_its_track_and_others_to_the_analytic_average(tmp_path):
    T = 2000
    final = write_snapshots(tmp_path, T, every=100, sigma_rels=(0.05, 0.10))
    weights, info = reconstruct(tmp_path, 0.10)
    assert info["step"] == T and info["snapshots"] == 20
    torch.testing.assert_close(weights["w"].double(), final[1], rtol=1e-6, atol=1e-6)
    # The discrete tracks follow the continuous profile to O(1/T); 20 snapshots of two tracks span the profiles
    # between and around them to about 1e-3 of the weights' scale.
    for sigma_rel in (0.03, 0.07, 0.15):
        weights, _ = reconstruct(tmp_path, sigma_rel)
        expected = continuous_average(sigma_rel_to_gamma(sigma_rel))
        assert (weights["w"].double() - expected).abs().max() < 3e-3, (sigma_rel, weights["w"], expected)
    # fewer snapshots span less: the error of a length far from both tracks grows
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    write_snapshots(sparse, T, every=1000, sigma_rels=(0.05, 0.10))
    far = continuous_average(sigma_rel_to_gamma(0.2))
    assert (reconstruct(sparse, 0.2)[0]["w"] - far).abs().max() > (reconstruct(tmp_path, 0.2)[0]["w"] - far).abs().max()


def fit(tmp_path, steps, ckpt_path=None, sigma_rels=(0.05, 0.10)):
    L.seed_everything(0)
    datamodule, module = build(composed("config", ["model.base_channels=16", "data.batch_size=32",
                                                   "module.warmup_steps=1"], tmp_path))
    phema = PowerEMA(str(tmp_path / "phema"), sigma_rels=sigma_rels, snapshot_every=5, snapshot_dtype="float32")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, save_top_k=0, every_n_train_steps=5)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, callbacks=[phema, ckpt],
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return phema, module


def test_tracks_follow_eq_127_snapshot_and_resume_exactly(tmp_path):
    whole, module = fit(tmp_path / "whole", 20)
    assert [p.name for p in sorted((tmp_path / "whole" / "phema").iterdir())] == [
        f"snapshot-{k:08d}.pt" for k in (5, 10, 15, 20)]
    # one step of eq. 127 by hand: the step-20 track from the step-15 snapshot is not the weights themselves
    name = "net.out.2.weight"
    assert not torch.equal(whole.tracks[0][name], module.state_dict()[name])
    # stopped at step 10 and resumed from its checkpoint: the same tracks and snapshots, bit for bit
    fit(tmp_path / "split", 10)
    resumed, _ = fit(tmp_path / "split", 20, ckpt_path=tmp_path / "split" / "checkpoints" / "last.ckpt")
    for a, b in zip(whole.tracks, resumed.tracks):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for k in (5, 10, 15, 20):
        x, y = (torch.load(snapshot_path(tmp_path / d / "phema", k), weights_only=True) for d in ("whole", "split"))
        assert all(torch.equal(x["tracks"][i][n], y["tracks"][i][n]) for i in (0, 1) for n in x["tracks"][i])
    with pytest.raises(ValueError, match=r"callbacks.phema.sigma_rels=\[0.05\], but the checkpoint resumed tracks"):
        fit(tmp_path / "split", 25, ckpt_path=tmp_path / "split" / "checkpoints" / "last.ckpt", sigma_rels=(0.05,))

    # reconstruct_ema.py: a sampling checkpoint holding the reconstructed weights
    proc = subprocess.run([sys.executable, str(ROOT / "reconstruct_ema.py"), str(tmp_path / "whole"),
                           "--sigma-rel", "0.1", "0.07"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = proc.stdout.split()
    assert [p.split("/")[-1] for p in paths] == ["sigma_rel-0.100.ckpt", "sigma_rel-0.070.ckpt"]
    _, rebuilt = Checkpoint.open(paths[0]).module()
    assert Checkpoint.open(paths[0]).step == 20 and Checkpoint.open(paths[0]).contents["cfglab_phema"]["sigma_rel"] == 0.1
    torch.testing.assert_close(rebuilt.state_dict()[name], whole.tracks[1][name], rtol=1e-5, atol=1e-6)
    bad = subprocess.run([sys.executable, str(ROOT / "reconstruct_ema.py"), str(tmp_path / "whole"),
                          "--sigma-rel", "0.3"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and "--sigma-rel[0]=0.3 must lie in (0, 0.2887)" in bad.stderr
