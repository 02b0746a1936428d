"""Guidance sweep on a saved checkpoint (the job behind evaluate.py)."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from cfglab.checkpoints import load_guide_net
from cfglab.config_checks import check_evaluate_config
from cfglab.devices import resolve_device
from cfglab.ema_sweep import EMASweep
from cfglab.grids import save_samples
from cfglab.loggers import checkpoint_job_loggers, finish_wandb
from cfglab.per_class import format_recall_losses
from cfglab.published.model import open_model
from cfglab.stamp import write_stamp
from cfglab.sweep import (SweepRecord, balanced_labels, ema_label, format_best, format_table, plot_tradeoff, run_points,
                          sweep_grid_path)
from cfglab.wandb_sweep import log_sweep, sweep_context


def evaluate(cfg: DictConfig, out_dir: str | Path) -> list[dict]:
    out_dir = Path(out_dir)
    check_evaluate_config(cfg)
    record = SweepRecord(out_dir)  # a corrupt sweep.json fails here, before any compute
    sweep, sampler, guidance = instantiate(cfg.sweep), instantiate(cfg.sampler), instantiate(cfg.guidance)
    device = resolve_device(cfg.device)
    ckpt = open_model(cfg)
    ema = EMASweep.from_config(cfg, ckpt)
    datamodule, module = ckpt.module(data=OmegaConf.to_container(cfg.data))
    module.to(device)
    stamp = write_stamp(out_dir, device)
    step = ckpt.step
    loggers = checkpoint_job_loggers(cfg.logger, ckpt.run, "eval")
    for lg in loggers:  # the config was checked free of credentials
        lg.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "stamp": stamp, "training_run": ckpt.run,
                            "checkpoint_step": step})
    sample_kwargs = instantiate(cfg.sampling).resolve(device, datamodule.data_range, datamodule.decoder)
    guide_net = load_guide_net(guidance, module)
    metrics = instantiate(cfg.metrics)(datamodule)
    for k, v in metrics.info.items():
        print(f"{k}: {v:.4f}")

    def on_point(point, images):
        sigma_rel = point.get("sigma_rel")
        save_samples(images, balanced_labels(len(images), module.num_classes),
                     sweep_grid_path(out_dir, step, point["w"], sigma_rel), sweep.grid_per_class)
        name = f"w={point['w']:g}" + (f",{ema_label(sigma_rel)}" if "sigma_rel" in point else "")
        for lg in loggers:  # W&B gets the points as rows with w as their axis at the end (cfglab.wandb_sweep)
            if not isinstance(lg, WandbLogger):
                lg.log_metrics({f"sweep/{k}/{name}": v for k, v in point.items()
                                if isinstance(v, float) and k not in ("w", "sigma_rel")}, step=step)

    if ema is not None and ema.step != step:
        print(f"the last EMA snapshot before step {step} is at step {ema.step}: the EMA lengths are reconstructed there")
    variants = [None] if ema is None else ema.variants(module)
    points = []
    with tqdm(total=len(sweep.ws) * sweep.num_samples * sweep.repeats * (1 if ema is None else len(ema.lengths)),
              desc="guidance sweep", unit="img") as bar:
        for variant in variants:
            points += run_points(module, sweep, sampler, guidance, sample_kwargs, metrics, record, step, on_point,
                                 bar.update, guide_net, variant=variant)
    plot_tradeoff(record.points, out_dir / "tradeoff.png", title=ckpt.path.name,
                  by="step" if ema is None else "sigma_rel")
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            log_sweep(lg.experiment, points, sweep_context(module, sampler, guidance), out_dir, step)
        lg.finalize("success")
    finish_wandb(loggers)
    print(format_table(points))
    print(format_best(points))
    results = [out_dir / "sweep.csv", out_dir / "sweep.json", out_dir / "tradeoff.png"]
    if metrics.per_class:
        print(format_recall_losses(points))
        results.append(out_dir / "per_class.csv")
    if ema is not None or metrics.per_class:  # heat maps over (sigma_rel, w) and over (class, w)
        from cfglab.aggregate import aggregate

        aggregate(out_dir, wandb_mode="off")
        results.append(out_dir / "report.html")
    print(f"results: {', '.join(map(str, results))}")
    return points
