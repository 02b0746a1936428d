"""Hydra multiruns on this machine: experiment presets, non-colliding directories, the aggregation command."""

import json
import os
import subprocess
import sys

import pytest

from cfglab.aggregate import collect
from cfglab.config_checks import check_train_config
from helpers import ROOT, SHARED_MNIST, composed, wandb_charts, wandb_run

TINY = ["trainer.max_steps=20", "model.base_channels=16", "grids.ws=[0]", "grids.per_class=1", "sampler.steps=3",
        "sweep.ws=[0,2]", "sweep.num_samples=40", "sweep.batch_size=40",
        "trainer.enable_progress_bar=false"]


def multirun(cwd, cache, *overrides):
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *TINY, *overrides]
    env = {**os.environ, "CFGLAB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}  # two at once on 2 cores
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="needs the shared MNIST test split")
@pytest.mark.parametrize("name", ["mnist_study", "mnist_study_v", "paper_table1"])
def test_experiment_presets_compose_and_pass_the_checks(name, tmp_path):
    cfg = composed("config", [f"experiment={name}", f"data.data_dir={SHARED_MNIST}"], tmp_path)
    check_train_config(cfg)
    assert cfg.data.split == "test" and cfg.model.channel_mult == [1, 2, 2]
    assert cfg.module.target == ("v" if name == "mnist_study_v" else "eps")
    if name == "paper_table1":
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            hydra_cfg = compose("config", [f"experiment={name}"], return_hydra_config=True).hydra
        assert hydra_cfg.sweeper.params["module.p_uncond"] == "0.1,0.2,0.5"
        assert list(cfg.sweep.ws) == [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1, 2, 3, 4]


@pytest.mark.slow
def test_concurrent_multiruns_get_their_own_directories_and_aggregate(tmp_path, digits_cache):
    procs = [multirun(tmp_path, digits_cache, "module.p_uncond=0.1,0.5", "logger=[csv,wandb]",
                      "logger.wandb.mode=offline"),
             multirun(tmp_path, digits_cache, "module.p_uncond=0.2", "~callbacks.sweep", "logger=wandb",
                      "logger.wandb.mode=offline")]
    for p in procs:
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out[-3000:]
    sweeps = sorted(d for d in (tmp_path / "multirun").glob("*/*") if d.is_dir())
    assert len(sweeps) == 2  # started within the same second, yet separate
    big = next(d for d in sweeps if (d / "1").is_dir())
    small = next(d for d in sweeps if d != big)
    # W&B: one run per job (a sequential multirun does not continue the previous job's run), named after what
    # varies across the multirun, grouped by the multirun
    runs = [wandb_run(next((big / str(job) / "wandb").glob("offline-run-*"))) for job in (0, 1)]
    assert [r.display_name for r in runs] == ["p_uncond=0.1", "p_uncond=0.5"] and runs[0].run_id != runs[1].run_id
    assert {r.run_group for r in runs} == {f"train_{big.parent.name}_{big.name}"}
    single = wandb_run(next(small.rglob("offline-run-*")))
    # a multirun of one job is named like a single run: its overrides, shortened, at most 128 characters
    assert single.run_group == f"train_{small.parent.name}_{small.name}"
    assert single.display_name.startswith("max_steps=20 base_channels=16 ws=[0]") and len(single.display_name) <= 128
    proc = subprocess.run([sys.executable, str(ROOT / "aggregate.py"), str(big)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={**os.environ, "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the runs logged to W&B, so the combined table and its plots go to a run of job type aggregate in their group
    aggregate_dir = next((big / "wandb").glob("offline-run-*"))
    combined = wandb_run(aggregate_dir)
    assert (combined.job_type, combined.run_group) == ("aggregate", runs[0].run_group)
    assert wandb_charts(aggregate_dir)["aggregate/fid_vs_w"] == {"x": "w", "y": "fid", "stroke": "run"}
    table = json.loads(next(aggregate_dir.rglob("aggregate/table_*.table.json")).read_text())
    assert sorted((row[0], row[2]) for row in table["data"]) == [
        ("p_uncond=0.1", 0.0), ("p_uncond=0.1", 2.0), ("p_uncond=0.5", 0.0), ("p_uncond=0.5", 2.0)]
    assert (big / "report.html").is_file()
    varying, rows = collect(big)
    assert varying == ["module.p_uncond"]
    assert sorted((r["module.p_uncond"], r["w"]) for r in rows) == [("0.1", 0.0), ("0.1", 2.0), ("0.5", 0.0), ("0.5", 2.0)]
    assert all(isinstance(r["fid"], float) and r["fid"] > 0 for r in rows)
    table = (big / "aggregate.md").read_text()
    assert "| w | p_uncond=0.1 | p_uncond=0.5 |" in table and "### fid" in table and "### recall" in table
    assert (big / "aggregate.png").is_file() and len((big / "aggregate.csv").read_text().splitlines()) == 5
