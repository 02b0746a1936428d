"""Guidance sweep on a saved checkpoint (the job behind evaluate.py)."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm.auto import tqdm

from cfglab.checkpoints import load_module
from cfglab.config import check_evaluate_config
from cfglab.grids import save_samples
from cfglab.sweep import COLUMNS, SweepRecord, balanced_labels, plot_tradeoff, run_points


def evaluate(cfg: DictConfig, out_dir: str | Path) -> list[dict]:
    out_dir = Path(out_dir)
    check_evaluate_config(cfg)
    ws = [float(w) for w in cfg.sweep.w]
    record = SweepRecord(out_dir)  # a corrupt sweep.json fails here, before any compute
    sampler, guidance = instantiate(cfg.sampler), instantiate(cfg.guidance)
    datamodule, module = load_module(cfg.ckpt_path)
    step = module.checkpoint_step
    metrics = instantiate(cfg.metrics)(datamodule)
    for k, v in metrics.info.items():
        print(f"{k}: {v:.4f}")

    def on_point(point, images):
        save_samples(images, balanced_labels(len(images), module.num_classes),
                     out_dir / "sweep_grids" / f"step{step}_w{point['w']:g}.png", cfg.sweep.grid_per_class)
        print("  ".join(f"{c}={point[c]:.4g}" for c in COLUMNS if isinstance(point.get(c), float)), flush=True)

    with tqdm(total=len(ws) * cfg.sweep.num_samples, desc="guidance sweep", unit="img") as bar:
        points = run_points(module, ws, sampler, guidance, metrics, record, cfg.sweep.num_samples,
                            cfg.sweep.batch_size, cfg.sweep.seed, step, on_point, bar.update)
    plot_tradeoff(record.points, out_dir / "tradeoff.png", title=Path(cfg.ckpt_path).name)
    print(f"results: {out_dir / 'sweep.csv'}, {out_dir / 'sweep.json'}, {out_dir / 'tradeoff.png'}")
    return points
