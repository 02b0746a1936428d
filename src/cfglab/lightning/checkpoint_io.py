"""Checkpoints written atomically (last.ckpt is always a whole checkpoint, the previous one or the new one), and
read through the one `Checkpoint` object of the process."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cfglab.atomic import atomic_write
from cfglab.checkpoints import Checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside its target, fsyncs it and renames it over the target:
    a kill, a crash or a full disk during the write leaves the previous checkpoint in place, and the next run's
    ckpt_path=last resumes from it.

    Written by hand because Lightning's TorchCheckpointIO (2.6) writes through an fsspec transaction whose
    temporary file lives in the system's temp folder: on a cluster that is usually a node-local disk, so the
    final move into the run folder is a copy (not atomic), the whole checkpoint must fit in /tmp, and nothing is
    fsynced. Remote paths (s3://, ...) keep Lightning's writer and reader.

    A checkpoint to resume from that the configuration check already opened is handed over from that `Checkpoint`
    (read with weights_only, as Lightning would), so the file is read once; other files (ddp_spawn's weights of
    its workers) are read by Lightning's own loader.
    """

    def load_checkpoint(self, path, map_location=None, weights_only: Optional[bool] = None) -> dict[str, Any]:
        opened = Checkpoint.take(path) if "://" not in str(path) else None
        return opened if opened is not None else super().load_checkpoint(path, map_location, weights_only)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"storage_options are not supported by {type(self).__name__}")
        path = Path(path)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer that was killed
            stale.unlink(missing_ok=True)
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
