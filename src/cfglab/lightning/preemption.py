"""Preemption: on SIGTERM, SIGUSR1 or SIGUSR2, finish the current step, write last.ckpt and stop training cleanly."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info


class Preemption(L.Callback):
    """Turns a scheduler's stop signal into a checkpoint that `ckpt_path=last` resumes from.

    Clusters send SIGTERM before killing a preempted job, and SLURM sends a chosen signal (`--signal=USR1@90`)
    before a time limit. Lightning's own SIGTERM handling raises an exception after the step, which ends the
    process with a traceback and no checkpoint; here the handler only records the signal, and the next
    `on_train_batch_end` writes `last.ckpt` where ModelCheckpoint keeps it (all ranks agree on the step) and
    stops the fit. The end-of-fit guidance sweep and sample grids are skipped (see `stop_signal`), and
    train.py exits with status 128 + signal number, as a process ended by that signal would.

    Requeueing is left to exactly one mechanism outside: when the signal had a handler of its own before
    training (submitit's USR2 handler, which requeues the job and exits), `hand_over` calls it after fit has
    returned; Lightning's SLURM auto-requeue is switched off by train(). Without such a handler train.py exits
    as described above and the scheduler (or the user) reruns it.
    """

    def __init__(self, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1", "SIGUSR2")):
        self.signals = [getattr(signal, name) if isinstance(name, str) else signal.Signals(name) for name in signals]
        self.received: signal.Signals | None = None
        self.checkpoint: Path | None = None
        self.handler = None  # the stop signal's own handler before training, for `hand_over`
        self._previous: dict = {}

    def on_train_start(self, trainer, pl_module):
        if threading.current_thread() is threading.main_thread():  # Python only delivers signals there
            self._previous = {s: signal.signal(s, self._record) for s in self.signals}

    def _record(self, signum, frame):
        self.received = signal.Signals(signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        self.checkpoint = last_checkpoint_path(trainer)
        trainer.save_checkpoint(self.checkpoint)
        trainer.should_stop = True
        name = self.received.name if self.received else "a signal on another rank"
        rank_zero_info(f"stopped by {name} after step {trainer.global_step}; checkpoint: {self.checkpoint}. "
                       "Run the same command with ckpt_path=last and the same hydra.run.dir to resume.")

    def on_train_end(self, trainer, pl_module):
        previous, self._previous = self._previous, {}
        for s, handler in previous.items():
            signal.signal(s, handler)
        handler = previous.get(self.received)
        if self.checkpoint is not None and callable(handler) and not _is_lightnings(handler):
            self.handler = handler


def _is_lightnings(handler) -> bool:
    return type(handler).__module__.startswith("lightning.")


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where `ckpt_path='last'` looks: ModelCheckpoint's last.ckpt (default_root_dir/checkpoints without one)."""
    cb = trainer.checkpoint_callback
    if isinstance(cb, ModelCheckpoint) and cb.dirpath:
        return Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


def stop_signal(trainer: L.Trainer) -> signal.Signals | None:
    """The signal that made a Preemption callback stop this fit (its model is unfinished), else None."""
    for cb in trainer.callbacks:
        if isinstance(cb, Preemption) and cb.checkpoint is not None:
            return cb.received or signal.SIGTERM  # the signal reached another rank only
    return None


def hand_over(trainer: L.Trainer) -> None:
    """Call the stop signal's handler of before training (submitit's: requeue this job, which resumes from the
    checkpoint, and exit) after fit has returned. Inside a Lightning hook, its exit would run Lightning's
    exception path, whose collectives fail once the requeue stops the other ranks: the job would record that
    error as its result, which the multirun could read in place of the rerun's."""
    for cb in trainer.callbacks:
        if isinstance(cb, Preemption) and cb.handler is not None:
            cb.handler(cb.received, None)
