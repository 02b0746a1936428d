"""Training job: build everything from the Hydra config, fit, save guided sample grids."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from cfglab.build import build
from cfglab.checkpoints import load_guide_net
from cfglab.config_checks import check_train_config, resume_path
from cfglab.grids import guided_grids
from cfglab.lightning.checkpoint_io import AtomicCheckpointIO
from cfglab.lightning.console import quiet_lightning
from cfglab.lightning.guidance_sweep import GuidanceSweep
from cfglab.lightning.preemption import hand_over, stop_signal
from cfglab.lightning.trainer import build_trainer
from cfglab.loggers import finish_wandb, training_run_identity
from cfglab.stamp import run_stamp, write_stamp
from cfglab.sweep import format_table


def train(cfg: DictConfig, output_dir: str | Path) -> dict:
    check_train_config(cfg)
    quiet_lightning()  # before SLURMEnvironment.detect() below, which warns where srun exists
    if os.environ.get("SLURM_CPUS_PER_TASK"):  # torch would start one thread per core of the whole node
        torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
    L.seed_everything(cfg.seed, workers=True)
    sampler, guidance, sampling, grids = (instantiate(cfg[k]) for k in ("sampler", "guidance", "sampling", "grids"))
    datamodule, module = build(cfg)
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None]
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    if not loggers:  # nothing to monitor into (Lightning refuses LearningRateMonitor without a logger)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    # Under SLURM, Lightning would requeue on SIGUSR1 itself; the Preemption callback and the launcher do it.
    plugins = [AtomicCheckpointIO(), *([SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else [])]
    trainer = build_trainer(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)
    config = OmegaConf.to_container(cfg, resolve=True)  # checked free of credentials by check_train_config
    stamp = write_stamp(output_dir, trainer.strategy.root_device) if trainer.is_global_zero else run_stamp()
    if trainer.is_global_zero:
        module.run_identity = training_run_identity(loggers, output_dir)
    for lg in loggers:
        lg.log_hyperparams({**config, "stamp": stamp})
    # "last" resolved here as Lightning would (the newest last*.ckpt), so that a first run starts afresh without
    # Lightning's warning that it found none.
    resume = resume_path(cfg, cfg.ckpt_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path=None if resume is None else str(resume))

    hand_over(trainer)
    stopped_by = stop_signal(trainer)
    paths = []
    if trainer.is_global_zero and not stopped_by:
        paths = guided_grids(module, sampler, guidance, grids, output_dir,
                             sampling.resolve(module.device, datamodule.data_range, datamodule.decoder), load_guide_net(guidance, module))
        for p in paths:
            print(f"guided samples: {p}")
        for cb in (c for c in callbacks if isinstance(c, GuidanceSweep) and c.points):
            print(f"guidance sweep at step {trainer.global_step}:\n{format_table(cb.points)}")
            print(f"sweep results: {Path(cb.out_dir) / 'sweep.csv'}, {Path(cb.out_dir) / 'tradeoff.png'}")
    finish_wandb(loggers)
    return {"grids": [str(p) for p in paths], "stopped_by": stopped_by,
            "train/loss": float(trainer.callback_metrics.get("train/loss", float("nan")))}
