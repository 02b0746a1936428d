"""Train one epoch on 2 CPU DDP processes (gloo) over the digits store and record which items each rank drew:
python ddp_store_script.py OUT_DIR STORE_ROOT. Writes OUT_DIR/rank<r>.json with the store it mapped and the
items of its batches.

Run as a subprocess: Lightning's ddp re-launches the command for rank 1, which must not be pytest itself.
"""

import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch

from cfglab.data.digits import DigitsDataModule
from cfglab.data.store import Items

out, store_root = Path(sys.argv[1]), sys.argv[2]
drawn = []
get = Items.get


def recording_get(self, positions):
    drawn.extend(self.index[np.asarray(positions)].tolist())
    return get(self, positions)


Items.get = recording_get


class Idle(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, i):
        x, _ = batch
        assert x.dtype == torch.float32 and x.abs().max() <= 1  # turned into the model's range after transfer
        return self.p.sum() * 0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


dm = DigitsDataModule(batch_size=64, store_root=store_root, hflip=True)
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, limit_val_batches=0, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Idle(), datamodule=dm)
out.mkdir(parents=True, exist_ok=True)
(out / f"rank{trainer.global_rank}.json").write_text(json.dumps(
    {"store": str(dm.store().path), "train": dm.items("train").index.tolist(), "drawn": drawn}))
