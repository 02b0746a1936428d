"""Power-function EMA tracks during training and their snapshots, for post-hoc EMA (cfglab.phema)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import lightning as L
import torch

from cfglab.atomic import atomic_write
from cfglab.phema import check_sigma_rel, power_beta, sigma_rel_to_gamma, snapshot_path


class PowerEMA(L.Callback):
    """Keeps one power-function EMA of the module's floating-point weights per sigma_rel (EDM2's default tracks:
    0.05 and 0.10), updated after every optimizer step on the training device, and every `snapshot_every` steps
    writes them to `dirpath`/snapshot-<step>.pt (atomically, in `snapshot_dtype`), which `reconstruct` combines
    into an EMA of any length. The tracks are part of the callback's checkpoint state: a resumed run continues
    them exactly; snapshots already written stay. The fixed-decay EMA (callbacks.ema) is independent of it.
    """

    def __init__(self, dirpath: str, sigma_rels: Sequence[float] = (0.05, 0.10), snapshot_every: int = 500,
                 snapshot_dtype: str = "float16"):
        if not sigma_rels:
            raise ValueError("sigma_rels=[] must list at least one EMA length")
        for i, s in enumerate(sigma_rels):
            check_sigma_rel(s, f"sigma_rels[{i}]")
        if isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int) or snapshot_every < 1:
            raise ValueError(f"snapshot_every={snapshot_every!r} must be an integer >= 1 (steps)")
        if snapshot_dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"snapshot_dtype={snapshot_dtype!r} must be float16, bfloat16 or float32")
        self.dirpath, self.sigma_rels = Path(dirpath), [float(s) for s in sigma_rels]
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        self.snapshot_every, self.snapshot_dtype = int(snapshot_every), getattr(torch, snapshot_dtype)
        self.tracks: list[dict[str, torch.Tensor]] = []
        self.step = 0  # the optimizer step the tracks have reached

    @staticmethod
    def _weights(pl_module) -> dict[str, torch.Tensor]:
        return {k: v for k, v in pl_module.state_dict().items() if v.is_floating_point()}

    def on_train_start(self, trainer, pl_module):  # after every restore, whichever the strategy's order
        weights = self._weights(pl_module)
        if self.tracks:  # restored from a checkpoint
            self.tracks = [{k: v.to(weights[k].device) for k, v in t.items()} for t in self.tracks]
        else:
            self.tracks = [{k: v.detach().clone().float() for k, v in weights.items()} for _ in self.gammas]

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:  # gradient accumulation: no optimizer step yet
            return
        self.step = trainer.global_step
        current = [v.float() for v in self._weights(pl_module).values()]
        for gamma, track in zip(self.gammas, self.tracks):
            torch._foreach_lerp_(list(track.values()), current, 1.0 - power_beta(self.step, gamma))
        if self.step % self.snapshot_every == 0 and trainer.is_global_zero:
            blob = {"step": self.step, "sigma_rels": self.sigma_rels,
                    "tracks": [{k: v.to("cpu", self.snapshot_dtype) for k, v in t.items()} for t in self.tracks]}
            atomic_write(snapshot_path(self.dirpath, self.step), lambda tmp: torch.save(blob, tmp))

    def state_dict(self) -> dict:
        return {"sigma_rels": self.sigma_rels, "step": self.step,
                "tracks": [{k: v.cpu() for k, v in t.items()} for t in self.tracks]}

    def load_state_dict(self, state: dict) -> None:
        if list(state["sigma_rels"]) != self.sigma_rels:
            raise ValueError(f"callbacks.phema.sigma_rels={self.sigma_rels}, but the checkpoint resumed tracks "
                             f"{list(state['sigma_rels'])}: resume with the same tracks or start a new run")
        self.step, self.tracks = int(state["step"]), state["tracks"]
