"""Tables and plots of the guidance distillation study from benchmarks/distillation.py's JSON line and the cost
file of run.sh: results.md (one table per model, the sweep times, the training costs) and tradeoff.png."""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent


def main(benchmark_json: str, cost_file: str) -> None:
    report = json.loads(Path(benchmark_json).read_text())
    rows = report["rows"]
    lines = [f"Device: {report['machine']}, {report['threads']} threads, torch {report['torch']}; "
             f"{report['samples']} samples per w.", "",
             "| model | sampler | w | NFE | FID | FID / teacher's | IS | precision | recall | accuracy |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        for p in row["points"]:
            lines.append(f"| {row['model']} | {row['sampler']} | {p['w']:g} | {p['nfe']:.0f} | {p['fid']:.2f} | "
                         f"{p['fid_vs_teacher']:.3f} | {p['is']:.2f} | {p['precision']:.3f} | {p['recall']:.3f} | "
                         f"{p['accuracy']:.3f} |")
    lines += ["", "| model | sampler | sweep sampling s | / teacher's |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {r['model']} | {r['sampler']} | {r['seconds']:.1f} | {r['time_vs_teacher']:.3f} |" for r in rows]
    training = report["training"]
    lines += ["", "| training step (batch 128, bf16) | s | / teacher's |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v:.3f} | {v / training['step_seconds']['teacher']:.2f} |"
              for k, v in training["step_seconds"].items()]
    lines += ["", "| job at the presets' steps (from the step times) | CPU-minutes | / teacher's |",
              "| --- | ---: | ---: |"]
    threads, teacher_s = report["threads"], training["job_seconds"]["teacher"]
    lines += [f"| {k} | {v * threads / 60:.1f} | {v / teacher_s:.2f} |" for k, v in training["job_seconds"].items()]
    costs = dict(line.split() for line in Path(cost_file).read_text().splitlines() if line.strip())
    lines += ["", "| job as run by run.sh | CPU-minutes (wall x cores) |", "| --- | ---: |"]
    lines += [f"| {job} | {float(m):.1f} |" for job, m in costs.items()]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for row in rows:
        ws = [p["w"] for p in row["points"]]
        label = f"{row['model']} ({row['sampler'].split('(')[0]} {row['points'][0]['nfe']:.0f} NFE at w=0)"
        axes[0].plot(ws, [p["fid"] for p in row["points"]], marker="o", label=label)
        axes[1].plot([p["recall"] for p in row["points"]], [p["precision"] for p in row["points"]], marker="o")
    axes[0].set(xlabel="w", ylabel="FID (domain classifier)", yscale="log")
    axes[1].set(xlabel="recall", ylabel="precision")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "tradeoff.png", dpi=110)
    print((HERE / "results.md").read_text())


if __name__ == "__main__":
    main(*sys.argv[1:3])
