"""The benchmark scripts run end to end at tiny sizes and report what BENCHMARKS.md quotes (not their timings)."""

import json
import os
import statistics
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = pytest.mark.slow


def run_json(args, env, timeout=600):
    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sweep_cost_and_sampling_benchmarks_on_a_small_checkpoint(tmp_path, digits_cache):
    env = {**os.environ, "CFGLAB_CACHE": str(digits_cache)}
    subprocess.run([sys.executable, "train.py", f"hydra.run.dir={tmp_path / 'run'}", "trainer.max_steps=30",
                    "~callbacks.sweep", "grids.ws=[0]", "grids.per_class=1", "sampler.steps=2",
                    "trainer.enable_progress_bar=false"], check=True, capture_output=True, cwd=ROOT, env=env, timeout=600)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    report = run_json(["benchmarks/sweep_cost.py", "--ckpt", ckpt, "--parts", "interval", "--quality-samples", 20,
                       "--quality-ws", 0.5, 1, "--batch", 20, "--cache", digits_cache], env)
    interval = report["interval"]
    assert report["parts"] == ["interval"] and interval["samples"] == 20
    # guided steps of 20 under the cosine schedule: all, 14, 6 and 5
    nfe = {name: row["nfe_per_step"] for name, row in interval.items() if isinstance(row, dict)}
    assert nfe == {"cfg": 2.0, "interval (0.28, 5.42]": 1.7, "interval (2, inf]": 1.3, "interval (3, inf]": 1.25}
    for row in (r for r in interval.values() if isinstance(r, dict)):
        assert list(row["fid"]) == ["0.5", "1.0"] and row["best_fid"] == min(row["fid"].values()) > 0

    rows = run_json(["benchmarks/sampling.py", "--ckpt", ckpt, "--samples", 4, "--samplers", "dpmpp_2m"], env)["rows"]
    per_step = {(r["sampler"], r["guidance"]): r["nfe_per_step"] for r in rows}
    dpm = "DPMSolverPP2M(steps=20)"
    assert per_step[(dpm, "cfg, 2 passes (baseline)")] == per_step[(dpm, "cfg, batched 2B")] == 2.0
    assert per_step[(dpm, "unguided (w=0)")] == 1.0 and per_step[(dpm, "interval (0.28, 5.42]")] == 1.7
    assert all(r["time_vs_baseline"] > 0 for r in rows)


def test_train_throughput_benchmark_reports_flops_and_ratios(tmp_path):
    report = run_json(["benchmarks/train_throughput.py", "--steps", 2, "--warmup", 1, "--batch", 8],
                      {**os.environ, "CFGLAB_CACHE": str(tmp_path / "cache")})
    rows = report["rows"]
    assert report["device"] == "cpu" and report["batch"] == 8
    assert rows[0]["vs_baseline"] == 1.0 and len({r["variant"] for r in rows}) == len(rows) >= 5
    # the mnist_study model: 0.64 M parameters, 0.210 GFLOP per image forward (BENCHMARKS.md)
    assert rows[0]["model"] == "mnist_study" and rows[0]["params"] == 644_209
    assert rows[0]["gflop_per_image_forward"] == pytest.approx(0.2104, abs=1e-3)
    assert all(r["achieved_gflop_per_s"] == pytest.approx(3 * r["gflop_per_image_forward"] * r["images_per_s"])
               for r in rows)


