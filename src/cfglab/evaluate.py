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
from cfglab.grids import save_samples
from cfglab.loggers import checkpoint_job_loggers, finish_wandb
from cfglab.published.model import open_model
from cfglab.stamp import write_stamp
from cfglab.sweep import SweepRecord, balanced_labels, format_table, plot_tradeoff, run_points, sweep_grid_path
from cfglab.wandb_sweep import log_sweep, sweep_context


def evaluate(cfg: DictConfig, out_dir: str | Path) -> list[dict]:
    out_dir = Path(out_dir)
    check_evaluate_config(cfg)
    record = SweepRecord(out_dir)  # a corrupt sweep.json fails here, before any compute
    sweep, sampler, guidance = instantiate(cfg.sweep), instantiate(cfg.sampler), instantiate(cfg.guidance)
    device = resolve_device(cfg.device)
    ckpt = open_model(cfg)
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
        save_samples(images, balanced_labels(len(images), module.num_classes), sweep_grid_path(out_dir, step, point["w"]),
                     sweep.grid_per_class)
        for lg in loggers:  # W&B gets the points as rows with w as their axis at the end (cfglab.wandb_sweep)
            if not isinstance(lg, WandbLogger):
                lg.log_metrics({f"sweep/{k}/w={point['w']:g}": v for k, v in point.items()
                                if isinstance(v, float) and k != "w"}, step=step)

    with tqdm(total=len(sweep.ws) * sweep.num_samples, desc="guidance sweep", unit="img") as bar:
        points = run_points(module, sweep, sampler, guidance, sample_kwargs, metrics, record, step, on_point,
                            bar.update, guide_net)
    plot_tradeoff(record.points, out_dir / "tradeoff.png", title=ckpt.path.name)
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            log_sweep(lg.experiment, points, sweep_context(module, sampler, guidance), out_dir, step)
        lg.finalize("success")
    finish_wandb(loggers)
    print(format_table(points))
    print(f"results: {out_dir / 'sweep.csv'}, {out_dir / 'sweep.json'}, {out_dir / 'tradeoff.png'}")
    return points
