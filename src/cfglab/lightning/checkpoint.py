"""Lightning's ModelCheckpoint, with last.ckpt always holding the final step of a finished fit."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint as _ModelCheckpoint

from cfglab.lightning.preemption import stop_signal


class ModelCheckpoint(_ModelCheckpoint):
    """ModelCheckpoint whose `last.ckpt` is rewritten when training ends after the last periodic save.

    Lightning (2.6) writes last.ckpt at the end of training only if no checkpoint was saved before, so with
    `every_n_train_steps=1000` and `max_steps=1776` the run's final 776 steps were never saved: evaluate.py
    would read the step-1000 weights, and a rerun would train them again. A fit stopped by Preemption has
    already written its own last.ckpt at the final step.
    """

    def on_train_end(self, trainer, pl_module) -> None:
        stale = self._last_global_step_saved != trainer.global_step
        if self.save_last and self._last_checkpoint_saved and stale and stop_signal(trainer) is None:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        else:
            super().on_train_end(trainer, pl_module)
