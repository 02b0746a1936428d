"""Bad configurations are refused before any compute, each with a message naming the key and the bad value."""

import io
import os
import subprocess
import sys

import pytest
import torch

from cfglab.config_checks import ConfigError, check_evaluate_config, check_train_config
from helpers import ROOT, composed


# (overrides, strings the message must contain: the key and the bad value)
BAD_TRAIN = [
    (["module.p_uncond=1.5"], ["module", "p_uncond=1.5"]),
    (["module.p_uncond=-0.1"], ["module", "p_uncond=-0.1"]),
    (["module.lr=0"], ["module", "lr=0"]),
    (["module.target=score"], ["module", "score"]),
    (["module.warmup_steps=-5"], ["module", "warmup_steps=-5"]),
    (["+module.foo=3"], ["module.foo", "3"]),
    (["+data.colour=red"], ["data.colour", "red"]),
    (["+top_level_typo=1"], ["top_level_typo", "1"]),
    (["sampler.steps=0"], ["sampler", "steps=0"]),
    (["sampler.eta=2"], ["sampler", "eta=2"]),
    (["sweep.ws=[0,-1]"], ["sweep.ws[1]", "w=-1"]),
    (["guidance=cfgpp"], ["sweep.ws[6]", "w=2"]),  # CFG++'s lambda lies in [0, 1]: the default grid is invalid
    (["guidance=cfgpp", "sweep.ws=[0,1]"], ["grids.ws[2]", "w=3"]),
    (["sweep.ws=[0,2,2]"], ["sweep.ws", "[0, 2, 2]"]),
    (["sweep.ws=[]"], ["sweep.ws", "is empty"]),
    (["grids.ws=[0,1,1]"], ["grids.ws", "[0, 1, 1]"]),
    (["grids.ws=[0,high]"], ["grids.ws[1]", "'high'"]),
    (["sweep.num_samples=0"], ["sweep", "num_samples=0"]),
    (["sampling.clip_x0=-1"], ["sampling", "clip_x0=-1"]),
    (["sampling.precision=fp8"], ["sampling", "precision='fp8'"]),
    (["sampling.batched=sometimes"], ["sampling", "batched='sometimes'"]),
    (["data.batch_size=0"], ["data", "batch_size=0"]),
    (["data.val_fraction=1.0"], ["data", "val_fraction=1.0"]),
    (["model.channel_mult=[1,2,2]", "data.image_size=6"], ["model", "image_size=6"]),
    (["+model.num_classes=5"], ["model", "num_classes=5 disagrees with the data"]),
    (["trainer.max_steps=0"], ["trainer", "max_steps=0"]),
        (["trainer.gradient_clip_val=-1"], ["trainer", "gradient_clip_val=-1"]),
    (["trainer.devices=0"], ["trainer", "devices=0"]),
    (["+trainer.accumulate_grad_batches=0"], ["trainer", "accumulate_grad_batches=0"]),
    (["data=mnist", "data.data_dir=/nonexistent/mnist"], ["data", "data_dir='/nonexistent/mnist'"]),
    (["data=mnist", "data.split=validation"], ["data", "split='validation'"]),
    (["metrics=inception", "metrics.weights_path=/nonexistent/inception.pth"],
     ["metrics", "weights_path='/nonexistent/inception.pth'"]),
    (["metrics=inception"], ["metrics", "weights_path=None"]),
    (["metrics=exact"], ["metrics", "extractor='exact'"]),
    (["ckpt_path=/nonexistent/last.ckpt"], ["ckpt_path", "/nonexistent/last.ckpt"]),
    (["guidance=cfgpp", "sampler=dpmpp_2m", "sweep.ws=[0,0.5]", "grids.ws=[0]"], ["sampler", "CFGPlusPlus"]),
    (["+guidance.w=3"], ["guidance.w: unknown key (value 3)", "did you mean grids.ws or sweep.ws?"]),
    (["+callbacks.sweep.ws=[0,1]"], ["callbacks.sweep.ws: unknown key", "sweep.ws"]),
    (["+module.clip_x0=null"], ["module.clip_x0: unknown key", "sampling.clip_x0"]),
    (["guidance=interval", "guidance.sigma_lo=5", "guidance.sigma_hi=1"], ["guidance", "sigma_lo=5"]),
    (["callbacks.ema.decay=1.0"], ["callbacks.ema", "decay=1.0"]),
    (["schedule.s=-1"], ["schedule", "s=-1"]),
    (["+callbacks.checkpoint.every_n_steps=5"], ["callbacks.checkpoint.every_n_steps", "5"]),
    # a wrong type is named at its key, not as the comparison that later fails on it
    (["module.p_uncond=abc"], ["module.p_uncond: 'abc': should be a valid number"]),
    (["module.warmup_steps=2.5"], ["module.warmup_steps: 2.5: should be a valid integer"]),
    (["module.betas=[0.9,x]"], ["module.betas[1]: 'x': should be a valid number"]),
    (["module.betas=[0.9]"], ["module.betas[1]: missing from [0.9]"]),
    (["module.compile=maybe"], ["module.compile: 'maybe': should be a valid boolean"]),
    (["model.channel_mult=[1,two]"], ["model.channel_mult[1]: 'two': should be a valid integer"]),
    (["trainer.precision=fp8"], ["trainer.precision: 'fp8': should be", "'bf16-mixed'"]),  # the Trainer's annotation
    (["seed=abc"], ["seed: 'abc': should be an integer"]),  # at its own key, not at module.seed which reads it
    (["trainer.strategy=nonsense"], ["trainer: strategy='nonsense' is not one of Lightning's strategies: auto, ddp"]),
    # required values left out
    (["data=image_folder"], ["data.data_dir: ??? is a required value"]),
    (["guidance=autoguidance"], ["guidance.guide_ckpt: ??? is a required value"]),
    # what stops a fit, as Lightning decides it
    (["trainer.max_steps=-1"], ["trainer: max_epochs=-1 with max_steps=-1 and no max_time: nothing would stop"]),
    (["trainer.max_epochs=0"], ["trainer: max_epochs=0 must be"]),
    (["+trainer.max_time=10min", "trainer.max_steps=-1"], ["trainer", "max_time='10min' is not a duration"]),
    # values that would only fail later
    (["data.batch_size=5000"], ["data: batch_size=5000 exceeds the 1617 training items"]),
    (["data.batch_size=1000", "strategy=ddp", "trainer.devices=2"], ["data: batch_size=1000 x 2 processes exceeds"]),
    (["data=gmm", "model=mlp", "metrics=exact", "sampling.clip_x0=1.0"],
     ["sampling: clip_x0=1.0, but the data are unbounded"]),
]
if not torch.cuda.is_available():
    BAD_TRAIN.append((["trainer=gpu"], ["trainer", "accelerator='gpu'"]))


