"""Collect the guidance sweeps of a multirun (or of one run) into one table, one plot and one HTML report (cf. Ho
& Salimans 2022, Table 1: FID and IS for each p_uncond and w).

    python aggregate.py multirun/2026-11-25/16-08-20-123456 [--metrics fid is precision recall] [--wandb]

Each job directory holding a sweep.json is one run; the overrides that differ between runs (e.g.
module.p_uncond) name it. Only each run's latest training step is used. Writes aggregate.csv (one row per run
and w), aggregate.md (per metric: rows w, one column per run), aggregate.png and report.html (self-contained:
curves, Pareto front, table, sample grids, configs) to that directory, and for two runs or more their ranking
at each one's best w with its cost (ranking.md, ranking.csv, fid_vs_nfe.png; cfglab.ranking). With --wandb (or
when the runs logged to W&B) the table and multi-series plots also go to a W&B run of job type "aggregate" in
the multirun's group.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Optional, Sequence

import yaml

from cfglab import ranking
from cfglab.loggers import run_group, wandb_api_key_configured
from cfglab.report import write_report
from cfglab.sweep import ema_label, plot_tradeoff

TABLE_METRICS = ("fid", "is", "precision", "recall")  # the markdown tables (all metrics are in the CSV)


def job_overrides(job_dir: Path) -> dict[str, str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    return dict(o.split("=", 1) for o in yaml.safe_load(path.read_text()) or [] if "=" in o)


def find_runs(root: str | Path) -> list[dict]:
    """Every run under `root` with a sweep: {"dir", "overrides", "step" (its latest), "points" (of that step)}."""
    runs = []
    for sweep in sorted(Path(root).rglob("sweep.json")):
        points = json.loads(sweep.read_text())["points"]
        if points:
            last = max(p.get("step", 0) for p in points)
            runs.append({"dir": sweep.parent, "overrides": job_overrides(sweep.parent), "step": last,
                         "points": sorted((p for p in points if p.get("step", 0) == last), key=lambda p: p["w"])})
    if not runs:
        raise FileNotFoundError(f"no sweep.json with points under {str(root)!r}")
    return runs


def collect(multirun_dir: str | Path) -> tuple[list[str], list[dict]]:
    """(names of the varying overrides, rows: the run's name, its curve (the run, and in a sweep over post-hoc
    EMA lengths the length), those overrides and every metric of each run's latest-step point)."""
    varying, rows, _ = _collect(find_runs(multirun_dir))
    return varying, rows


def _collect(runs: list[dict]) -> tuple[list[str], list[dict], list[dict]]:
    keys = sorted({k for r in runs for k in r["overrides"]})
    varying = [k for k in keys if len({r["overrides"].get(k) for r in runs}) > 1]
    rows = []
    for run in runs:
        run["name"] = ", ".join(f"{k.split('.')[-1]}={run['overrides'][k]}" for k in varying
                                if run["overrides"].get(k, "") != "") or run["dir"].name
        for p in run["points"]:
            curve = f"{run['name']}, {ema_label(p['sigma_rel'])}" if "sigma_rel" in p else run["name"]
            rows.append({"run": run["name"], "curve": curve, **{k: run["overrides"].get(k, "") for k in varying},
                         **{k: v for k, v in p.items() if k != "key"}})
    return varying, rows, runs


