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


def executor_info(root, name: str, runs_in, status: int = 2, folder: str = "run/workspace"):
    """The info file `dvc exp run` keeps while an experiment runs (dvc/repo/experiments/executor/base.py),
    as DVC 3 writes it: .dvc/tmp/exps/run/workspace/workspace.run, or standalone/run/<rev>/<rev>.run for --temp."""
    path = root / ".dvc/tmp/exps" / folder / f"{folder.rsplit('/', 1)[-1]}.run"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"git_url": f"file://{root}", "baseline_rev": "0" * 40, "location": "workspace",
                                "root_dir": str(runs_in), "dvc_dir": ".dvc", "name": name, "wdir": ".",
                                "result_hash": None, "result_ref": None, "result_force": False, "status": status}))
    return path


def test_gate_inside_an_experiment_reports_and_exits_0(project, monkeypatch, capsys):
    write_params(project, {"tracking": {"enabled": False}})
    base = reference_loss(60)
    write_run(project, base * 1.10, baseline_loss=base)
    assert cli.run(compare.main, ["-q"]) == 0
    assert cli.run(gate.main, []) == 1
    # DVC gives every stage of `dvc exp run` DVC_EXP_NAME and DVC_ROOT and keeps a RUNNING executor info file
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-exp")
    monkeypatch.setenv("DVC_ROOT", str(project))
    info = executor_info(project, "brisk-exp", project)
    capsys.readouterr()
    assert cli.run(gate.main, []) == 0
    err = capsys.readouterr().err
    assert "gate: FAIL" in err and "FAIL: experiment brisk-exp is saved with verdict fail" in err
    info.unlink()  # --temp: the stages run in a copy under .dvc/tmp/exps/standalone
    copy = project / ".dvc/tmp/exps/standalone/tmpabc"
    executor_info(project, "brisk-exp", copy, folder="standalone/run/" + "1" * 40)
    assert gate.running_experiment(cwd=copy) == "brisk-exp" and gate.running_experiment(cwd=project / "x") == ""
    metrics = json.loads((project / "reports/default/metrics.json").read_text())
    assert metrics["verdict"] == "fail" and metrics["verdict_code"] == 1


def test_an_experiment_name_alone_never_turns_a_fail_into_0(project, monkeypatch, capsys, tmp_path):
    """Any CI job may carry $DVC_EXP_NAME: only a `dvc exp run` that is running here (its executor info file on
    disk, naming it, RUNNING, in the folder the gate runs in) is saved with exit 0."""
    write_params(project, {"tracking": {"enabled": False}})
    base = reference_loss(60)
    write_run(project, base * 1.10, baseline_loss=base)
    assert cli.run(compare.main, ["-q"]) == 0
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-exp")
    cases = {"name only": lambda: None, "no info file": lambda: monkeypatch.setenv("DVC_ROOT", str(project)),
             "another experiment": lambda: executor_info(project, "other-exp", project),
             "finished (status SUCCESS, left behind)": lambda: executor_info(project, "brisk-exp", project, status=3),
             "running elsewhere": lambda: executor_info(project, "brisk-exp", tmp_path / "another-copy")}
    for case, make in cases.items():
        make()
        capsys.readouterr()
        assert cli.run(gate.main, []) == 1, case
        err = capsys.readouterr().err
        assert "gate: FAIL" in err and "no `dvc exp run` of that name is running here" in err, case


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
