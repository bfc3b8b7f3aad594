"""The benchmark entry point keeps running: `python -m benchmarks --smoke` at tiny sizes prints a row for
every benchmark with finite figures. The targets themselves are never asserted here (benchmarks/README.md)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPECTED = {"trainer": 5, "efficiency": 2, "tracking": 3, "verdict": 2, "logs": 1, "pipeline": 2, "loader": 1,
            "memory": 2}


@pytest.mark.slow
@pytest.mark.timeout(300)  # ~50 s alone on 2 cores (a tiny `dvc repro` and a live mlflow server included)
def test_smoke_run_prints_every_benchmark_with_finite_figures(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    groups = {}
    for row in rows:
        groups[row["group"]] = groups.get(row["group"], 0) + 1
        assert math.isfinite(row["value"]), row
        assert row["name"] in done.stdout  # the table shows it
    assert groups == EXPECTED
    assert "| met" in done.stdout and "SMOKE" in done.stdout


def test_only_runs_one_group(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--only", "verdict", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["group"] for r in rows] == ["verdict", "verdict"]
    assert rows[0]["value"] > 0  # seconds for compare + report
    assert rows[1]["value"] == rows[1]["value"]  # the growth slope: at smoke sizes noise can make it <= 0, never NaN


def test_long_curves_are_drawn_as_their_envelope():
    """The envelope the report draws keeps every spike of a long curve, with a bounded number of points."""
    import numpy as np

    from pipelines.report import MAX_DRAWN_POINTS, for_display

    values = np.zeros(1_000_000)
    values[123_457] = 5.0
    values[900_001] = -3.0
    steps, shown = for_display(np.arange(len(values)), values)
    assert len(shown) <= MAX_DRAWN_POINTS + 2
    assert shown.max() == 5.0 and shown.min() == -3.0 and 123_457 in steps and steps[-1] == 999_999
    short = np.arange(10.0)
    assert np.array_equal(for_display(np.arange(10), short)[1], short)  # short curves: every point
