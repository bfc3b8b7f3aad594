"""DVC experiments keep their verdict, whatever it is: `dvc exp run` is not aborted by a failing gate."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import TINY, stage_env, write_params
from fake_runs import reference_loss, write_run

from pipelines import cli
from pipelines.review import VIEW_COLUMNS, VIEW_KEY, VIEW_TAG_PREFIX
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
    assert metrics["verdict"] == "fail" and metrics["rule"] == "modelzoo,envelope"

    # `dvc metrics show` as the README gives it: one line of at most 120 columns (DVC wraps nothing), and every
    # figure of the verdict with its significant digits (DVC rounds numbers to 5 decimals: 4.2e-6 shows as 0.0)
    shown = subprocess.run(["dvc", "metrics", "show"], cwd=project, capture_output=True, text=True, check=True)
    lines = shown.stdout.splitlines()
    assert len(lines) == 2 and max(map(len, lines)) <= 120, shown.stdout
    row = dict(zip(lines[0].split(), lines[1].split()))
    verdict = json.loads((project / "reports/default/verdict.json").read_text())
    assert row["verdict"] == "fail" and int(row["first_step"]) == verdict["first_divergence_step"] \
        == verdict["rules"]["envelope"]["numbers"]["first_outside_step"]
    for column, key in (("envelope.x_tol", "max_ratio"), ("modelzoo.mre", "mean_relative_error"),
                        ("modelzoo.mae", "mean_absolute_error")):
        rule, _ = column.split(".")
        assert float(row[column]) == pytest.approx(verdict["rules"][rule]["numbers"][key], rel=1e-3), (column, row)


def test_runs_of_a_temp_experiment_are_tracked_in_the_workspace(tmp_path, monkeypatch):
    """`dvc exp run --temp` runs the stages in a copy under .dvc/tmp/exps, deleted afterwards; DVC_ROOT (set by
    DVC for every stage) names the workspace, where the store and the spool stay."""
    from pipelines.params import TrackingConfig
    from pipelines.tracking import spool_path, tracking_uri

    workspace, copy = tmp_path / "ws", tmp_path / "ws/.dvc/tmp/exps/tmp1234"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = TrackingConfig()
    monkeypatch.setenv("DVC_ROOT", str(workspace))
    assert tracking_uri(cfg) == f"sqlite:///{workspace.resolve() / 'mlflow.db'}"
    assert spool_path(cfg) == workspace.resolve() / ".mlflow-spool"
    assert spool_path(TrackingConfig(spool_dir=str(tmp_path / "s"))) == tmp_path / "s"
    monkeypatch.delenv("DVC_ROOT")
    assert tracking_uri(cfg) == f"sqlite:///{copy.resolve() / 'mlflow.db'}"  # outside DVC: the current folder


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
    write_params(project, {**TINY, "tracking": {"system_metrics_every_s": 0}})
    env = stage_env(project)
    env.pop("MLFLOW_TRACKING_URI", None)
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

    # its MLflow runs are in the workspace's store, not in the deleted copy's
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cait-acceptance")
    runs = client.search_runs([experiment.experiment_id], "tags.`cait.role` = 'device'")
    assert [r.data.tags.get("verdict") for r in runs] == ["inconclusive"]
    assert runs[0].data.params["train.steps"] == "5"
    # the verdict view's columns are tags of the run (localize names a module only when the curves part)
    assert set(VIEW_COLUMNS) - {"localize.module"} <= set(runs[0].data.tags)
    assert VIEW_TAG_PREFIX + VIEW_KEY in experiment.tags

    # plain `dvc exp run` (in the workspace) is saved with its verdict too; DVC then leaves the experiment's params
    # and results in the workspace, by its design (README: `--temp` to keep them out, `git checkout` to undo)
    run = subprocess.run(["dvc", "exp", "run", "-S", "train.steps=4"], cwd=project, env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    listed = subprocess.run(["dvc", "exp", "list", "--name-only"], cwd=project, env=env, capture_output=True, text=True)
    assert len(listed.stdout.split()) == 2, listed.stdout
    shown = json.loads(subprocess.run(["dvc", "exp", "show", "--json"], cwd=project, env=env, capture_output=True,
                                      text=True).stdout)
    assert find(shown, "verdict").count("inconclusive") >= 2
    assert "steps: 4" in (project / "params.yaml").read_text()
