"""DVC outputs hold only what the same curve always gives; what differs between runs is beside them.

Two runs that train the same curve differ in their MLflow ids, date, wall time, throughput, git commit and
host: those go to run.json and timing.csv (git-ignored, no DVC outputs), so the outputs DVC hashes into
dvc.lock (curve.csv, train.json, verdict.json, metrics.json, overlay.png, junit.xml, plots.csv) come out
byte for byte the same, and a fresh clone's `dvc repro` leaves dvc.lock as committed. Readers join
run.json back and do without it (a note, throughput not judged), never crash.
"""

from __future__ import annotations

import csv
import json

from fake_runs import reference_loss, write_run
from pipelines import cli
from pipelines.provenance import RUN_INFO_FIELDS, read_run, split_record
from pipelines.stages import compare, gate, report, summary

DVC_OUTPUTS = ("curve.csv", "train.json", "verdict.json", "metrics.json", "overlay.png", "junit.xml", "plots.csv")


def chain(capsys) -> str:
    """compare, report and gate over the run on disk; returns what they printed."""
    capsys.readouterr()
    assert cli.run(compare.main, ["-q"]) == 0
    assert cli.run(report.main, ["-q"]) == 0
    assert cli.run(gate.main, ["-q"]) == 0
    return capsys.readouterr().out


def outputs(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in DVC_OUTPUTS}


def test_train_json_holds_no_volatile_field_and_read_run_joins_run_json(project):
    base = reference_loss(60)
    out = write_run(project, base * (1 + 5e-7), baseline_loss=base, run_id="abc123", samples_per_s=321.0)
    record = json.loads((out / "train.json").read_text())
    info = json.loads((out / "run.json").read_text())
    assert not set(RUN_INFO_FIELDS) & set(record) and not {"host", "platform"} & set(record["environment"])
    assert info["mlflow_run_id"] == "abc123" and info["mean_samples_per_s"] == 321.0
    assert info["environment"] == {"host": "sdaa-runner", "platform": "Linux"}
    assert info["curve_sha256"] == record["curve_sha256"]
    with open(out / "timing.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "samples_per_s", "elapsed_s"] and len(rows) == 60
    assert float(rows[3]["samples_per_s"]) == 321.0
    assert "samples_per_s" not in (out / "curve.csv").read_text().splitlines()[0]

    _, joined = read_run(out / "curve.csv", out / "train.json")
    assert joined["mlflow_run_id"] == "abc123" and joined["environment"]["host"] == "sdaa-runner"
    assert joined["run_info_note"] == ""
    again, _ = split_record({k: v for k, v in joined.items() if k != "run_info_note"})
    assert again == record  # split and join are inverse


def test_two_runs_of_the_same_curve_give_the_same_dvc_outputs(project, capsys):
    """Other MLflow ids, throughput (even one the throughput rule flags), date, host: every DVC output is
    byte for byte the same; report.html, no DVC output, shows the difference."""
    base = reference_loss(60)
    out = write_run(project, base * (1 + 5e-7), baseline_loss=base, run_id="first", samples_per_s=390.0)
    chain(capsys)
    first, first_html = outputs(out), (out / "report.html").read_text()
    assert "within [0.8, 100]" in first_html and "first" in first_html

    write_run(project, base * (1 + 5e-7), run_id="second", samples_per_s=100.0)  # 0.25x the baseline's 400
    info = json.loads((out / "run.json").read_text())
    info["environment"]["host"] = "another-runner"
    (out / "run.json").write_text(json.dumps(info))
    printed = chain(capsys)
    assert outputs(out) == first
    verdict = json.loads((out / "verdict.json").read_text())
    assert "throughput" not in verdict["rules"] and "mlflow_run_id" not in verdict
    html = (out / "report.html").read_text()
    assert html != first_html and "second" in html and "another-runner" in html
    assert "flagged (informs): outside [0.8, 100]" in html and "informative rule throughput fails" in html
    assert "informative rule throughput fails: candidate 100 samples/s" in printed


def test_a_missing_or_foreign_run_json_is_a_note_not_a_crash(project, capsys):
    base = reference_loss(60)
    out = write_run(project, base * (1 + 5e-7), baseline_loss=base, run_id="r1")
    chain(capsys)
    judged = outputs(out)
    assert cli.run(summary.main, [str(out), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["samples/s"] == "210.0"  # from run.json

    (out / "run.json").unlink()  # an older run folder, or deleted
    printed = chain(capsys)
    assert "run.json: not found" in printed and "throughput and MLflow run are unknown" in printed
    assert outputs(out) == judged  # what was judged does not depend on it
    html = (out / "report.html").read_text()
    assert "MLflow run unknown" in html and "throughput rule not applied: no throughput" in html
    capsys.readouterr()
    assert cli.run(summary.main, [str(out), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["samples/s"] == "-"  # unknown, not a crash

    (out / "run.json").write_text(json.dumps({"mlflow_run_id": "other", "curve_sha256": "0" * 64,
                                              "mean_samples_per_s": 1.0}))
    _, record = read_run(out / "curve.csv", out / "train.json")
    assert "belongs to another curve" in record["run_info_note"] and "mlflow_run_id" not in record
    (out / "run.json").write_text("{not json")
    _, record = read_run(out / "curve.csv", out / "train.json")
    assert "not valid JSON" in record["run_info_note"]


def test_a_record_of_an_older_harness_keeps_its_own_volatile_fields(project, capsys):
    """train.json written before run.json existed held the MLflow ids and throughput itself: still read."""
    base = reference_loss(60)
    out = write_run(project, base * (1 + 5e-7), baseline_loss=base, run_id="old-run", samples_per_s=50.0)
    record = json.loads((out / "train.json").read_text())
    info = json.loads((out / "run.json").read_text())
    record.update({k: v for k, v in info.items() if k in RUN_INFO_FIELDS})
    (out / "train.json").write_text(json.dumps(record))
    (out / "run.json").unlink()
    _, joined = read_run(out / "curve.csv", out / "train.json")
    assert joined["mlflow_run_id"] == "old-run" and joined["run_info_note"] == ""
    printed = chain(capsys)
    assert "informative rule throughput fails: candidate 50 samples/s" in printed
