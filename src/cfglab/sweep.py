"""Guidance sweeps: sample at each guidance strength w, measure, and keep every finished point.

Shared by the GuidanceSweep callback (during training) and evaluate.py (on checkpoints), both configured by the
`sweep` config group (`SweepSettings`). Results live in `sweep.json` (the record; rewritten atomically after
every point, so a crash loses at most the point in progress), with `sweep.csv` and `tradeoff.png` derived from it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor

from cfglab.atomic import atomic_write_text
from cfglab.diffusion.guidance import Guidance
from cfglab.diffusion.sampling import SEED_STRIDE, describe_settings, sample_batches

log = logging.getLogger(__name__)

PAPER_WS = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 4.0)  # close to Ho & Salimans 2022, Table 1
METRICS = ("fid", "is", "kid", "precision", "recall", "accuracy")
COLUMNS = ("step", "w", *METRICS, "nfe", "num_samples", "seconds")


def columns_of(points: Sequence[dict], columns: Sequence[str] = COLUMNS) -> tuple[str, ...]:
    """`columns`, with sigma_rel before w when the points are a sweep over post-hoc EMA lengths, and each
    metric's standard deviation over repeats after it (`fid_std`, ...) with their count when they were repeated."""
    columns = list(columns)
    if any("sigma_rel" in p for p in points):
        columns.insert(columns.index("w"), "sigma_rel")
    if any("repeats" in p for p in points):
        columns = [s for c in columns for s in ((c, f"{c}_std") if c in METRICS else (c,))] + ["repeats"]
    return tuple(columns)


def point_order(p: dict) -> tuple:
    """Points by training step, EMA length (the checkpoint's own weights first) and w."""
    s = p.get("sigma_rel")
    return p.get("step", 0), s is not None, s or 0.0, p["w"]


def ema_label(sigma_rel: Optional[float]) -> str:
    """The name of an EMA in a sweep over post-hoc EMA lengths (None: the checkpoint's own weights)."""
    return "checkpoint EMA" if sigma_rel is None else f"sigma_rel={sigma_rel:g}"


def ws_problems(ws: Any, allow_empty: bool = False) -> list[tuple[str, str]]:
    """What is wrong with a list of guidance strengths, as (index suffix such as "[1]" or "", message) pairs.
    Whether each w suits the guidance method is the method's own check (e.g. CFG++ needs w <= 1)."""
    if isinstance(ws, (str, bytes)) or not isinstance(ws, Iterable):
        return [("", f"{ws!r} must be a list of numbers")]
    ws = list(ws)
    problems = [(f"[{i}]", f"{w!r} is not a number") for i, w in enumerate(ws)
                if isinstance(w, bool) or not isinstance(w, (int, float)) or math.isnan(w)]
    if not ws and not allow_empty:
        problems.append(("", "is empty: give at least one guidance strength"))
    if not problems and len(set(ws)) != len(ws):
        problems.append(("", f"{ws} repeats a value"))
    return problems