def markdown(rows: Sequence[dict], metrics: Sequence[str]) -> str:
    curves = list(dict.fromkeys(r["curve"] for r in rows))
    ws = sorted({r["w"] for r in rows})
    out = []
    for m in metrics:
        table = {(r["curve"], r["w"]): r.get(m) for r in rows}
        out += [f"### {m}", "", "| w | " + " | ".join(curves) + " |", "|---" * (len(curves) + 1) + "|"]
        for w in ws:
            std = {(r["curve"], r["w"]): f" ± {r[m + '_std']:.2g}" for r in rows if isinstance(r.get(f"{m}_std"), float)}
            cells = [f"{table[(c, w)]:.4g}{std.get((c, w), '')}" if isinstance(table.get((c, w)), float) else ""
                     for c in curves]
            out.append(f"| {w:g} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def aggregate(multirun_dir: str | Path, metrics: Sequence[str] = TABLE_METRICS, wandb_mode: Optional[str] = None) -> Path:
    """Write the table, plot and report; log them to W&B when `wandb_mode` is "online"/"offline", or, for None,
    when the runs logged there (offline unless an API key is configured)."""
    root = Path(multirun_dir)
    varying, rows, runs = _collect(find_runs(root))
    columns = list(dict.fromkeys(k for r in rows for k in r if k not in ("per_repeat", "per_class")))  # in sweep.json
    with open(root / "aggregate.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (root / "aggregate.md").write_text(markdown(rows, metrics))
    plot_tradeoff(rows, root / "aggregate.png", title=root.name, by="curve")
    ranked = ranking.rank(rows)
    if len(ranked) > 1:  # the runs (e.g. guidance methods) each at its best w, with its cost
        write_ranking(root, ranked)
    for run in runs:
        config = run["dir"] / ".hydra" / "config.yaml"
        run["config"] = config.read_text() if config.is_file() else "(no .hydra/config.yaml)"
    write_report(root / "report.html", f"cfglab: {root.name}", runs, rows)
    if wandb_mode is None and any((r["dir"] / "wandb").is_dir() for r in runs):
        wandb_mode = "online" if wandb_api_key_configured() else "offline"
    if wandb_mode in ("online", "offline"):
        log_to_wandb(root, runs, rows, wandb_mode)
    return root / "aggregate.md"


def write_ranking(root: Path, ranked: Sequence[dict]) -> None:
    """ranking.md, ranking.csv and fid_vs_nfe.png of `ranked` (cfglab.ranking.rank) in `root`."""
    import matplotlib.pyplot as plt

    (root / "ranking.md").write_text(ranking.markdown(ranked))
    columns = ["rank", "run", "w", "fid", "fid_std", "repeats", "nfe", "seconds_per_1000", "pareto", "fid_minus_leader",
               "fid_minus_leader_se", "real"]
    with open(root / "ranking.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i, r in enumerate(ranked, 1):
            writer.writerow([i, *(r[c] for c in columns[1:9]), *(r["vs_best"] or ("", "", ""))])
    fig = ranking.plot_fid_vs_nfe(ranked)
    fig.savefig(root / "fid_vs_nfe.png", dpi=120)
    plt.close(fig)


def log_to_wandb(root: Path, runs: list[dict], rows: list[dict], mode: str) -> None:
    """The combined table and its multi-series plots (one line per run) to a run of its own, in the group and
    project the multirun's runs used (cfglab.loggers.run_group), saved under <root>/wandb."""
    import wandb

    from cfglab.wandb_sweep import row_keys, trade_off_plots

    config_file = runs[0]["dir"] / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    wandb_cfg = ((config or {}).get("logger") or {}).get("wandb") or {}
    multirun = yaml.safe_load((root / "multirun.yaml").read_text()) if (root / "multirun.yaml").is_file() else None
    experiment = ((multirun or {}).get("hydra", {}).get("runtime", {}).get("choices", {}) or {}).get("experiment")
    group = wandb_cfg.get("group") or run_group(experiment, root, root if multirun else None)
    ema = any("sigma_rel" in r for r in rows)
    columns = ["run", "step", *(("sigma_rel", "ema") if ema else ()), "w", *row_keys(rows)]
    run = wandb.init(project=wandb_cfg.get("project") or "cfglab", entity=wandb_cfg.get("entity"), group=group,
                     job_type="aggregate", name=f"{root.name} aggregate", dir=str(root), mode=mode,
                     config={"runs": [r["name"] for r in runs]})
    table = wandb.Table(columns=columns, data=[[r["curve"] if c == "ema" else r.get(c) for c in columns] for r in rows])
    run.log({"aggregate/table": table, **trade_off_plots(table, "aggregate"),
             "aggregate/tradeoff": wandb.Image(str(root / "aggregate.png"))})
    run.finish()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("multirun_dir")
    parser.add_argument("--metrics", nargs="+", default=list(TABLE_METRICS))
    parser.add_argument("--wandb", choices=["online", "offline", "off"], default=None,
                        help="log to W&B (default: when the runs did, online if an API key is configured)")
    args = parser.parse_args(argv)
    try:
        path = aggregate(args.multirun_dir, args.metrics, args.wandb)
    except FileNotFoundError as e:  # nothing was written: the runs are read before anything is
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(path.read_text())
    written = [path.with_suffix(".csv"), path, path.with_suffix(".png"), path.parent / "report.html"]
    if (path.parent / "ranking.md").is_file():
        print((path.parent / "ranking.md").read_text())
        written += [path.parent / "ranking.md", path.parent / "ranking.csv", path.parent / "fid_vs_nfe.png"]
    print(f"written: {', '.join(map(str, written))}")


if __name__ == "__main__":
    main()
