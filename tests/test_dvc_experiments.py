"""DVC experiments keep their verdict, whatever it is: `dvc exp run` is not aborted by a failing gate."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import TINY, stage_env, write_params
from fake_runs import reference_loss, write_run

from pipelines import cli
from pipelines.stages import compare, gate


def test_gate_inside_an_experiment_reports_and_exits_0(project, monkeypatch, capsys):
    write_params(project, {"tracking": {"enabled": False}})
    base = reference_loss(60)
    write_run(project, base * 1.10, baseline_loss=base)
    assert cli.run(compare.main, ["-q"]) == 0
    assert cli.run(gate.main, []) == 1
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-exp")
    assert cli.run(gate.main, []) == 0
    assert "experiment brisk-exp is saved with verdict fail" in capsys.readouterr().err
    metrics = json.loads((project / "reports/default/metrics.json").read_text())
    assert metrics["verdict"] == "fail" and metrics["verdict_code"] == 1


def find(tree, key):
    """Every value stored under `key` anywhere in a JSON tree."""
    if isinstance(tree, dict):
        return ([tree[key]] if key in tree else []) + [v for x in tree.values() for v in find(x, key)]
    if isinstance(tree, list):
        return [v for x in tree for v in find(x, key)]
    return []


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_experiment_is_saved_with_its_verdict_and_params_yaml_is_untouched(project):
    write_params(project, {**TINY, "tracking": {"enabled": False}})
    env = stage_env(project)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "commit", "-qam", "tiny profile"], cwd=project, check=True)
    before = (project / "params.yaml").read_text()

    run = subprocess.run(["dvc", "exp", "run", "--temp", "-S", "train.steps=5"], cwd=project, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert (project / "params.yaml").read_text() == before
    assert subprocess.run(["git", "status", "--porcelain", "params.yaml"], cwd=project, capture_output=True,
                          text=True).stdout == ""
    listed = subprocess.run(["dvc", "exp", "list", "--name-only"], cwd=project, env=env, capture_output=True, text=True)
    assert len(listed.stdout.split()) == 1, listed.stdout
    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=project, env=env, capture_output=True, text=True)
    verdicts = find(json.loads(shown.stdout), "verdict")
    # the tiny profile has no baseline of its own: the stored one is refused, so the verdict is inconclusive,
    # which would have aborted the experiment before
    assert "inconclusive" in verdicts, shown.stdout[-2000:]
