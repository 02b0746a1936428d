"""Tables and plots of the post-hoc EMA study from the sweep records run.sh leaves in runs/: results.md (FID over
sigma_rel x w, the best length at each w, the loss weightings against the uniform loss), tradeoff.png and
heat_map.png (report.html's heat map)."""

import base64
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cfglab.report import ema_heat_maps  # noqa: E402
from cfglab.sweep import ema_label  # noqa: E402

HERE = Path(__file__).parent
RUNS = HERE / "runs"
WEIGHTINGS = {"min_snr": "Min-SNR-5", "sigmoid": "sigmoid (bias -2)", "edm": "EDM log-normal"}


def points(run: str) -> list[dict]:
    return json.loads((RUNS / run / "sweep.json").read_text())["points"]


def best(pts: list[dict]) -> dict:
    return min(pts, key=lambda p: p["fid"])


def main() -> None:
    ema = points("ema_sweep")
    lengths = list(dict.fromkeys(p["sigma_rel"] for p in ema))
    ws = sorted({p["w"] for p in ema})
    fid = {(p["sigma_rel"], p["w"]): p for p in ema}
    lines = ["FID (domain classifier, 1,000 samples per point) over the EMA length and w; bold: the best length "
             "at each w.", "", "| EMA | " + " | ".join(f"w = {w:g}" for w in ws) + " |",
             "| --- |" + " ---: |" * len(ws)]
    best_at = {w: best([p for p in ema if p["w"] == w])["sigma_rel"] for w in ws}
    for s in lengths:
        cells = [f"**{fid[(s, w)]['fid']:.2f}**" if best_at[w] == s else f"{fid[(s, w)]['fid']:.2f}" for w in ws]
        lines.append(f"| {ema_label(s)} | " + " | ".join(cells) + " |")
    fixed, power = best([p for p in ema if p["sigma_rel"] is None]), best([p for p in ema if p["sigma_rel"]])
    lines += ["", f"Fixed EMA at its best w ({fixed['w']:g}): FID {fixed['fid']:.2f}. Best reconstructed pair: "
              f"{ema_label(power['sigma_rel'])}, w = {power['w']:g}: FID {power['fid']:.2f} "
              f"({100 * (power['fid'] / fixed['fid'] - 1):+.1f} % against the fixed EMA's best).", ""]
    lines += ["Precision / recall of each point:", "", "| EMA | " + " | ".join(f"w = {w:g}" for w in ws) + " |",
              "| --- |" + " ---: |" * len(ws)]
    lines += [f"| {ema_label(s)} | " + " | ".join(f"{fid[(s, w)]['precision']:.3f} / {fid[(s, w)]['recall']:.3f}"
                                                  for w in ws) + " |" for s in lengths]

    if (RUNS / "autoguidance" / "sweep.json").is_file():
        auto = {p["w"]: p for p in points("autoguidance")}
        lines += ["", "Guided by the null label (CFG) and by the run's own sigma_rel 0.05 EMA at step 444 "
                  "(autoguidance), the fixed EMA guided: FID, precision / recall.", "",
                  "| guide | " + " | ".join(f"w = {w:g}" for w in ws) + " |", "| --- |" + " ---: |" * len(ws)]
        for name, by_w in (("null label (CFG)", {w: fid[(None, w)] for w in ws}), ("EMA at step 444", auto)):
            lines.append(f"| {name} | " + " | ".join(
                f"{by_w[w]['fid']:.2f}, {by_w[w]['precision']:.3f} / {by_w[w]['recall']:.3f}" if w in by_w else ""
                for w in ws) + " |")
    runs = {"uniform (fixed EMA)": [p for p in ema if p["sigma_rel"] is None]}
    runs.update({label: points(name) for name, label in WEIGHTINGS.items() if (RUNS / name / "sweep.json").is_file()})
    lines += ["", "Loss weightings at equal training FLOPs (the fixed EMA 0.99 each): FID, and class accuracy in "
              "brackets.", "", "| weighting | " + " | ".join(f"w = {w:g}" for w in ws) + " | best |",
              "| --- |" + " ---: |" * (len(ws) + 1)]
    for label, pts in runs.items():
        by_w = {p["w"]: p for p in pts}
        b = best(pts)
        lines.append(f"| {label} | " + " | ".join(f"{by_w[w]['fid']:.2f} ({by_w[w]['accuracy']:.3f})" if w in by_w
                                                  else "" for w in ws)
                     + f" | {b['fid']:.2f} at w = {b['w']:g} |")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for s in lengths:
        axes[0].plot(ws, [fid[(s, w)]["fid"] for w in ws], marker="o", label=ema_label(s))
    axes[0].set(xlabel="w", ylabel="FID (domain classifier)", title="EMA length (uniform loss)")
    for label, pts in runs.items():
        pts = sorted(pts, key=lambda p: p["w"])
        axes[1].plot([p["w"] for p in pts], [p["fid"] for p in pts], marker="o", label=label)
    axes[1].set(xlabel="w", ylabel="FID (domain classifier)", title="loss weighting (fixed EMA)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "tradeoff.png", dpi=110)
    (uri,) = ema_heat_maps([{**p, "run": "uniform loss"} for p in ema]).values()
    (HERE / "heat_map.png").write_bytes(base64.b64decode(uri.split(",", 1)[1]))


if __name__ == "__main__":
    main()
