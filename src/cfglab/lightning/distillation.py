"""Guidance distillation (Meng et al. 2023, "On Distillation of Guided Diffusion Models"), as training modules.

Stage one (`GuidanceDistillation`) trains a student that takes w as an input to predict its teacher's guided
output (1 + w) eps_c - w eps_u, so one forward per step serves every w. Stage two (`ProgressiveDistillation`)
halves the student's deterministic DDIM steps (Salimans & Ho 2022, "Progressive Distillation", Alg. 2): one
student step matches two teacher steps, or as many as `teacher_steps` gives it. `ConsistencyDistillation` is
stage two's alternative: one job distils straight to the final steps (guided multistep consistency distillation,
Heek et al. 2024). All train on noised data like `CFGDiffusion`, with its optimizer, warm-up, label drops, seeded
per-step randomness (exact resume) and checkpoints. The student is the network of `model=student`: the teacher's
network, its weights and a w input (cfglab.models.student).

A student checkpoint is a plain cfglab model: its stored config rebuilds a `CFGDiffusion` around the student
network, so evaluate.py, generate.py and the sweeps sample it like any other, through the w input.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor, nn

from cfglab.checkpoints import Checkpoint, check_same_kind, model_kind
from cfglab.diffusion.denoiser import clip_prediction
from cfglab.diffusion.guidance import guide
from cfglab.diffusion.samplers import time_grid
from cfglab.diffusion.sampling import SamplingSettings
from cfglab.diffusion.schedules import Schedule
from cfglab.diffusion.targets import broadcast, to_prediction, training_target
from cfglab.diffusion.weighting import Weighting
from cfglab.lightning.module import CFGDiffusion
from cfglab.models.student import TEACHER_ADVICE


class _Distillation(CFGDiffusion):
    """What both stages share: the frozen teacher and the check that the student is of its kind.

    teacher_ckpt: the teacher's checkpoint (written by train.py), or the teacher as a loaded CFGDiffusion.
    target: the student's prediction target, None for the teacher's (it must be the teacher's).
    Other keyword arguments: CFGDiffusion's (p_uncond: the share of examples distilled unconditionally).
    """

    def __init__(self, net: nn.Module, schedule: Schedule, num_classes: int, teacher_ckpt: Union[str, CFGDiffusion],
                 target: Optional[str] = None, **kwargs):
        if isinstance(teacher_ckpt, (str, Path)):
            stored = Checkpoint.open(teacher_ckpt, TEACHER_ADVICE)
            teacher, name = stored.module()[1], f"teacher_ckpt={str(teacher_ckpt)!r}"
            teacher_config = stored.config
        else:
            teacher, name, teacher_config = teacher_ckpt, "the teacher", teacher_ckpt.build_config
        target = teacher.target if target is None else target
        check_same_kind(model_kind(num_classes, target, schedule),
                        model_kind(teacher.num_classes, teacher.target, teacher.schedule), name)
        if net.guidance_range is None:
            raise ValueError("the student network has no w input: use model=student with model.guidance_range")
        super().__init__(net, schedule, num_classes, target, **kwargs)
        # A frozen copy outside the module's parameters: not trained, averaged or checkpointed with the student, and
        # the process's Checkpoint keeps its own module as it was.
        self.__dict__["teacher"] = copy.deepcopy(teacher.net).requires_grad_(False).eval()
        self.teacher_config: Optional[dict] = teacher_config  # the teacher's build config (None: a teacher built here)

    def draw_w(self, batch: int, generator: Optional[torch.Generator], device) -> Tensor:
        """w ~ U[w_min, w_max] (the student's guidance_range) per example, (B,)."""
        lo, hi = self.net.guidance_range
        return lo + (hi - lo) * torch.rand(batch, generator=generator, device=device)

    def on_fit_start(self) -> None:
        self.teacher.to(self.device)  # not a registered submodule: Lightning does not move it

    def validation_step(self, batch, batch_idx):
        # The distillation loss on held-out images at fixed noise, comparable across epochs.
        g = torch.Generator(device=batch[0].device).manual_seed(batch_idx)
        self.log("val/loss_distill", self.loss(*batch, g), sync_dist=True)

    def loss(self, x0: Tensor, labels: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """The distillation loss on images x0 (B, ...) with labels (B,) as given (training drops them first)."""
        raise NotImplementedError

    def checkpoint_fields(self) -> dict:
        """The student's checkpoints rebuild as a plain model: a CFGDiffusion around the teacher's network config
        with the student's w input, at the teacher's schedule, so sampling a student needs neither the teacher nor
        its checkpoint; the distillation settings are kept beside it."""
        fields = super().checkpoint_fields()
        if self.build_config is None or self.teacher_config is None:
            return fields
        config = {**self.build_config, "schedule": self.teacher_config["schedule"],
                  "model": {**self.teacher_config["model"], "guidance_range": list(self.net.guidance_range)},
                  "module": {"_target_": f"{CFGDiffusion.__module__}.{CFGDiffusion.__name__}", "target": self.target,
                             "p_uncond": self.p_uncond}}
        return {**fields, "config": config, "distillation": self.build_config["module"]}


class GuidanceDistillation(_Distillation):
    """Stage one of Meng et al. 2023 (sec. 4.1, eq. 7): the student x_eta(z_t, c, w) learns the teacher's guided
    prediction (1 + w) x_c - w x_u at w ~ U[w_min, w_max] (the student network's `guidance_range`).

    The loss is the squared error in the network's own target space (eps or v) at the times and weights of the
    module's `weighting`: guidance is affine in the prediction, so the guided target in that space is the same
    guided model. Labels are
    dropped with probability p_uncond as in training; for a dropped label the target is the teacher's
    unconditional prediction (the guided one with c = null), so the student still samples unconditionally.
    The teacher runs in the trainer's precision (bf16-mixed: under autocast).

    The student's w response is learned slowly: at the body's fine-tuning lr its output at w is pulled towards
    the middle of the range, so the unguided end (where FID changes fastest with w) samples as if slightly guided.
    Two settings counter it (measured in experiments/guidance_distillation):
    guidance_lr_factor: the learning rate of the new, zero-initialised w embedding as a multiple of `lr`.
    w_weighting: "uniform" (Meng et al.) or "inverse_square": each example's squared error times 1 / (1 + w)^2,
        the error relative to the guided target's scale, which otherwise grows as (1 + w)^2 and lets the large-w
        examples dominate the gradient.
    """

    W_WEIGHTINGS = ("uniform", "inverse_square")

    def __init__(self, *args, guidance_lr_factor: float = 1.0, w_weighting: str = "uniform", **kwargs):
        super().__init__(*args, **kwargs)
        if not guidance_lr_factor > 0:
            raise ValueError(f"guidance_lr_factor={guidance_lr_factor} must be > 0")
        if w_weighting not in self.W_WEIGHTINGS:
            raise ValueError(f"w_weighting={w_weighting!r} is not one of {self.W_WEIGHTINGS}")
        self.guidance_lr_factor, self.w_weighting = float(guidance_lr_factor), w_weighting

    def loss(self, x0, labels, generator=None):
        t = self.weighting.times(x0.shape[0], self.schedule, generator, x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        w = self.draw_w(x0.shape[0], generator, x0.device)
        alpha, sigma = self.schedule.alpha_sigma(t)
        xt = broadcast(alpha, x0) * x0 + broadcast(sigma, x0) * eps
        with torch.no_grad():
            null = torch.full_like(labels, self.null_label)
            cond, uncond = self.teacher(torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
            target = guide(cond.float(), uncond.float(), broadcast(w, xt))
        # Scaling prediction and target by 1/(1 + w) weights the squared error by 1/(1 + w)^2.
        scale = broadcast(1 / (1 + w), xt) if self.w_weighting == "inverse_square" else 1.0
        return self.weighted_mse(scale * self.net(xt, t, labels, w).float(), scale * target, t)

    def param_groups(self) -> list[dict]:
        new = list(self.net.guidance_emb.parameters())
        ids = {id(p) for p in new}
        rest = [p for p in self.net.parameters() if id(p) not in ids]
        return [{"params": rest}, {"params": new, "lr": self.lr * self.guidance_lr_factor}]


class _StepDistillation(_Distillation):
    """What the few-step methods share: a stage-one teacher of the student's w range, the deterministic DDIM step
    (eta = 0) of teacher and student as sampling takes it (its x0 clipped by `sampling.clip_x0`, the setting that
    samples the student), and the loss that makes the student's one step from z_t land where a longer path lands.

    student_steps: the DDIM steps of the student (uniform grid). A weighting that draws its own times is refused:
    these methods train at the times of a DDIM grid.
    teacher_steps: the teacher's DDIM steps over [0, 1] (its ODE discretisation), a multiple of student_steps;
        None: twice the student's, progressive distillation's halving.
    """

    def __init__(self, net: nn.Module, schedule: Schedule, num_classes: int, teacher_ckpt: Union[str, CFGDiffusion],
                 student_steps: int, teacher_steps: Optional[int] = None, sampling: Optional[SamplingSettings] = None,
                 **kwargs):
        super().__init__(net, schedule, num_classes, teacher_ckpt, **kwargs)
        if self.teacher.guidance_range != net.guidance_range:
            raise ValueError(f"the teacher takes w in {self.teacher.guidance_range}, the student "
                             f"{net.guidance_range}: {type(self).__name__} starts from a stage-one student")
        if type(self.weighting).times is not Weighting.times:
            raise ValueError(f"weighting={self.weighting!r} draws its own training times; {type(self).__name__} "
                             "trains at the times of its student's steps: use a weighting that only weights "
                             "(uniform, truncated_snr, min_snr, sigmoid)")
        time_grid(student_steps)  # validates
        self.student_steps = int(student_steps)
        teacher_steps = 2 * self.student_steps if teacher_steps is None else teacher_steps
        time_grid(teacher_steps)
        if teacher_steps % self.student_steps:
            raise ValueError(f"teacher_steps={teacher_steps} must be a multiple of student_steps="
                             f"{self.student_steps}: each student step spans whole teacher steps")
        self.teacher_steps = int(teacher_steps)
        self.sampling = sampling or SamplingSettings()
        self.clip_x0: Optional[float] = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.clip_x0 = self.sampling.resolve("cpu", self.trainer.datamodule.data_range)["clip_x0"]

    def _ddim_step(self, net: nn.Module, z: Tensor, t: Tensor, s: Tensor, labels: Tensor, w: Tensor) -> Tensor:
        """One DDIM (eta = 0) step of `net` from times t to s (B,): alpha_s x0 + sigma_s eps."""
        alpha, sigma = self.schedule.alpha_sigma(t)
        pred = to_prediction(net(z, t, labels, w).float(), z, alpha, sigma, self.target)
        pred = clip_prediction(pred, z, alpha, sigma, self.clip_x0)
        alpha_s, sigma_s = self.schedule.alpha_sigma(s)
        return broadcast(alpha_s, z) * pred.x0 + broadcast(sigma_s, z) * pred.eps

    def _landing_loss(self, z: Tensor, t: Tensor, z_s: Tensor, s: Tensor, labels: Tensor, w: Tensor) -> Tensor:
        """The weighted squared error of the student at (z_t, t) against the x~ whose DDIM step t -> s lands on
        z_s: x~ = (z_s - (sigma_s/sigma_t) z_t) / (alpha_s - (sigma_s/sigma_t) alpha_t) (Salimans & Ho 2022,
        Alg. 2), in the network's target space (eps~ = (z_t - alpha_t x~) / sigma_t)."""
        alpha, sigma = self.schedule.alpha_sigma(t)
        alpha_s, sigma_s = self.schedule.alpha_sigma(s)
        ratio = broadcast(sigma_s / sigma, z)
        x_target = (z_s - ratio * z) / (broadcast(alpha_s, z) - ratio * broadcast(alpha, z))
        eps_target = (z - broadcast(alpha, z) * x_target) / broadcast(sigma, z)
        target = training_target(x_target, eps_target, alpha, sigma, self.target)
        return self.weighted_mse(self.net(z, t, labels, w).float(), target, t)

    def _noised(self, x0: Tensor, t: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        alpha, sigma = self.schedule.alpha_sigma(t)
        return broadcast(alpha, x0) * x0 + broadcast(sigma, x0) * eps


class ProgressiveDistillation(_StepDistillation):
    """One round of progressive distillation (Salimans & Ho 2022, Alg. 2) of a guidance-distilled teacher: the
    student, initialised as the teacher, learns to take in one deterministic DDIM step (eta = 0) from t_i to
    t_{i+1} of the uniform `student_steps` grid where the teacher takes two, at the same label and w.

    The target is the x~ whose DDIM step from z_t lands on the teacher's z'' after t -> t' -> t''; the loss is the
    squared error in the network's target space with the `weighting`'s weight at t (Salimans & Ho's truncated SNR:
    weighting=truncated_snr); w ~ U[w_min, w_max]; labels dropped with probability p_uncond.

    With teacher_steps > 2 student_steps the teacher takes teacher_steps / student_steps DDIM steps for each
    student step: one round distils a fine discretisation of the teacher's ODE straight to the student's steps
    (as Luhman & Luhman 2021 distil a whole sampler), where halving rounds compound each round's error on top of
    the coarse 2 student_steps path they start from.
    """

    def loss(self, x0, labels, generator=None):
        b, per_step = x0.shape[0], self.teacher_steps // self.student_steps
        grid = time_grid(self.teacher_steps).to(device=x0.device, dtype=x0.dtype)
        i = per_step * torch.randint(0, self.student_steps, (b,), generator=generator, device=x0.device)
        z = self._noised(x0, grid[i], generator)
        w = self.draw_w(b, generator, x0.device)
        with torch.no_grad():
            z_s = z
            for k in range(per_step):
                z_s = self._ddim_step(self.teacher, z_s, grid[i + k], grid[i + k + 1], labels, w)
        return self._landing_loss(z, grid[i], z_s, grid[i + per_step], labels, w)


class ConsistencyDistillation(_StepDistillation):
    """Guided multistep consistency distillation (Heek et al. 2024, "Multistep Consistency Models", Alg. 2, with
    the w-conditioned student of LCM, Luo et al. 2023): the `teacher_steps` DDIM grid is cut into `student_steps`
    segments, and the student learns to jump from any grid time t to the end s of its segment in one DDIM step.

    Target: the teacher takes one DDIM step t -> t' (guided at w through its w input), then the student itself,
    without gradient (Heek et al.'s stop-gradient, no EMA target), steps t' -> s; the student's x~ at (z_t, t) is
    the one whose DDIM step lands there (as in `ProgressiveDistillation`). Where t' = s the teacher's step lands
    on s alone. The student is sampled like a progressive one: DDIM with `student_steps` steps.
    """

    def __init__(self, net: nn.Module, schedule: Schedule, num_classes: int, teacher_ckpt: Union[str, CFGDiffusion],
                 student_steps: int, teacher_steps: int = 32, **kwargs):
        super().__init__(net, schedule, num_classes, teacher_ckpt, student_steps, teacher_steps, **kwargs)

    def loss(self, x0, labels, generator=None):
        b = x0.shape[0]
        per_segment = self.teacher_steps // self.student_steps
        grid = time_grid(self.teacher_steps).to(device=x0.device, dtype=x0.dtype)
        i = torch.randint(0, self.teacher_steps, (b,), generator=generator, device=x0.device)
        end = (i // per_segment + 1) * per_segment
        t, t1, s = grid[i], grid[i + 1], grid[end]
        z = self._noised(x0, t, generator)
        w = self.draw_w(b, generator, x0.device)
        with torch.no_grad():
            z1 = self._ddim_step(self.teacher, z, t, t1, labels, w)
            at_end = (end == i + 1).reshape(-1, *(1,) * (z.ndim - 1))
            z_s = torch.where(at_end, z1, self._ddim_step(self.net, z1, t1, s, labels, w))
        return self._landing_loss(z, t, z_s, s, labels, w)
