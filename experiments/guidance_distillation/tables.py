"""Tables and plots of the guidance distillation study from benchmarks/distillation.py's JSON lines and run.sh's
cost file: results.md (the targets of the study for each few-step method, stage one's and the 8 -> 4 round's
length curves, every row, the sampling batch size, the costs, the eps teacher's rows as the contrast) and tradeoff.png.

    python tables.py benchmark.json benchmark_stage1_800.json benchmark_eps.json cost.txt spread.json

benchmark_stage1_800.json: the run from the 800-step stage one, which holds the round-length curve.
"""

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent


def best(row: dict) -> dict:
    """The point of lowest FID over w."""
    return min(row["points"], key=lambda p: p["fid"])


def verdict(ok: bool) -> str:
    return "reached" if ok else "missed"


def point_table(rows: list[dict], samples: int) -> list[str]:
    lines = ["| model | sampler | w | steps | NFE | FID | FID / teacher's | IS | precision | recall | accuracy | "
             "s / 100 images |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        for p in row["points"]:
            lines.append(f"| {row['model']} | {row['sampler']} | {p['w']:g} | {p.get('steps', '')} | {p['nfe']:.0f} | "
                         f"{p['fid']:.2f} | {p['fid_vs_teacher']:.3f} | {p['is']:.2f} | {p['precision']:.3f} | "
                         f"{p['recall']:.3f} | {p['accuracy']:.3f} | {100 * p['seconds'] / samples:.2f} |")
    return lines


def ratios(row: dict, teacher: dict) -> str:
    """FID / the teacher's at every w."""
    return " / ".join(f"{s['fid'] / t['fid']:.3f}" for s, t in zip(row["points"], teacher["points"]))


def targets(rows: dict, students4: list[dict], samples: int) -> list[str]:
    teacher, stage1 = rows["teacher"], rows["student"]
    worst = max(s["fid"] / t["fid"] for s, t in zip(stage1["points"], teacher["points"]))
    lines = ["| target | measured | |", "| --- | --- | --- |",
             f"| stage one within 10 % of the teacher's FID at every w (one forward per step) | "
             f"{ratios(stage1, teacher)} | {verdict(worst <= 1.10)} |"]
    for student4 in students4:
        s4, method = best(student4), student4["model"]
        lines.append(f"| {method}: best FID <= 1.25 x the teacher's best 20-step DPM++ FID | {s4['fid']:.2f} (w = "
                     f"{s4['w']:g}) against {best(teacher)['fid']:.2f} (w = {best(teacher)['w']:g}): "
                     f"{s4['fid'] / best(teacher)['fid']:.2f} x | "
                     f"{verdict(s4['fid'] <= 1.25 * best(teacher)['fid'])} |")
        for name in ("teacher, DDIM 4", "teacher, DPM++ 4", "teacher, DDIM at 4 NFE", "teacher, DPM++ at 4 NFE"):
            b = best(rows[name])
            lines.append(f"| {method}: better than {name} (best over w) | {s4['fid']:.2f} against {b['fid']:.2f} "
                         f"(w = {b['w']:g}) | {verdict(s4['fid'] < b['fid'])} |")
        guided = max(p["seconds"] for p in student4["points"] if p["w"] > 0) * 100 / samples
        lines.append(f"| {method}: guided sampling <= 1 s per 100 images (slowest guided w; the teacher's 20-step "
                     f"DPM++: {max(p['seconds'] for p in teacher['points'] if p['w'] > 0) * 100 / samples:.2f} s) "
                     f"| {guided:.3f} s | {verdict(guided <= 1.0)} |")
    return lines


def spread_table(spread: dict) -> list[str]:
    """spread.py's FIDs over noise sets: each repeat, mean +- sd, and the paired ratio to the teacher's."""
    lines = [f"## Spread at w = {spread['w']:g}: {spread['repeats']} noise sets of {spread['samples']} samples "
             "(repeat 0 is the benchmark's)", "",
             "| model | FID per noise set | FID mean +- sd | / teacher's, paired |", "| --- | --- | ---: | ---: |"]
    for row in spread["rows"]:
        fid, ratio = row["fid"], row["fid_vs_teacher"]
        lines.append(f"| {row['model']} | {' / '.join(f'{v:.2f}' for v in fid)} | {statistics.mean(fid):.2f} +- "
                     f"{statistics.stdev(fid):.2f} | {statistics.mean(ratio):.3f} +- {statistics.stdev(ratio):.3f} |")
    return lines


def main(benchmark_json: str, earlier_json: str, eps_json: str, cost_file: str, spread_json: str) -> None:
    report, earlier = (json.loads(Path(f).read_text()) for f in (benchmark_json, earlier_json))
    samples = report["samples"]
    rows = {r["model"]: r for r in report["rows"]}
    students4 = [r for r in report["rows"] if r.get("student_steps") == 4]
    curve = sorted((r for r in earlier["rows"] if r.get("student_steps") == 4), key=lambda r: r["round_steps"])
    earlier_rows = {r["model"]: r for r in earlier["rows"]}  # its student against its own teacher run
    lines = [f"Device: {report['machine']}, {report['threads']} threads, torch {report['torch']}; "
             f"{samples} samples per w in batches of {report.get('batch', 500)}, the same labels and seeds in every "
             "row.", "",
             "## Targets (v-prediction teacher; stage one of 2,000 steps, stage two from it)", "",
             *targets(rows, students4, samples), "",
             # spread.json is written by the last step of run.sh: absent while a rerun has not reached it
             *(spread_table(json.loads(Path(spread_json).read_text())) + [""] if Path(spread_json).is_file() else []),
             "## Stage one's length: FID / the teacher's at every w", "",
             "| stage-one steps | " + " | ".join(f"w = {p['w']:g}" for p in earlier_rows["student"]["points"]) + " |",
             "| ---: |" + " ---: |" * len(earlier_rows["student"]["points"]),
             f"| 800 | {ratios(earlier_rows['student'], earlier_rows['teacher']).replace(' / ', ' | ')} |",
             f"| 2000 | {ratios(rows['student'], rows['teacher']).replace(' / ', ' | ')} |", "",
             "## Round length (8 -> 4 steps, from the 800-step stage one): FID at 4 steps against the round's "
             "optimizer steps", "",
             "| steps per round | " + " | ".join(f"w = {p['w']:g}" for p in curve[0]["points"]) + " | best |",
             "| ---: |" + " ---: |" * (len(curve[0]["points"]) + 1)]
    lines += [f"| {r['round_steps']} | " + " | ".join(f"{p['fid']:.2f}" for p in r["points"]) +
              f" | {best(r)['fid']:.2f} |" for r in curve]
    lines += ["", "## Every row", "", *point_table(report["rows"], samples), "",
              "| model | sampler | sweep sampling s | / teacher's |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {r['model']} | {r['sampler']} | {r['seconds']:.1f} | {r['time_vs_teacher']:.3f} |"
              for r in report["rows"]]
    if report.get("batch_sizes"):
        batches = report["batch_sizes"]
        lines += ["", f"## Sampling batch size: {batches['model']}, guided at w = {batches['w']:g}", "",
                  "| batch | s / 100 images |", "| ---: | ---: |"]
        lines += [f"| {b} | {sec:.2f} |" for b, sec in batches["seconds_per_100"].items()]
    training = report["training"]
    lines += ["", "## Cost", "", "| training step (batch 128, bf16) | s | / teacher's |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v:.3f} | {v / training['step_seconds']['teacher']:.2f} |"
              for k, v in training["step_seconds"].items()]
    costs = {name: float(s) / 60 for name, s in (line.split() for line in Path(cost_file).read_text().splitlines()
                                                  if line.strip())}
    teacher_cost = costs.get("teacher_v")
    lines += ["", "| job as run by run.sh | CPU-minutes (wall x cores) | / teacher's training |",
              "| --- | ---: | ---: |"]
    lines += [f"| {job} | {m:.1f} | {m / teacher_cost:.2f} |" if teacher_cost else f"| {job} | {m:.1f} | |"
              for job, m in costs.items()]
    eps = json.loads(Path(eps_json).read_text())
    lines += ["", "## Contrast: the eps-prediction teacher (earlier presets: uniform loss, constant learning rate, "
              "EMA in the rounds)", "", *point_table(eps["rows"], eps["samples"])]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name in ("teacher", "student", *(r["model"] for r in students4), "teacher, DDIM 4", "teacher, DPM++ 4",
                 "teacher, DDIM at 4 NFE", "teacher, DPM++ at 4 NFE"):
        row = rows[name]
        label = f"{name} ({row['points'][-1]['nfe']:.0f} NFE guided)"
        axes[0].plot([p["w"] for p in row["points"]], [p["fid"] for p in row["points"]], marker="o", label=label)
        axes[1].plot([p["recall"] for p in row["points"]], [p["precision"] for p in row["points"]], marker="o")
    eps_4 = next(r for r in eps["rows"] if r["model"] == "progressive 4")
    axes[0].plot([p["w"] for p in eps_4["points"]], [p["fid"] for p in eps_4["points"]], "k--", marker="x",
                 label="eps teacher's progressive 4 (contrast)")
    axes[0].set(xlabel="w", ylabel="FID (domain classifier)", yscale="log")
    axes[0].legend(fontsize=7)
    axes[1].set(xlabel="recall", ylabel="precision")
    axes[2].plot([r["round_steps"] for r in curve], [best(r)["fid"] for r in curve], marker="o")
    axes[2].axhline(best(rows["teacher"])["fid"] * 1.25, color="gray", ls=":", label="1.25 x teacher's best")
    axes[2].set(xlabel="optimizer steps in the 8 -> 4 round (800-step stage one)", ylabel="best FID over w at 4 steps",
                xscale="log")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "tradeoff.png", dpi=110)
    print((HERE / "results.md").read_text())


if __name__ == "__main__":
    main(*sys.argv[1:6])
