"""Guidance distillation (Meng et al. 2023): the student's initialisation, stage one against the exact guided
prediction of a Gaussian mixture, one progressive round (Salimans & Ho 2022) against its teacher's sampler, and
the jobs: train.py with the presets, distill.py, evaluate.py on a student, the configuration checks."""

import json
import signal
import math
import subprocess
import sys
import time

import lightning as L
import pytest
import torch

from cfglab.data.gmm import ExactGMMModel, GaussianMixtureDataModule
from cfglab.diffusion.guidance import CFG
from cfglab.diffusion.samplers import DDIM
from cfglab.diffusion.sampling import sample
from cfglab.diffusion.schedules import Cosine
from cfglab.diffusion.weighting import TruncatedSNR, Uniform
from cfglab.lightning.distillation import ConsistencyDistillation, GuidanceDistillation, ProgressiveDistillation
from cfglab.lightning.module import CFGDiffusion
from cfglab.models.mlp import MLP
from cfglab.models.student import student_net
from cfglab.models.unet import UNet
from cfglab.config_checks import ConfigError, check_distill_config, check_train_config
from helpers import ROOT, composed

SCHEDULE = Cosine()
WS = (0.0, 1.0, 2.0, 4.0)


class ExactV(torch.nn.Module):
    """The mixture's exact v = alpha eps - sigma x0 (Salimans & Ho 2022), from its exact eps in float64: v keeps
    x0 = alpha x_t - sigma v finite at t = 1, where x0 from eps divides by alpha ~ 1e-5 and would turn a student's
    small eps errors into huge first steps."""

    def __init__(self, exact: ExactGMMModel):
        super().__init__()
        self.exact, self.num_classes, self.sample_shape = exact, exact.num_classes, exact.sample_shape

    def forward(self, x, t, labels):
        x64, (alpha, sigma) = x.double(), SCHEDULE.alpha_sigma(t.double())
        eps = self.exact(x64, t.double(), labels)
        x0 = (x64 - sigma[:, None] * eps) / alpha[:, None]
        return (alpha[:, None] * eps - sigma[:, None] * x0).to(x.dtype)


def exact_guided_v(exact: ExactV, x, t, labels, w):
    """(1 + w) v(x, c) - w v(x, null) of the mixture: Ho & Salimans 2022, eq. 6, in v (affine in eps)."""
    null = torch.full_like(labels, exact.num_classes)
    return (1 + w) * exact(x, t, labels) - w * exact(x, t, null)


def fit(module, datamodule, steps, tmp_path):
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=datamodule)
    return module.eval()


def test_the_student_starts_as_its_teachers_conditional_prediction(tmp_path):
    torch.manual_seed(0)
    teacher = UNet(8, 1, 10, base_channels=16, channel_mult=[1, 2], num_res_blocks=1)
    with torch.no_grad():  # a trained-looking teacher: the zero-initialised layers would hide a wrong student
        for p in teacher.parameters():
            p.add_(0.2 * torch.randn_like(p))
    config = {"model": {"_target_": "cfglab.models.unet.UNet", "base_channels": 16, "channel_mult": [1, 2],
                        "num_res_blocks": 1}}
    torch.save({"cfglab_config": config, "state_dict": {f"net.{k}": v for k, v in teacher.state_dict().items()}},
               tmp_path / "teacher.ckpt")
    student = student_net(str(tmp_path / "teacher.ckpt"), 8, 1, 10, guidance_range=[0, 4])
    assert student.guidance_range == (0.0, 4.0)
    x, t = torch.randn(6, 1, 8, 8), torch.rand(6)
    labels = torch.tensor([0, 3, 9, 10, 10, 5])  # 10: the null label
    with torch.no_grad():
        cond = teacher(x, t, labels)
        for w in WS:
            out = student(x, t, labels, torch.full((6,), w))
            assert torch.equal(out, cond), f"w={w}"
        guided = 2 * cond - teacher(x, t, torch.full_like(labels, 10))
        assert not torch.allclose(cond, guided, atol=1e-2)  # guidance does change the target the student learns
    with pytest.raises(ValueError, match="needs w"):
        student(x, t, labels)
    with pytest.raises(ValueError, match="guidance_range"):
        student_net(str(tmp_path / "teacher.ckpt"), 8, 1, 10)  # a joint teacher needs the range to distil


