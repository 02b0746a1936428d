"""One self-contained HTML page for a run or a multirun: the trade-off curves with one line per run, the Pareto
front of FID against IS, the table, every run's sample grid at every w, and each run's config; for a sweep over
post-hoc EMA lengths, one line per length and a heat map of FID over (sigma_rel, w) with the best pair; with
per-class metrics, heat maps of every class's FID and recall over w and the classes losing the most recall.

Everything is inside the file (images as data: URIs, no script, no stylesheet or font from elsewhere), so it
opens from disk with no network: on an offline cluster, in a review, in a paper's supplement.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Sequence

from cfglab import ranking
from cfglab.per_class import format_recall_losses
from cfglab.sweep import METRICS, ema_label, format_best, sweep_grid_path

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f2f2f2; }
td.run { text-align: left; }
tr.pareto td { font-weight: bold; }
.plots, .grids { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; }
figcaption { font-size: 0.85em; text-align: center; }
.grids img { image-rendering: pixelated; width: 160px; }
pre { background: #f7f7f7; padding: 0.5em; font-size: 0.8em; max-height: 30em; overflow: auto; }
"""


def _png(fig) -> str:
    """The figure as a PNG data URI; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _file_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def trade_off_figures(rows: Sequence[dict]) -> dict[str, str]:
    """{caption: PNG data URI}: FID and IS against w, one line per run (its `curve`: per EMA length in a sweep
    over them), with a band of one standard deviation over repeats where the points were repeated; FID against IS with the Pareto front of all points; precision against recall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = lambda r: r.get("curve", r["run"])  # noqa: E731
    runs = list(dict.fromkeys(curve(r) for r in rows))
    figures = {}
    for caption, (xk, yk) in {"FID vs w": ("w", "fid"), "IS vs w": ("w", "is"),
                              "FID vs IS, Pareto front dashed": ("is", "fid"),
                              "precision vs recall": ("recall", "precision")}.items():
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for run in runs:
            pts = sorted((r for r in rows if curve(r) == run and r.get(xk) is not None and r.get(yk) is not None),
                         key=lambda r: r["w"])
            line, = ax.plot([r[xk] for r in pts], [r[yk] for r in pts], "o-", label=run, markersize=4)
            if xk == "w" and pts and all(isinstance(r.get(f"{yk}_std"), float) for r in pts):  # +- 1 std over repeats
                ax.fill_between([r["w"] for r in pts], [r[yk] - r[f"{yk}_std"] for r in pts],
                                [r[yk] + r[f"{yk}_std"] for r in pts], color=line.get_color(), alpha=0.2, linewidth=0)
            if xk != "w":
                for r in pts:
                    ax.annotate(f"{r['w']:g}", (r[xk], r[yk]), textcoords="offset points", xytext=(3, 3), fontsize=7)
        if xk == "is":
            scored = [r for r in rows if isinstance(r.get("fid"), float) and isinstance(r.get("is"), float)]
            front = sorted((scored[i] for i in ranking.pareto_front(scored)), key=lambda r: r["is"])
            ax.plot([r["is"] for r in front], [r["fid"] for r in front], "k--", linewidth=1, label="Pareto front")
        ax.set(xlabel=xk if xk != "is" else "IS", ylabel=yk if yk != "fid" else "FID", title=caption)
        ax.legend(fontsize=7)
        fig.tight_layout()
        figures[caption] = _png(fig)
    return figures


