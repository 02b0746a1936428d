"""Training multiruns through a real single-node SLURM (slurmctld, slurmd, slurmdbd, MariaDB, munge) started on
localhost by scripts/slurm-up.sh, with hydra/launcher=slurm_cpu (submitit)."""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from cfglab.aggregate import collect
from helpers import ROOT

pytestmark = pytest.mark.slow

SLURM_ROOT = "/tmp/cfglab-slurm-test"
ENV = {**os.environ, "ROOT": SLURM_ROOT, "SLURM_CONF": f"{SLURM_ROOT}/etc/slurm.conf", "DBD": "1"}


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("starting slurmctld/slurmdbd needs root and Debian's packages")
    subprocess.run(["bash", "scripts/slurm-install.sh"], cwd=ROOT, check=True, timeout=600)
    subprocess.run(["bash", "scripts/slurm-down.sh"], cwd=ROOT, env=ENV, capture_output=True, timeout=120)
    shutil.rmtree(SLURM_ROOT, ignore_errors=True)
    subprocess.run(["bash", "scripts/slurm-up.sh"], cwd=ROOT, env=ENV, check=True, timeout=300)
    yield
    subprocess.run(["bash", "scripts/slurm-down.sh"], cwd=ROOT, env=ENV, capture_output=True, timeout=120)


def launch(sweep_dir, *overrides):
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm_cpu", "hydra.launcher.partition=debug",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10",
           f"hydra.sweep.dir={sweep_dir}", "model.base_channels=16", "grids.ws=[0]", "grids.per_class=1",
           "sampler.steps=3", "trainer.enable_progress_bar=false", *overrides]
    env = {**ENV, "CFGLAB_CACHE": str(sweep_dir.parent / "cache")}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_slurm(*args):
    return subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=60).stdout


def job_id(sweep_dir, task):
    """The SLURM id of a multirun's job `task` (arrays: <array>_<task>; a single job: <id>)."""
    names = [p.name for p in (sweep_dir / ".submitit").iterdir() if p.name[0].isdigit()]
    return next(n for n in names if n.endswith(f"_{task}") or ("_" not in n and task == 0))


def wait_for(path, proc, timeout=300):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def logs(sweep_dir, array_task):
    return "".join(p.read_text() for p in sweep_dir.glob(f".submitit/*_{array_task}/*_log.*"))


def test_multirun_of_ddp_jobs_survives_preemption_and_aggregates(slurm, tmp_path):
    """Two training jobs, each two DDP ranks started by srun. Job 0 gets SLURM's pre-timeout signal (USR2):
    it checkpoints, submitit requeues it once, and the rerun resumes from the checkpoint and finishes."""
    sweep_dir = tmp_path / "mr"
    # 400 steps: the pre-timeout signal must reach job 0 while it still trains (150 steps finished first once)
    proc = launch(sweep_dir, "strategy=ddp", "trainer.devices=2", "trainer.max_steps=400",
                  "callbacks.checkpoint.every_n_train_steps=25", "sweep.ws=[0,2]",
                  "sweep.num_samples=40", "sweep.batch_size=20", "module.p_uncond=0.1,0.5")
    wait_for(sweep_dir / "0" / "checkpoints" / "last.ckpt", proc)
    job = job_id(sweep_dir, 0)
    run_slurm("scancel", "--signal=USR2", job)
    deadline = time.time() + 600
    while proc.poll() is None:
        assert time.time() < deadline, "the multirun did not finish"
        if "BeginTime" in run_slurm("squeue", "-h", "-j", job, "-o", "%r"):
            run_slurm("scontrol", "update", f"JobId={job}", "StartTime=now")  # SLURM holds requeued jobs ~2 min
        time.sleep(1)
    out = proc.stdout.read()
    assert proc.returncode == 0, out[-4000:]

    log0 = logs(sweep_dir, 0)
    assert "stopped by SIGUSR2 after step" in log0 and "Requeued job" in log0
    assert "Restoring states from the checkpoint path" in log0
    assert "MEMBER: 2/2" in log0  # rank 1 of a world of 2, from SLURM's variables
    # Only the rerun leaves results: one from the stopped run could be read as the job's before the rerun's
    for rank in (0, 1):
        out_log = next(sweep_dir.glob(f".submitit/*_0/*_0_{rank}_log.out")).read_text()
        assert len(re.findall(r"^submitit INFO .* Job completed successfully", out_log, re.M)) == 1, out_log
    assert "Requeued" not in logs(sweep_dir, 1)
    for i in (0, 1):
        assert torch.load(sweep_dir / str(i) / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 400
    varying, rows = collect(sweep_dir)
    assert varying == ["module.p_uncond"] and len(rows) == 4 and all(r["fid"] > 0 for r in rows)


def test_multirun_with_a_bad_job_submits_nothing(slurm, tmp_path):
    def jobs():
        return run_slurm("sacct", "-a", "-n", "-X", "-o", "JobID", "-S", "2000-01-01").split()

    before = jobs()
    sweep_dir = tmp_path / "mr"
    proc = launch(sweep_dir, "trainer.max_steps=5", "module.p_uncond=0.1,1.5,0.2")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out[-3000:]
    assert "1 of 3 jobs have problems:" in out and "module: p_uncond=1.5 must lie in [0, 1]" in out, out[-3000:]
    assert not sweep_dir.exists()
    assert jobs() == before and run_slurm("squeue", "-h", "-a").strip() == ""


def test_failing_jobs_report_their_errors_instead_of_hanging(slurm, tmp_path):
    # An image file that only fails when the job loads it (the config check counts files, it does not decode them).
    for name, n in (("a", 2), ("b", 1)):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8)).save(tmp_path / "images" / name / f"{i}.png")
    (tmp_path / "images" / "b" / "broken.png").write_bytes(b"not a png")
    proc = launch(tmp_path / "bad", "trainer.max_steps=5", "~callbacks.sweep", "data=image_folder",
                  f"data.data_dir={tmp_path / 'images'}", "data.batch_size=2", "data.val_fraction=0")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "broken.png" in out, out[-3000:]

    # Jobs that leave no result (killed hard; cancelled, which stops training with a checkpoint but unfinished):
    # submitit learns their state from sacct (slurmdbd) and fails them.
    for how in ("kill -9", "scancel"):
        sweep_dir = tmp_path / how.replace(" ", "")
        proc = launch(sweep_dir, "trainer.max_steps=100000", "callbacks.checkpoint.every_n_train_steps=10",
                      "~callbacks.sweep")
        wait_for(sweep_dir / "0" / "checkpoints" / "last.ckpt", proc)
        job = job_id(sweep_dir, 0)
        if how == "scancel":
            run_slurm("scancel", job)
        else:
            rows = run_slurm("scontrol", "listpids", job).splitlines()[1:]  # PID JOBID STEPID LOCALID GLOBALID
            pids = [int(r.split()[0]) for r in rows if r.split()[2] == "0"]  # step 0: the python task
            assert pids
            for pid in pids:
                os.kill(pid, 9)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode != 0 and "UncompletedJobError" in out, out[-3000:]
        assert f"{job}" in out