def stage_one(dm, teacher, tmp_path_factory):
    """Stage one with the mixture's exact model as teacher and an MLP student of its target, w ~ U[0, 4]."""
    L.seed_everything(0)
    module = GuidanceDistillation(MLP(2, 4, hidden=128, depth=3, guidance_range=[0, 4]), SCHEDULE, 4, teacher,
                                  p_uncond=0.1, lr=3e-3, warmup_steps=50)
    return fit(module, dm, 1500, tmp_path_factory.mktemp("stage1"))


@pytest.fixture(scope="module")
def mixture():
    L.seed_everything(0)
    return GaussianMixtureDataModule(num_samples=20_000, batch_size=512)


@pytest.fixture(scope="module")
def mixture_student(mixture, tmp_path_factory):
    """A v-prediction student of the exact mixture (ExactV)."""
    teacher = CFGDiffusion(ExactV(ExactGMMModel(mixture.mixture, SCHEDULE)), SCHEDULE, num_classes=4, target="v")
    return mixture, teacher, stage_one(mixture, teacher, tmp_path_factory)


@pytest.fixture(scope="module")
def eps_student(mixture, tmp_path_factory):
    """The same, predicting eps: the exact mixture's own output."""
    teacher = CFGDiffusion(ExactGMMModel(mixture.mixture, SCHEDULE), SCHEDULE, num_classes=4, target="eps")
    return stage_one(mixture, teacher, tmp_path_factory)


@pytest.mark.slow
def test_stage_one_trains_the_new_w_embedding_at_its_own_learning_rate(mixture):
    teacher = CFGDiffusion(ExactV(ExactGMMModel(mixture.mixture, SCHEDULE)), SCHEDULE, num_classes=4, target="v")
    net = MLP(2, 4, hidden=32, depth=2, guidance_range=[0, 4])
    groups = GuidanceDistillation(net, SCHEDULE, 4, teacher, lr=1e-3, guidance_lr_factor=20).param_groups()
    assert [g.get("lr") for g in groups] == [None, pytest.approx(2e-2)]  # None: the module's lr
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in net.guidance_emb.parameters()]
    assert sorted(map(id, groups[0]["params"] + groups[1]["params"])) == sorted(map(id, net.parameters()))
    with pytest.raises(ValueError, match="guidance_lr_factor=0 must be > 0"):
        GuidanceDistillation(net, SCHEDULE, 4, teacher, guidance_lr_factor=0)


@pytest.mark.slow
def test_inverse_square_w_weighting_divides_each_error_by_one_plus_w_squared(mixture_student):
    dm, teacher, _ = mixture_student
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(256) % 4
    x0 = dm.mixture.sample(labels, g).float()
    loss = {}
    for w_weighting in ("uniform", "inverse_square"):
        torch.manual_seed(0)  # the same student weights for both
        module = GuidanceDistillation(MLP(2, 4, hidden=32, depth=2, guidance_range=[0, 4]), SCHEDULE, 4, teacher,
                                      weighting=TruncatedSNR(), w_weighting=w_weighting)
        module.draw_w = lambda b, generator, device: torch.full((b,), 3.0)  # every example at w = 3
        loss[w_weighting] = float(module.loss(x0, labels, torch.Generator().manual_seed(0)))
    assert loss["inverse_square"] == pytest.approx(loss["uniform"] / 16, rel=1e-5)
    with pytest.raises(ValueError, match="w_weighting='cubic' is not one of"):
        GuidanceDistillation(MLP(2, 4, guidance_range=[0, 4]), SCHEDULE, 4, teacher, w_weighting="cubic")


