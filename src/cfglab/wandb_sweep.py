"""Guidance sweeps on W&B, shaped so that its UI draws the trade-off curves across runs without hand-editing.

Each point of a sweep is one history row: `sweep/w`, `sweep/train_step` and the metrics `sweep/fid`, `sweep/is`,
... . `define_metric` makes `sweep/w` their x axis, so a W&B line plot of `sweep/fid` is FID against w with one
line per run (and choosing `sweep/is` as the x axis gives FID against IS from the same rows). The sweep table
carries the run's name and the values that define it, and its plots take one line per run (`stroke`); in a sweep
over post-hoc EMA lengths, rows and table carry `sigma_rel` and the plots take one line per length; repeated
points add each metric's standard deviation over the repeats (`sweep/fid_std`, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from cfglab.sweep import METRICS, ema_label, sweep_grid_path

ROW_KEYS = (*METRICS, "nfe")


def row_keys(points: Sequence[dict]) -> tuple[str, ...]:
    """ROW_KEYS, with each metric's standard deviation over repeats (`fid_std`, ...) and their count when the
    points were repeated."""
    if not any("repeats" in p for p in points):
        return ROW_KEYS
    return (*(s for k in ROW_KEYS for s in ((k, f"{k}_std") if k in METRICS else (k,))), "repeats")


def sweep_context(module, sampler, guidance) -> dict[str, Any]:
    """The values that define a sweep's run, as table columns: p_uncond, prediction target, guidance method and
    sampler (with their settings), model (class or a published model's name, size and, for a guidance-distilled
    one, its w range)."""
    params = sum(p.numel() for p in module.net.parameters())
    w_range = module.net.guidance_range
    distilled = f", w input [{w_range[0]:g}, {w_range[1]:g}]" if w_range is not None else ""
    return {"p_uncond": module.p_uncond, "target": module.target, "guidance": repr(guidance),
            "sampler": repr(sampler), "model": f"{getattr(module.net, 'name', type(module.net).__name__)} {params / 1e6:.2f}M{distilled}"}


def define_sweep_axes(run) -> None:
    run.define_metric("sweep/train_step")
    run.define_metric("sweep/w", summary="none")
    run.define_metric("sweep/sigma_rel", summary="none")
    for key in row_keys([{"repeats": 2}]):
        run.define_metric(f"sweep/{key}", step_metric="sweep/w", summary="none")


def sweep_table(run_name: str, points: Sequence[dict], context: dict[str, Any]):
    """The points as a table; over EMA lengths with `sigma_rel` and `ema` (its name: the lines of the plots)."""
    import wandb

    ema = any("sigma_rel" in p for p in points)
    keys = row_keys(points)
    columns = ["run", *context, "step", *(("sigma_rel", "ema") if ema else ()), "w", *keys]
    rows = [[run_name, *context.values(), p.get("step", 0),
             *((p.get("sigma_rel"), ema_label(p.get("sigma_rel"))) if ema else ()), p["w"], *(p.get(k) for k in keys)]
            for p in points]
    return wandb.Table(columns=columns, data=rows)


def trade_off_plots(table, prefix: str) -> dict[str, Any]:
    """FID and IS against w, one line per run (per EMA length when the table has them); FID against IS and
    precision against recall as scatter plots."""
    import wandb

    stroke = "ema" if "ema" in table.columns else "run"
    return {
        f"{prefix}/fid_vs_w": wandb.plot.line(table, "w", "fid", stroke=stroke, title="FID vs w"),
        f"{prefix}/is_vs_w": wandb.plot.line(table, "w", "is", stroke=stroke, title="IS vs w"),
        f"{prefix}/fid_vs_is": wandb.plot.scatter(table, "is", "fid", title="FID vs IS"),
        f"{prefix}/precision_vs_recall": wandb.plot.scatter(table, "recall", "precision", title="precision vs recall"),
    }


def log_sweep(run, points: Sequence[dict], context: dict[str, Any], out_dir: str | Path, step: int) -> None:
    """One history row per point, then the table, its plots, the trade-off figure and the sample grids."""
    import wandb

    define_sweep_axes(run)
    for p in sorted(points, key=lambda p: p["w"]):
        ema = {"sweep/sigma_rel": p["sigma_rel"]} if isinstance(p.get("sigma_rel"), float) else {}
        run.log({"sweep/w": p["w"], "sweep/train_step": step, **ema,
                 **{f"sweep/{k}": p[k] for k in row_keys(points) if isinstance(p.get(k), (int, float))}})
    table = sweep_table(run.name, points, context)
    payload = {"sweep/table": table, **trade_off_plots(table, "sweep")}
    out_dir = Path(out_dir)
    if (out_dir / "tradeoff.png").is_file():
        payload["sweep/tradeoff"] = wandb.Image(str(out_dir / "tradeoff.png"))
    for p in points:
        grid = sweep_grid_path(out_dir, step, p["w"], p.get("sigma_rel"))
        ema = f", {ema_label(p['sigma_rel'])}" if "sigma_rel" in p else ""
        if grid.is_file():
            payload[f"sweep/samples/w={p['w']:g}{ema.replace(', ', ',')}"] = wandb.Image(
                str(grid), caption=f"w={p['w']:g}{ema}, step {step}")
    run.log(payload)
