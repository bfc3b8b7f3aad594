"""Nothing corrupt, stale or cut ever passes. Each case is made on disk and its outcome checked: the exit
status, a one-line message naming the file or field, no `pass` verdict for it, no good file replaced.

Exit statuses: 2 for an input that cannot be judged (compare writes no verdict), 3 for a verdict that
judged other files than those on disk now (the gate and the report stage refuse it).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_params
from fake_runs import reference_loss, write_run

from cait.errors import BaselineError, VerdictError
from pipelines import cli
from pipelines.baselines import (Baseline, baseline_from_json, document_checksum, environment_differences,
                                 environment_table, load_baseline)
from pipelines.stages import compare, gate, report, summary
from pipelines.verdict_file import VERDICT_SCHEMA_VERSION, read_verdict

STORED_BASELINE = Path(__file__).resolve().parents[1] / "baselines/default/baseline.json"


@pytest.fixture
def untracked(project):
    write_params(project, {"tracking": {"enabled": False}})
    return project


def run(main, argv, capsys) -> tuple[int, str]:
    """Exit status and stderr of a command through the CLI wrapper (stdout is dropped)."""
    capsys.readouterr()
    code = cli.run(main, argv)
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def passed_chain(project, capsys, steps: int = 120) -> Path:
    """A matching run, compared and reported: a good verdict.json (pass) and report.html on disk."""
    base = reference_loss(steps)
    out = write_run(project, base * (1 + 5e-7), baseline_loss=base)
    assert run(compare.main, ["-q"], capsys)[0] == 0
    assert read_verdict(out / "verdict.json").status == "pass"
    assert run(report.main, ["-q"], capsys)[0] == 0
    assert run(gate.main, [], capsys)[0] == 0
    return out


def snapshot(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in ("verdict.json", "report.html")}


def cut_curve(curve: Path, rows: int) -> None:
    lines = curve.read_text().splitlines(keepends=True)
    curve.write_text("".join(lines[:rows + 1]))  # the header and the first `rows` steps


# 1. a cut curve -------------------------------------------------------------------------------------------

def test_a_cut_curve_is_refused_by_compare_with_no_verdict(untracked, capsys):
    out = write_run(untracked, reference_loss(120), baseline_loss=reference_loss(120))
    cut_curve(out / "curve.csv", 60)
    code, err = run(compare.main, ["-q"], capsys)
    assert code == 2
    line = one_error_line(err)
    assert "curve.csv: 60 step(s)" in line and "says 120 were done" in line
    assert not (out / "verdict.json").exists()


def test_a_cut_curve_after_a_pass_keeps_the_good_files_and_the_gate_refuses_the_old_verdict(untracked, capsys):
    out = passed_chain(untracked, capsys)
    good = snapshot(out)
    cut_curve(out / "curve.csv", 60)
    assert run(compare.main, ["-q"], capsys)[0] == 2
    assert snapshot(out) == good  # nothing good replaced
    code, err = run(gate.main, [], capsys)
    assert code == 3
    line = one_error_line(err)
    assert "stale verdict" in line and "curve.csv changed since it was judged" in line


def test_a_curve_edited_in_place_is_refused_by_its_hash(untracked, capsys):
    out = write_run(untracked, reference_loss(60), baseline_loss=reference_loss(60))
    curve = out / "curve.csv"
    text = curve.read_text().splitlines()
    text[6] = "5,1.234," + text[6].split(",", 2)[2]  # step 5's loss changed, same row count
    curve.write_text("\n".join(text) + "\n")
    code, err = run(compare.main, ["-q"], capsys)
    assert code == 2
    assert "SHA-256" in one_error_line(err) and "train.json names" in err


def test_a_record_of_an_older_harness_is_refused(untracked, capsys):
    out = write_run(untracked, reference_loss(60), baseline_loss=reference_loss(60))
    record = json.loads((out / "train.json").read_text())
    del record["curve_sha256"]
    (out / "train.json").write_text(json.dumps(record))
    code, err = run(compare.main, ["-q"], capsys)
    assert code == 2 and "lacks curve_sha256" in one_error_line(err)


# 2. a killed train ----------------------------------------------------------------------------------------

def test_gate_after_a_killed_train_refuses_the_verdict_left_behind(untracked, capsys):
    out = passed_chain(untracked, capsys)
    good = snapshot(out)
    # DVC removed the train stage's outputs before running it; the run died after writing a partial curve
    (out / "train.json").unlink()
    cut_curve(out / "curve.csv", 30)
    done = subprocess.run([sys.executable, "-m", "pipelines.stages.gate"], cwd=untracked, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 3, done.stderr
    line = one_error_line(done.stderr)
    assert "stale verdict" in line and "is gone" in line and "rerun the chain (dvc repro)" in line
    assert "PASS" not in done.stdout + done.stderr
    assert snapshot(out) == good
    (out / "curve.csv").unlink()  # nothing at all left of the run
    assert run(gate.main, [], capsys)[0] == 3
    assert run(report.main, ["-q"], capsys)[0] == 3  # the report stage will not render it either


def test_a_changed_baseline_or_compare_params_make_the_verdict_stale(untracked, capsys):
    out = passed_chain(untracked, capsys)
    path = untracked / "baselines/default/baseline.json"
    original = path.read_bytes()
    data = json.loads(original)
    data["provenance"]["host"] = "another-host"
    path.write_text(json.dumps(data))
    code, err = run(gate.main, [], capsys)
    assert code == 3 and "its baseline baselines/default/baseline.json changed" in one_error_line(err)
    path.write_bytes(original)
    assert run(gate.main, [], capsys)[0] == 0
    write_params(untracked, {"compare": {"rules": {"strict": {"max_mean_abs_relative_error": 0.01}}}})
    code, err = run(gate.main, [], capsys)
    assert code == 3 and "compare params in params.yaml changed" in one_error_line(err)
    assert read_verdict(out / "verdict.json").status == "pass"  # left as it was: only the gate's answer changes


def test_a_report_of_another_verdict_is_refused(untracked, capsys):
    out = passed_chain(untracked, capsys)
    old_report = (out / "report.html").read_bytes()
    write_run(untracked, reference_loss(120) * 1.2, baseline_loss=reference_loss(120))  # a new run that fails
    assert run(compare.main, ["-q"], capsys)[0] == 0
    # the report stage did not run (or failed): report.html still shows the pass
    code, err = run(gate.main, [], capsys)
    assert code == 3 and "report shows another verdict" in one_error_line(err)
    assert (out / "report.html").read_bytes() == old_report
    assert run(report.main, ["-q"], capsys)[0] == 0
    assert run(gate.main, [], capsys)[0] == 1  # now the report shows this verdict: fail


def test_gate_without_a_report_still_decides(untracked, capsys):
    base = reference_loss(60)
    write_run(untracked, base, baseline_loss=base)
    assert run(compare.main, ["-q"], capsys)[0] == 0
    capsys.readouterr()
    assert cli.run(gate.main, []) == 0
    assert "no report rendered yet" in capsys.readouterr().out


def test_a_verdict_of_foreign_logs_names_both_files_and_the_gate_checks_them(untracked, capsys):
    base = reference_loss(60)
    for name, loss in (("sdaa.json", base * 1.0001), ("cuda.json", base)):
        (untracked / name).write_text(json.dumps({"steps": list(range(60)), "loss": loss.tolist()}))
    assert run(compare.main, ["-q", "--candidate", "sdaa.json", "--baseline", "cuda.json"], capsys)[0] == 0
    verdict = read_verdict(untracked / "reports/logs/verdict.json")
    assert set(verdict.inputs) == {"candidate", "baseline"} and verdict.inputs["candidate"]["path"] == "sdaa.json"
    assert run(gate.main, ["--verdict", "reports/logs/verdict.json"], capsys)[0] == 0
    (untracked / "sdaa.json").write_text(json.dumps({"steps": list(range(60)), "loss": (base * 1.5).tolist()}))
    code, err = run(gate.main, ["--verdict", "reports/logs/verdict.json"], capsys)
    assert code == 3 and "its candidate sdaa.json changed" in one_error_line(err)
    assert "rerun the compare command" in err


# 3. a baseline that contradicts itself ---------------------------------------------------------------------

def stored() -> dict:
    return json.loads(STORED_BASELINE.read_text())


@pytest.mark.parametrize("edit,field", [
    (lambda d: d["loss"].__setitem__(17, -0.3), r"loss\[17\] is -0.3, below 0"),
    (lambda d: d["runs"][2]["loss"].__setitem__(5, -1e-9), r"runs\[2\].loss\[5\] is -1e-09, below 0"),
    (lambda d: d["loss"].__setitem__(17, d["loss"][17] * 1.01), r"loss\[17\] is .* but the reference run \(runs\[0\]"),
    (lambda d: d["stats"]["mean"].__setitem__(9, d["stats"]["mean"][9] + 1e-12), r"stats.mean\[9\] is .* but the runs"),
    (lambda d: d["stats"]["std"].__setitem__(0, 0.0), r"stats.std\[0\] is 0.0 but the runs"),
    (lambda d: d["stats"].__setitem__("runs", 2), r"stats.runs is 2 but there are 3 runs"),
    (lambda d: d["provenance"].__setitem__("seed", 7), r"provenance.seed 7 names none of the runs"),
    (lambda d: d["runs"][1].__setitem__("seed", 4), r"runs have seeds \[0, 4, 2\] but provenance.seeds"),
    (lambda d: d["steps"].__setitem__(119, 130), r"steps\[119\] is 130, expected 119"),
])
def test_a_baseline_that_contradicts_itself_is_refused_naming_the_field(tmp_path, edit, field):
    data = stored()
    edit(data)
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match=field) as info:
        load_baseline(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_the_stored_baseline_is_consistent_and_negative_losses_pass_only_when_allowed(tmp_path):
    assert load_baseline(STORED_BASELINE).kind == "multi-run"
    single = stored()
    single.pop("runs"), single.pop("stats"), single.pop("envelope", None)  # a plain single-run baseline
    single["kind"] = "single-run"
    single["loss"][3] = -0.25
    single["checksum"] = document_checksum(single)  # as a baseline recorded with that loss would be signed
    with pytest.raises(BaselineError, match=r"loss\[3\] is -0.25"):
        baseline_from_json(copy.deepcopy(single), "b.json")
    assert baseline_from_json(single, "b.json", allow_negative_loss=True).loss[3] == -0.25


def test_compare_refuses_a_baseline_with_a_negative_loss_and_leaves_the_verdict(untracked, capsys):
    out = passed_chain(untracked, capsys)
    good = snapshot(out)
    path = untracked / "baselines/default/baseline.json"
    data = json.loads(path.read_text())
    data["loss"][17] = -0.3
    path.write_text(json.dumps(data))
    code, err = run(compare.main, ["-q"], capsys)
    assert code == 2 and r"loss[17] is -0.3" in one_error_line(err)
    assert snapshot(out) == good
    assert run(gate.main, [], capsys)[0] == 3  # the pass judged the baseline before the edit


# 4. a negative loss in a candidate -------------------------------------------------------------------------

def test_a_negative_candidate_loss_is_refused_unless_allowed(untracked, capsys):
    base = reference_loss(60)
    candidate = base.copy()
    candidate[17] = -0.3
    out = write_run(untracked, candidate, baseline_loss=base)
    code, err = run(compare.main, ["-q"], capsys)
    assert code == 2
    line = one_error_line(err)
    assert "reports/default/curve.csv: loss at step 17 is -0.3" in line and "compare.allow_negative_loss" in line
    assert not (out / "verdict.json").exists()
    (untracked / "c.csv").write_bytes((out / "curve.csv").read_bytes())  # the same curve as a foreign CSV
    (untracked / "b.json").write_text(json.dumps({"steps": list(range(60)), "loss": base.tolist()}))
    code, err = run(compare.main, ["-q", "--candidate", "c.csv", "--baseline", "b.json"], capsys)
    assert code == 2 and "c.csv: loss at step 17 is -0.3" in one_error_line(err)
    write_params(untracked, {"compare": {"allow_negative_loss": True}})
    assert run(compare.main, ["-q"], capsys)[0] == 0  # judged: one step off by 1.8 fails the strict rule
    assert read_verdict(out / "verdict.json").status == "fail"


# the verdict file --------------------------------------------------------------------------------------------

def test_every_reader_refuses_an_old_or_malformed_verdict_naming_the_file(untracked, capsys):
    out = passed_chain(untracked, capsys)
    path = out / "verdict.json"
    good = json.loads(path.read_text())
    assert good["schema_version"] == VERDICT_SCHEMA_VERSION
    cases = [({k: v for k, v in good.items() if k != "schema_version"}, "written by an older harness"),
             ({**good, "schema_version": VERDICT_SCHEMA_VERSION + 1}, "newer than this harness"),
             ({**good, "status": "passed"}, "status 'passed' is none of"),
             ({k: v for k, v in good.items() if k != "inputs"}, "field 'inputs' missing"),
             ({**good, "rules": {"strict": {**good["rules"]["strict"], "passed": "yes"}}}, "rules.strict.passed")]
    for data, message in cases:
        path.write_text(json.dumps(data))
        for main, argv in ((gate.main, []), (report.main, ["-q"]), (summary.main, [str(out)])):
            code, err = run(main, argv, capsys)
            line = one_error_line(err)
            assert code == 2 and "reports/default/verdict.json: " in line and message in line, (main, line)
    with pytest.raises(VerdictError, match="no verdict"):
        read_verdict(out / "none.json")


def failed_chain(project, capsys) -> Path:
    """A run that fails (10% above the baseline), compared and reported: a FAIL verdict.json and report.html."""
    base = reference_loss(60)
    out = write_run(project, base * 1.10, baseline_loss=base)
    assert run(compare.main, ["-q"], capsys)[0] == 0
    assert run(report.main, ["-q"], capsys)[0] == 0
    assert run(gate.main, [], capsys)[0] == 1
    return out


def test_a_fail_edited_to_pass_is_refused_by_its_own_rules(untracked, capsys):
    """issue 31: "status": "pass" written over a FAIL (report.html deleted) gated 0."""
    out = failed_chain(untracked, capsys)
    (out / "report.html").unlink()
    good = json.loads((out / "verdict.json").read_text())
    assert good["status"] == "fail" and not good["rules"]["envelope"]["passed"]
    edits = [({**good, "status": "pass"}, "status 'pass' but its gating rule envelope failed"),
             ({**good, "status": "pass", "gate": ["modelzoo"]}, "status 'pass' but 'gate' names modelzoo"),
             ({**good, "status": "pass", "rules": {k: v for k, v in good["rules"].items() if k != "envelope"}},
              "status 'pass' but the gating rule envelope has no result")]
    for data, message in edits:
        (out / "verdict.json").write_text(json.dumps(data))
        for main, argv in ((gate.main, []), (summary.main, [str(out)])):
            code, err = run(main, argv, capsys)
            line = one_error_line(err)
            assert code == 2 and "reports/default/verdict.json: malformed verdict (" + message in line, line
    passed = passed_chain(untracked, capsys)
    data = json.loads((passed / "verdict.json").read_text())
    (passed / "verdict.json").write_text(json.dumps({**data, "status": "fail"}))
    code, err = run(gate.main, [], capsys)
    assert code == 2 and "status 'fail' but no gating rule failed" in one_error_line(err)


def test_a_verdict_that_names_no_hashes_is_not_a_verdict(untracked, capsys):
    """issue 31: the inputs' SHA-256 set to null, then curve.csv and train.json cut, gated 0 with only a note."""
    out = passed_chain(untracked, capsys)
    good = json.loads((out / "verdict.json").read_text())
    nulled = {**good, "inputs": {role: {**entry, "sha256": None} for role, entry in good["inputs"].items()}}
    (out / "verdict.json").write_text(json.dumps(nulled))
    cut_curve(out / "curve.csv", 30)
    (out / "train.json").write_text("{}")
    for main, argv in ((gate.main, []), (report.main, ["-q"])):
        code, err = run(main, argv, capsys)
        line = one_error_line(err)
        assert code == 3 and "names no SHA-256 of any input" in line, line
    # one hash taken away (the curve's, a file): as stale as a changed one
    one = {**good, "inputs": {**good["inputs"], "candidate": {**good["inputs"]["candidate"], "sha256": None}}}
    (out / "verdict.json").write_text(json.dumps(one))
    code, err = run(gate.main, [], capsys)
    assert code == 3 and "names no SHA-256 for its candidate reports/default/curve.csv" in one_error_line(err)
    # and a chain verdict relabelled as one of logs (no record) still names a file without its hash
    relabelled = {**one, "inputs": {k: v for k, v in one["inputs"].items() if k != "record"}}
    (out / "verdict.json").write_text(json.dumps(relabelled))
    code, err = run(gate.main, [], capsys)
    assert code == 3 and "names no SHA-256 for its candidate" in one_error_line(err)


