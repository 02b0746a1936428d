"""What a training job prints: a progress bar over the run's steps, and none of Lightning's messages that are not
about the run."""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar

from cfglab.models.flops import forward_flops


class _NotAboutTheRun(logging.Filter):
    """Lightning's tips advertise other products, and its TPU and HPU lines describe hardware no cfglab run uses."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("💡 Tip", "TPU available", "HPU available"))


def quiet_lightning() -> None:
    """Leave out Lightning's messages that say nothing about the run (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _NotAboutTheRun) for f in log.filters):
            log.addFilter(_NotAboutTheRun())
    # Lightning counts log_every_n_steps in optimizer steps across epochs, so an epoch shorter than the interval
    # (12 batches of the bundled digits) loses no log line: the warning does not apply.
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")
    # Lightning's own use of torch's deprecated LeafSpec (lightning.pytorch.utilities._pytree): nothing a user can
    # change; it goes once Lightning moves to TreeSpec.is_leaf.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # On a machine with SLURM (a cluster's login node), a run started without srun is a local run by intent:
    # cfglab's SLURM jobs go through hydra/launcher=slurm, which starts the ranks with srun itself.
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar, counting the run's optimizer steps up to trainer.max_steps instead of the batches of each
    epoch (an epoch of a small data set is a few batches, and a run is set in steps), with the training loss and
    without Lightning's logger version (v_num). Without max_steps it is Lightning's per-epoch bar."""

    @property
    def sanity_check_description(self) -> str:
        return "validation loss, sanity check"

    @property
    def validation_description(self) -> str:
        return "validation loss"

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def on_train_epoch_start(self, trainer, *args) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_epoch_start(trainer, *args)
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:  # once per fit; a resumed fit starts at its step
            bar.reset(total=trainer.max_steps)
            bar.initial = trainer.global_step
            bar.n = trainer.global_step
            bar.unit = "step"
        bar.set_description(f"training steps (epoch {trainer.current_epoch})")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar, n = self.train_progress_bar, trainer.global_step
        if self.is_enabled and (n % self.refresh_rate == 0 or n == trainer.max_steps):
            bar.n = n
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar


class RunSummary(ModelSummary):
    """Lightning's model summary, with the FLOPs of one forward of one sample (`forward_flops`) as its total in
    place of Lightning's per-layer count, which needs an example input that the data module's batch hooks would
    transform (Lightning prints 0 without one)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        net = getattr(pl_module, "net", None)
        self.flops = forward_flops(net) if hasattr(net, "sample_shape") else 0
        super().on_fit_start(trainer, pl_module)

    def summarize(self, summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops, **kwargs) -> None:
        summary_data = [(name, values) for name, values in summary_data if name != "FLOPs"]
        ModelSummary.summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                               self.flops, **kwargs)