@pytest.mark.parametrize("overrides,expected", BAD_TRAIN, ids=[" ".join(o) for o, _ in BAD_TRAIN])
def test_bad_train_config_is_refused_naming_key_and_value(overrides, expected, tmp_path):
    cfg = composed("config", overrides, tmp_path / "run")
    with pytest.raises(ConfigError) as err:
        check_train_config(cfg)
    for s in expected:
        assert s in str(err.value), str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_one_class_image_folder_is_refused(tmp_path):
    """Class-conditional guidance needs a label to guide towards and away from: a folder of one class is refused
    (it used to train, and its sweep reported FID 0.003 and IS 1)."""
    from PIL import Image

    (tmp_path / "images" / "cat").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / "cat" / f"{i}.png")
    cfg = composed("config", ["data=image_folder", f"data.data_dir={tmp_path / 'images'}", "data.image_size=8"],
                   tmp_path / "run")
    with pytest.raises(ConfigError, match=r"data: data_dir=.* has 1 class folder\(s\) \['cat'\]: class-conditional "
                                          "guidance needs at least 2 classes"):
        check_train_config(cfg)


def test_aggregate_py_on_a_missing_folder_says_so_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "aggregate.py"), str(tmp_path / "nothing")], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"aggregate.py: error: no sweep.json with points under '{tmp_path / 'nothing'}'"


