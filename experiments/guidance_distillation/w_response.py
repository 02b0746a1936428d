"""How far a stage-one student's output at w follows its teacher's guided output, on the guidance direction.

    python experiments/guidance_distillation/w_response.py --teacher <teacher ckpt> --data-dir <mnist> <student> ...

For 128 test images noised at each t, with c and u the teacher's conditional and unconditional predictions and
s(w) the student's: w_eff = <s(w) - c, c - u> / ||c - u||^2 (w itself for a perfect student) and the error
||s(w) - (c + w (c - u))|| / ||c - u||. Prints one row per (t, student): "w_eff/error" at each w.
"""

from __future__ import annotations

import argparse

import torch

from cfglab.checkpoints import Checkpoint

WS = (0, 0.01, 0.05, 0.25, 0.5, 1, 2, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("students", nargs="+")
    args = parser.parse_args()
    data = {"data_dir": args.data_dir}
    dm, teacher = Checkpoint.open(args.teacher).module(data)
    students = {p: Checkpoint.open(p).module(data)[1] for p in args.students}
    dm.setup("fit")
    x0, labels = next(iter(dm.val_dataloader()))
    x0, labels = dm.on_after_batch_transfer((x0[:128], labels[:128]), 0)
    g = torch.Generator().manual_seed(0)
    print("t  student  " + "  ".join(f"w={w:g}" for w in WS))
    with torch.no_grad():
        for t0 in (0.1, 0.3, 0.5, 0.7, 0.9):
            t = torch.full((len(labels),), t0)
            alpha, sigma = (a[:, None, None, None] for a in teacher.schedule.alpha_sigma(t))
            xt = alpha * x0 + sigma * torch.randn(x0.shape, generator=g)
            c = teacher.net(xt, t, labels)
            direction = c - teacher.net(xt, t, torch.full_like(labels, teacher.null_label))
            norm2 = direction.pow(2).sum()
            for path, student in students.items():
                cells = []
                for w in WS:
                    out = student.net(xt, t, labels, torch.full((len(labels),), float(w)))
                    w_eff = ((out - c) * direction).sum() / norm2
                    error = ((out - c - w * direction).pow(2).sum() / norm2).sqrt()
                    cells.append(f"{w_eff:.3f}/{error:.2f}")
                print(t0, path, " ".join(cells))


if __name__ == "__main__":
    main()
