"""The whole chain, for real: `dvc repro` of the default profile in a copy of the project."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from html import escape as html_escape

import pytest

from conftest import stage_env


def dvc(project, *args):
    return subprocess.run(["dvc", *args], cwd=project, env=stage_env(project), capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~70 s alone on 2 cores; generous for a loaded machine
def test_default_chain_passes_then_a_raised_baseline_fails(project):
    first = dvc(project, "repro")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = project / "reports" / "default"
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["status"] == "pass"
    for name in ("overlay.png", "report.html", "junit.xml", "curve.csv", "train.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Verdict: PASS" in (out / "report.html").read_text()
    assert "MeanRelativeError: " in first.stdout and "Rule,mean_" in first.stdout  # ModelZoo's lines, as they print
    assert verdict["rules"]["envelope"]["passed"] and verdict["gate"] == ["envelope", "modelzoo"]

    # the MLflow store holds the run: params, every step's loss, the verdict
    run_id = json.loads((out / "train.json").read_text())["mlflow_run_id"]
    db = sqlite3.connect(project / "mlflow.db")
    params = dict(db.execute("select key, value from params where run_uuid=?", (run_id,)).fetchall())
    assert params["model.name"] == "cait_XXS24_224" and params["train.steps"] == "120"
    steps = [s for (s,) in db.execute("select step from metrics where run_uuid=? and key='loss' order by step", (run_id,))]
    assert steps == list(range(120))
    tags = dict(db.execute("select key, value from tags where run_uuid=?", (run_id,)).fetchall())
    assert tags["verdict"] == "pass" and tags["env.device"] == "cpu"
    db.close()

    # nothing changed: nothing retrains
    before = (out / "curve.csv").stat().st_mtime_ns
    start = time.perf_counter()
    again = dvc(project, "repro")
    elapsed = time.perf_counter() - start
    assert again.returncode == 0
    assert "Running stage" not in again.stdout, again.stdout
    assert (out / "curve.csv").stat().st_mtime_ns == before
    print(f"no-op dvc repro took {elapsed:.1f} s")

    # every baseline curve 10% higher (reference, seed runs and envelope runs alike, as a baseline recorded
    # from a port whose loss sits 10% higher would be): the chain ends non-zero, and the report says why
    from pipelines.baselines import load_baseline, save_baseline

    path = project / "baselines" / "default" / "baseline.json"
    baseline = load_baseline(path)
    baseline.loss = baseline.loss * 1.1
    for run in [*baseline.runs, *baseline.envelope_runs]:
        run.loss = run.loss * 1.1
    save_baseline(path, baseline)
    failed = dvc(project, "repro")
    assert failed.returncode != 0
    assert "Running stage 'train'" not in failed.stdout
    assert "gate: FAIL" in failed.stderr + failed.stdout
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["status"] == "fail"
    assert verdict["rules"]["envelope"]["passed"] is False and verdict["rules"]["envelope"]["gating"] is True
    assert verdict["rules"]["envelope"]["numbers"]["first_outside_step"] == 0
    # the candidate sits lower, so ModelZoo's signed rule passes: the envelope is what fails it
    assert verdict["rules"]["modelzoo"]["passed"] is True
    assert "0.1 > 0.02" in verdict["rules"]["strict"]["summary"]  # strict informs, and says so too
    why = verdict["rules"]["envelope"]["summary"]  # "leaves 4 x envelope + ... at step 0 (|d| ...)"
    assert "at step 0" in why
    html = (out / "report.html").read_text()
    assert "Verdict: FAIL" in html and html_escape(why) in html
    assert f'<failure message="{html_escape(why)}' in (out / "junit.xml").read_text()

    # the gate can be left out: the report stage alone succeeds
    assert dvc(project, "repro", "report").returncode == 0