@pytest.mark.parametrize("overrides", [
    [], ["data=gmm", "model=mlp", "metrics=exact", "sampling.clip_x0=null"],
    ["guidance=cfgpp", "sweep.ws=[0,0.5,1]", "grids.ws=[0,1]"], ["sampler=paper", "schedule=paper"],
    ["sampling.batched=true", "sampling.precision=bf16-mixed", "sampling.clip_x0=2"],
    ["guidance=interval_high"], ["guidance=interval_narrow"],
    ["strategy=ddp", "trainer.devices=2"], ["logger=none", "~callbacks.sweep"],
    ["+trainer.max_time=00:00:10:00", "trainer.max_steps=-1"], ["+trainer.max_time={hours:2}", "trainer.max_steps=-1"],
    ["trainer.max_steps=-1", "trainer.max_epochs=null"], ["trainer.max_steps=-1", "trainer.max_epochs=3"],
    ["data=gmm", "model=mlp", "metrics=exact"], ["data.batch_size=1617"],
])
def test_good_train_configs_pass(overrides, tmp_path):
    check_train_config(composed("config", overrides, tmp_path))


def test_every_problem_is_listed_at_once(tmp_path):
    cfg = composed("config", ["module.p_uncond=2", "sampler.steps=0", "trainer.max_steps=0"], tmp_path)
    with pytest.raises(ConfigError) as err:
        check_train_config(cfg)
    assert all(s in str(err.value) for s in ("p_uncond=2", "steps=0", "trainer: max_steps=0"))


def test_independent_checks_run_when_the_data_fails(tmp_path):
    """The module's values are checked although the data, and so the model, cannot be built."""
    cfg = composed("config", ["data=mnist", "data.data_dir=/nonexistent/mnist", "module.p_uncond=2",
                              "sampler.steps=0", "schedule.s=-1", "trainer.max_steps=0"], tmp_path)
    with pytest.raises(ConfigError) as err:
        check_train_config(cfg)
    message = str(err.value)
    for s in ("data: MNIST train IDX files", "module: p_uncond=2", "sampler: steps=0", "schedule: cosine offset s=-1",
              "trainer: max_steps=0"):
        assert s in message, message


@pytest.mark.parametrize("overrides,expected", [
    (["ckpt_path=/nonexistent/last.ckpt"], ["ckpt_path", "/nonexistent/last.ckpt"]),
    (["sweep.ws=[0,-2]"], ["sweep.ws[1]", "w=-2"]),
    (["sweep.num_samples=0"], ["sweep", "num_samples=0"]),
    (["sweep.repeats=0"], ["sweep", "repeats=0"]),
    (["sweep.repeats=3", "sweep.num_samples=400000", "sweep.batch_size=1"], ["sweep", "repeats=3", "overlap"]),
    (["+sweep.w=[0,1]"], ["sweep.w: unknown key", "did you mean sweep.ws?"]),
    (["+guidance.w=3"], ["guidance.w: unknown key", "did you mean sweep.ws?"]),
    (["sampling.batched=2"], ["sampling.batched: 2: should be a valid boolean"]),
    (["+sweep_typo=1"], ["sweep_typo", "1"]),
    (["ckpt_path=???"], ["ckpt_path: ??? is a required value"]),
])
def test_bad_evaluate_config_is_refused(overrides, expected, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"")
    cfg = composed("evaluate", [f"ckpt_path={ckpt}", *overrides], tmp_path / "run")
    with pytest.raises(ConfigError) as err:
        check_evaluate_config(cfg)
    for s in expected:
        assert s in str(err.value), str(err.value)


def run_script(script, *overrides):
    cmd = [sys.executable, str(ROOT / script), *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "HYDRA_FULL_ERROR": "0"})