@pytest.mark.slow
def test_a_distilled_student_predicts_the_exact_guided_prediction_at_every_w(mixture_student):
    dm, teacher, student = mixture_student
    exact = teacher.net
    g = torch.Generator().manual_seed(1)
    n = 4000
    labels = torch.arange(n) % 4
    x0 = dm.mixture.sample(labels, g).float()
    t = torch.rand(n, generator=g)
    alpha, sigma = SCHEDULE.alpha_sigma(t)
    xt = alpha[:, None] * x0 + sigma[:, None] * torch.randn(n, 2, generator=g)
    rms = lambda a: float(a.pow(2).sum(1).mean().sqrt())  # noqa: E731
    with torch.no_grad():
        for w in WS:
            ref = exact_guided_v(exact, xt, t, labels, w)
            err = rms(student.net(xt, t, labels, torch.full((n,), w)) - ref)
            spread = rms(ref - exact(xt, t, labels))  # how far guidance moves v from the conditional one
            print(f"w={w}: rms error {err:.3f}, guidance moves v by {spread:.3f}")
            # An MLP fitted for 1,500 steps is within 0.25 of the exact guided v (whose scale is 1) at every w,
            # and within a quarter of what guidance changes at w >= 1: it has learnt w, not the conditional eps
            # alone. (4,000 points: the RMS itself varies by about 2 % between draws.)
            assert err < 0.25
            if w:
                assert err < 0.25 * spread


@pytest.mark.slow
def test_one_progressive_round_halves_the_steps_at_v_but_not_at_eps(mixture_student, eps_student, tmp_path):
    """Salimans & Ho 2022, sec. 4: one round of the v student with the truncated-SNR loss and its learning rate
    annealed to 0 lands on its teacher's 2N-step samples at N steps; the eps student, with the same round and eps's
    own loss, does not, because the first step's x0 = (z - sigma eps) / alpha amplifies its error by 1 / alpha."""
    dm, _, stage1_v = mixture_student
    steps = 4  # the student's; its teacher takes 8 DDIM steps
    labels = torch.arange(2000) % 4
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5))
    run = lambda m, n, w: sample(sampler=DDIM(steps=n), guidance=CFG(), w=w, labels=labels, noise=noise,  # noqa: E731
                                 **m.sampling_args())
    std = math.sqrt(float(dm.mixture.covs[0, 0, 0]))
    distance = {}
    for name, teacher, weighting in (("v", stage1_v, TruncatedSNR()), ("eps", eps_student, Uniform())):
        L.seed_everything(0)
        student = ProgressiveDistillation(MLP(2, 4, hidden=128, depth=3, guidance_range=[0, 4]), SCHEDULE, 4,
                                          teacher, student_steps=steps, p_uncond=0.1, lr=1e-3, warmup_steps=20,
                                          weighting=weighting, lr_schedule="linear")
        student.net.load_state_dict(teacher.net.state_dict())  # initialised as its teacher (Alg. 2)
        fit(student, dm, 600, tmp_path / name)
        for w in (0.0, 2.0):
            teacher_n, nfe = run(teacher, 2 * steps, w)
            assert nfe == 2 * steps  # one forward per step, guided or not
            naive = float((run(teacher, steps, w)[0] - teacher_n).norm(dim=1).median())
            distance[name, w] = float((run(student, steps, w)[0] - teacher_n).norm(dim=1).median())
            print(f"{name}, w={w}: median distance to the teacher's {2 * steps}-step samples: teacher at {steps} "
                  f"steps {naive:.3f}, distilled student {distance[name, w]:.3f} (component std {std:.3f})")
            if name == "v":
                assert distance[name, w] < 0.5 * naive and distance[name, w] < 0.25 * std
    for w in (0.0, 2.0):
        assert distance["eps", w] > 0.25 * std and distance["eps", w] > 3 * distance["v", w]