def test_the_summary_reads_verdicts_without_numpy(untracked):
    """The nightly summary job runs on the system Python: the verdict reader imports no third-party package."""
    code = ("import sys; [sys.modules.__setitem__(m, None) for m in ('numpy', 'pydantic', 'yaml', 'scipy')]; "
            "import pipelines.stages.summary, pipelines.verdict_file")
    done = subprocess.run([sys.executable, "-c", code], cwd=untracked, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# the CPU model --------------------------------------------------------------------------------------------

def test_the_cpu_model_is_in_the_provenance_and_the_environment_diff():
    from fake_runs import environment

    from pipelines.baselines import baseline_from_run
    from pipelines.curves import Curve
    from pipelines.params import Params

    params = Params.model_validate({})
    record = {"environment": {**environment("cpu", "Intel(R) Xeon(R) Processor"), "cpu": "Intel(R) Xeon(R) Processor"},
              "params_hash": params.curve_hash(), "curve_params": params.curve_defining(),
              "data_manifest_hash": "d" * 64}
    baseline = baseline_from_run(Curve(np.arange(5), np.ones(5)), record, "default", "test")
    assert baseline.provenance["cpu_model"] == "Intel(R) Xeon(R) Processor"
    here = {**record, "environment": {**record["environment"], "cpu": "AMD EPYC", "device_name": "AMD EPYC"}}
    assert ("cpu model", "Intel(R) Xeon(R) Processor", "AMD EPYC") in environment_table(baseline, here)
    assert "cpu model differs: baseline Intel(R) Xeon(R) Processor, candidate AMD EPYC" in \
        environment_differences(baseline, here)
    older = Baseline(baseline.profile, baseline.model, baseline.steps, baseline.loss,
                     {k: v for k, v in baseline.provenance.items() if k != "cpu_model"})
    assert ("cpu model", "", "AMD EPYC") in environment_table(older, here)  # an older baseline still reads
    assert not any(d.startswith("cpu model") for d in environment_differences(older, here))