@dataclass(frozen=True)
class SweepSettings:
    """A guidance sweep (conf/sweep/default.yaml): `num_samples` balanced-label samples at every w of `ws`,
    sampled in batches of `batch_size` from `seed`, with a grid of `grid_per_class` samples per class per w."""

    ws: Sequence[float] = PAPER_WS
    num_samples: int = 1000
    batch_size: int = 500
    seed: int = 0
    grid_per_class: int = 8
    repeats: int = 1

    def __post_init__(self):
        problems = ws_problems(self.ws)
        if problems:
            raise ValueError("; ".join(f"ws{i}: {m}" for i, m in problems))
        object.__setattr__(self, "ws", tuple(float(w) for w in self.ws))
        for k in ("num_samples", "batch_size", "grid_per_class", "repeats"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k}={v!r} must be an integer >= 1")
        batches = self.repeats * -(-self.num_samples // self.batch_size)
        if batches > SEED_STRIDE:  # repeat r's seeds would run into those of seed + 1 (sampling.batch_seed)
            raise ValueError(f"repeats={self.repeats}: {batches} batches of {self.batch_size} per w need more than the "
                             f"{SEED_STRIDE} noise seeds of seed={self.seed}; the seed sets would overlap those of "
                             f"seed={self.seed + 1}: use fewer repeats or larger batches")


def balanced_labels(num_samples: int, num_classes: int) -> Tensor:
    """0, 1, ..., K-1, 0, 1, ...: every class equally often (up to one)."""
    return torch.arange(num_samples) % num_classes


def format_point(point: dict) -> str:
    """One line of a point's metrics: w=1  fid=14.03  is=9.505 ... (fid=14.03±0.21 ... over repeats)."""
    std = lambda c: f"±{point[c + '_std']:.2g}" if f"{c}_std" in point else ""  # noqa: E731
    return "  ".join(f"{c}={point[c]:.4g}{std(c)}" for c in COLUMNS if isinstance(point.get(c), (int, float)))


def format_table(points: Sequence[dict]) -> str:
    """The points as a fixed-width table, one row per (step, w), or (step, sigma_rel, w) for a sweep over EMA
    lengths ("ckpt": the checkpoint's own weights); repeated points as mean±std over the repeats."""
    cols = columns_of(points, ("step", "w", *METRICS, "nfe"))
    cols = tuple(c for c in cols if not c.endswith("_std"))
    cell = lambda v: "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731

    def value(p, c):
        if c == "sigma_rel" and p[c] is None:
            return "ckpt"
        std = p.get(f"{c}_std") if c in METRICS else None
        return cell(p.get(c)) + (f"±{std:.2g}" if std is not None else "")

    rows = [cols] + [tuple(value(p, c) for c in cols) for p in sorted(points, key=point_order)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    return "\n".join("  ".join(v.rjust(n) for v, n in zip(r, widths)) for r in rows)


def fid_wins(points: Sequence[dict]) -> dict[float, int]:
    """For repeated points of one curve (one step and EMA length): how many of the repeats each w has the lowest
    FID in. The repeats share their noise across w, so this counts paired comparisons."""
    runs = [p for p in points if p.get("per_repeat")]
    wins = {p["w"]: 0 for p in runs}
    for r in range(min((len(p["per_repeat"]) for p in runs), default=0)):
        wins[min(runs, key=lambda p: p["per_repeat"][r]["fid"])["w"]] += 1
    return wins


def format_best(points: Sequence[dict]) -> str:
    """The lowest-FID point (with its spread and how often each w wins over repeats), and for a sweep over EMA
    lengths the best EMA at every w."""
    scored = [p for p in points if isinstance(p.get("fid"), float)]
    if not scored:
        return ""
    best = min(scored, key=lambda p: p["fid"])
    ema = f"{ema_label(best['sigma_rel'])}, " if "sigma_rel" in best else ""
    spread = f" ± {best['fid_std']:.2g}" if "fid_std" in best else ""
    lines = [f"best: {ema}w={best['w']:g} (FID {best['fid']:.4g}{spread})"]
    if best.get("per_repeat"):
        curve = [p for p in scored if p.get("step") == best.get("step") and p.get("sigma_rel") == best.get("sigma_rel")]
        wins = fid_wins(curve)
        lines.append(f"  lowest FID over the {len(best['per_repeat'])} repeats: "
                     + ", ".join(f"w={w:g} in {n}" for w, n in sorted(wins.items(), key=lambda i: -i[1]) if n))
    if "sigma_rel" in best:
        for w in sorted({p["w"] for p in scored}):
            at_w = min((p for p in scored if p["w"] == w), key=lambda p: p["fid"])
            lines.append(f"  at w={w:g}: {ema_label(at_w['sigma_rel'])} (FID {at_w['fid']:.4g})")
    return "\n".join(lines)


def summarize_repeats(runs: Sequence[dict]) -> dict:
    """One point's metrics from its repeats' metric dicts: the repeat itself when there is one; else every metric's
    mean, its standard deviation over the repeats (`fid_std`, ...; n - 1 in the denominator), `repeats` and the
    repeats' pooled metrics (`per_repeat`); per-class metrics are summarised class by class the same way."""
    if len(runs) == 1:
        return {k: v for k, v in runs[0].items() if k != "seconds"}
    out = _mean_std(runs)
    if "per_class" in runs[0]:
        out["per_class"] = [_mean_std(rows) for rows in zip(*(r["per_class"] for r in runs))]
    return {**out, "repeats": len(runs), "per_repeat": [{k: v for k, v in r.items() if k != "per_class"} for r in runs]}


def _mean_std(runs: Sequence[dict]) -> dict:
    out = {}
    for k in (k for k in runs[0] if k not in ("seconds", "per_class")):
        if k in ("class", "n"):  # the same in every repeat
            out[k] = runs[0][k]
            continue
        values = torch.tensor([r[k] for r in runs], dtype=torch.float64)
        out[k] = float(values.mean())
        if k in METRICS:
            out[f"{k}_std"] = float(values.std())
    return out


def per_class_rows(points: Sequence[dict]) -> list[dict]:
    """One row per point and class: step, sigma_rel (in a sweep over EMA lengths), w, class, its sample count n
    and its metrics (with their standard deviations over repeats)."""
    return [{"step": p.get("step", 0), **({"sigma_rel": p["sigma_rel"]} if "sigma_rel" in p else {}), "w": p["w"], **c}
            for p in sorted(points, key=point_order) for c in p.get("per_class", ())]


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    lines = [",".join(columns)]
    for r in rows:
        lines.append(",".join("" if r.get(c) is None else f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c])
                              for c in columns))
    return "\n".join(lines) + "\n"