@pytest.mark.parametrize("bad", ["3,1", "1.5", "a,b"])
def test_sweep_cost_refuses_a_bad_interval_before_loading_anything(bad):
    proc = subprocess.run([sys.executable, "benchmarks/sweep_cost.py", "--ckpt", "missing.ckpt", "--intervals", bad],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and f"invalid sigma_interval value: '{bad}'" in proc.stderr


def test_data_store_benchmark_reports_every_size_and_path(tmp_path):
    report = run_json(["benchmarks/data_store.py", "--sizes", 600, 1200, "--baseline-sizes", 1200, "--root", tmp_path,
                       "--loader-batches", 3, "--rank-batches", 2, "--steps", 1, "--step-batch", 2], dict(os.environ))
    assert list(report["sizes"]) == ["600", "1200"] and not any(tmp_path.iterdir())  # the folder is removed
    for n, row in report["sizes"].items():
        assert row["workers_agree"] and row["prepare_1w_img_s"] > 0 and row["prepare_2w_img_s"] > 0
        assert row["store_gb"] == pytest.approx(int(n) * 3 * 64 * 64 / 1e9, rel=0.01)
        assert row["loader_vs_step"] == pytest.approx(row["loader_batches_s"] / row["unet_steps_s"])
        assert len(row["store_ranks"]) == 2 and all(r["uss_mb"] > 0 and r["pss_mb"] > 0 for r in row["store_ranks"])
    assert "in_memory_ranks" in report["sizes"]["1200"] and "in_memory_ranks" not in report["sizes"]["600"]


def dit_forward_flops(tokens, hidden, depth, patch, channels=4, freq=256):
    """Peebles & Xie's DiT forward per image, counted by hand (2 FLOPs per multiply-add): patch embedding,
    time MLP, per block qkv, attention scores and values, projection, MLP and adaLN, then the final layer."""
    block = 2 * tokens * hidden * 3 * hidden + 2 * 2 * tokens * tokens * hidden + 2 * tokens * hidden * hidden \
        + 2 * 2 * tokens * hidden * 4 * hidden + 2 * hidden * 6 * hidden
    return 2 * tokens * patch * patch * channels * hidden + 2 * (freq * hidden + hidden * hidden) + depth * block \
        + 2 * hidden * 2 * hidden + 2 * tokens * hidden * patch * patch * channels


def test_dit_throughput_benchmark_compares_with_diffusers_and_counts_model_flops(tmp_path):
    # eager rows only: compiling on a CPU takes minutes (tests/test_dit.py checks the compiled DiT's output)
    report = run_json(["benchmarks/dit_throughput.py", "--tiny", "--latent-size", 8, "--batch", 4, "--steps", 2,
                       "--warmup", 1, "--sample-batch", 2, "--sample-repeats", 1, "--no-compile"], {**os.environ})
    rows = report["rows"]
    assert [(r["impl"], r["compile"]) for r in rows] == [("diffusers", False), ("cfglab", False)]
    assert all(r["img_per_s"] > 0 and r["mfu"] is None for r in rows)  # no bf16 peak known for a CPU
    # A training step is a forward and a backward (2 forwards' worth of matmuls): 3 forwards in all, at batch 4.
    expected = 3 * 4 * dit_forward_flops(tokens=16, hidden=64, depth=2, patch=2)
    assert abs(rows[0]["step_tflop"] * 1e12 / expected - 1) < 0.02
    assert "compile=False" in report["sampling"] and "compile=True" not in report["sampling"]
    assert 0 < report["sampling"]["compile=False"]["decode_share"] < 1


def test_published_dit_benchmark_times_both_layouts_against_ditpipeline():
    report = run_json(["benchmarks/published_dit.py", "--tiny", "--samples", 2, "--batch", 2, "--steps", 3],
                      {**os.environ})
    rows = ["DiTPipeline", "cfglab official fp32", "cfglab diffusers fp32", "cfglab official bf16"]
    assert list(report["seconds_per_1000"]) == rows and all(v > 0 for v in report["seconds_per_1000"].values())
    assert report["speedup_vs_ditpipeline"]["DiTPipeline"] == 1.0


def test_phema_overhead_benchmark_times_both_arms_alternately(tmp_path):
    report = run_json(["benchmarks/phema_overhead.py", "--steps", 3, "--warmup", 1, "--batch", 8, "--repeats", 2,
                       "--snapshot-every", 2], {**os.environ, "CFGLAB_CACHE": str(tmp_path / "cache")})
    times = report["seconds_per_step"]
    assert len(times["baseline"]) == len(times["tracks"]) == 2 and all(t > 0 for t in times["baseline"] + times["tracks"])
    assert report["ratio"] == pytest.approx(statistics.median(times["tracks"]) / statistics.median(times["baseline"]))
