"""DVC experiments keep their verdict, whatever it is: `dvc exp run` is not aborted by a failing gate."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest
import yaml
from conftest import TINY, stage_env, write_params
from fake_runs import reference_loss, write_run

from pipelines import cli
from pipelines.review import EXPERIMENT_TAG, VIEW_COLUMNS, VIEW_KEY, VIEW_TAG_PREFIX
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


def test_a_running_experiment_shows_no_previous_verdict(project, monkeypatch):
    """`dvc exp show` reads a running experiment's folder: while train runs, metrics.json (the previous curve's
    verdict) is gone, so the row shows no verdict instead of the old "pass"."""
    from pipelines.stages import train

    metrics = project / "reports/default/metrics.json"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text('{"verdict": "pass"}')
    seen = []
    monkeypatch.setattr(train, "run_training", lambda params, out, **kw: seen.append((out / "metrics.json").exists()))
    assert cli.run(train.main, ["-q"]) == 0 and seen == [False]


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


EXP_SHOW = ["dvc", "exp", "show", "--no-pager", "--drop", ".*", "--keep",
            r"Experiment|^verdict$|^rule$|first_step|envelope\.x_tol|train\.steps"]  # README's line


def gate_as_printed(project, env) -> subprocess.CompletedProcess:
    """The gate; when it names a command that renders the report of its verdict, that command run as printed,
    then the gate again."""
    gated = subprocess.run(["python", "-m", "pipelines.stages.gate"], cwd=project, env=env, capture_output=True,
                           text=True)
    advice = re.search(r"render it for this verdict: (python -m pipelines\.stages\.report[^\n]*)", gated.stderr)
    if advice:
        done = subprocess.run(shlex.split(advice.group(1)), cwd=project, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        gated = subprocess.run(["python", "-m", "pipelines.stages.gate"], cwd=project, env=env, capture_output=True,
                               text=True)
    assert "another verdict" not in gated.stderr, gated.stderr
    # the verdict of the params in the workspace: the curve it judged was trained with them
    steps = yaml.safe_load((project / "params.yaml").read_text())["train"]["steps"]
    record = json.loads((project / "reports/default/train.json").read_text())
    assert record["curve_params"]["train"]["steps"] == steps
    verdict = json.loads((project / "reports/default/verdict.json").read_text())
    assert gated.returncode == {"pass": 0, "fail": 1, "inconclusive": 3}[verdict["status"]], gated.stderr
    return gated, bool(advice)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_experiment_is_saved_with_its_verdict_and_params_yaml_is_untouched(project):
    write_params(project, {**TINY, "tracking": {"system_metrics_every_s": 0}})
    env = stage_env(project)
    env.pop("MLFLOW_TRACKING_URI", None)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "commit", "-qam", "tiny profile"], cwd=project, check=True)

    # plain `dvc exp run` (in the workspace) is saved with its verdict; DVC then leaves the experiment's params
    # and results in the workspace, by its design (README: `--temp` to keep them out, `git checkout` to undo)
    run = subprocess.run(["dvc", "exp", "run", "-S", "train.steps=4"], cwd=project, env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "steps: 4" in (project / "params.yaml").read_text()
    subprocess.run([*git, "commit", "-qam", "4 steps"], cwd=project, check=True)  # what the README's undo returns to
    before = (project / "params.yaml").read_text()

    run = subprocess.run(["dvc", "exp", "run", "--temp", "-S", "train.steps=5"], cwd=project, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert (project / "params.yaml").read_text() == before
    assert subprocess.run(["git", "status", "--porcelain", "params.yaml"], cwd=project, capture_output=True,
                          text=True).stdout == ""
    listed = subprocess.run(["dvc", "exp", "list", "--all-commits", "--name-only"], cwd=project, env=env,
                            capture_output=True, text=True)  # the plain one's base is the commit before HEAD
    names = listed.stdout.split()
    assert len(names) == 2, listed.stdout
    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=project, env=env, capture_output=True, text=True)
    # the tiny profile has no baseline of its own: the stored one is refused, so the verdict is inconclusive,
    # which would have aborted the experiment before
    assert find(json.loads(shown.stdout), "verdict").count("inconclusive") >= 2, shown.stdout[-2000:]
    # the README's `dvc exp show` line fits 120 columns: nothing cut to "…"
    table = subprocess.run(EXP_SHOW, cwd=project, env={**env, "COLUMNS": "120"}, capture_output=True, text=True)
    assert table.returncode == 0 and "…" not in table.stdout, table.stdout + table.stderr
    assert max(map(len, table.stdout.splitlines())) <= 120 and "inconclusive" in table.stdout, table.stdout
    for column in ("Experiment", "verdict", "rule", "train.steps"):
        assert column in table.stdout, table.stdout

    # their MLflow runs are in the workspace's store, not in the deleted copy's; each links the report that
    # judged it (the artifact; the workspace path only for the run whose folder stays) and names its experiment
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cait-acceptance")
    runs = {r.data.params["train.steps"]: r for r in client.search_runs([experiment.experiment_id],
                                                                         "tags.`cait.role` = 'device'")}
    assert sorted(runs) == ["4", "5"] and {r.data.tags.get("verdict") for r in runs.values()} == {"inconclusive"}
    temp, plain = runs["5"].data.tags, runs["4"].data.tags
    assert temp["report"].endswith("/artifactPath/report/report.html") and "report.path" not in temp
    assert plain["report.path"] == "reports/default/report.html"
    assert "reports/default/report.html" not in temp["mlflow.note.content"]
    assert {temp[EXPERIMENT_TAG], plain[EXPERIMENT_TAG]} == set(names)
    assert "report/report.html" in [a.path for a in client.list_artifacts(runs["5"].info.run_id, "report")]
    # the verdict view's columns are tags of the run (localize names a module only when the curves part)
    assert set(VIEW_COLUMNS) - {"localize.module", "localize.op"} <= set(temp)
    assert VIEW_TAG_PREFIX + VIEW_KEY in experiment.tags

    # whatever state DVC leaves, the gate's advice, run as printed, brings it to the workspace params' verdict
    _, advised = gate_as_printed(project, env)  # after `--temp`: the workspace is as it was
    assert not advised
    temp_name = next(n for n in names if client.search_runs([experiment.experiment_id],
                                                            f"tags.`{EXPERIMENT_TAG}` = '{n}'")[0]
                     .data.params["train.steps"] == "5")
    subprocess.run(["dvc", "exp", "apply", temp_name], cwd=project, env=env, check=True, capture_output=True)
    _, advised = gate_as_printed(project, env)
    assert advised  # report.html was the workspace run's: the gate said so, and how to mend it
    subprocess.run(["git", "checkout", "params.yaml", "dvc.lock"], cwd=project, check=True)  # the README's undo
    subprocess.run(["dvc", "checkout"], cwd=project, env=env, check=True, capture_output=True)
    _, advised = gate_as_printed(project, env)
    assert advised
