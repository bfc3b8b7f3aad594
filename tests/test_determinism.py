"""The same params twice on CPU give a bitwise-identical curve."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from pipelines.curves import read_curve_csv

from conftest import stage_env


def run(project, *args):
    result = subprocess.run([sys.executable, "-m", *args], cwd=project, env=stage_env(project),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


def test_two_runs_give_bitwise_identical_curves(tiny_project):
    run(tiny_project, "pipelines.stages.prepare")
    run(tiny_project, "pipelines.stages.train", "--out-dir", "run-a")
    run(tiny_project, "pipelines.stages.train", "--out-dir", "run-b")
    a = read_curve_csv(tiny_project / "run-a" / "curve.csv")
    b = read_curve_csv(tiny_project / "run-b" / "curve.csv")
    assert len(a) == 6
    assert a.loss.tobytes() == b.loss.tobytes()
    assert a.extra["lr"].tobytes() == b.extra["lr"].tobytes()
    assert np.all(np.isfinite(a.loss))
    # the CSV holds the full float64: what the trainer printed is what was stored
    printed = [float(line.split("train.loss : ")[1].split()[0])
               for line in run(tiny_project, "pipelines.stages.train", "--out-dir", "run-c").stdout.splitlines()
               if line.startswith("TCAPPDLL")]
    assert printed == a.loss.tolist()
