import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from unittest import mock

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from cfglab.data.digits import DigitsDataModule
from cfglab.diffusion.guidance import CFG, CFGPlusPlus
from cfglab.diffusion.samplers import DDIM
from cfglab.diffusion.sampling import SamplingSettings, sample_batches
from cfglab.lightning.guidance_sweep import GuidanceSweep
from cfglab.metrics.fidelity import build_metrics
from cfglab.sweep import SweepRecord, SweepSettings, balanced_labels, fid_wins, format_best, format_table, run_points
from helpers import wandb_charts, wandb_history, wandb_records, wandb_run, ROOT, small_module


SETTINGS = SamplingSettings().resolve("cpu", data_range=1.0)


def test_balanced_labels():
    assert torch.bincount(balanced_labels(1000, 10)).tolist() == [100] * 10
    assert torch.bincount(balanced_labels(13, 10)).tolist() == [2, 2, 2] + [1] * 7


@pytest.mark.parametrize("content", ['{"points": [{"w": 0', "[1, 2]", "not json", '{"rows": []}'])
def test_corrupt_record_is_reported(tmp_path, content):
    (tmp_path / "sweep.json").write_text(content)
    with pytest.raises(ValueError, match="sweep.json is corrupt"):
        SweepRecord(tmp_path)
    assert (tmp_path / "sweep.json").read_text() == content  # nothing overwritten


def test_record_round_trip_and_csv(tmp_path):
    rec = SweepRecord(tmp_path)
    rec.add({"w": 1.0, "step": 3, "fid": 2.5, "key": {"w": 1.0}})
    rec.add({"w": 0.0, "step": 3, "fid": 4.0, "key": {"w": 0.0}})
    rec.add({"w": 1.0, "step": 3, "fid": 2.0, "key": {"w": 1.0}})  # same key replaces
    again = SweepRecord(tmp_path)
    assert [p["fid"] for p in again.points] == [4.0, 2.0]
    lines = (tmp_path / "sweep.csv").read_text().splitlines()
    assert lines[0].startswith("step,w,fid") and lines[1].startswith("3,0,4") and len(lines) == 3
    assert not list(tmp_path.glob(".*tmp"))


def test_done_points_are_not_recomputed(tmp_path):
    module = small_module()
    fake_metrics = lambda images, labels: {"fid": float(images.float().mean())}  # noqa: E731
    points = lambda ws: run_points(module, SweepSettings(ws, num_samples=8, batch_size=4), DDIM(steps=2), CFG(),  # noqa: E731
                                   SETTINGS, fake_metrics, SweepRecord(tmp_path))
    first = points([0.0, 1.0])
    with mock.patch("cfglab.sweep.sample_batches", side_effect=AssertionError("recomputed")):
        again = points([0.0, 1.0])
    assert again == first
    more = points([0.0, 1.0, 2.0])
    assert more[:2] == first and more[2]["w"] == 2.0
    assert more[1]["nfe"] == 4 and more[0]["nfe"] == 2  # w = 0 skips the unconditional forward


def test_repeats_are_disjoint_paired_noise_sets_summarised_per_point(tmp_path):
    module = small_module()
    seen = []  # every repeat's samples, in the order the metrics see them
    fake_metrics = lambda images, labels: seen.append(images) or {"fid": float(images.float().mean()),  # noqa: E731
                                                                  "is": float(images.float().std())}
    run = lambda ws, repeats, out: run_points(module, SweepSettings(ws, num_samples=8, batch_size=4, repeats=repeats),  # noqa: E731
                                              DDIM(steps=2), CFG(), SETTINGS, fake_metrics, SweepRecord(out))
    single = run([0.0], 1, tmp_path / "one")
    assert "repeats" not in single[0] and "fid_std" not in single[0]  # an unrepeated point as it always was
    seen.clear()
    points = run([0.0, 1.0], 3, tmp_path / "three")
    first = points[0]
    assert first["repeats"] == 3 and len(first["per_repeat"]) == 3
    assert first["per_repeat"][0]["fid"] == single[0]["fid"]  # repeat 0 is the unrepeated sweep's noise
    fids = torch.tensor([r["fid"] for r in first["per_repeat"]], dtype=torch.float64)
    assert first["fid"] == pytest.approx(float(fids.mean())) and first["fid_std"] == pytest.approx(float(fids.std()))
    assert len({r["fid"] for r in first["per_repeat"]}) == 3  # disjoint noise: three different sets
    # the same noise sets at every w: w = 1 changes the samples but not the noise, so each repeat's set at w = 1 is
    # closest to its own repeat at w = 0 (DDIM is deterministic given the noise)
    at0, at1 = seen[0:3], seen[3:6]
    for r in range(3):
        dist = [float((at1[r].float() - at0[q].float()).abs().mean()) for q in range(3)]
        assert min(range(3), key=dist.__getitem__) == r, dist
    csv = (tmp_path / "three" / "sweep.csv").read_text().splitlines()
    assert csv[0].startswith("step,w,fid,fid_std,is,is_std") and csv[0].endswith(",repeats")
    with mock.patch("cfglab.sweep.sample_batches", side_effect=AssertionError("recomputed")):
        assert run([0.0, 1.0], 3, tmp_path / "three") == points
    table, best = format_table(points), format_best(points)
    assert f"{first['fid']:.4g}±{first['fid_std']:.2g}" in table
    wins = fid_wins(points)
    assert sum(wins.values()) == 3 and "lowest FID over the 3 repeats" in best


