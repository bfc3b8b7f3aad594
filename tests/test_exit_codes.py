"""The documented exit statuses (pipelines/cli.py): 0 pass, 1 fail, 2 usage or input error,
3 inconclusive, 4 infrastructure error. CI decides on these numbers alone, so each is checked
through the real entry points, and the commands' own `python -m` processes for the end of the chain.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_params
from fake_runs import reference_loss, write_run

from cait.errors import DeviceError, TrackingError
from pipelines import cli
from pipelines.stages import compare, gate, summary


def python_m(module: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def untracked(project):
    write_params(project, {"tracking": {"enabled": False}})
    return project


def judged(project, candidate, baseline, **run) -> int:
    """Write a run, compare it, and return the gate's exit status."""
    write_run(project, candidate, baseline_loss=baseline, **run)
    assert cli.run(compare.main, ["-q"]) == 0  # compare always succeeds once a verdict is written
    return cli.run(gate.main, [])


def test_gate_pass_fail_inconclusive(untracked):
    base = reference_loss(60)
    assert judged(untracked, base, base) == 0
    assert judged(untracked, base * 1.10, base) == 1
    broken = base.copy()
    broken[40] = np.nan
    assert judged(untracked, broken, base) == 3
    assert judged(untracked, base[:20], base) == 3  # fewer steps than compare.min_steps


def test_gate_as_a_process(untracked):
    base = reference_loss(60)
    write_run(untracked, base * 1.10, baseline_loss=base)
    assert python_m("pipelines.stages.compare", "-q").returncode == 0
    done = python_m("pipelines.stages.gate")
    assert done.returncode == 1
    assert "gate: FAIL" in done.stderr


def test_usage_and_input_errors_are_2(untracked, capsys):
    assert cli.run(gate.main, []) == 2  # no verdict yet
    (untracked / "reports" / "default").mkdir(parents=True, exist_ok=True)
    (untracked / "reports" / "default" / "verdict.json").write_text("{not json")
    assert cli.run(gate.main, []) == 2
    assert "malformed verdict" in capsys.readouterr().err
    assert cli.run(gate.main, ["--no-such-flag"]) == 2
    assert cli.run(gate.main, ["--help"]) == 0
    write_params(untracked, {"train": {"steps": -1}})
    assert cli.run(gate.main, []) == 2
    assert "train.steps" in capsys.readouterr().err


def test_infrastructure_errors_are_4(capsys):
    def device_missing(argv):
        raise DeviceError("device sdaa:0: torch_sdaa is not installed")

    def tracking_spool_unwritable(argv):
        raise TrackingError("MLflow records could not be spooled")

    def crash(argv):  # a device runtime error or a bug: never exit 1, which means "fail"
        raise RuntimeError("device lost")

    assert cli.run(device_missing) == 4
    assert cli.run(tracking_spool_unwritable) == 4
    assert cli.run(crash) == 4
    err = capsys.readouterr().err
    assert "Traceback" in err and "unexpected RuntimeError: device lost" in err


def test_unavailable_device_is_4_from_the_train_stage(untracked):
    write_params(untracked, {"device": {"type": "sdaa"}})
    done = python_m("pipelines.stages.train", "-q")
    assert done.returncode == 4, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")


def test_summary_gives_the_worst_status_of_the_night(untracked, tmp_path, capsys):
    base = reference_loss(60)
    night = tmp_path / "night"
    for name, candidate, device, device_name in (("a", base, "sdaa", "Tecorigin T100"),
                                                 ("b", base * (1 + 5e-7), "cuda", "NVIDIA H100")):
        out = write_run(untracked, candidate, baseline_loss=base, device=device, device_name=device_name)
        assert cli.run(compare.main, ["-q"]) == 0
        (night / name).mkdir(parents=True)
        for f in ("verdict.json", "train.json"):
            (night / name / f).write_bytes((out / f).read_bytes())
    capsys.readouterr()
    assert cli.run(summary.main, [str(night)]) == 0
    table = capsys.readouterr().out
    rows = table.splitlines()[2:]
    assert len(rows) == 2 and all("  pass  " in row for row in rows), table
    assert "sdaa" in table and "cuda" in table

    verdict = json.loads((night / "b" / "verdict.json").read_text())
    (night / "b" / "verdict.json").write_text(json.dumps({**verdict, "status": "inconclusive"}))
    assert cli.run(summary.main, [str(night)]) == 3
    write_run(untracked, base * 1.10, baseline_loss=base)  # a failing run on device a
    assert cli.run(compare.main, ["-q"]) == 0
    (night / "a" / "verdict.json").write_bytes((untracked / "reports/default/verdict.json").read_bytes())
    assert cli.run(summary.main, [str(night), "--format", "markdown"]) == 1
    assert "❌ fail" in capsys.readouterr().out
    assert cli.run(summary.main, [str(tmp_path / "empty-night")]) == 2
    (tmp_path / "empty").mkdir()
    assert cli.run(summary.main, [str(tmp_path / "empty")]) == 2
