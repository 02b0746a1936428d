"""GuidanceSweep: sample over a grid of guidance strengths during training and measure each point."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, Optional

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from tqdm.auto import tqdm

from cfglab.checkpoints import load_guide_net
from cfglab.diffusion.guidance import Guidance, check_sampler_guidance
from cfglab.diffusion.samplers import Sampler
from cfglab.diffusion.sampling import SamplingSettings
from cfglab.grids import save_samples
from cfglab.lightning.ema import EMA
from cfglab.lightning.preemption import stop_signal
from cfglab.sweep import SweepRecord, SweepSettings, balanced_labels, plot_tradeoff, run_points, sweep_grid_path
from cfglab.wandb_sweep import log_sweep, sweep_context


def sampling_module(trainer: L.Trainer, pl_module: L.LightningModule) -> L.LightningModule:
    """The weights to sample from: the EMA copy when the EMA callback keeps one."""
    for cb in trainer.callbacks:
        if isinstance(cb, EMA) and cb.averaged_module() is not None:
            return cb.averaged_module()
    return pl_module


class GuidanceSweep(L.Callback):
    """Every `every_n_epochs` epochs (0: never) and at the end of fit, run the guidance sweep `sweep` (its ws,
    sample count, batch size, seed, grid size), measure each point with `metrics`, and write sweep.json /
    sweep.csv / tradeoff.png and one sample grid per w to `out_dir` (default: the trainer's root dir). Metrics go
    to every logger as `sweep/<metric>/w=<w>`, except W&B, which gets one row per point with w as its axis, a
    table and line plots (cfglab.wandb_sweep).

    metrics: a callable datamodule -> FidelityMetrics (e.g. functools.partial(build_metrics, ...)), called once.
    guidance: the method, guiding at each w of the sweep. sampling: how samples are computed, resolved for the
    model's device and data.
    """

    def __init__(self, metrics: Callable, sweep: SweepSettings, sampler: Sampler, guidance: Guidance,
                 sampling: SamplingSettings, every_n_epochs: int = 0, out_dir: Optional[str] = None):
        self.sweep_settings, self.sampler, self.guidance, self.sampling = sweep, sampler, guidance, sampling
        check_sampler_guidance(sampler, guidance)
        for w in sweep.ws:  # the method's own range check (e.g. CFG++ w <= 1) before any compute
            guidance.check_w(w)
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs={every_n_epochs} must be >= 0")
        self.metrics_factory, self.metrics, self.guide_net = metrics, None, None
        self.every_n_epochs, self.out_dir = every_n_epochs, out_dir
        self.points: list[dict] = []

    def setup(self, trainer, pl_module, stage):
        if self.out_dir is None:
            self.out_dir = trainer.default_root_dir

    def on_train_epoch_end(self, trainer, pl_module):
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.sweep(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module):
        if not stop_signal(trainer):  # an unfinished model: the resumed run sweeps at its end
            self.sweep(trainer, pl_module)

    def sweep(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[dict]:
        rank, world, settings = trainer.global_rank, trainer.world_size, self.sweep_settings
        if self.metrics is None and rank == 0:
            self.metrics = self.metrics_factory(trainer.datamodule)
        module = sampling_module(trainer, pl_module)
        if self.guide_net is None:
            self.guide_net = load_guide_net(self.guidance, module)
        sample_kwargs = self.sampling.resolve(module.device, trainer.datamodule.data_range,
                                              trainer.datamodule.decoder)
        out_dir, step = Path(self.out_dir), trainer.global_step
        bar = tqdm(total=settings.num_samples * settings.repeats * len(settings.ws), desc=f"guidance sweep (step {step})",
                   unit="img", disable=not trainer.progress_bar_callback or rank != 0, leave=False)

        def on_point(point, images):
            save_samples(images, balanced_labels(len(images), module.num_classes),
                         sweep_grid_path(out_dir, step, point["w"]), settings.grid_per_class)
            metrics = {f"sweep/{k}/w={point['w']:g}": v for k, v in point.items() if isinstance(v, float) and k != "w"}
            for logger in trainer.loggers:  # W&B gets rows with w as their axis instead (cfglab.wandb_sweep)
                if not isinstance(logger, WandbLogger):
                    logger.log_metrics(metrics, step=step)

        record = SweepRecord(out_dir)
        shard = (rank, world, partial(self._gather, trainer)) if world > 1 else None
        points = run_points(module, settings, self.sampler, self.guidance, sample_kwargs, self.metrics, record, step,
                            on_point, bar.update, self.guide_net, shard)
        bar.close()
        if rank == 0:
            plot_tradeoff(record.points, out_dir / "tradeoff.png")
            self._log_wandb(trainer, points, out_dir, step)
        self.points = points
        return points

    def _gather(self, trainer: L.Trainer, images: torch.Tensor) -> Optional[torch.Tensor]:
        """All ranks' shards (rank r holds batches r, r + W, ...), in batch order on rank 0; one collective call."""
        world, bs, n = trainer.world_size, self.sweep_settings.batch_size, self.sweep_settings.num_samples
        n_batches = -(-n // bs)
        per_rank = -(-n_batches // world)
        padded = torch.zeros((per_rank * bs, *images.shape[1:]), dtype=images.dtype)
        padded[: len(images)] = images
        gathered = trainer.strategy.all_gather(padded.to(trainer.strategy.root_device)).cpu()  # (world, per_rank*bs, ...)
        if trainer.global_rank != 0:
            return None
        batches = []
        for i in range(n_batches):
            r, j = i % world, i // world
            size = min(bs, n - i * bs)
            batches.append(gathered[r, j * bs : j * bs + size])
        return torch.cat(batches)

    def _log_wandb(self, trainer, points, out_dir: Path, step: int) -> None:
        context = sweep_context(sampling_module(trainer, trainer.lightning_module), self.sampler, self.guidance)
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                log_sweep(lg.experiment, points, context, out_dir, step)