def _sym_sqrt(m: np.ndarray) -> np.ndarray:
    e, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(e, 0, None))) @ v.T


def test_fid_spread_over_repeats_is_the_delta_method_prediction_at_each_sample_size(tmp_path):
    """On the ring mixture with its exact network (guided w = 2, so the samples differ from the data), the std
    over K repeats of FID (on the points themselves as features) against a fixed reference is
    sqrt(Var[IF(x)] / N), with IF FID's influence function in the generated distribution (Frechet distance
    d = |mu_g - mu_r|^2 + tr(C_g + C_r - 2 (C_g C_r)^(1/2)): IF(x) = 2 (x - mu_g).(mu_g - mu_r) + (x - mu_g)^T
    (I - T) (x - mu_g), T = C_r^(1/2) (C_r^(1/2) C_g C_r^(1/2))^(-1/2) C_r^(1/2)). The std of K normal draws
    has relative error 1 / sqrt(2 (K - 1)): three of those are the tolerance."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    from cfglab.data.gmm import ExactGMMModel, GaussianMixtureDataModule
    from cfglab.diffusion.schedules import Cosine
    from cfglab.lightning.module import CFGDiffusion

    schedule, repeats = Cosine(), 48
    data = GaussianMixtureDataModule(num_samples=4000)
    module = CFGDiffusion(ExactGMMModel(data.mixture, schedule), schedule, num_classes=4)
    ref = data.items("train").head(2000)[0].double()
    ref_stats, sets = fid_features_to_statistics(ref), []

    def fid(points, labels):
        sets.append(points.double())
        stats = fid_features_to_statistics(points.double())
        return {"fid": float(fid_statistics_to_metric(stats, ref_stats, False)["frechet_inception_distance"])}

    mu_r, cov_r = ref.mean(0).numpy(), np.cov(ref.numpy(), rowvar=False)
    for n in (200, 800):
        sets.clear()
        point = run_points(module, SweepSettings([2.0], num_samples=n, batch_size=n, repeats=repeats), DDIM(steps=8),
                           CFG(), SamplingSettings().resolve("cpu", data_range=None), fid, SweepRecord(tmp_path / str(n)))[0]
        x = torch.cat(sets).numpy()  # all repeats: the generated distribution
        mu_g, cov_g = x.mean(0), np.cov(x, rowvar=False)
        a = _sym_sqrt(cov_r)
        transport = a @ np.linalg.inv(_sym_sqrt(a @ cov_g @ a)) @ a
        d = x - mu_g
        influence = 2 * d @ (mu_g - mu_r) + np.einsum("ni,ij,nj->n", d, np.eye(2) - transport, d)
        predicted = influence.std() / np.sqrt(n)
        assert point["fid_std"] == pytest.approx(predicted, rel=3 / np.sqrt(2 * (repeats - 1))), (n, point, predicted)


def test_fid_wins_counts_paired_repeats():
    per = lambda *f: [{"fid": v} for v in f]  # noqa: E731
    points = [{"w": 0.0, "per_repeat": per(5, 3, 4)}, {"w": 0.5, "per_repeat": per(4, 4, 2)},
              {"w": 1.0, "per_repeat": per(6, 1, 9)}]
    assert fid_wins(points) == {0.0: 0, 0.5: 2, 1.0: 1}


@pytest.mark.slow
def test_callback_on_tiny_model_writes_every_artifact(tmp_path):
    L.seed_everything(0)
    dm = DigitsDataModule(batch_size=64)
    sweep = GuidanceSweep(partial(build_metrics, cache_dir=str(tmp_path / "cache")),
                          SweepSettings(ws=[0, 2], num_samples=60, batch_size=30, grid_per_class=3),
                          sampler=DDIM(steps=4), guidance=CFG(), sampling=SamplingSettings(), out_dir=str(tmp_path / "run"))
    logger = CSVLogger(tmp_path, name="csv")
    trainer = L.Trainer(max_steps=40, accelerator="cpu", logger=logger, callbacks=[sweep], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(small_module(lr=2e-3, warmup_steps=5), datamodule=dm)
    run = tmp_path / "run"
    points = json.loads((run / "sweep.json").read_text())["points"]
    assert [p["w"] for p in points] == [0.0, 2.0] and all(p["step"] == 40 for p in points)
    for p in points:
        assert {"fid", "is", "kid", "precision", "recall", "accuracy", "nfe", "seconds"} <= set(p)
        assert (run / "sweep_grids" / f"step40_w{p['w']:g}.png").is_file()
    assert len((run / "sweep.csv").read_text().splitlines()) == 3
    assert (run / "tradeoff.png").stat().st_size > 10_000
    logged = (next((tmp_path / "csv").rglob("metrics.csv"))).read_text().splitlines()[0]
    assert "sweep/fid/w=0" in logged and "sweep/precision/w=2" in logged


@pytest.mark.parametrize("bad, match", [(dict(ws=[]), "empty"), (dict(ws=[0, 1, 1]), "repeats"),
                                        (dict(ws=[0, "a"]), r"ws\[1\]: 'a' is not a number"),
                                        (dict(num_samples=0), "num_samples=0"), (dict(batch_size=1.5), "batch_size=1.5"),
                                        (dict(repeats=0), "repeats=0"), (dict(repeats=True), "repeats=True"),
                                        (dict(repeats=2, num_samples=600_000, batch_size=1), "overlap")])
def test_bad_sweep_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        SweepSettings(**bad)


def test_the_guidance_method_checks_every_w_of_the_sweep():
    with pytest.raises(ValueError, match="w=-1"):
        GuidanceSweep(None, SweepSettings(ws=[0, -1]), DDIM(steps=2), CFG(), SamplingSettings())
    with pytest.raises(ValueError, match="lambda w=2"):
        GuidanceSweep(None, SweepSettings(ws=[0, 2]), DDIM(steps=2), CFGPlusPlus(), SamplingSettings())


@pytest.mark.slow
def test_evaluate_killed_midway_resumes_without_recomputing(tmp_path, digits_cache):
    env = {**os.environ, "CFGLAB_CACHE": str(digits_cache)}
    run = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={tmp_path / 'train'}", "trainer.max_steps=30",
           "~callbacks.sweep", "grids.ws=[0]", "grids.per_class=1", "sampler.steps=2", "trainer.enable_progress_bar=false"]
    subprocess.run(run, check=True, capture_output=True, cwd=ROOT, env=env, timeout=600)
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    cmd = [sys.executable, str(ROOT / "evaluate.py"), f"ckpt_path={ckpt}", f"hydra.run.dir={out}",
           "sweep.ws=[0,0.5,1,2,3,4]", "sweep.num_samples=300", "sampler.steps=25"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    points = []
    while time.time() < deadline and proc.poll() is None:
        try:
            points = json.loads((out / "sweep.json").read_text())["points"]
        except (FileNotFoundError, json.JSONDecodeError):
            points = []
        if len(points) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert len(points) == 2, "the sweep should have been killed after two points"
    killed = json.loads((out / "sweep.json").read_text())["points"]
    assert 2 <= len(killed) < 6
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    final = json.loads((out / "sweep.json").read_text())["points"]
    assert [p["w"] for p in final] == [0.0, 0.5, 1.0, 2.0, 3.0, 4.0]
    assert final[: len(killed)] == killed  # finished points kept as they were, not recomputed
    assert (out / "tradeoff.png").is_file() and len((out / "sweep.csv").read_text().splitlines()) == 7


GUIDANCE_CONFIGS = sorted(p.stem for p in (ROOT / "conf" / "guidance").glob("*.yaml"))


@pytest.mark.parametrize("name", [n for n in GUIDANCE_CONFIGS if n != "autoguidance"])
def test_every_guidance_config_is_a_sweep_axis(name, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    guidance = instantiate(OmegaConf.load(ROOT / "conf" / "guidance" / f"{name}.yaml"))
    fake_metrics = lambda images, labels: {"fid": float(images.float().mean())}  # noqa: E731
    ws = [0.0, 0.5, 1.0]
    points = run_points(small_module(), SweepSettings(ws, num_samples=6, batch_size=6), DDIM(steps=3), guidance,
                        SETTINGS, fake_metrics, SweepRecord(tmp_path))
    assert [p["w"] for p in points] == ws
    assert [p["key"]["w"] for p in points] == ws and len({p["key"]["guidance"] for p in points}) == 1


@pytest.mark.slow
def test_autoguidance_sweeps_with_a_weaker_checkpoint_and_logs_in_the_training_runs_group(tmp_path, digits_cache):
    env = {**os.environ, "CFGLAB_CACHE": str(digits_cache), "WANDB_SILENT": "true"}
    ckpts = {}
    for name, steps in (("weak", 5), ("strong", 30)):
        cmd = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={tmp_path / name}", f"trainer.max_steps={steps}",
               "~callbacks.sweep", "grids.ws=[0]", "grids.per_class=1", "sampler.steps=2",
               "trainer.enable_progress_bar=false", "logger=wandb", "logger.wandb.mode=offline", f"seed={steps}"]
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, env=env, timeout=600)
        ckpts[name] = tmp_path / name / "checkpoints" / "last.ckpt"
    cmd = [sys.executable, str(ROOT / "evaluate.py"), f"ckpt_path={ckpts['strong']}", f"hydra.run.dir={tmp_path / 'eval'}",
           "guidance=autoguidance", f"guidance.guide_ckpt={ckpts['weak']}", "sweep.ws=[0,2]", "sweep.num_samples=40",
           "sweep.repeats=2", "sampler.steps=4", "logger=wandb", "logger.wandb.mode=offline", "metrics.per_class=true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    points = json.loads((tmp_path / "eval" / "sweep.json").read_text())["points"]
    assert [p["nfe"] for p in points] == [4, 8]  # w = 0: the guiding network is not called
    # the evaluation is a W&B run of job type eval in the training run's group, named after it
    train = wandb_run(next((tmp_path / "strong" / "wandb").glob("offline-run-*")))
    evaluation_dir = next((tmp_path / "eval" / "wandb").glob("offline-run-*"))
    evaluation = wandb_run(evaluation_dir)
    assert train.display_name.startswith("max_steps=30 sweep ws=[0]") and train.display_name.endswith("seed=30")
    assert "/" not in train.display_name and train.job_type == "train"  # short overrides, no paths
    assert train.run_group == f"train_{tmp_path.name}_strong"  # a single run: its own study
    assert (evaluation.run_group, evaluation.job_type) == (train.run_group, "eval")
    assert evaluation.display_name == f"{train.display_name} eval"
    rows = [r for r in wandb_history(evaluation_dir) if "sweep/w" in r]
    assert [(r["sweep/train_step"], r["sweep/w"], r["sweep/nfe"]) for r in rows] == [(30, 0.0, 4), (30, 2.0, 8)]
    # two repeats: every metric's mean and spread in the record, the rows, the table and the printed summary
    assert [p["repeats"] for p in points] == [2, 2] and all(len(p["per_repeat"]) == 2 for p in points)
    assert [r["sweep/fid_std"] for r in rows] == pytest.approx([p["fid_std"] for p in points])
    assert all(p["fid_std"] > 0 for p in points) and "lowest FID over the 2 repeats" in proc.stdout
    assert f"{points[0]['fid']:.4g}±{points[0]['fid_std']:.2g}" in proc.stdout
    table = json.loads(next(evaluation_dir.rglob("sweep/table_*.table.json")).read_text())
    assert "fid_std" in table["columns"] and "repeats" in table["columns"]
    # per-class metrics: every class at every w, with their spread over the repeats, in per_class.csv and the report
    assert [len(p["per_class"]) for p in points] == [10, 10] and all(c["n"] == 4 for c in points[0]["per_class"])
    assert all("fid_std" in c and "recall_std" in c for c in points[1]["per_class"])
    lines = (tmp_path / "eval" / "per_class.csv").read_text().splitlines()
    assert lines[0].startswith("step,w,class,n,fid,fid_std,precision") and len(lines) == 1 + 2 * 10
    assert "step 30: recall lost from w=0 to w=2: class " in proc.stdout
    assert "<h2>Per class</h2>" in (tmp_path / "eval" / "report.html").read_text()


@pytest.mark.slow
def test_wandb_offline_run_holds_sweep_metrics_and_table(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    L.seed_everything(0)
    sweep = GuidanceSweep(partial(build_metrics, cache_dir=str(tmp_path / "cache")),
                          SweepSettings(ws=[0, 1], num_samples=30, batch_size=30), sampler=DDIM(steps=2), guidance=CFG(),
                          sampling=SamplingSettings(), out_dir=str(tmp_path / "run"))
    logger = WandbLogger(project="cfglab-test", save_dir=str(tmp_path), offline=True)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=logger, callbacks=[sweep], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(small_module(), datamodule=DigitsDataModule(batch_size=32))
    import wandb

    wandb.finish()
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    # one history row per (step, w), with w as the x axis of every sweep metric
    rows = [r for r in wandb_history(run_dir) if "sweep/w" in r]
    assert [(r["sweep/train_step"], r["sweep/w"]) for r in rows] == [(3, 0.0), (3, 1.0)]
    assert all(isinstance(r["sweep/fid"], float) and r["sweep/nfe"] in (2, 4) for r in rows)
    metrics = {r.metric.name: r.metric.step_metric for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "metric"}
    assert metrics["sweep/fid"] == metrics["sweep/is"] == metrics["sweep/precision"] == "sweep/w"
    assert not any(k.startswith(("sweep/fid/", "sweep/is/")) for r in wandb_history(run_dir) for k in r)  # w not in names
    # the table carries the run and the values that define it; its line plots have one line (stroke) per run
    table = json.loads(next(run_dir.rglob("sweep/table_*.table.json")).read_text())
    assert table["columns"][:7] == ["run", "p_uncond", "target", "guidance", "sampler", "model", "step"]
    assert [row[7] for row in table["data"]] == [0.0, 1.0] and table["data"][0][1] == 0.1
    assert table["data"][0][4] == "DDIM(steps=2, eta=0.0)" and table["data"][0][5].startswith("UNet ")
    charts = wandb_charts(run_dir)
    assert charts["sweep/fid_vs_w"] == {"x": "w", "y": "fid", "stroke": "run"}
    assert charts["sweep/fid_vs_is"] == {"x": "is", "y": "fid"}
    assert list(run_dir.rglob("*.png"))  # trade-off plot and sample grids as images


@pytest.mark.slow
def test_periodic_sweeps_during_training_and_the_final_one_reuses_the_last(tmp_path):
    L.seed_everything(0)
    dm = DigitsDataModule(batch_size=64, val_fraction=0.1)  # 1,617 training images: 25 steps per epoch
    sweep = GuidanceSweep(partial(build_metrics, cache_dir=str(tmp_path / "cache")),
                          SweepSettings(ws=[0, 1], num_samples=30, batch_size=30), sampler=DDIM(steps=2), guidance=CFG(),
                          sampling=SamplingSettings(), every_n_epochs=1, out_dir=str(tmp_path / "run"))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, callbacks=[sweep], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    with mock.patch("cfglab.sweep.sample_batches", wraps=sample_batches) as gen:
        trainer.fit(small_module(), datamodule=dm)
    points = json.loads((tmp_path / "run" / "sweep.json").read_text())["points"]
    assert sorted((p["step"], p["w"]) for p in points) == [(25, 0.0), (25, 1.0), (50, 0.0), (50, 1.0)]
    assert gen.call_count == 4  # the end-of-fit sweep at step 50 found both points done
    assert (tmp_path / "run" / "sweep_grids" / "step25_w1.png").is_file()
