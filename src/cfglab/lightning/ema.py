"""Lightning's EMAWeightAveraging, with the final copy of the EMA weights moved after the last checkpoint."""

from __future__ import annotations

from lightning.pytorch.callbacks import EMAWeightAveraging


class EMAUpdate:
    """decay * ema + (1 - decay) * current, as torch.optim.swa_utils.get_ema_avg_fn, but picklable: the parent's
    closure cannot be sent to processes started by spawn (strategy=ddp_spawn, submitit)."""

    def __init__(self, decay: float):
        self.decay = decay

    def __call__(self, ema_param, current_param, num_averaged):
        return self.decay * ema_param + (1 - self.decay) * current_param


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
        self._kwargs["avg_fn"] = EMAUpdate(decay)

    def on_train_end(self, trainer, pl_module) -> None:
        pass

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._average_model is not None:
            self._copy_average_to_current(pl_module)