@pytest.mark.slow
def test_train_py_refuses_before_hydra_writes_anything(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_script("train.py", f"hydra.run.dir={run_dir}", "module.p_uncond=1.5", "+module.foo=bar")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "module.foo: unknown key (value 'bar')" in proc.stderr and "Traceback" not in proc.stderr
    assert not run_dir.exists()


@pytest.mark.slow
def test_bad_config_leaves_an_earlier_run_untouched(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("earlier run\n")
    proc = run_script("train.py", f"hydra.run.dir={run_dir}", "sampler.steps=0")
    assert proc.returncode == 2 and "steps=0" in proc.stderr
    assert [p.name for p in run_dir.rglob("*")] == [".hydra", "config.yaml"]
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "earlier run\n"


@pytest.mark.slow
def test_evaluate_py_refuses_before_hydra_writes_anything(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_script("evaluate.py", f"hydra.run.dir={run_dir}", f"ckpt_path={tmp_path / 'missing.ckpt'}")
    assert proc.returncode == 2 and "missing.ckpt" in proc.stderr
    assert not run_dir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("script, override, expected", [
    ("train.py", "guidance.w=3", ["guidance.w: unknown key (value 3); did you mean grids.ws or sweep.ws?"]),
    ("train.py", "callbacks.sweep.ws=[0,1]", ["callbacks.sweep.ws: unknown key (value [0,1])", "sweep.ws"]),
    ("evaluate.py", "sweep.w=[0,1]", ["sweep.w: unknown key (value [0,1]); did you mean sweep.ws?"]),
    ("generate.py", "guidance.w=2", ["guidance.w: unknown key (value 2); did you mean ws?"]),
    ("evaluate.py", "guidance.w=2", ["guidance.w: unknown key (value 2); did you mean sweep.ws?"]),
    ("evaluate.py", "+guidance.w=2", ["guidance.w: unknown key (value 2)", "did you mean sweep.ws?"]),
])
def test_a_w_that_would_be_ignored_is_refused_naming_where_it_belongs(script, override, expected, tmp_path):
    """Hydra alone would refuse guidance.w=3 without saying where a strength belongs, and would compose
    +guidance.w=3: the scripts refuse both as unknown keys, naming the keys of that name, before anything runs."""
    run_dir = tmp_path / "run"
    proc = run_script(script, f"hydra.run.dir={run_dir}", "ckpt_path=null" if script == "train.py" else
                      f"ckpt_path={tmp_path / 'x.ckpt'}", override)  # refused before the missing file matters
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert all(s in proc.stderr for s in expected), proc.stderr
    assert "Traceback" not in proc.stderr and not run_dir.exists()


def test_guidance_configs_carry_no_strength():
    """The strength comes from sweep.ws / grids.ws: every guidance config builds the whole method, which has no
    w to set."""
    import dataclasses

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    for path in sorted((ROOT / "conf" / "guidance").glob("*.yaml")):
        node = OmegaConf.load(path)
        assert "w" not in node and "_partial_" not in node, path.name
        if not OmegaConf.missing_keys(node):
            assert "w" not in {f.name for f in dataclasses.fields(instantiate(node))}, path.name


@pytest.mark.slow
def test_missing_required_value_is_reported_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_script("evaluate.py", "published=dit", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "published.path: ??? is a required value: set it, e.g. published.path=<value>" in proc.stderr
    assert "Traceback" not in proc.stderr and "raised" not in proc.stderr and not run_dir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [["hydra/launcher=basic"], ["hydra/launcher=local"],
                                      ["hydra/launcher=slurm_cpu", "hydra.launcher.partition=debug"]])
def test_multirun_with_one_bad_job_launches_nothing(launcher, tmp_path):
    """Every job's composed config is checked before the sweeper creates the sweep directory or hands a job to
    the launcher: no job folder, no submitit folder (so no SLURM job), no W&B run."""
    sweep_dir = tmp_path / "multirun"
    proc = run_script("train.py", "-m", *launcher, f"hydra.sweep.dir={sweep_dir}", "module.p_uncond=0.1,0.2,1.5,0.5",
                      "trainer.max_steps=5", "logger=wandb", "logger.wandb.mode=offline")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "bad multirun, nothing was launched:\n  1 of 4 jobs have problems:" in proc.stderr, proc.stderr
    assert ("job 2 (module.p_uncond=1.5 trainer.max_steps=5 logger=wandb logger.wandb.mode=offline):\n"
            "    module: p_uncond=1.5 must lie in [0, 1]") in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not sweep_dir.exists()


@pytest.mark.slow
def test_slurm_multirun_without_a_partition_is_refused(tmp_path):
    """submitit's own config would silently turn the launcher's ??? into null (sbatch's default partition)."""
    sweep_dir = tmp_path / "multirun"
    proc = run_script("train.py", "-m", "hydra/launcher=slurm_cpu", f"hydra.sweep.dir={sweep_dir}",
                      "module.p_uncond=0.1,0.2")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "hydra.launcher.partition: ??? is a required value of hydra/launcher=slurm_cpu" in proc.stderr
    assert not sweep_dir.exists()


def truncated_checkpoint(path):
    buffer = io.BytesIO()
    torch.save({"global_step": 3, "state_dict": {"w": torch.zeros(10_000)}, "cfglab_config": {}}, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path.read_bytes()


@pytest.mark.slow
def test_damaged_checkpoint_to_resume_from_is_refused_naming_the_file(tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    content = truncated_checkpoint(last)
    proc = run_script("train.py", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"ckpt_path: '{last}' is truncated or corrupt, not a readable checkpoint" in proc.stderr, proc.stderr
    assert "move it aside to start afresh" in proc.stderr and "Traceback" not in proc.stderr
    assert last.read_bytes() == content and not (run_dir / ".hydra").exists()


@pytest.mark.slow
@pytest.mark.parametrize("script", ["evaluate.py", "generate.py"])
def test_damaged_checkpoint_to_sample_from_is_refused_naming_the_file(script, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    truncated_checkpoint(ckpt)
    proc = run_script(script, f"hydra.run.dir={tmp_path / 'run'}", f"ckpt_path={ckpt}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"ckpt_path: '{ckpt}' is truncated or corrupt" in proc.stderr and "point ckpt_path at another" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def saved_model(path, tmp_path, *overrides):
    """A checkpoint as train.py writes it (config groups and weights) of an untrained small model."""
    from cfglab.build import build

    _, module = build(composed("config", ["model.base_channels=8", *overrides], tmp_path / "unused"))
    torch.save({"cfglab_config": module.build_config, "state_dict": module.state_dict(), "global_step": 0}, path)
    return module


def test_autoguidance_refuses_a_guiding_model_with_another_schedule(tmp_path):
    from cfglab.checkpoints import load_guide_net
    from cfglab.diffusion.guidance import Autoguidance

    main = saved_model(tmp_path / "main.ckpt", tmp_path)
    saved_model(tmp_path / "guide.ckpt", tmp_path, "schedule=linear")
    saved_model(tmp_path / "same.ckpt", tmp_path)
    cfg = composed("evaluate", [f"ckpt_path={tmp_path / 'main.ckpt'}", "guidance=autoguidance",
                                f"guidance.guide_ckpt={tmp_path / 'guide.ckpt'}"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"guidance.guide_ckpt: .*guide.ckpt' has schedule .*LinearBeta.* \(this "
                                          r"model: .*Cosine"):
        check_evaluate_config(cfg)  # before anything is loaded
    with pytest.raises(ValueError, match="LinearBeta"):
        load_guide_net(Autoguidance(guide_ckpt=str(tmp_path / "guide.ckpt")), main)  # and when loading
    assert load_guide_net(Autoguidance(guide_ckpt=str(tmp_path / "same.ckpt")), main) is not None
