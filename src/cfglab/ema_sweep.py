"""Guidance sweeps over post-hoc EMA lengths (evaluate.py sigma_rels=...): EDM2 (Karras et al. 2024, sec. 3) found
the best EMA length to depend strongly on the guidance strength, so the EMA is swept with w, each length
reconstructed once from the run's power-function EMA snapshots (cfglab.phema)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from cfglab.checkpoints import Checkpoint
from cfglab.phema import last_snapshot_step, reconstruct_all, sweep_lengths, with_weights


@dataclass(frozen=True)
class EMASweep:
    """The EMA lengths of a sweep (None: the checkpoint's own weights), the snapshots they are reconstructed from
    and the snapshot step they are reconstructed at (the checkpoint's, or the last snapshot before it)."""

    lengths: tuple[Optional[float], ...]
    folder: Path
    step: int

    @classmethod
    def from_config(cls, cfg, ckpt) -> Optional["EMASweep"]:
        """The sweep `cfg.sigma_rels` asks for on `ckpt` (None without one), with its snapshots in `cfg.phema_dir`
        (null: the `phema` folder of the checkpoint's run); a ValueError naming the key when it cannot be run."""
        if cfg.get("sigma_rels") is None:
            if cfg.get("phema_dir"):
                raise ValueError(f"phema_dir={cfg.phema_dir!r}: the snapshots are read only for a sweep over EMA "
                                 "lengths; give sigma_rels=[...] too")
            return None
        if not isinstance(ckpt, Checkpoint):
            raise ValueError("sigma_rels: post-hoc EMA lengths need a checkpoint of a run trained with "
                             "callbacks=phema (ckpt_path=...), not a published model")
        lengths = tuple(sweep_lengths(cfg.sigma_rels))
        folder = Path(cfg.phema_dir) if cfg.get("phema_dir") else ckpt.path.resolve().parent.parent / "phema"
        key = "phema_dir" if cfg.get("phema_dir") else f"sigma_rels (snapshots of {ckpt.path.name}'s run)"
        return cls(lengths, folder, last_snapshot_step(folder, ckpt.step, key))

    def variants(self, module) -> Iterator[dict]:
        """Loads each length's weights into `module` in turn, yielding what identifies its points; the
        checkpoint's own weights are back in `module` at the end. All lengths are reconstructed in one pass over
        the snapshots (memory: one copy of the weights per length)."""
        base = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
        lengths = [s for s in self.lengths if s is not None]
        built = dict(zip(lengths, reconstruct_all(self.folder, lengths, self.step))) if lengths else {}
        try:
            for s in self.lengths:
                if s is None:
                    module.load_state_dict(base)
                    yield {"sigma_rel": None}
                else:
                    module.load_state_dict(with_weights(base, built[s][0], self.folder))
                    yield {"sigma_rel": s, "ema_step": self.step}
        finally:
            module.load_state_dict(base)
