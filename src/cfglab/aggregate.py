"""Collect the guidance sweeps of a multirun into one table and one trade-off plot (cf. Ho & Salimans 2022,
Table 1: FID and IS for each p_uncond and w).

    python aggregate.py multirun/2026-11-25/16-08-20-123456 [--metrics fid is precision recall]

Each job directory holding a sweep.json is one run; the overrides that differ between runs (e.g.
module.p_uncond) name it. Only each run's latest training step is used. Writes aggregate.csv (one row per run
and w), aggregate.md (per metric: rows w, one column per run) and aggregate.png to the multirun directory.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Sequence

import yaml

from cfglab.sweep import plot_tradeoff

METRICS = ("fid", "is", "precision", "recall")


def job_overrides(job_dir: Path) -> dict[str, str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    return dict(o.split("=", 1) for o in yaml.safe_load(path.read_text()) or [] if "=" in o)


def collect(multirun_dir: str | Path) -> tuple[list[str], list[dict]]:
    """(names of the varying overrides, rows: those overrides + every metric of each run's latest-step point)."""
    root = Path(multirun_dir)
    runs = []
    for sweep in sorted(root.rglob("sweep.json")):
        points = json.loads(sweep.read_text())["points"]
        if points:
            last = max(p.get("step", 0) for p in points)
            runs.append((job_overrides(sweep.parent), [p for p in points if p.get("step", 0) == last]))
    if not runs:
        raise FileNotFoundError(f"no sweep.json with points under {str(root)!r}")
    keys = sorted({k for o, _ in runs for k in o})
    varying = [k for k in keys if len({o.get(k) for o, _ in runs}) > 1]
    rows = []
    for overrides, points in runs:
        for p in sorted(points, key=lambda p: p["w"]):
            rows.append({**{k: overrides.get(k, "") for k in varying}, **{k: v for k, v in p.items() if k != "key"}})
    return varying, rows


def run_name(row: dict, varying: Sequence[str]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in varying if row[k] != "") or "run"


def markdown(varying: Sequence[str], rows: Sequence[dict], metrics: Sequence[str]) -> str:
    runs = list(dict.fromkeys(run_name(r, varying) for r in rows))
    ws = sorted({r["w"] for r in rows})
    out = []
    for m in metrics:
        table = {(run_name(r, varying), r["w"]): r.get(m) for r in rows}
        out += [f"### {m}", "", "| w | " + " | ".join(runs) + " |", "|---" * (len(runs) + 1) + "|"]
        for w in ws:
            cells = [f"{table[(r, w)]:.4g}" if isinstance(table.get((r, w)), float) else "" for r in runs]
            out.append(f"| {w:g} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def aggregate(multirun_dir: str | Path, metrics: Sequence[str] = METRICS) -> Path:
    root = Path(multirun_dir)
    varying, rows = collect(root)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(root / "aggregate.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (root / "aggregate.md").write_text(markdown(varying, rows, metrics))
    plot_tradeoff([{**r, "run": run_name(r, varying)} for r in rows], root / "aggregate.png", title=root.name, by="run")
    return root / "aggregate.md"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("multirun_dir")
    parser.add_argument("--metrics", nargs="+", default=list(METRICS))
    args = parser.parse_args(argv)
    path = aggregate(args.multirun_dir, args.metrics)
    print(path.read_text())
    print(f"written: {path.with_suffix('.csv')}, {path}, {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