@pytest.mark.slow
@pytest.mark.parametrize("method", [ConsistencyDistillation, ProgressiveDistillation])
def test_one_job_brings_a_4_step_student_onto_its_teachers_finer_ode(mixture_student, method, tmp_path):
    """Heek et al. 2024: one job of multistep consistency distillation brings the 4-step student onto its teacher's
    `teacher_steps`-step DDIM samples (the ODE the consistency target is built from), at every w through the w
    input, much nearer than the teacher's own 4 steps; so does one progressive round whose teacher takes all
    `teacher_steps` steps (8 per student step, where a halving round takes 2)."""
    dm, _, stage1_v = mixture_student
    steps, teacher_steps = 4, 32
    labels = torch.arange(2000) % 4
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5))
    run = lambda m, n, w: sample(sampler=DDIM(steps=n), guidance=CFG(), w=w, labels=labels, noise=noise,  # noqa: E731
                                 **m.sampling_args())[0]
    std = math.sqrt(float(dm.mixture.covs[0, 0, 0]))
    L.seed_everything(0)
    student = method(MLP(2, 4, hidden=128, depth=3, guidance_range=[0, 4]), SCHEDULE, 4, stage1_v,
                     student_steps=steps, teacher_steps=teacher_steps, p_uncond=0.1, lr=1e-3, warmup_steps=20,
                     weighting=TruncatedSNR(), lr_schedule="linear")
    student.net.load_state_dict(stage1_v.net.state_dict())
    fit(student, dm, 800, tmp_path)
    for w in (0.0, 2.0):
        reference = run(stage1_v, teacher_steps, w)
        naive = float((run(stage1_v, steps, w) - reference).norm(dim=1).median())
        distance = float((run(student, steps, w) - reference).norm(dim=1).median())
        print(f"w={w}: median distance to the teacher's {teacher_steps}-step samples: teacher at {steps} steps "
              f"{naive:.3f}, {method.__name__} student {distance:.3f} (component std {std:.3f})")
        assert distance < 0.5 * naive and distance < 0.25 * std


@pytest.mark.slow
@pytest.mark.parametrize("method", [ConsistencyDistillation, ProgressiveDistillation])
def test_few_step_distillation_refuses_a_grid_it_cannot_cut(mixture_student, method):
    _, _, stage1_v = mixture_student
    with pytest.raises(ValueError, match="teacher_steps=30 must be a multiple of student_steps=4"):
        method(MLP(2, 4, hidden=16, depth=1, guidance_range=[0, 4]), SCHEDULE, 4, stage1_v, student_steps=4,
               teacher_steps=30)


# --- the jobs: train.py with experiment=distill_mnist, distill.py, evaluate.py on a student ---------------------

STEPS = 30
JOB = ["data=digits", "~data.split", "trainer.precision=32-true", "data.batch_size=32", "logger=none",
       "trainer.enable_progress_bar=false", "~callbacks.sweep", "grids.ws=[]"]


def job(script, *args, timeout=600, check=True):
    proc = subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)
    assert not check or proc.returncode == 0, proc.stderr[-3000:]
    return proc


