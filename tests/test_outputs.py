"""Nothing corrupt, stale or cut passes, and no good output is replaced by a worse one (issue 11).

Each case makes the failure for real where that is cheap (a truncated or overwritten shard, a corrupt
mlflow.db, a file where a folder should be) and by monkeypatching where it is not (a full disk), then
checks the outcome: the exit status, one line naming the file and the fix, the earlier good file intact,
no temporary file left behind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_params
from fake_runs import reference_loss, write_run

import cait.files
from cait.errors import OutputError
from cait.files import atomic_output, atomic_write_text, check_writable
from pipelines import cli
from pipelines.stages import compare, prepare, report, train

GOOD_CURVE = b"step,loss,lr,samples_per_s,elapsed_s,batch_hash\n0,2.3,0.001,10.0,0.1,ab\n"


def leftovers(folder: Path) -> list[Path]:
    """Temporary files cait.files would leave (it must leave none)."""
    return [p for p in folder.rglob("*") if cait.files.TMP_MARK in p.name]


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def python_m(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300)


def fail_writes_of(monkeypatch, name: str, code: int = errno.ENOSPC) -> None:
    """Make writing the file called `name` fail as a full disk does: half of it written, then ENOSPC."""
    real = cait.files._fsync_file

    def fsync(path: Path) -> None:
        if path.name.startswith(Path(name).stem + ".") and path.suffix == Path(name).suffix:
            data = path.read_bytes()
            path.write_bytes(data[:len(data) // 2])
            raise OSError(code, os.strerror(code))
        real(path)

    monkeypatch.setattr(cait.files, "_fsync_file", fsync)


# -- the helper --------------------------------------------------------------------------------

def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "out" / "report.html"
    atomic_write_text(target, "<p>good</p>")
    assert target.read_text() == "<p>good</p>"
    fail_writes_of(monkeypatch, "report.html")
    with pytest.raises(OutputError) as err:
        atomic_write_text(target, "<p>new and longer</p>" * 100)
    assert target.read_text() == "<p>good</p>"
    assert leftovers(tmp_path) == []
    message = str(err.value)
    assert message == (f"{target}: cannot write: No space left on device (errno 28); free disk space and rerun")
    assert err.value.exit_code == 4


def test_atomic_output_keeps_the_suffix_and_cleans_up_on_any_error(tmp_path):
    target = tmp_path / "pixels.npy"
    with atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npy"  # np.save and savefig choose by suffix
        np.save(tmp, np.arange(3))
    assert np.load(target).tolist() == [0, 1, 2]
    with pytest.raises(ZeroDivisionError), atomic_output(target) as tmp:
        np.save(tmp, np.arange(5))
        1 / 0
    assert np.load(target).tolist() == [0, 1, 2]
    assert leftovers(tmp_path) == []


def test_a_file_where_the_folder_should_be_names_it(tmp_path, monkeypatch):
    (tmp_path / "reports").write_text("not a folder")
    with pytest.raises(OutputError, match=r"reports/default: cannot write: .*a file stands where a folder"):
        check_writable(tmp_path / "reports" / "default")
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: (_ for _ in ()).throw(PermissionError(
        errno.EACCES, "Permission denied", str(self))))
    with pytest.raises(OutputError, match=r"cannot write: Permission denied \(errno 13\); make .* writable"):
        check_writable(tmp_path / "elsewhere")


# -- case 7: disk full during report -------------------------------------------------------------

@pytest.fixture
def judged_run(project):
    """A compared run (tracking off): curve, record, baseline and verdict on disk, report written once."""
    write_params(project, {"tracking": {"enabled": False}})
    base = reference_loss(60)
    write_run(project, base, baseline_loss=base)
    assert cli.run(compare.main, ["-q"]) == 0
    assert cli.run(report.main, ["-q"]) == 0
    return project / "reports" / "default"


def test_disk_full_during_report_keeps_the_previous_report(judged_run, monkeypatch, capsys):
    before = (judged_run / "report.html").read_bytes()
    (judged_run / "verdict.json").write_text(json.dumps({**json.loads((judged_run / "verdict.json").read_text()),
                                                         "reasons": ["a new verdict the page would show"]}))
    capsys.readouterr()
    fail_writes_of(monkeypatch, "report.html")
    assert cli.run(report.main, ["-q"]) == 4
    line = one_error_line(capsys.readouterr().err)
    assert f"{Path('reports/default/report.html')}: cannot write: No space left on device (errno 28)" in line
    assert (judged_run / "report.html").read_bytes() == before  # not a truncated page
    assert leftovers(judged_run) == []


def test_unwritable_reports_folder_stops_report_before_it_writes(project, capsys):
    write_params(project, {"tracking": {"enabled": False}})
    shutil.rmtree(project / "reports" / "default")
    (project / "reports" / "default").write_text("a file where the run folder should be")
    assert cli.run(report.main, ["-q"]) == 4
    assert "reports/default: cannot write" in one_error_line(capsys.readouterr().err)
    assert cli.run(train.main, ["-q"]) == 4  # train stops before it loads data or builds the model
    assert "reports/default: cannot write" in one_error_line(capsys.readouterr().err)


# -- corrupt tracking store ---------------------------------------------------------------------

def test_corrupt_mlflow_db_stops_compare_before_the_verdict(project, capsys):
    base = reference_loss(60)
    out = write_run(project, base, baseline_loss=base)
    (project / "mlflow.db").write_bytes(b"\x00garbage, not a database\n" * 100)
    assert cli.run(compare.main, ["-q"]) == 4
    line = one_error_line(capsys.readouterr().err)
    assert f"{project / 'mlflow.db'}: not an SQLite database" in line and "mv " in line
    assert not (out / "verdict.json").exists()  # nothing half-finished: no verdict without its MLflow record
    assert cli.run(report.main, ["-q"]) == 2  # and so nothing to report from


# -- cases 5 and 6: a truncated or overwritten shard ---------------------------------------------

@pytest.fixture
def prepared(tiny_project):
    """The tiny profile prepared (shards built), tracking off, and a good curve.csv from an earlier run."""
    write_params(tiny_project, {"tracking": {"enabled": False}})
    assert cli.run(prepare.main, ["-q"]) == 0
    run = tiny_project / "reports" / "default"
    run.mkdir(parents=True, exist_ok=True)
    (run / "curve.csv").write_bytes(GOOD_CURVE)
    return tiny_project


def check_train_refuses(project: Path, *words: str) -> None:
    done = python_m("pipelines.stages.train", "-q")
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    for word in (str(Path("data/prepared/shards/train.npy")), "dvc repro prepare -f", *words):
        assert word in line, line
    run = project / "reports" / "default"
    assert (run / "curve.csv").read_bytes() == GOOD_CURVE  # not replaced by a header-only curve
    assert not (run / "curve.partial.csv").exists()
    assert not (run / "train.json").exists()  # no record claiming a pixel hash that was not read
    assert cli.run(compare.main, ["-q"]) == 2  # so no verdict can be made from this run
    assert not (run / "verdict.json").exists()


def test_truncated_shard_is_a_data_error_and_keeps_the_curve(prepared):
    shard = prepared / "data" / "prepared" / "shards" / "train.npy"
    os.truncate(shard, shard.stat().st_size - 1000)
    check_train_refuses(prepared, "truncated")


def test_overwritten_shard_bytes_are_caught_before_training(prepared):
    shard = prepared / "data" / "prepared" / "shards" / "train.npy"
    with open(shard, "r+b") as f:
        f.seek(shard.stat().st_size // 2)
        f.write(b"\xff" * 64)
    check_train_refuses(prepared, "pixels changed since prepare wrote them")


def test_prepare_with_steps_null_pins_every_train_image(tiny_project):
    write_params(tiny_project, {"train": {"steps": None}})
    assert cli.run(prepare.main, ["-q"]) == 0
    manifest = json.loads((tiny_project / "data" / "prepared" / "manifest.json").read_text())
    assert manifest["counts"]["train"] == 4 * 16  # all of them: an epochs-long run reads every image


@pytest.mark.slow
def test_the_chain_runs_end_to_end_with_steps_null(tiny_project):
    """train.steps: null (an epochs-long run) is resolved in one place (TrainConfig.total_steps) and the whole
    chain follows it: prepare pins every image, train runs epochs x (images // batch) steps, compare judges."""
    from conftest import stage_env

    write_params(tiny_project, {"train": {"steps": None, "epochs": 1}, "tracking": {"enabled": False}})
    done = subprocess.run(["dvc", "repro", "report"], cwd=tiny_project, env=stage_env(tiny_project),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = tiny_project / "reports" / "default"
    record = json.loads((out / "train.json").read_text())
    assert record["steps_done"] == (4 * 16) // 8  # one epoch of 64 images in batches of 8
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["status"] == "inconclusive"  # the stored baseline is for the default profile's params: refused
    assert any("other params" in reason and "train.steps" in reason for reason in verdict["reasons"])
    assert (out / "report.html").is_file()


def test_prepare_into_an_unwritable_data_folder_is_one_line(tiny_project, capsys):
    shutil.rmtree(tiny_project / "data")
    (tiny_project / "data").write_text("a file where the data folder should be")
    assert cli.run(prepare.main, ["-q"]) == 4
    assert one_error_line(capsys.readouterr().err).startswith("error: data: cannot write")


def test_any_other_oserror_on_a_named_file_is_one_line_exit_4(capsys):
    def reads_a_vanished_file(argv):
        raise OSError(errno.EIO, "Input/output error", "data/prepared/shards/train.npy")

    assert cli.run(reads_a_vanished_file) == 4
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: data/prepared/shards/train.npy: Input/output error (errno 5)")
