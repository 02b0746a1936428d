"""The runs of a multirun (guidance methods, their settings, p_uncond, EMA lengths) ranked at each one's best w,
with what that point costs: NFE per sample and seconds, and the Pareto front of FID against NFE.

With repeats the runs share their noise sets (sweep.repeats: the same seeds for every w and every method), so each
run's FID at its best w is compared with the leader's repeat by repeat: the paired difference, its standard error
and whether its 95 % t interval excludes zero. Each run's best w is chosen on the same repeats it is scored on,
which flatters every run a little (the minimum of noisy values); the paired difference compares the two points
as chosen.
"""

from __future__ import annotations

import math
from typing import Sequence

from scipy.stats import t as student_t


def pareto_front(points: Sequence[dict], x: str = "is", higher: bool = True) -> list[int]:
    """Indices of the points no other point beats on both FID (lower) and `x` (higher, or lower if not `higher`)."""
    sign = 1 if higher else -1
    front = []
    for i, p in enumerate(points):
        dominated = any(q["fid"] <= p["fid"] and sign * q[x] >= sign * p[x] and (q["fid"], q[x]) != (p["fid"], p[x])
                        for q in points)
        if not dominated:
            front.append(i)
    return front


def best_points(rows: Sequence[dict]) -> list[dict]:
    """Each curve's (run's, or run and EMA length's) lowest-FID point, in the order the curves first appear."""
    best: dict[str, dict] = {}
    for r in rows:
        if isinstance(r.get("fid"), float):
            c = r.get("curve", r["run"])
            if c not in best or r["fid"] < best[c]["fid"]:
                best[c] = r
    return list(best.values())


def paired_difference(p: dict, q: dict) -> tuple[float, float, bool] | None:
    """FID of p minus FID of q over their shared repeats: (mean, standard error, whether the 95 % t interval
    excludes 0); None without two repeats or more in both."""
    a, b = p.get("per_repeat") or [], q.get("per_repeat") or []
    k = min(len(a), len(b))
    if k < 2:
        return None
    d = [x["fid"] - y["fid"] for x, y in zip(a[:k], b[:k])]
    mean = sum(d) / k
    se = math.sqrt(sum((v - mean) ** 2 for v in d) / (k - 1) / k)
    return mean, se, abs(mean) > student_t.ppf(0.975, k - 1) * se


def rank(rows: Sequence[dict]) -> list[dict]:
    """One entry per curve, the lowest best FID first: its name, best w, FID (with fid_std and repeats when
    repeated), NFE per sample, seconds per 1,000 images (sampling and metrics, all repeats), whether it is on the
    Pareto front of FID against NFE, and `vs_best`: the paired difference from the first (paired_difference)."""
    best = sorted(best_points(rows), key=lambda p: p["fid"])
    on_front = {id(best[i]) for i in pareto_front(best, "nfe", higher=False)}
    out = []
    for p in best:
        images = p.get("num_samples", 0) * p.get("repeats", 1)
        out.append({"run": p.get("curve", p["run"]), "w": p["w"], "fid": p["fid"], "fid_std": p.get("fid_std"),
                    "repeats": p.get("repeats", 1), "nfe": p.get("nfe"),
                    "seconds_per_1000": 1000 * p["seconds"] / images if images and "seconds" in p else None,
                    "pareto": id(p) in on_front, "vs_best": paired_difference(p, best[0]) if out else None})
    return out


def markdown(ranked: Sequence[dict]) -> str:
    """The ranking as a markdown table."""
    lines = ["| rank | run | best w | FID | NFE per sample | s per 1,000 images | FID - leader's (paired) |",
             "|---:|---|---:|---:|---:|---:|---|"]
    for i, r in enumerate(ranked, 1):
        lines.append(f"| {i} | {r['run']}{' (Pareto)' if r['pareto'] else ''} | {r['w']:g} | {fid_cell(r)} | "
                     f"{num(r['nfe'])} | {num(r['seconds_per_1000'])} | {difference_cell(r)} |")
    return "\n".join(lines) + "\n"


def fid_cell(r: dict) -> str:
    return f"{r['fid']:.4g}" + (f" ± {r['fid_std']:.2g} ({r['repeats']} repeats)" if r["fid_std"] is not None else "")


def difference_cell(r: dict) -> str:
    if r["vs_best"] is None:
        return ""
    mean, se, real = r["vs_best"]
    return f"{mean:+.3g} ± {se:.2g}" + (" (real)" if real else " (within noise)")


def num(v) -> str:
    return "" if v is None else f"{v:.4g}"


def plot_fid_vs_nfe(ranked: Sequence[dict]):
    """A matplotlib figure: FID at each run's best w against its NFE per sample (error bars: one standard deviation
    over repeats), the Pareto front dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in ranked:
        ax.errorbar([r["nfe"]], [r["fid"]], yerr=None if r["fid_std"] is None else [r["fid_std"]], fmt="o",
                    capsize=3, label=f"{r['run']} (w={r['w']:g})")
    front = sorted((r for r in ranked if r["pareto"]), key=lambda r: r["nfe"])
    ax.plot([r["nfe"] for r in front], [r["fid"] for r in front], "k--", linewidth=1, label="Pareto front")
    ax.set(xlabel="network evaluations per sample", ylabel="FID at the best w", title="FID vs NFE, each at its best w")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