def sweep_grid_path(out_dir: str | Path, step: int, w: float, sigma_rel: Optional[float] = None) -> Path:
    """Where the sample grid of the point (step, w) is saved; of (step, sigma_rel, w) with a reconstructed EMA."""
    ema = "" if sigma_rel is None else f"_sigma_rel{sigma_rel:g}"
    return Path(out_dir) / "sweep_grids" / f"step{step}{ema}_w{w:g}.png"


class SweepRecord:
    """The points of a sweep in `<out_dir>/sweep.json`, written atomically; a point is identified by its `key`."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "sweep.json"
        self.points: list[dict] = []
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                if not isinstance(data, dict) or not isinstance(data.get("points"), list):
                    raise ValueError("no 'points' list")
                self.points = data["points"]
            except (ValueError, json.JSONDecodeError) as e:
                raise ValueError(
                    f"{self.path} is corrupt or was not written by cfglab ({e}); move it away to start the sweep afresh"
                ) from e

    def find(self, key: dict) -> Optional[dict]:
        return next((p for p in self.points if p.get("key") == key), None)

    def add(self, point: dict) -> None:
        self.points = [p for p in self.points if p.get("key") != point["key"]] + [point]
        atomic_write_text(self.path, json.dumps({"points": self.points}, indent=1))
        self.write_csv()

    def write_csv(self) -> Path:
        """sweep.csv, and per_class.csv when the points hold per-class metrics."""
        rows = per_class_rows(self.points)
        if rows:
            columns = [c for c in ("step", "sigma_rel", "w", "class", "n") if c in rows[0]]
            columns += [c for c in rows[0] if c not in columns]
            atomic_write_text(self.out_dir / "per_class.csv", csv_text(rows, columns))
        return atomic_write_text(self.out_dir / "sweep.csv", csv_text(sorted(self.points, key=point_order),
                                                                      columns_of(self.points)))


def plot_tradeoff(points: Sequence[dict], path: str | Path, title: str = "", by: str = "step") -> Path:
    """FID against IS and precision against recall, each point labelled with its w (with error bars of one
    standard deviation over repeats); one line per value of `by` (the training step, the EMA length, or the run
    of a multirun)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    steps = sorted({p.get(by, 0) for p in points}, key=lambda v: (v is not None, v or 0))  # None: the checkpoint EMA
    for step in steps:
        pts = sorted((p for p in points if p.get(by, 0) == step), key=lambda p: p["w"])
        name = f"step {step}" if by == "step" else ema_label(step) if by == "sigma_rel" else str(step)
        label = name if len(steps) > 1 else None
        for ax, (xk, yk) in ((ax1, ("is", "fid")), (ax2, ("recall", "precision"))):
            xs, ys = [p[xk] for p in pts], [p[yk] for p in pts]
            line, = ax.plot(xs, ys, "o-", label=label)
            if all(f"{xk}_std" in p and f"{yk}_std" in p for p in pts):  # repeated: +- 1 std over the repeats
                ax.errorbar(xs, ys, xerr=[p[f"{xk}_std"] for p in pts], yerr=[p[f"{yk}_std"] for p in pts], fmt="none",
                            ecolor=line.get_color(), alpha=0.6, capsize=2)
            for p, x, y in zip(pts, xs, ys):
                ax.annotate(f"w={p['w']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax1.set(xlabel="IS (higher: more class-distinct)", ylabel="FID (lower: closer to data)", title="FID vs IS")
    ax2.set(xlabel="recall (diversity)", ylabel="precision (fidelity)", title="precision vs recall")
    if len(steps) > 1:
        ax1.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_points(module, sweep: SweepSettings, sampler, guidance: Guidance, sample_kwargs: dict, metrics,
               record: SweepRecord, step: int = 0, on_point: Optional[Callable[[dict, Tensor], None]] = None,
               progress: Optional[Callable[[int], None]] = None, guide_net=None,
               shard: Optional[tuple[int, int, Callable[[Tensor], Optional[Tensor]]]] = None,
               variant: Optional[dict] = None) -> list[dict]:
    """Measure every w of `sweep.ws` not already in `record`; each finished point is saved before the next starts.

    guidance: the method, guiding at each w of the sweep. sample_kwargs: `sample`'s settings
    (SamplingSettings.resolve). shard = (rank, world, gather): this process generates its share of the
    batches; `gather` turns the shards into the full set in batch order on rank 0 (None elsewhere). Only rank 0
    measures and writes; the others return the points they skipped or an empty list. variant: what else
    identifies these points (the EMA length and its snapshot step), added to their key and fields. With
    `sweep.repeats` = K > 1 every w is measured on K disjoint noise sets (the same K at every w: paired), the
    point holding the means, standard deviations and each repeat (summarize_repeats); `on_point` gets the first
    repeat's samples, which are those of an unrepeated sweep.
    """
    rank, world, gather = shard or (0, 1, None)
    labels = balanced_labels(sweep.num_samples, module.num_classes)
    settings = describe_settings(sample_kwargs)
    extra = {"repeats": sweep.repeats} if sweep.repeats > 1 else {}  # a single set keeps the keys it always had
    if getattr(metrics, "per_class", False):  # a point measured without them is measured again
        extra["per_class"] = True
    out = []
    for w in sweep.ws:
        key = {"w": w, "step": int(step), "sampler": repr(sampler), "guidance": repr(guidance), "sampling": settings,
               "num_samples": sweep.num_samples, "batch_size": sweep.batch_size, "seed": sweep.seed, **extra,
               **(variant or {})}
        done = record.find(key)
        if done is not None:
            out.append(done)
            continue
        t0, runs, first = time.perf_counter(), [], None
        for r in range(sweep.repeats):
            t = time.perf_counter()
            images, nfe = sample_batches(sampler=sampler, guidance=guidance, labels=labels, w=w,
                                         batch_size=sweep.batch_size, seed=sweep.seed, repeat=r, rank=rank, world=world,
                                         progress=progress, guide_net=guide_net, **module.sampling_args(), **sample_kwargs)
            if world > 1:
                images = gather(images)
                if rank != 0:
                    continue
            runs.append({**metrics(images, labels), "seconds": time.perf_counter() - t})
            first = images if first is None else first
        if not runs:  # not rank 0
            continue
        point = {"w": w, "step": int(step), **(variant or {}), **summarize_repeats(runs), "nfe": nfe,
                 "num_samples": sweep.num_samples, "seconds": time.perf_counter() - t0, "key": key}
        if not all(math.isfinite(v) for v in point.values() if isinstance(v, float)):
            raise FloatingPointError(f"non-finite metrics at w={w}: {point}")
        record.add(point)
        log.info("sweep point done: %s", format_point(point))
        if on_point is not None:
            on_point(point, first)
        out.append(point)
    return out
