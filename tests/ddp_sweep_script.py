"""Run a GuidanceSweep (no training) on 1 or 2 CPU processes: python ddp_sweep_script.py OUT_DIR DEVICES.

Run as a subprocess: Lightning's ddp re-launches the command for rank 1, which must not be pytest itself.
"""

import sys
from functools import partial

import lightning as L

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from cfglab.data.digits import DigitsDataModule  # noqa: E402
from cfglab.diffusion.guidance import CFG  # noqa: E402
from cfglab.diffusion.samplers import DDIM  # noqa: E402
from cfglab.diffusion.sampling import SamplingSettings  # noqa: E402
from cfglab.lightning.guidance_sweep import GuidanceSweep  # noqa: E402
from cfglab.metrics.fidelity import build_metrics  # noqa: E402
from cfglab.sweep import SweepSettings  # noqa: E402
from helpers import small_module  # noqa: E402

import torch  # noqa: E402

out, devices = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(1)  # as each DDP rank runs: the same float summation order in both modes
L.seed_everything(0)
module = small_module()  # same initial weights on every rank
sweep = GuidanceSweep(partial(build_metrics, cache_dir=f"{out}/cache"),
                      SweepSettings(ws=[0, 1.5], num_samples=70, batch_size=16, grid_per_class=2),
                      sampler=DDIM(steps=3), guidance=CFG(), sampling=SamplingSettings(), out_dir=out)
trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_epochs=1,
                    limit_train_batches=0, limit_val_batches=0, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, callbacks=[sweep])
trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
