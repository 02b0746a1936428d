"""The rounds of progressive distillation as a chain of train.py jobs (the job behind distill.py).

Each round is an ordinary train.py run in <run dir>/steps_<N>, with its own checkpoints, logs, sweep and grids;
its teacher is the previous round's final checkpoint (the first round's: teacher_ckpt). A round that finished is
marked by a `finished` file and skipped when the chain is rerun; an unfinished one resumes from its last.ckpt
(ckpt_path=last), so rerunning the same command with the same hydra.run.dir continues an interrupted chain.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

ROUND_KEYS = ("rounds", "teacher_ckpt", "module.student_steps", "hydra.run.dir")  # set per round by the chain
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)  # the stop signals of conf/callbacks' preemption


def rounds_problems(rounds) -> list[str]:
    """What is wrong with a list of student steps for successive rounds (each half the previous one)."""
    if not isinstance(rounds, Sequence) or isinstance(rounds, str) or not rounds:
        return [f"{rounds!r} must be a non-empty list of student steps, e.g. [8, 4]"]
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in rounds):
        return [f"{list(rounds)} must hold integers >= 1"]
    return [f"{list(rounds)}: each round halves the steps of the one before, {a} -> {b} does not"
            for a, b in zip(rounds, rounds[1:]) if a != 2 * b]


def run_rounds(cfg: DictConfig, out_dir: str | Path, overrides: Sequence[str], train_script: str | Path) -> int:
    """Run the rounds `cfg.rounds` (student steps, halving) one after the other as
    `python train.py <overrides> module.student_steps=N teacher_ckpt=<previous round> hydra.run.dir=<out>/steps_N`.

    overrides: the chain's own command-line overrides, passed on to every round (its per-round keys excepted).
    Returns 0 when every round has finished, else the exit status of the round that stopped: 128 + n for a
    round stopped by signal n (preemption) after writing its checkpoint. A stop signal sent to this process is
    passed on to the running round, which checkpoints and stops.
    """
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ROUND_KEYS]
    teacher = str(cfg.teacher_ckpt)
    for steps in cfg.rounds:
        run_dir = Path(out_dir) / f"steps_{steps}"
        marker = run_dir / "finished"
        if not marker.exists():
            print(f"progressive distillation: {2 * steps} -> {steps} steps in {run_dir} (teacher {teacher})",
                  flush=True)
            code = _run([sys.executable, str(train_script), *keep, f"module.student_steps={steps}",
                         f"teacher_ckpt={teacher}", f"hydra.run.dir={run_dir}"])
            if code:
                return code
            marker.write_text(json.dumps({"student_steps": steps, "teacher_ckpt": teacher}) + "\n")
        teacher = str(run_dir / "checkpoints" / "last.ckpt")
    return 0


def _run(command: list[str]) -> int:
    """Run a round and wait for it; stop signals received meanwhile are passed on to it."""
    proc = subprocess.Popen(command)
    forward = lambda signum, frame: proc.send_signal(signum)  # noqa: E731
    previous = {s: signal.signal(s, forward) for s in SIGNALS}
    try:
        code = proc.wait()
        return 128 - code if code < 0 else code  # killed by signal n: report it as the shell does, 128 + n
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