def distill_args(teacher, run_dir):
    return ["experiment=distill_mnist", f"teacher_ckpt={teacher}", f"trainer.max_steps={STEPS}",
            "module.warmup_steps=5", "callbacks.checkpoint.every_n_train_steps=10", *JOB, f"hydra.run.dir={run_dir}"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("teacher")
    job("train.py", "trainer.max_steps=40", "model.base_channels=16", "module.target=v",
        *(a for a in JOB if a != "~data.split"), f"hydra.run.dir={run_dir}")
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("student")
    job("train.py", *distill_args(teacher, run_dir))
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_a_distillation_run_killed_and_resumed_ends_bit_identical(teacher, student, tmp_path):
    proc = subprocess.Popen([sys.executable, "train.py", *distill_args(teacher, tmp_path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] < STEPS
    job("train.py", *distill_args(teacher, tmp_path))
    a, b = (torch.load(p, weights_only=True) for p in (student, tmp_path / "checkpoints" / "last.ckpt"))
    assert a["global_step"] == b["global_step"] == STEPS
    for key in ("state_dict", "current_model_state"):  # EMA weights, trained weights
        assert a[key].keys() == b[key].keys() and any("guidance_emb" in k for k in a[key])
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    body, embedding = b["optimizer_states"][0]["param_groups"]  # the preset's guidance_lr_factor, both annealed
    assert embedding["lr"] == pytest.approx(body["lr"] * 10) and body["lr"] < body["initial_lr"]


@pytest.mark.slow
def test_a_student_checkpoint_goes_through_evaluate_at_one_forward_per_step(teacher, student, tmp_path):
    args = ["sweep.ws=[0,2]", "sweep.num_samples=20", "sweep.batch_size=20", "sampler=ddim", "sampler.steps=5"]
    for name, ckpt in (("teacher", teacher), ("student", student)):
        job("evaluate.py", f"ckpt_path={ckpt}", *args, f"hydra.run.dir={tmp_path / name}")
    nfe = {name: {p["w"]: p["nfe"] for p in json.loads((tmp_path / name / "sweep.json").read_text())["points"]}
           for name in ("teacher", "student")}
    assert nfe == {"teacher": {0.0: 5.0, 2.0: 10.0}, "student": {0.0: 5.0, 2.0: 5.0}}
    # The stored config rebuilds the student without its teacher: a plain model with a w input.
    config = torch.load(student, weights_only=True)["cfglab_config"]
    assert config["model"]["_target_"] == "cfglab.models.unet.UNet" and config["model"]["guidance_range"] == [0, 4]
    assert config["module"]["_target_"] == "cfglab.lightning.module.CFGDiffusion"
    refused = job("evaluate.py", f"ckpt_path={student}", "guidance=apg", "sweep.ws=[1]", check=False)
    assert refused.returncode == 2 and "APG cannot be sampled from a guidance-distilled network" in refused.stderr


@pytest.mark.slow
def test_distill_py_chains_rounds_passes_a_stop_signal_on_and_resumes_skipping_finished_rounds(student, tmp_path):
    args = ["experiment=progressive_mnist", f"teacher_ckpt={student}", "rounds=[4,2]", "trainer.max_steps=300",
            "callbacks.checkpoint.every_n_train_steps=5", "module.warmup_steps=2", *JOB, f"hydra.run.dir={tmp_path}"]
    proc = subprocess.Popen([sys.executable, "distill.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "steps_4" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not ckpt.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # to the chain only: it passes the signal on to the round it runs
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    stopped_at = torch.load(ckpt, weights_only=True)["global_step"]
    assert 5 <= stopped_at < 300 and not (tmp_path / "steps_4" / "finished").exists()
    assert not (tmp_path / "steps_2").exists()

    steps = stopped_at + 5
    args[3] = f"trainer.max_steps={steps}"  # the rerun finishes the stopped round from its checkpoint, then the next
    out = job("distill.py", *args).stdout
    assert out.count("progressive distillation:") == 2
    first, second = (torch.load(tmp_path / f"steps_{n}" / "checkpoints" / "last.ckpt", weights_only=True)
                     for n in (4, 2))
    assert first["global_step"] == second["global_step"] == steps
    assert first["cfglab_distillation"]["student_steps"] == 4 and second["cfglab_distillation"]["student_steps"] == 2
    assert first["cfglab_distillation"]["teacher_ckpt"] == str(student)
    assert second["cfglab_distillation"]["teacher_ckpt"] == str(tmp_path / "steps_4" / "checkpoints" / "last.ckpt")
    assert second["cfglab_config"]["model"]["guidance_range"] == [0, 4]
    assert job("distill.py", *args).stdout.count("progressive distillation:") == 0  # every round has finished


@pytest.mark.slow
@pytest.mark.parametrize("overrides, expected", [
    (["teacher_ckpt=/no/such.ckpt"], ["teacher_ckpt", "'/no/such.ckpt' is not a file"]),
    (["model.guidance_range=[2,1]"], ["model", "guidance_range=[2, 1] must be [w_min, w_max]"]),
    (["sweep.ws=[0,5]"], ["sweep.ws", "w=5", "outside [0, 4]"]),
    (["guidance=rescale"], ["sweep.ws", "CFGRescale cannot be sampled from a guidance-distilled network"]),
    (["module.lr_schedule=cosine"], ["module", "lr_schedule='cosine' is not one of ('constant', 'linear')"]),
    (["module.guidance_lr_factor=-1"], ["module", "guidance_lr_factor=-1 must be > 0"]),
    (["module.w_weighting=cubic"], ["module", "w_weighting='cubic' is not one of ('uniform', 'inverse_square')"]),
    (["trainer.max_steps=3"], ["module.lr_schedule", "trainer.max_steps=3: it needs trainer.max_steps > module."
                                                     "warmup_steps=5"]),
])
def test_bad_distillation_configs_are_refused(teacher, overrides, expected, tmp_path):
    args = [a for a in distill_args(teacher, tmp_path) if a.split("=")[0] not in {o.split("=")[0] for o in overrides}]
    with pytest.raises(ConfigError) as e:
        check_train_config(composed("config", [a for a in args if not a.startswith("hydra.")] + overrides, tmp_path))
    assert all(part in str(e.value) for part in expected), str(e.value)
    assert len(e.value.lines) == 1, str(e.value)  # the cause alone, not its consequences for the other groups


@pytest.mark.slow
def test_a_teacher_that_nothing_reads_is_refused(teacher, tmp_path):
    with pytest.raises(ConfigError, match="teacher_ckpt: .* would not be read: .*CFGDiffusion has no teacher"):
        check_train_config(composed("config", [f"teacher_ckpt={teacher}"], tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("preset, student_steps", [("consistency_mnist", 4), ("progressive_mnist", 8)])
def test_the_few_step_presets_refuse_a_grid_they_cannot_cut_before_training(student, preset, student_steps,
                                                                             tmp_path):
    args = [f"experiment={preset}", f"teacher_ckpt={student}", "module.teacher_steps=30", *JOB]
    with pytest.raises(ConfigError, match=rf"module: .*teacher_steps=30 must be a multiple of student_steps="
                                          rf"{student_steps}"):
        check_train_config(composed("config", args, tmp_path))
    check_train_config(composed("config", args[:2] + JOB, tmp_path))  # the preset itself passes


@pytest.mark.slow
def test_bad_rounds_are_refused(student, tmp_path):
    args = ["experiment=progressive_mnist", f"teacher_ckpt={student}", *JOB]
    with pytest.raises(ConfigError, match=r"rounds: \[8, 3\]: each round halves the steps"):
        check_distill_config(composed("distill", [*args, "rounds=[8,3]"], tmp_path))
    with pytest.raises(ConfigError, match="module.student_steps: 16 would not be read: distill.py sets each round"):
        check_distill_config(composed("distill", [*args, "rounds=[8,4]", "module.student_steps=16"], tmp_path))
    cfg = composed("distill", [*args, "rounds=[8,4,2]"], tmp_path)
    check_distill_config(cfg)
    assert cfg.module.student_steps == 8  # the first round's


@pytest.mark.slow
def test_the_distillation_benchmark_reports_every_row_against_the_teacher(teacher, student, tmp_path):
    # the two few-step methods, each as its preset runs it, and a progressive round from a finer teacher grid
    runs = {"progressive": ["experiment=progressive_mnist"], "consistency": ["experiment=consistency_mnist"],
            "progressive_of_8": ["experiment=progressive_mnist", "module.teacher_steps=8"]}
    for name, preset in runs.items():
        job("train.py", *preset, f"teacher_ckpt={student}", "module.student_steps=2", "trainer.max_steps=2",
            "module.warmup_steps=1", *JOB, f"hydra.run.dir={tmp_path / name}")
    checkpoints = [tmp_path / m / "checkpoints" / "last.ckpt" for m in runs]
    out = job("benchmarks/distillation.py", "--teacher", teacher, "--student", student, "--few-step", *checkpoints,
              "--ws", 0, 2, "--samples", 10, "--batch", 10, "--batch-sizes", 5, 10, "--steps", 3,
              "--train-steps", 1, "--train-batch", 4).stdout
    report = json.loads(out.strip().splitlines()[-1])
    rows = {r["model"]: r for r in report["rows"]}
    nfe = {name: [p["nfe"] for p in r["points"]] for name, r in rows.items()}
    # The teacher at the student's steps, and at its NFE: one guided step of two forwards at w = 2
    assert nfe == {"teacher": [3, 6], "student": [3, 3], "progressive 2, 2-step round": [2, 2],
                   "consistency 2, 2-step round": [2, 2], "progressive 2 of 8 teacher steps, 2-step round": [2, 2],
                   "teacher, DDIM 2": [2, 4], "teacher, DDIM at 2 NFE": [2, 2], "teacher, DPM++ 2": [2, 4],
                   "teacher, DPM++ at 2 NFE": [2, 2]}
    assert [p["steps"] for p in rows["teacher, DPM++ at 2 NFE"]["points"]] == [2, 1]
    assert [rows[f"{m} 2, 2-step round"]["method"] for m in ("progressive", "consistency")] == ["progressive",
                                                                                             "consistency"]
    assert rows["teacher"]["time_vs_teacher"] == 1 and all(r["time_vs_teacher"] > 0 for r in rows.values())
    assert all(p["fid"] > 0 for r in rows.values() for p in r["points"])
    assert set(report["training"]["step_seconds"]) == {"teacher", "stage one", "progressive round", "consistency",
                                                       "progressive round of 8 teacher steps"}
    assert [rows[n]["teacher_steps"] for n in nfe if "2-step round" in n] == [4, 32, 8]  # halving, preset, finer
    # spread.py's first noise set is the benchmark's: the same FIDs at w = 0; the second is another
    spread = json.loads(job("experiments/guidance_distillation/spread.py", "--teacher", teacher, "--student",
                            student, "--few-step", *checkpoints, "--samples", 10, "--batch", 10, "--steps", 3,
                            "--repeats", 2).stdout.strip().splitlines()[-1])
    fids = {r["model"]: r["fid"] for r in spread["rows"]}
    assert set(fids) == {"stage one", *rows} - {n for n in rows if n.startswith("teacher,")} - {"student"}
    for name, fid in fids.items():
        row = rows["student" if name == "stage one" else name]
        assert fid[0] == pytest.approx(row["points"][0]["fid"], rel=1e-4) and fid[1] != fid[0]
    # screen.py samples as the rows do: the same FID at the student's own steps, and stage one at --steps
    screen = job("experiments/guidance_distillation/screen.py", "--ws", 2, "--samples", 10, "--batch", 10,
                 checkpoints[0]).stdout
    assert f"FID {rows['progressive 2, 2-step round']['points'][1]['fid']:.2f} " in screen, screen
    assert "DDIM 5  w=0" in job("experiments/guidance_distillation/screen.py", "--ws", 0, "--steps", 5,
                                "--samples", 10, "--batch", 10, student).stdout
    batches = report["batch_sizes"]  # the first 2-step student, timed at each batch size
    assert batches["model"] == "progressive 2, 2-step round" and batches["w"] == 2
    assert list(batches["seconds_per_100"]) == ["5", "10"] and all(s > 0 for s in batches["seconds_per_100"].values())
