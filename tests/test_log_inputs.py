"""Real log shapes read exactly (no line end after the last record, iterations numbered otherwise by one
side), and inputs no training prints refused with one line, exit 2, nothing written: losses of 1e30 or
1e300, a loss of exactly 0 at every step, numbers cut at a decimal comma, a --regex that backtracks."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from test_log_variants import STAMP, compare_main, values
from test_logs import dllogger_log, make_loss, modelzoo_loss_py

from cait.errors import BaselineError
from pipelines.logs import load_curve

N = 101  # the CaiT acceptance run: iterations 0..100


def record(step: int, value, ips: bool = True) -> str:
    return (f"{STAMP}Epoch: 0 Iteration: {step}  rank : 0  train.loss : {value!r}"
            + ("  train.ips : 243.53 imgs/s" if ips else ""))


def unterminated(loss, ips: bool) -> str:
    """A log copied out of CI: no line end after its last record, which is complete."""
    return "\n".join(record(s, v, ips) for s, v in enumerate(values(loss)))


@pytest.mark.parametrize("ips", [True, False], ids=["record-then-ips", "record-ends-in-the-loss"])
def test_a_last_record_without_line_end_is_read_as_loss_py_reads_it(project, capsys, ips):
    cuda, sdaa = make_loss(N, 21), make_loss(N, 21, 1.003)
    (project / "sdaa.log").write_text(unterminated(sdaa, ips))
    (project / "cuda.log").write_text(dllogger_log(cuda))
    assert compare_main(["--candidate", "sdaa.log", "--baseline", "cuda.log", "--gate"]) == 0
    printed = capsys.readouterr().out.splitlines()
    expected = modelzoo_loss_py((project / "sdaa.log").read_text(), (project / "cuda.log").read_text())
    assert printed[:4] == expected
    verdict = json.loads((project / "reports/logs/verdict.json").read_text())
    assert verdict["sources"]["candidate"]["points"] == N and verdict["compared_steps"] == N
    assert any(f"the last line ({N}) has no line end" in n for n in verdict["notes"])
    assert verdict["status"] == "pass" and verdict["rules"]["modelzoo"]["passed"]


def renumbered(loss, every: int) -> str:
    """A dllogger log whose iterations count `every` per step (another iteration scheme)."""
    return "".join(f"\n{STAMP}Epoch: 0 Iteration: {every * s}  rank : 0  train.loss : {v!r}  train.ips : 3.6 imgs/s"
                   for s, v in enumerate(values(loss))) + "\n"


@pytest.mark.parametrize("scale,status,code", [(1.004, "pass", 0), (1.2, "fail", 1)])
def test_step_numbers_that_differ_by_side_give_the_deciding_rule_s_verdict(project, capsys, scale, status, code):
    """Iterations 0..100 against 0, 4, ..., 400: a quarter of the step numbers match. The foreign policy's
    gating rule (modelzoo) pairs by position and has all 101: its verdict, said loudly; strict and trend
    (informing, on step numbers) are not applied, with the reason."""
    cuda = make_loss(N, 4)
    (project / "sdaa.log").write_text(dllogger_log(cuda * scale))
    (project / "cuda.log").write_text(renumbered(cuda, 4))
    assert compare_main(["--candidate", "sdaa.log", "--baseline", "cuda.log", "--gate"]) == code
    out = capsys.readouterr().out
    expected = modelzoo_loss_py((project / "sdaa.log").read_text(), (project / "cuda.log").read_text())
    assert out.splitlines()[:4] == expected
    verdict = json.loads((project / "reports/logs/verdict.json").read_text())
    assert verdict["status"] == status and verdict["compared_steps"] == N
    assert verdict["alignment"]["pairing"] == "position" and verdict["alignment"]["step_numbers_differ"]
    loud = [r for r in verdict["reasons"] if r.startswith("STEP NUMBERS DIFFER")]
    assert len(loud) == 1 and "from point 1 on (candidate 1, 2, 3, 4, ...; baseline 4, 8, 12, 16, ...)" in loud[0]
    assert "modelzoo paired the first 101 points by position" in loud[0]
    assert "strict, trend paired 26 on matching step numbers (too few: not applied)" in loud[0]
    assert "STEP NUMBERS DIFFER" in out
    for rule in ("strict", "trend"):
        assert not verdict["rules"][rule]["gating"]
        assert any(n.startswith(f"{rule} rule not applied: only 26 step(s) paired on matching step numbers")
                   for n in verdict["notes"])


def refused(project, capsys, argv, *names) -> str:
    """compare exits 2 with one line naming every one of `names`; verdict.json is left as it was."""
    verdict = project / "reports/logs/verdict.json"
    before = verdict.read_bytes() if verdict.exists() else None
    code = compare_main(argv + ["--gate"])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, captured.out, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "Warning" not in err, err
    assert all(name in err for name in names), err
    assert (verdict.read_bytes() if verdict.exists() else None) == before
    return err


def test_losses_no_float32_training_prints_are_refused_on_either_side(project, capsys):
    """A baseline of 1e30 made ModelZoo's signed rule pass (MRE -1.0); a candidate of 1e300 was judged with
    an overflow warning. Both are corrupt input: exit 2, naming the file, the line and the field."""
    cuda = make_loss(N, 6)
    (project / "cuda.log").write_text(dllogger_log(cuda))
    (project / "sdaa.log").write_text(dllogger_log(cuda * 1.004))
    assert compare_main(["--candidate", "sdaa.log", "--baseline", "cuda.log", "--gate"]) == 0  # a good verdict
    capsys.readouterr()
    (project / "huge.log").write_text(dllogger_log(np.full(N, 1e30)))
    err = refused(project, capsys, ["--candidate", "sdaa.log", "--baseline", "huge.log"], "huge.log:", "train.loss")
    assert re.search(r"huge\.log:\d+: train\.loss at step 0 is 1e\+30", err)
    (project / "huger.log").write_text(dllogger_log(np.full(N, 1e300)))
    refused(project, capsys, ["--candidate", "huger.log", "--baseline", "cuda.log"], "huger.log:", "train.loss")
    huge_csv = "".join(f"{s},{v!r}\n" for s, v in enumerate([2.3] * 59 + [1e30]))
    (project / "huge.csv").write_text("step,loss\n" + huge_csv)
    refused(project, capsys, ["--candidate", "huge.csv", "--baseline", "cuda.log"], "huge.csv", "step 59")
    # what real logs print stays readable: a diverging run's large losses, then its inf and nan (which the
    # verdict calls inconclusive)
    diverging = cuda.copy()
    diverging[-10:] = [1e3, 1e5, 1e8, 1e12, 1e16, 3e18, float("inf"), float("nan"), float("nan"), float("nan")]
    (project / "diverged.log").write_text(dllogger_log(diverging))
    read = load_curve(str(project / "diverged.log")).curve.loss
    assert read[:-4].tolist() == values(diverging[:-4]) and np.isinf(read[-4]) and np.all(np.isnan(read[-3:]))


def test_a_loss_of_exactly_zero_at_every_step_is_refused_a_single_zero_is_not(project, capsys):
    cuda = make_loss(N, 7)
    (project / "cuda.log").write_text(dllogger_log(cuda))
    (project / "zero.log").write_text(dllogger_log(np.zeros(N)))
    refused(project, capsys, ["--candidate", "zero.log", "--baseline", "cuda.log"], "zero.log", "train.loss",
            "exactly 0 at every one of its 101 steps")
    one_zero = cuda * 1.001
    one_zero[50] = 0.0  # a single 0 can be real (another metric, a masked batch): judged, not refused
    (project / "one.log").write_text(dllogger_log(one_zero))
    assert compare_main(["--candidate", "one.log", "--baseline", "cuda.log", "--gate"]) in (0, 1)
    assert json.loads((project / "reports/logs/verdict.json").read_text())["candidate_steps"] == N


def test_numbers_with_a_decimal_comma_are_refused_not_read_as_integers(project, capsys):
    """`2,302585` is read as 2 by loss.py's regex (and by any pattern stopping at a comma): on both sides, so
    a candidate 15% off passed. Refused, naming the file, line and field, in every format."""
    cuda = make_loss(N, 8)
    texts = {"dllogger": dllogger_log(cuda * 1.15),
             "epoch": "".join(f"Epoch[{s}]: train_loss {v!r} acc1 1.0 | val_loss 9.9\n"
                              for s, v in enumerate(values(cuda))),
             "step": "".join(f"step {s} loss {v!r} lr 0.001\n" for s, v in enumerate(values(cuda)))}
    for fmt, text in texts.items():
        (project / f"{fmt}.log").write_text(re.sub(r"(\d)\.(\d)", r"\1,\2", text))
    (project / "cuda.log").write_text(re.sub(r"(\d)\.(\d)", r"\1,\2", dllogger_log(cuda)))
    read_by_loss_py = re.findall(r"rank : 0  train.loss : ([\d\.e-]+)", (project / "dllogger.log").read_text())
    assert len(read_by_loss_py) == N and all(v.isdigit() for v in read_by_loss_py)  # 7, 6, ..., 1: cut at the comma
    err = refused(project, capsys, ["--candidate", "dllogger.log", "--baseline", "cuda.log"], "dllogger.log:", "comma")
    assert re.search(r"dllogger\.log:\d+: train\.loss '\d+,\d+", err)
    for fmt, field in (("epoch", "train_loss"), ("step", "loss")):
        with pytest.raises(BaselineError, match=rf"{fmt}\.log:1: {field} '\d+,\d+' is written with a comma"):
            load_curve(str(project / f"{fmt}.log"))
    # commas elsewhere (Python logging's `10:00:00,123` stamps, `step: 1, loss=...`) are no reason to refuse
    (project / "stamped.log").write_text("".join(f"2024-05-01 10:00:00,{s:03d} INFO step: {s}, loss={v!r}\n"
                                                 for s, v in enumerate(values(cuda))))
    assert load_curve(str(project / "stamped.log")).curve.loss.tolist() == values(cuda)


def test_a_regex_that_backtracks_catastrophically_is_stopped_naming_pattern_and_line(project, capsys, monkeypatch):
    import pipelines.logs as logs

    monkeypatch.setattr(logs, "REGEX_SECONDS", 0.3)
    cuda = make_loss(N, 9)
    (project / "cuda.log").write_text(dllogger_log(cuda))
    lines = [f"it={s} objective={v!r}" for s, v in enumerate(values(cuda))]
    lines[40] = "it=40 objective=" + "1" * 40 + "x"  # a damaged line on which the pattern backtracks
    (project / "user.log").write_text("\n".join(lines) + "\n")
    pattern = r"it=(?P<step>\d+) objective=(?P<loss>(\d+)+\.\d+)"
    err = refused(project, capsys, ["--candidate", "user.log", "--baseline", "cuda.log", "--candidate-format",
                                    "regex", "--regex", pattern],
                  "user.log line 41", "objective=(?P<loss>", "backtracks")
    assert "stopped after 0.3" in err