def _heat_map(values, row_labels: Sequence[str], ws: Sequence[float], ylabel: str, title: str, label: str,
              lower_is_better: bool = True, worst: bool = False) -> str:
    """PNG data URI of `values` (rows x ws) with each cell labelled (up to 40 rows), the best of each column
    outlined and the best of all starred; with `worst`, the worst of each column outlined and no star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    values = np.asarray(values, dtype=float)
    sign = 1 if lower_is_better else -1
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(ws), 1.2 + 0.45 * min(len(row_labels), 40)))
    image = ax.imshow(values, cmap="viridis_r" if lower_is_better else "viridis", aspect="auto")
    best = np.unravel_index(np.nanargmin(sign * values), values.shape)
    outlined = -sign if worst else sign
    lo, hi = np.nanmin(values), np.nanmax(values)
    light = (sign * (values - (lo if lower_is_better else hi))) < 0.6 * (hi - lo)  # yellow cells: dark text
    if len(row_labels) <= 40:
        for i in range(len(row_labels)):
            for j in range(len(ws)):
                if np.isfinite(values[i, j]):
                    mark = "*" if not worst and (i, j) == best else ""
                    ax.text(j, i, f"{values[i, j]:.3g}{mark}", ha="center", va="center", fontsize=7,
                            color="k" if light[i, j] else "w")
        ax.set_yticks(range(len(row_labels)), row_labels)
    for j in range(len(ws)):
        if np.isfinite(values[:, j]).any():
            ax.add_patch(Rectangle((j - 0.5, np.nanargmin(outlined * values[:, j]) - 0.5), 1, 1, fill=False,
                                   edgecolor="red"))
    ax.set_xticks(range(len(ws)), [f"{w:g}" for w in ws])
    ax.set(xlabel="w", ylabel=ylabel, title=title)
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    return _png(fig)


def ema_heat_maps(rows: Sequence[dict]) -> dict[str, str]:
    """{caption: PNG data URI}: per run swept over post-hoc EMA lengths, FID over (sigma_rel, w), each cell
    labelled, the best of each column (w) outlined and the best of all starred."""
    import numpy as np

    figures = {}
    for run in dict.fromkeys(r["run"] for r in rows if "sigma_rel" in r):
        pts = [r for r in rows if r["run"] == run and "sigma_rel" in r and isinstance(r.get("fid"), float)]
        lengths = sorted({r["sigma_rel"] for r in pts}, key=lambda s: (s is not None, s or 0))
        ws = sorted({r["w"] for r in pts})
        fid = np.full((len(lengths), len(ws)), np.nan)
        for r in pts:
            fid[lengths.index(r["sigma_rel"]), ws.index(r["w"])] = r["fid"]
        labels = [ema_label(s).removeprefix("sigma_rel=") for s in lengths]
        caption = f"FID over (sigma_rel, w), {run}: red, the best EMA length at each w; *, the best pair"
        figures[caption] = _heat_map(fid, labels, ws, "sigma_rel", f"FID, {run}", "FID")
    return figures


def per_class_heat_maps(rows: Sequence[dict]) -> dict[str, str]:
    """{caption: PNG data URI}: per curve with per-class metrics, FID and recall of every class over w (red: the
    worst class at each w)."""
    import numpy as np

    figures = {}
    for curve in dict.fromkeys(r.get("curve", r["run"]) for r in rows if r.get("per_class")):
        pts = sorted((r for r in rows if r.get("curve", r["run"]) == curve and r.get("per_class")), key=lambda r: r["w"])
        ws, classes = [r["w"] for r in pts], [str(c["class"]) for c in pts[0]["per_class"]]
        for metric, lower in (("fid", True), ("recall", False)):
            values = np.array([[c[metric] for c in r["per_class"]] for r in pts]).T  # (classes, w)
            caption = f"per-class {metric.upper() if metric == 'fid' else metric} over w, {curve}"
            figures[caption] = _heat_map(values, classes, ws, "class", caption, metric, lower, worst=True)
    return figures


def _plots(figures: dict[str, str]) -> list[str]:
    """HTML of {caption: PNG data URI} as a row of captioned images."""
    esc = html.escape
    return ['<div class="plots">', *(f'<figure><img class="plot" alt="{esc(c)}" src="{uri}"><figcaption>{esc(c)}'
                                     "</figcaption></figure>" for c, uri in figures.items()), "</div>"]


def write_report(path: str | Path, title: str, runs: Sequence[dict], rows: Sequence[dict]) -> Path:
    """runs: {"name", "dir", "step", "config" (YAML text)}; rows: one per (run, w) with "run", "w" and metrics."""
    esc = html.escape
    scored = [r for r in rows if isinstance(r.get("fid"), float) and isinstance(r.get("is"), float)]
    front = {id(scored[i]) for i in ranking.pareto_front(scored)}
    metrics = [m for m in (*METRICS, "nfe") if any(isinstance(r.get(m), (int, float)) for r in rows)]
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
           f"<h1>{esc(title)}</h1>",
           f"<p>{len(runs)} run(s), guidance strengths w = {', '.join(f'{w:g}' for w in sorted({r['w'] for r in rows}))}"
           " (the paper's w: eps~ = (1 + w) eps(x, c) - w eps(x, null)).</p>",
           "<h2>Trade-off curves</h2>", *_plots(trade_off_figures(rows))]
    heat_maps = ema_heat_maps(rows)
    if heat_maps:
        out += ["<h2>EMA length and guidance</h2>", "<p>Post-hoc EMA lengths (Karras et al. 2024, sec. 3) reconstructed "
                "from the run's snapshots; the checkpoint EMA is the run's own fixed-decay EMA.</p>", *_plots(heat_maps)]
        for run in dict.fromkeys(r["run"] for r in rows if "sigma_rel" in r):
            best = format_best([r for r in rows if r["run"] == run and "sigma_rel" in r])
            out.append(f'<pre class="best">{esc(run)}: {esc(best)}</pre>')
    ranked = ranking.rank(rows)
    if len(ranked) > 1:
        out += ["<h2>Ranking</h2>", "<p>Each run at its lowest-FID w, with what that point costs (network evaluations "
                "per sample; seconds of sampling and metrics per 1,000 images). With repeats, each run's FID is compared "
                "with the leader's repeat by repeat on the same noise: real when the 95 % t interval of the paired "
                "difference excludes 0. Bold: on the Pareto front of FID against NFE.</p>",
                '<table class="ranking"><tr><th>rank</th><th>run</th><th>best w</th><th>FID</th><th>NFE</th>'
                "<th>s / 1,000 images</th><th>FID &minus; leader's</th></tr>"]
        for i, r in enumerate(ranked, 1):
            cells = [str(i), r["run"], f"{r['w']:g}", ranking.fid_cell(r), ranking.num(r["nfe"]),
                     ranking.num(r["seconds_per_1000"]), ranking.difference_cell(r)]
            tds = "".join(f'<td class="run">{esc(c)}</td>' if j == 1 else f"<td>{esc(c)}</td>" for j, c in enumerate(cells))
            out.append(('<tr class="pareto">' if r["pareto"] else "<tr>") + tds + "</tr>")
        front = {"FID vs NFE, each run at its best w; Pareto front dashed": _png(ranking.plot_fid_vs_nfe(ranked))}
        out += ["</table>", *_plots(front)]
    class_maps = per_class_heat_maps(rows)
    if class_maps:
        out += ["<h2>Per class</h2>", "<p>Each class's samples against that class's reference images, on the "
                "features of the pooled metrics (red: the worst class at each w).</p>", *_plots(class_maps)]
        for run in dict.fromkeys(r["run"] for r in rows if r.get("per_class")):
            losses = format_recall_losses([r for r in rows if r["run"] == run])
            if losses:
                out.append(f'<pre class="per-class">{esc(run)}: {esc(losses)}</pre>')
    repeated = list(dict.fromkeys(r["run"] for r in rows if r.get("per_repeat")))
    if repeated:
        out += ["<h2>Repeats</h2>", "<p>Each point measured on the same disjoint noise sets at every w: mean and "
                "standard deviation over them (bands on the curves, &plusmn; in the table), and how many of the repeats "
                "each w has the lowest FID in.</p>"]
        for run in repeated:
            out.append(f'<pre class="repeats">{esc(run)}: {esc(format_best([r for r in rows if r["run"] == run]))}</pre>')
    out += ["<h2>Table</h2>", "<p>Bold: on the Pareto front of FID against IS over all runs.</p>",
            "<table><tr><th>run</th><th>w</th>" + "".join(f"<th>{esc(m)}</th>" for m in metrics) + "</tr>"]
    for r in rows:
        std = lambda m: f" &plusmn; {r[m + '_std']:.2g}" if isinstance(r.get(f"{m}_std"), float) else ""  # noqa: E731
        cells = "".join(f"<td>{r[m]:.4g}{std(m)}</td>" if isinstance(r.get(m), (int, float)) else "<td></td>"
                        for m in metrics)
        pareto = ' class="pareto"' if id(r) in front else ""
        out.append(f'<tr{pareto}><td class="run">{esc(r.get("curve", r["run"]))}</td><td>{r["w"]:g}</td>{cells}</tr>')
    out += ["</table>", "<h2>Samples and configs</h2>"]
    for run in runs:
        out += [f"<h3>{esc(run['name'])}</h3>", f"<p>{esc(str(run['dir']))}, training step {run['step']}</p>",
                '<div class="grids">']
        for r in (r for r in rows if r["run"] == run["name"]):
            grid = sweep_grid_path(run["dir"], run["step"], r["w"], r.get("sigma_rel"))
            name = f"w = {r['w']:g}" + (f", {ema_label(r['sigma_rel'])}" if "sigma_rel" in r else "")
            if grid.is_file():
                out.append(f'<figure><img class="grid" alt="samples at {esc(name)}" src="{_file_uri(grid)}">'
                           f"<figcaption>{esc(name)}</figcaption></figure>")
        out += ["</div>", f"<details><summary>config</summary><pre>{esc(run['config'])}</pre></details>"]
    out.append("</body></html>")
    path = Path(path)
    path.write_text("\n".join(out))
    return path
