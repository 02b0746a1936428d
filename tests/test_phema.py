"""Post-hoc EMA against EDM2's equations (Karras et al. 2024, App. C), written here: eq. 123 for sigma_rel, eq. 127
for the per-step decay, and the continuous power-function average as the reference of a reconstruction."""

import json
import math
import os
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch

from cfglab.build import build
from cfglab.checkpoints import Checkpoint
from cfglab.config_checks import ConfigError, check_evaluate_config
from cfglab.lightning.checkpoint import ModelCheckpoint
from cfglab.lightning.phema import PowerEMA
from cfglab.phema import SIGMA_REL_MAX, gamma_to_sigma_rel, reconstruct, sigma_rel_to_gamma, snapshot_path
from cfglab.reconstruct_ema import reconstruct_checkpoints
from helpers import ROOT, composed, wandb_charts, wandb_history


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


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """A run of 20 steps with tracks 0.05 and 0.10, snapshots every 5 steps: (its folder, PowerEMA, module)."""
    folder = tmp_path_factory.mktemp("whole")
    return (folder, *fit(folder, 20))


@pytest.mark.slow
def test_tracks_follow_eq_127_snapshot_and_resume_exactly(whole, tmp_path):
    whole_dir, whole, module = whole
    assert [p.name for p in sorted((whole_dir / "phema").iterdir()) if p.suffix == ".pt"] == [
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
        x, y = (torch.load(snapshot_path(d / "phema", k), weights_only=True) for d in (whole_dir, tmp_path / "split"))
        assert all(torch.equal(x["tracks"][i][n], y["tracks"][i][n]) for i in (0, 1) for n in x["tracks"][i])
    with pytest.raises(ValueError, match=r"callbacks.phema.sigma_rels=\[0.05\], but the checkpoint resumed tracks"):
        fit(tmp_path / "split", 25, ckpt_path=tmp_path / "split" / "checkpoints" / "last.ckpt", sigma_rels=(0.05,))

    # reconstruct_ema.py: a sampling checkpoint holding the reconstructed weights
    proc = subprocess.run([sys.executable, str(ROOT / "reconstruct_ema.py"), str(whole_dir),
                           "--sigma-rel", "0.1", "0.07"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = proc.stdout.split()
    assert [p.split("/")[-1] for p in paths] == ["sigma_rel-0.100.ckpt", "sigma_rel-0.070.ckpt"]
    _, rebuilt = Checkpoint.open(paths[0]).module()
    assert Checkpoint.open(paths[0]).step == 20 and Checkpoint.open(paths[0]).contents["cfglab_phema"]["sigma_rel"] == 0.1
    torch.testing.assert_close(rebuilt.state_dict()[name], whole.tracks[1][name], rtol=1e-5, atol=1e-6)
    bad = subprocess.run([sys.executable, str(ROOT / "reconstruct_ema.py"), str(whole_dir),
                          "--sigma-rel", "0.3"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and "--sigma-rel[0]=0.3 must lie in (0, 0.2887)" in bad.stderr


def evaluate(args, env, check=True):
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600)
    assert not check or proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_evaluate_sweeps_ema_lengths_by_w_each_as_its_reconstructed_checkpoint(whole, tmp_path, digits_cache):
    whole_dir = whole[0]
    env = {**os.environ, "CFGLAB_CACHE": str(digits_cache), "WANDB_SILENT": "true"}
    ckpt = whole_dir / "checkpoints" / "last.ckpt"
    common = ["sweep.ws=[0,2]", "sweep.num_samples=60", "sampler.steps=3"]
    out = tmp_path / "eval"
    proc = evaluate([f"ckpt_path={ckpt}", f"hydra.run.dir={out}", "sigma_rels=[null,0.05,0.1,0.2]", *common,
                     "logger=wandb", "logger.wandb.mode=offline"], env)
    points = json.loads((out / "sweep.json").read_text())["points"]
    assert [(p["sigma_rel"], p["w"]) for p in points] == [(s, w) for s in (None, 0.05, 0.1, 0.2) for w in (0.0, 2.0)]
    assert all(p["key"]["ema_step"] == 20 for p in points if p["sigma_rel"] is not None)
    fid = {(p["sigma_rel"], p["w"]): p["fid"] for p in points}
    assert len(set(fid.values())) == len(fid)  # every length samples with weights of its own
    # each length is the EMA reconstruct_ema.py writes as a checkpoint, and null the checkpoint's own weights
    for sigma_rel, path in ((0.1, reconstruct_checkpoints(whole_dir, [0.1])[0]), (None, ckpt)):
        alone = evaluate([f"ckpt_path={path}", f"hydra.run.dir={tmp_path / str(sigma_rel)}", *common], env)
        again = {p["w"]: p["fid"] for p in json.loads((tmp_path / str(sigma_rel) / "sweep.json").read_text())["points"]}
        assert again == {w: fid[(sigma_rel, w)] for w in (0.0, 2.0)}, alone.stdout[-2000:]
    best = min(points, key=lambda p: p["fid"])
    label = "checkpoint EMA" if best["sigma_rel"] is None else f"sigma_rel={best['sigma_rel']:g}"
    assert f"best: {label}, w={best['w']:g} (FID {best['fid']:.4g})" in proc.stdout
    assert "  at w=0: " in proc.stdout and "  at w=2: " in proc.stdout
    assert (out / "sweep.csv").read_text().splitlines()[0].startswith("step,sigma_rel,w,fid")
    assert (out / "sweep_grids" / "step20_sigma_rel0.05_w2.png").is_file()
    page = (out / "report.html").read_text()
    assert page.count('alt="FID over (sigma_rel, w)') == 1 and f"best: {label}" in page
    assert page.count('<img class="grid"') == 8 and "w = 2, sigma_rel=0.1" in page
    # W&B: a row per point with its length, and the plots draw one line per length
    run_dir = next((out / "wandb").glob("offline-run-*"))
    rows = [(r["sweep/w"], r.get("sweep/sigma_rel")) for r in wandb_history(run_dir) if "sweep/w" in r]
    assert sorted(rows, key=str) == sorted([(w, s) for s in (None, 0.05, 0.1, 0.2) for w in (0.0, 2.0)], key=str)
    assert wandb_charts(run_dir)["sweep/fid_vs_w"] == {"x": "w", "y": "fid", "stroke": "ema"}
    table = json.loads(next(run_dir.rglob("sweep/table_*.table.json")).read_text())
    assert {row[table["columns"].index("ema")] for row in table["data"]} == {
        "checkpoint EMA", "sigma_rel=0.05", "sigma_rel=0.1", "sigma_rel=0.2"}


@pytest.mark.slow
@pytest.mark.parametrize("overrides, expected", [
    (["sigma_rels=[0.05,0.3]"], r"sigma_rels\[1\]=0.3 must lie in \(0, 0.2887\)"),
    (["sigma_rels=[0.05,0.05]"], r"sigma_rels=\[0.05, 0.05\] repeats a value"),
    (["sigma_rels=0.05"], r"sigma_rels=0.05 must be a non-empty list"),
    (["sigma_rels=[0.05]", "phema_dir={empty}"], r"phema_dir: '.*' holds no power-function EMA snapshots"),
    (["phema_dir={empty}"], r"phema_dir='.*': the snapshots are read only for a sweep over EMA lengths"),
])
def test_bad_ema_sweep_is_refused_before_anything_runs(overrides, expected, whole, tmp_path):
    (tmp_path / "empty").mkdir()
    ckpt = whole[0] / "checkpoints" / "last.ckpt"
    cfg = composed("evaluate", [f"ckpt_path={ckpt}", *(o.format(empty=tmp_path / "empty") for o in overrides)],
                   tmp_path / "eval")
    with pytest.raises(ConfigError, match=expected):
        check_evaluate_config(cfg)
