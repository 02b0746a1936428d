"""Lightning's EMAWeightAveraging, with the final copy of the EMA weights moved after the last checkpoint."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging


class EMAUpdate:
    """ema <- decay * ema + (1 - decay) * current for all parameters at once (one foreach lerp instead of a
    Python loop over parameters; see benchmarks/train_throughput.py), as torch.optim.swa_utils'
    get_ema_multi_avg_fn, but picklable: a closure cannot be sent to processes started by spawn
    (strategy=ddp_spawn, submitit)."""

    def __init__(self, decay: float):
        self.decay = decay

    @torch.no_grad()
    def __call__(self, ema_params, current_params, num_averaged):
        torch._foreach_lerp_(ema_params, current_params, 1 - self.decay)


class EMA(EMAWeightAveraging):
    """EMA of the weights; after `fit` the module holds the EMA weights, and checkpoints keep both.

    The parent copies the EMA weights into the module in `on_train_end`. Lightning runs ModelCheckpoint's hooks
    after all other callbacks', so the final `last.ckpt` would then store the EMA weights as the trained
    weights (`current_model_state`) and a resumed run would continue from the wrong ones. `on_fit_end` runs
    after every `on_train_end`, so the copy is made there.
    """

    def __init__(self, decay: float = 0.999, **kwargs):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay={decay} must lie in [0, 1)")
        super().__init__(decay=decay, **kwargs)
        self._kwargs["avg_fn"], self._kwargs["multi_avg_fn"] = None, EMAUpdate(decay)

    def averaged_module(self):
        """The module holding the EMA weights (None before fit starts)."""
        return None if self._average_model is None else self._average_model.module

    def on_train_end(self, trainer, pl_module) -> None:
        pass

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._average_model is not None:
            self._copy_average_to_current(pl_module)
