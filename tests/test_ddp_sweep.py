"""GuidanceSweep under real DDP (2 CPU processes, gloo) gives the single-process sweep."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT


def sweep(out, devices):
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_sweep_script.py"), str(out), str(devices)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "sweep.json").read_text())["points"]


@pytest.mark.slow
def test_ddp_sweep_equals_single_process(tmp_path):
    single = sweep(tmp_path / "single", 1)
    ddp = sweep(tmp_path / "ddp", 2)
    assert [p["w"] for p in ddp] == [p["w"] for p in single] == [0.0, 1.5]
    for a, b in zip(single, ddp):
        assert a["num_samples"] == b["num_samples"] == 70 and a["nfe"] == b["nfe"]
        for k in ("fid", "is", "kid", "precision", "recall", "accuracy"):
            assert b[k] == pytest.approx(a[k], rel=1e-9, abs=1e-12), k  # the very same images
