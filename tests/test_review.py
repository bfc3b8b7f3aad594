"""What reviewers see in MLflow (pipelines/review.py): names, verdict columns, the baseline beside the run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_params
from fake_runs import environment, reference_loss, write_run

from pipelines import cli
from pipelines.params import load_params
from pipelines.review import (VIEW_KEY, VIEW_TAG_PREFIX, comparison_series, deciding_rules, description, run_name,
                              verdict_tags, verdict_view, view_link)
from pipelines.stages import compare
from pipelines.tracking import RunLogger, tracking_uri


def rule(passed, gating=True, applicable=True, summary="s"):
    return {"passed": passed, "gating": gating, "applicable": applicable, "summary": summary}


def test_deciding_rules_name_what_made_the_verdict():
    rules = {"modelzoo": rule(True), "strict": rule(False), "band": rule(False, gating=False)}
    assert deciding_rules({"status": "fail", "rules": rules}) == "strict"
    assert deciding_rules({"status": "pass", "rules": {**rules, "strict": rule(True)}}) == "modelzoo,strict"
    assert deciding_rules({"status": "inconclusive", "rules": {"strict": rule(False, applicable=False)}}) == "strict"
    assert deciding_rules({"status": "inconclusive", "rules": {}}) == "refused"
    tags = verdict_tags({"status": "fail", "rules": rules, "first_divergence_step": 12})
    assert tags["verdict"] == "fail" and tags["verdict.rule"] == "strict"
    assert tags["verdict.first_divergence_step"] == "12" and tags["rule.band"] == "fail"
    text = description({"status": "fail", "rules": rules, "reasons": ["strict: too far"], "compared_steps": 60},
                       "reports/default/report.html", "http://ui/#/x")
    assert text.startswith("**Verdict: FAIL** over 60 steps (decided by strict)")
    assert "- strict: too far" in text
    assert text.endswith("Report: the run's artifact [report/report.html](http://ui/#/x); in the workspace "
                         "`reports/default/report.html` (until the next run replaces it)")
    # inside `dvc exp run --temp` the folder is gone afterwards: only the artifact is named
    temp = description({"status": "fail", "rules": rules, "reasons": []}, "", "", run_id="abc")
    assert temp.endswith("Report: the run's artifact `report/report.html`")


def test_an_execution_shows_its_worst_device_and_why():
    from pipelines.review import SLOT_TAG, execution_tags

    fail = {"verdict": "fail", "verdict.rule": "envelope", "verdict.first_divergence_step": "26",
            SLOT_TAG: "default.sdaa"}
    passed = {"verdict": "pass", "verdict.rule": "modelzoo,envelope", "verdict.first_divergence_step": "",
              SLOT_TAG: "default.cuda"}
    first = execution_tags([(1, "s", fail)])
    assert first == {"verdict.default.sdaa": "fail", "verdict": "fail", "verdict.rule": "envelope",
                     "verdict.first_divergence_step": "26", "localize.module": "", "localize.op": ""}
    later = execution_tags([(1, "s", fail), (2, "c", passed)])  # a passing device after it changes nothing shown
    assert later == {**first, "verdict.default.cuda": "pass"}
    inconclusive = {**passed, "verdict": "inconclusive"}
    assert execution_tags([(1, "c", inconclusive), (2, "p", {**passed, SLOT_TAG: "default.cpu"})])["verdict"] == \
        "inconclusive"
    rerun = execution_tags([(1, "s", fail), (3, "s2", {**passed, SLOT_TAG: "default.sdaa"})])  # the same device again
    assert rerun["verdict"] == "pass" and rerun["verdict.rule"] == "modelzoo,envelope"


def test_without_an_execution_id_a_device_run_stands_alone(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipelines.params import TrackingConfig

    monkeypatch.delenv("CAIT_EXECUTION_ID", raising=False)
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", spool_dir=str(tmp_path / "spool"),
                         system_metrics_every_s=0)
    logger = RunLogger(cfg)
    run_id = logger.start(run_name("default", "cpu"), params={}, tags={"profile": "default"})
    logger.finish()
    run = MlflowClient(tracking_uri=cfg.uri).get_run(run_id)
    assert logger.parent_run_id == "" and "mlflow.parentRunId" not in run.data.tags
    assert run.data.tags["cait.role"] == "device"
    assert len(MlflowClient(tracking_uri=cfg.uri).search_runs([run.info.experiment_id])) == 1


def test_comparison_series_pairs_on_common_steps():
    series = comparison_series([0, 1, 2, 4], [1.0, 2.0, 3.0, 5.0], [0, 2, 3, 4], [1.0, 2.0, 9.0, 4.0])
    steps, base = series["baseline_loss"]
    assert steps.tolist() == [0, 2, 4] and base.tolist() == [1.0, 2.0, 4.0]
    assert series["loss_diff"][1].tolist() == [0.0, 1.0, 1.0]
    assert series["loss_diff_rel"][1].tolist() == [0.0, 0.5, 0.25]


def test_run_names_say_profile_device_and_date():
    import datetime as dt

    when = dt.datetime(2026, 11, 28, 16, 40, tzinfo=dt.timezone.utc)
    assert run_name("default", "sdaa", when) == "default · sdaa · 2026-11-28 16:40"


@pytest.mark.slow  # a real SQLite MLflow store: its first creation takes a few seconds
def test_compare_puts_the_baseline_beside_the_run_in_mlflow(project, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("CAIT_EXECUTION_ID", "nightly-42")
    params = load_params(project / "params.yaml")
    base = reference_loss(60)
    logger = RunLogger(params.tracking)
    run_id = logger.start(run_name("default", "sdaa"), params={"train.steps": "60"}, tags={"profile": "default"},
                          parent_name=run_name("default", "sdaa"))
    for step, value in enumerate(base * 1.001):
        logger.log_step({"step": step, "loss": float(value), "lr": 1e-3, "samples_per_s": 200.0})
    logger.finish()
    folder = write_run(project, base * 1.001, baseline_loss=base, run_id=run_id)
    info_path = folder / "run.json"  # the MLflow ids are in run.json, beside train.json
    info = json.loads(info_path.read_text())
    info.update(mlflow_parent_run_id=logger.parent_run_id, mlflow_experiment_id=logger.experiment_id,
                tracking_uri=logger.uri)
    info_path.write_text(json.dumps(info))

    assert cli.run(compare.main, ["-q"]) == 0
    assert cli.run(compare.main, ["-q"]) == 0  # a second comparison finds the baseline run again

    client = MlflowClient(tracking_uri=tracking_uri(params.tracking))
    child = client.get_run(run_id)
    verdict = json.loads((folder / "verdict.json").read_text())
    assert child.data.tags["verdict"] == verdict["status"]
    assert child.data.tags["verdict.rule"] == deciding_rules(verdict)
    assert child.data.tags["mlflow.note.content"].startswith(f"**Verdict: {verdict['status'].upper()}**")
    assert child.info.run_name.startswith("default · sdaa · ")
    # the informing throughput rule (210 samples/s against 400) reaches MLflow, though not verdict.json
    assert child.data.tags["rule.throughput"] == "fail" and "throughput" not in verdict["rules"]
    assert "| throughput | informs | fail | candidate 210 samples/s" in child.data.tags["mlflow.note.content"]
    assert not [k for k in child.data.metrics if k.startswith("compare.")]  # one-value numbers stay in verdict.json
    baseline_series = client.get_metric_history(run_id, "baseline_loss")
    assert sorted((m.step, m.value) for m in baseline_series) == list(enumerate(base.tolist()))
    rel = {m.step: m.value for m in client.get_metric_history(run_id, "loss_diff_rel")}
    assert rel[10] == pytest.approx(0.001, rel=1e-6)

    parent = client.get_run(logger.parent_run_id)
    assert parent.data.tags["verdict"] == verdict["status"] and "verdict.rule" in parent.data.tags
    assert parent.info.run_name == "default · sdaa · " + child.info.run_name.split(" · ")[2] + " · nightly-42"

    baseline_runs = client.search_runs([child.info.experiment_id], "tags.`cait.role` = 'baseline'")
    assert len(baseline_runs) == 1
    (baseline_run,) = baseline_runs
    assert baseline_run.info.run_name.startswith("baseline · default · cuda (NVIDIA A100-SXM4-40GB)")
    history = client.get_metric_history(baseline_run.info.run_id, "loss")
    assert np.array_equal([m.value for m in sorted(history, key=lambda m: m.step)], base)
    assert child.data.tags["cait.baseline_run_id"] == baseline_run.info.run_id
    assert environment("cuda", "x")["device"] == "cuda"

    # the runs list's verdict view: an experiment tag the UI opens by its share key; its columns are tags the
    # device's run (and, for the verdict's own, the parent) really carries
    experiment = client.get_experiment(child.info.experiment_id)
    view = json.loads(experiment.tags[VIEW_TAG_PREFIX + VIEW_KEY])
    columns = [c.removeprefix("tags.`").removesuffix("`") for c in view["selectedColumns"]]
    assert columns[:3] == ["verdict", "verdict.rule", "verdict.first_divergence_step"]
    # localize tags the run (and the parent) after compare (tests/test_localize.py)
    # (dvc.experiment only inside `dvc exp run`: tests/test_dvc_experiments.py)
    assert set(columns) - {"localize.module", "localize.op", "dvc.experiment"} <= set(child.data.tags)
    assert set(columns[:3]) <= set(parent.data.tags)
    assert view["columnOrder"][1:] == view["selectedColumns"]
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_older_experiment_gets_the_verdict_view_and_keeps_its_kind(tmp_path):
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import _execute

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("acceptance", tags={"mlflow.experimentKind": "genai_development",
                                                                 VIEW_TAG_PREFIX + VIEW_KEY: "{}"})
    _execute(client, {"op": "create_run", "experiment": "acceptance", "tags": {}, "run_name": "r", "start_time": 0,
                      "local_id": "local-1"}, {})
    tags = client.get_experiment(experiment_id).tags
    assert json.loads(tags[VIEW_TAG_PREFIX + VIEW_KEY]) == verdict_view()
    assert tags["mlflow.experimentKind"] == "genai_development"
    assert view_link("http://ui:5000", experiment_id) == \
        f"http://ui:5000/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"
    assert view_link("", experiment_id) == ""


def test_model_card_runs_go_to_their_own_experiment(project):
    from pipelines.modelcard import build_params, build_parser

    write_params(project, {"tracking": {"experiment": "acceptance-x"}})
    args = build_parser().parse_args(["--model", "cait_XXS24_224", "--data-path", "data/prepared", "--device", "cpu"])
    assert build_params(args).tracking.experiment == "cait-model-card"


def test_flat_metrics_keep_small_numbers_visible():
    from pipelines.review import HEADLINES, flat_metrics

    numbers = {"mean_abs_relative_error": 3.2123456e-6, "steps_used": 120}
    verdict = {"status": "fail", "compared_steps": 120, "first_divergence_step": None,
               "rules": {"strict": {**rule(False), "numbers": numbers},
                         "band": {**rule(True, gating=False), "numbers": {"outside_fraction": 0.0}}}}
    flat = flat_metrics(verdict)
    assert flat == {"verdict": "fail", "rule": "strict", "strict.rel": "3.212e-06"}  # no step: the column is absent
    assert float(flat["strict.rel"]) == pytest.approx(numbers["mean_abs_relative_error"], rel=1e-3)
    envelope = {"max_ratio": 1234.5678, "first_outside_step": 23, "first_outside_tolerance": 4.2e-6}
    mz = {"mean_relative_error": -0.000123456, "mean_absolute_error": 2.5e-9}
    flat = flat_metrics({"status": "fail", "first_divergence_step": 23,
                         "rules": {"envelope": {**rule(False), "numbers": envelope},
                                   "modelzoo": {**rule(True), "numbers": mz}}})
    assert flat == {"verdict": "fail", "rule": "envelope", "first_step": 23, "envelope.x_tol": "1235",
                    "modelzoo.mre": "-0.0001235", "modelzoo.mae": "2.5e-09"}
    assert set(HEADLINES) >= {"envelope", "modelzoo", "strict", "band", "trend", "throughput"}
    assert all(not isinstance(v, (dict, list, float)) for v in flat.values())  # DVC rounds floats, not text


def test_the_report_compares_params_hashes_like_with_like():
    """A multi-seed baseline's params hash leaves train.seed out; the run's hash in the report is taken the same
    way, so a run of one of its seeds shows no difference (and another learning rate does)."""
    from pipelines.baselines import Baseline, BaselineRun, curve_hash, environment_table

    params = {"model": {"name": "cait_XXS24_224"}, "train": {"seed": 0, "lr": 0.001}, "data": {}}
    prov = {"device": "cuda", "device_name": "A100", "versions": {}, "git_commit": "abc", "date": "2026-11-27",
            "data_manifest_hash": "f" * 64, "params": params, "params_hash": curve_hash(params, with_seed=False),
            "seed": 0}
    steps, loss = np.arange(3), np.array([2.0, 1.5, 1.2])
    baseline = Baseline("default", "cait_XXS24_224", steps, loss, prov,
                        runs=[BaselineRun(0, loss), BaselineRun(1, loss + 0.1)])
    run = {**params, "train": {"seed": 1, "lr": 0.001}}
    record = {"environment": environment("cpu", "x"), "params_hash": curve_hash(run), "curve_params": run,
              "data_manifest_hash": "f" * 64}
    rows = {name: (a, b) for name, a, b in environment_table(baseline, record)}
    assert rows["params hash"][0] == rows["params hash"][1]
    other = {**params, "train": {"seed": 1, "lr": 0.002}}
    rows = {name: (a, b) for name, a, b in environment_table(baseline, {**record, "curve_params": other})}
    assert rows["params hash"][0] != rows["params hash"][1]


def test_the_report_links_the_run_and_the_verdict_view_when_there_is_a_ui():
    from pipelines.report import tracking_html

    record = {"mlflow_run_id": "abc123", "mlflow_experiment_id": "7", "tracking_uri": "sqlite:///x/mlflow.db"}
    # a SQLite store: the address `make ui` serves it at (pipelines/ui.py)
    assert 'href="http://127.0.0.2:5000/#/experiments/7/runs/abc123"' in tracking_html(record)
    assert "href" not in tracking_html({**record, "tracking_uri": ""})  # not tracked
    page = tracking_html(record, ui_url="http://127.0.0.1:5000/")
    assert 'href="http://127.0.0.1:5000/#/experiments/7/runs/abc123"' in page
    assert f'href="http://127.0.0.1:5000/#/experiments/7/runs?viewStateShareKey={VIEW_KEY}"' in page
    served = tracking_html({**record, "tracking_uri": "https://mlflow.example"})  # a server is its own UI
    assert "https://mlflow.example/#/experiments/7/runs?viewStateShareKey=" in served


@pytest.mark.slow  # starts `mlflow server` (5-20 s)
def test_the_ui_command_serves_the_verdict_view_as_printed(project):
    """`make ui` (python -m pipelines.ui) on the project's store: the address it prints opens, and the view it
    names holds the verdict columns and a chart of the candidate's loss with the baseline's."""
    import re
    import signal
    import subprocess
    import sys
    import urllib.request

    from pipelines.ui import port_free

    params = load_params(project / "params.yaml")
    logger = RunLogger(params.tracking)  # an acceptance run in the project's store, as the train stage makes one
    logger.start(run_name("default", "cpu"), params={}, tags={"profile": "default"})
    logger.finish()
    port = next(p for p in range(5100, 5200) if port_free("127.0.0.2", p))
    ui = subprocess.Popen([sys.executable, "-m", "pipelines.ui", "--port", str(port)], cwd=project,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ui.stdout.readline()
        found = re.search(r"(http://127\.0\.0\.2:\d+)/#/experiments/(\d+)/runs\?viewStateShareKey=" + VIEW_KEY, line)
        assert found, line + ui.stderr.read() if ui.poll() is not None else line
        base, experiment_id = found.groups()
        page = urllib.request.urlopen(found.group(0), timeout=30).read().decode()
        assert "Invalid Host header" not in page and "<div id=\"root\"" in page
        got = json.loads(urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}",
                                                timeout=30).read())
        tags = {t["key"]: t["value"] for t in got["experiment"]["tags"]}
        view = json.loads(tags[VIEW_TAG_PREFIX + VIEW_KEY])
        assert view["selectedColumns"][:3] == ["tags.`verdict`", "tags.`verdict.rule`",
                                               "tags.`verdict.first_divergence_step`"]
        charts = [c for c in view["compareRunCharts"] if c["type"] == "LINE" and not c["deleted"]]
        assert ["loss", "baseline_loss"] in [c["selectedMetricKeys"] for c in charts]
    finally:
        ui.send_signal(signal.SIGINT)  # Ctrl-C: the UI and its server stop (the server within STOP_GRACE_S)
        try:
            out, err = ui.communicate(timeout=120)  # draining both pipes: a full one would stall the process
        except subprocess.TimeoutExpired:
            ui.kill()
            out, err = ui.communicate()
            raise AssertionError(f"the UI did not stop within 120 s of Ctrl-C: {out[-500:]} {err[-2000:]}") from None
        assert ui.returncode == 0, err[-2000:]
