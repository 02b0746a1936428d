"""Which classes pay for guidance: from the per-class metrics of a sweep (metrics.per_class=true), the classes whose
recall falls the most between the lowest and the highest w of a curve (one training step, one EMA length)."""

from __future__ import annotations

from typing import Sequence

from cfglab.sweep import ema_label


def curves(points: Sequence[dict]) -> dict[tuple, list[dict]]:
    """The points with per-class metrics by curve, (step, sigma_rel) -> points sorted by w."""
    out: dict[tuple, list[dict]] = {}
    for p in sorted((p for p in points if p.get("per_class")), key=lambda p: p["w"]):
        out.setdefault((p.get("step", 0), p.get("sigma_rel")), []).append(p)
    return out


def recall_losses(curve: Sequence[dict]) -> list[tuple[int, float, float]]:
    """(class, recall at the curve's lowest w, recall at its highest w) for every class, the largest fall first."""
    low, high = curve[0]["per_class"], curve[-1]["per_class"]
    rows = [(a["class"], a["recall"], b["recall"]) for a, b in zip(low, high)]
    return sorted(rows, key=lambda r: r[2] - r[1])


def format_recall_losses(points: Sequence[dict], top: int = 3) -> str:
    """One line per curve spanning two w or more: the `top` classes losing the most recall, e.g.
    "recall lost from w=0 to w=4: class 7 0.91 -> 0.42, class 2 0.88 -> 0.51, ..."."""
    lines = []
    for (step, sigma_rel), curve in curves(points).items():
        if len(curve) < 2:
            continue
        name = f"step {step}" + (f", {ema_label(sigma_rel)}" if "sigma_rel" in curve[0] else "")
        worst = ", ".join(f"class {k} {a:.3g} -> {b:.3g}" for k, a, b in recall_losses(curve)[:top])
        lines.append(f"{name}: recall lost from w={curve[0]['w']:g} to w={curve[-1]['w']:g}: {worst}")
    return "\n".join(lines)
