"""Guidance sweeps: sample at each guidance strength w, measure, and keep every finished point.

Shared by the GuidanceSweep callback (during training) and evaluate.py (on checkpoints). Results live in
`sweep.json` (the record; rewritten atomically after every point, so a crash loses at most the point in
progress), with `sweep.csv` and `tradeoff.png` derived from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor

from cfglab.data.base import to_uint8

COLUMNS = ("step", "w", "fid", "is", "kid", "precision", "recall", "accuracy", "nfe", "num_samples", "seconds")


def balanced_labels(num_samples: int, num_classes: int) -> Tensor:
    """0, 1, ..., K-1, 0, 1, ...: every class equally often (up to one)."""
    return torch.arange(num_samples) % num_classes


def generate(module, labels: Tensor, sampler, guidance, batch_size: int, seed: int,
             progress: Optional[Callable[[int], None]] = None, rank: int = 0, world: int = 1) -> tuple[Tensor, float]:
    """Guided samples for `labels` on the CPU (images as uint8 (N, C, H, W), as they would be saved; other data
    as float), and network evaluations per sample.

    Batch i uses the generator seeded with (seed, i), so a point is reproducible whatever ran before it, and
    with `world` > 1 this process makes only batches i = rank, rank + world, ... (concatenated in that order):
    put together in batch order, the shards of all ranks are exactly the images of a single process.
    """
    images, nfe, count = [], 0.0, 0
    for i, start in enumerate(range(0, len(labels), batch_size)):
        if i % world != rank:
            continue
        batch = labels[start : start + batch_size]
        g = torch.Generator(device=module.device).manual_seed(seed * 1_000_003 + i)
        den = module.denoiser(guidance)
        x = module.sample(batch, sampler, guidance, g, denoiser=den).cpu()
        images.append(to_uint8(x) if x.ndim == 4 else x)
        nfe, count = nfe + den.nfe * len(batch), count + len(batch)
        if progress is not None:
            progress(len(batch))
    if not images:
        dtype = torch.uint8 if len(module.net.sample_shape) == 3 else torch.get_default_dtype()
        return torch.empty((0, *module.net.sample_shape), dtype=dtype), 0.0
    return torch.cat(images), nfe / max(1, count)


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
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".sweep.json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"points": self.points}, indent=1))
        os.replace(tmp, self.path)  # atomic on POSIX: readers see the old or the new file, never half of one
        self.write_csv()

    def write_csv(self) -> Path:
        path = self.out_dir / "sweep.csv"
        lines = [",".join(COLUMNS)]
        for p in sorted(self.points, key=lambda p: (p.get("step", 0), p["w"])):
            lines.append(",".join("" if p.get(c) is None else f"{p[c]:.6g}" if isinstance(p[c], float) else str(p[c])
                                  for c in COLUMNS))
        tmp = path.with_name(".sweep.csv.tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, path)
        return path


def plot_tradeoff(points: Sequence[dict], path: str | Path, title: str = "", by: str = "step") -> Path:
    """FID against IS and precision against recall, each point labelled with its w; one line per value of
    `by` (the training step, or the run of a multirun)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    steps = sorted({p.get(by, 0) for p in points})
    for step in steps:
        pts = sorted((p for p in points if p.get(by, 0) == step), key=lambda p: p["w"])
        label = (f"step {step}" if by == "step" else str(step)) if len(steps) > 1 else None
        for ax, (xk, yk) in ((ax1, ("is", "fid")), (ax2, ("recall", "precision"))):
            xs, ys = [p[xk] for p in pts], [p[yk] for p in pts]
            ax.plot(xs, ys, "o-", label=label)
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


def run_points(module, ws: Iterable[float], sampler, guidance, metrics, record: SweepRecord, num_samples: int,
               batch_size: int, seed: int, step: int = 0, on_point: Optional[Callable[[dict, Tensor], None]] = None,
               progress: Optional[Callable[[int], None]] = None,
               shard: Optional[tuple[int, int, Callable[[Tensor], Optional[Tensor]]]] = None) -> list[dict]:
    """Measure every w not already in `record`; each finished point is saved before the next one starts.

    shard = (rank, world, gather): this process generates its share of the batches; `gather` turns the shards
    into the full set in batch order on rank 0 (None elsewhere). Only rank 0 measures and writes; the others
    return the points they skipped or an empty list.
    """
    rank, world, gather = shard or (0, 1, None)
    labels = balanced_labels(num_samples, module.num_classes)
    out = []
    for w in ws:
        g = dataclasses.replace(guidance, w=float(w))
        key = {"w": float(w), "step": int(step), "sampler": repr(sampler), "guidance": repr(g),
               "num_samples": int(num_samples), "seed": int(seed)}
        done = record.find(key)
        if done is not None:
            out.append(done)
            continue
        t0 = time.perf_counter()
        images, nfe = generate(module, labels, sampler, g, batch_size, seed, progress, rank, world)
        if world > 1:
            images = gather(images)
            if rank != 0:
                continue
        point = {"w": float(w), "step": int(step), **metrics(images, labels), "nfe": nfe,
                 "num_samples": int(num_samples), "seconds": time.perf_counter() - t0, "key": key}
        if not all(math.isfinite(v) for v in point.values() if isinstance(v, float)):
            raise FloatingPointError(f"non-finite metrics at w={w}: {point}")
        record.add(point)
        if on_point is not None:
            on_point(point, images)
        out.append(point)
    return out
