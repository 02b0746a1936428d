"""The joint conditional/unconditional diffusion model and its label-dropout training step."""

from __future__ import annotations

from typing import Callable, Optional

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cfglab.checkpoints import write_fields
from cfglab.diffusion.schedules import Schedule
from cfglab.diffusion.targets import broadcast, check_target, training_target
from cfglab.diffusion.weighting import Uniform, Weighting


def drop_labels(labels: Tensor, p_uncond: float, null_label: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Replace each label by `null_label` independently with probability p_uncond (Ho & Salimans 2022, Alg. 1)."""
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p_uncond
    return torch.where(drop, torch.full_like(labels, null_label), labels)


LR_SCHEDULES = ("constant", "linear")


def lr_factor(lr_schedule: str, warmup_steps: int, max_steps: int) -> Callable[[int], float]:
    """The learning rate's factor at optimizer step k: a linear warm-up over `warmup_steps`, then 1 ("constant"),
    or ("linear") down to 0 at `max_steps`, as progressive distillation anneals it within each round (Salimans &
    Ho 2022, sec. 5). Raises ValueError, naming the keys, when "linear" has no end to reach."""
    warmup = lambda k: min(1.0, (k + 1) / max(1, warmup_steps))  # noqa: E731
    if lr_schedule == "constant":
        return warmup
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps <= warmup_steps:
        raise ValueError(f"module.lr_schedule='linear' anneals to 0 at trainer.max_steps={max_steps!r}: it needs "
                         f"trainer.max_steps > module.warmup_steps={warmup_steps}")
    return lambda k: min(warmup(k), max(0.0, (max_steps - k) / (max_steps - warmup_steps)))


class CFGDiffusion(L.LightningModule):
    """One network trained as both the conditional and the unconditional model of classifier-free guidance.

    net: (x_t, t, labels) -> output for `target` ("eps" or "v"); labels in [0, num_classes], where
    num_classes is the null label. p_uncond: probability that a training label is dropped (paper: 0.1 or 0.2).
    seed: seeds the training noise of each batch (see `step_generator`). Training precision is the trainer's
    `precision`. compile: torch.compile the network in place at setup (state_dict keys unchanged); see
    BENCHMARKS.md. weighting: the training times and the weight of each example's loss
    (cfglab.diffusion.weighting; the `weighting` config group), Ho et al.'s simple loss by default. Sampling is
    `cfglab.diffusion.sampling.sample` over `sampling_args()`; how it samples (clipping, precision, batching) is
    the `sampling` config group, not the model's. lr_schedule: "constant" after the warm-up, or "linear" to 0
    at trainer.max_steps (`lr_factor`).
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule,
        num_classes: int,
        target: str = "eps",
        p_uncond: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 200,
        seed: int = 0,
        compile: bool = False,
        weighting: Optional[Weighting] = None,
        lr_schedule: str = "constant",
    ):
        super().__init__()
        if not 0 <= p_uncond <= 1:
            raise ValueError(f"p_uncond={p_uncond} must lie in [0, 1]")
        if lr <= 0:
            raise ValueError(f"lr={lr} must be > 0")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps} must be >= 0")
        self.net, self.schedule = net, schedule
        self.num_classes, self.target, self.p_uncond = int(num_classes), check_target(target), float(p_uncond)
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={lr_schedule!r} is not one of {LR_SCHEDULES}")
        self.lr, self.weight_decay, self.betas, self.warmup_steps = lr, weight_decay, tuple(betas), int(warmup_steps)
        self.lr_schedule = lr_schedule
        self.seed, self.compile_net = int(seed), bool(compile)
        self.weighting = Uniform() if weighting is None else weighting
        self.weighting.check_target(self.target)
        self.build_config: Optional[dict] = None  # the config groups that rebuild this module (see cfglab.checkpoints)
        self.run_identity: Optional[dict] = None  # the training run's name and group (cfglab.loggers)

    def setup(self, stage: str) -> None:
        if self.compile_net:
            self.net.compile()

    @property
    def null_label(self) -> int:
        return self.num_classes

    def loss(self, x0: Tensor, labels: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Squared error on the prediction target at the weighting's times, weighted per example; labels used
        as given."""
        t = self.weighting.times(x0.shape[0], self.schedule, generator, x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        alpha, sigma = self.schedule.alpha_sigma(t)
        xt = broadcast(alpha, x0) * x0 + broadcast(sigma, x0) * eps
        return self.weighted_mse(self.net(xt, t, labels), training_target(x0, eps, alpha, sigma, self.target), t)

    def weighted_mse(self, out: Tensor, target: Tensor, t: Tensor) -> Tensor:
        """The mean over examples of the weighting's weight at t (B,) times each example's mean squared error."""
        weight = self.weighting.weight(t, self.schedule, self.target)
        if weight is None:
            return F.mse_loss(out, target)
        per_example = F.mse_loss(out, target, reduction="none").flatten(1).mean(1)
        return (weight.to(per_example.dtype) * per_example).mean()

    def step_generator(self, batch_idx: int, device) -> Optional[torch.Generator]:
        """The generator for one training batch's label drops, times and noise, seeded by (seed, rank, batch
        count): a run resumed from a checkpoint draws exactly what the uninterrupted run drew, with no RNG
        state to save. None (the global RNG) when no trainer is attached."""
        if self._trainer is None:
            return None
        accumulate = self.trainer.accumulate_grad_batches
        count = self.global_step * accumulate + batch_idx % accumulate
        seed = np.random.SeedSequence([self.seed, self.global_rank, count]).generate_state(1, np.uint64)[0]
        return torch.Generator(device=device).manual_seed(int(seed))

    def training_step(self, batch, batch_idx):
        x0, labels = batch
        g = self.step_generator(batch_idx, x0.device)
        loss = self.loss(x0, drop_labels(labels, self.p_uncond, self.null_label, g), g)
        if not torch.isfinite(loss):
            # Stop before the update reaches the weights: checkpoints written so far stay the last good ones.
            raise FloatingPointError(
                f"non-finite training loss {loss.item()} at step {self.global_step}: training stopped; the last "
                "checkpoint before this step is intact (lower module.lr or check the data for NaN/inf)"
            )
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        # Fixed noise per batch so that the validation loss is comparable across epochs.
        g = torch.Generator(device=batch[0].device).manual_seed(batch_idx)
        x0, labels = batch
        self.log("val/loss_cond", self.loss(x0, labels, g), sync_dist=True)
        g.manual_seed(batch_idx)
        self.log("val/loss_uncond", self.loss(x0, torch.full_like(labels, self.null_label), g), sync_dist=True)

    def checkpoint_fields(self) -> dict:
        """cfglab's fields of this module's checkpoints (`cfglab.checkpoints.write_fields`' arguments)."""
        return {"config": self.build_config, "run": self.run_identity}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        write_fields(checkpoint, **self.checkpoint_fields())

    def param_groups(self) -> list[dict]:
        """The optimizer's parameter groups; a group without its own "lr" trains at `lr`."""
        return [{"params": list(self.net.parameters())}]

    def configure_optimizers(self):
        groups = self.param_groups()
        # The fused CUDA kernel: one launch per step instead of several per parameter tensor.
        fused = all(p.is_cuda for g in groups for p in g["params"])
        opt = torch.optim.AdamW(groups, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay, fused=fused)
        factor = lr_factor(self.lr_schedule, self.warmup_steps, self.trainer.max_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def sampling_args(self) -> dict:
        """What `cfglab.diffusion.sampling.sample` needs from this model: net, schedule, null_label, target."""
        return {"net": self.net, "schedule": self.schedule, "null_label": self.null_label, "target": self.target}
