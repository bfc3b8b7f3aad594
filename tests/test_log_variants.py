"""The logs real ports write, each variant written here as a fixture: every value is read, numbered and
judged as ModelZoo's loss.py arithmetic says (an independent re-implementation, tests/test_logs.py), and where
loss.py's own regex can read the file, its printout is ours to the last digit."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re

import numpy as np
import pytest
from test_logs import dllogger_log, make_loss, modelzoo_loss_py, modelzoo_printout

from cait.errors import BaselineError, ConfigError
from pipelines import cli
from pipelines.logs import load_curve

N = 60  # points per log: above compare.min_steps (50)
STAMP = "TCAPPDLL 2025-05-18 07:03:37.648152 - "


def values(loss) -> list[float]:
    return [float(v) for v in loss]


def dllogger_records(loss, spacing: str, ranks=(0,)) -> str:
    """dllogger records with another spacing between their fields."""
    lines = []
    for step, value in enumerate(values(loss)):
        for rank in ranks:
            v = value + 0.01 * rank
            lines.append({
                "compact": f"{STAMP}Epoch: 0 Iteration: {step} rank: {rank} train.loss: {v!r} train.ips: 3.6 imgs/s",
                "mixed": f"{STAMP}Epoch: 0 Iteration: {step}  rank: {rank}  train.loss : {v!r}  train.ips : 3.6",
                "tabs": f"{STAMP}Epoch:\t0\tIteration:\t{step}\trank :\t{rank}\ttrain.loss :\t{v!r}\ttrain.ips : 3.6",
                "no-prefix": f"rank: {rank} train.loss: {v!r}",
            }[spacing])
    return "\n".join(lines) + "\n"


def rank_of(line: str) -> int:
    found = re.search(r"rank : (\d+)", line)
    return int(found[1]) if found else 0


def variant(kind: str, loss) -> str:
    """The text of one log variant holding `loss` (rank 0) and, where it says so, other ranks' lines."""
    standard = dllogger_log(loss, ranks=(0, 1))
    if kind in ("compact", "mixed", "tabs", "no-prefix"):
        return dllogger_records(loss, kind, ranks=(0, 1))
    if kind == "torchrun":
        return "".join(f"[rank{rank_of(line)}]:{line}\n" for line in standard.splitlines() if line)
    if kind == "ansi-lines":
        return "".join(f"\x1b[32m{line}\x1b[0m\n" for line in standard.splitlines())
    if kind == "ansi-values":
        return re.sub(r"(train\.loss : )(\S+)", "\\1\x1b[1;31m\\2\x1b[0m", standard)
    if kind == "crlf":
        return standard.replace("\n", "\r\n")
    if kind == "preamble":
        return ("[INFO] 2024-05-01 10:00:00 starting run\n[2024-05-01 10:00:01] world size 2\n"
                "{'model': 'cait_S24_224'}\n" + standard)
    if kind == "timm":
        return "".join(f"Train: {s // 30} [{s % 30:>4d}/30 ({100 * (s % 30 + 1) / 30:>3.0f}%)]  Loss: {v!r} "
                       f"({v + 0.1:#.4g})  Time: 0.512s,  125.00/s  LR: 1.000e-03  Data: 0.011 (0.020)\n"
                       for s, v in enumerate(values(loss)))
    if kind == "mmengine":
        return "".join(f"2024/05/01 10:00:00 - mmengine - INFO - Epoch(train)  [{s // 30 + 1}][{s % 30 + 1:>2d}/30]  "
                       f"base_lr: 1.0000e-03 lr: 1.0000e-03  eta: 0:10:00  time: 0.5120  data_time: 0.0110  "
                       f"memory: 9000  loss: {v!r}  loss_cls: {v!r}\n" for s, v in enumerate(values(loss)))
    if kind == "mmengine-iter":
        return "".join(f"2024/05/01 10:00:00 - mmengine - INFO - Iter(train) [{s + 1:>4d}/9000]  lr: 1.0000e-03  "
                       f"time: 0.5120  loss: {v!r}\n" for s, v in enumerate(values(loss)))
    if kind == "deit":
        return "".join(f"Epoch: [{s // 30}]  [{s % 30:>2d}/30]  eta: 0:00:10  lr: 0.000001  loss: {v!r} "
                       f"({v + 0.2:.4f})  time: 0.5000  data: 0.0100  max mem: 9000\n" for s, v in enumerate(values(loss)))
    if kind == "epoch-colon":
        return "".join(f"Epoch: [{s}] train_loss: {v!r}, val_loss: {v + 1.0!r}, acc1: 12.5\n"
                       for s, v in enumerate(values(loss)))
    if kind == "step":
        return "[INFO] training\n" + "".join(f"step {s} loss {v!r} lr 0.001\n" for s, v in enumerate(values(loss)))
    raise ValueError(kind)


# variants loss.py's own regex reads (template `rank : 0  train.loss : x`, or its fallback `loss x`)
MODELZOO_READABLE = ("torchrun", "ansi-lines", "crlf", "preamble", "step")
VARIANTS = ("compact", "mixed", "tabs", "no-prefix", "ansi-values", "timm", "mmengine", "mmengine-iter", "deit",
            "epoch-colon") + MODELZOO_READABLE
EXPECTED_FORMAT = {"timm": "timm", "mmengine": "mmengine", "mmengine-iter": "mmengine", "deit": "epoch",
                   "epoch-colon": "epoch", "step": "step"}


@pytest.mark.parametrize("kind", VARIANTS)
def test_every_variant_reads_the_values_it_holds(tmp_path, kind):
    loss = make_loss(N, 11)
    path = tmp_path / f"{kind}.log"
    path.write_bytes(variant(kind, loss).encode())
    got = load_curve(str(path))
    assert got.curve.loss.tolist() == values(loss)  # exact: the printed repr() read back
    assert got.format == EXPECTED_FORMAT.get(kind, "dllogger")
    assert np.all(np.diff(got.curve.steps) > 0)
    assert got.lines is not None and got.lines[0] >= 1 and got.lines[1] >= got.lines[0]


@pytest.mark.parametrize("kind", VARIANTS)
def test_compare_of_each_variant_gives_the_modelzoo_numbers(project, capsys, kind):
    cuda, sdaa = make_loss(N, 5), make_loss(N, 5, 1.004)
    (project / "sdaa.log").write_bytes(variant(kind, sdaa).encode())
    (project / "cuda.log").write_bytes(variant(kind, cuda).encode())
    assert compare_main(["--candidate", "sdaa.log", "--baseline", "cuda.log", "--out", "out/verdict.json"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:4] == modelzoo_printout(np.array(values(sdaa)), np.array(values(cuda)))
    if kind in MODELZOO_READABLE:
        texts = [(project / name).read_bytes().decode() for name in ("sdaa.log", "cuda.log")]
        assert printed[:4] == modelzoo_loss_py(*texts)
    verdict = json.loads((project / "out/verdict.json").read_text())
    # how many points each side had, and from which lines
    for side in ("candidate", "baseline"):
        read = verdict["sources"][side]
        assert read["points"] == N and len(read["lines"]) == 2
    assert any(f"candidate: {N} points from lines" in n for n in verdict["notes"])


def compare_main(argv) -> int:
    from pipelines.stages import compare

    return cli.run(compare.main, argv)


def test_epoch_lines_read_the_train_loss_and_say_so(tmp_path):
    loss = make_loss(N, 3)
    path = tmp_path / "epochs.log"
    path.write_text(variant("epoch-colon", loss))
    got = load_curve(str(path))
    assert got.metric == "train_loss" and got.curve.loss.tolist() == values(loss)
    assert any("val_loss" in n and "--metric" in n for n in got.notes)
    val = load_curve(str(path), metric="val_loss")
    assert val.metric == "val_loss" and val.curve.loss.tolist() == [v + 1.0 for v in values(loss)]
    assert got.curve.steps.tolist() == list(range(N))  # step = epoch


def test_steps_of_timm_mmengine_and_deit_count_batches_across_epochs(tmp_path):
    loss = make_loss(N, 4)
    for kind, first in (("timm", 0), ("mmengine", 1), ("deit", 0), ("mmengine-iter", 1)):
        path = tmp_path / f"{kind}.log"
        path.write_text(variant(kind, loss))
        assert load_curve(str(path)).curve.steps.tolist() == list(range(first, N + first)), kind


def test_torchrun_prefixes_keep_other_ranks_lines_out(tmp_path):
    """timm under torchrun: `[rank1]:` lines (another rank's numbers) are left out, the note says so."""
    loss = make_loss(N, 6)
    lines = variant("timm", loss).splitlines()
    other = variant("timm", loss + 1.0).splitlines()
    path = tmp_path / "timm.log"
    path.write_text("".join(f"[rank0]:{a}\n[rank1]:{b}\n" for a, b in zip(lines, other)))
    got = load_curve(str(path))
    assert got.curve.loss.tolist() == values(loss)
    assert any("ranks 0, 1" in n for n in got.notes)
    assert load_curve(str(path), rank=1).curve.loss.tolist() == values(loss + 1.0)


def appended_runs(tmp_path):
    first, second = make_loss(N, 1), make_loss(40, 2)
    path = tmp_path / "two-runs.log"
    path.write_text(dllogger_log(first) + dllogger_log(second))
    return path, first, second


def test_several_runs_in_one_log_are_listed_and_one_is_picked(tmp_path):
    path, first, second = appended_runs(tmp_path)
    with pytest.raises(BaselineError, match=r"holds 2 runs.*run 1: 60 points, lines \d+-\d+; run 2: 40 points.*"
                                            r"--run first\|last\|N"):
        load_curve(str(path))
    assert load_curve(str(path), run="first").curve.loss.tolist() == values(first)
    last = load_curve(str(path), run="last")
    assert last.curve.loss.tolist() == values(second) and any("read run 2" in n for n in last.notes)
    assert load_curve(str(path), run="2").curve.steps.tolist() == list(range(40))
    with pytest.raises(ConfigError, match="holds 2 runs"):
        load_curve(str(path), run="3")


def test_a_log_without_a_loss_says_what_it_looked_like_and_which_flag_to_give(tmp_path, capsys):
    path = tmp_path / "no-loss.log"
    path.write_text("[INFO] starting\nepoch 1 accuracy 0.5\nepoch 2 accuracy 0.6\n")
    with pytest.raises(BaselineError) as caught:
        load_curve(str(path))
    message = str(caught.value)
    assert "'[INFO] starting' | 'epoch 1 accuracy 0.5'" in message  # the first lines
    assert "tried dllogger" in message and "timm" in message and "--regex" in message and "\n" not in message


def test_a_cut_last_value_is_read_with_a_note_unless_the_file_is_still_growing(tmp_path, monkeypatch):
    """loss.py reads `train.loss : 1.` at the end of a file as 1.0, and so do we, saying the last line has no
    line end; a file whose size changes while it is read is refused as a log still being written."""
    import pipelines.logs as logs

    loss = make_loss(N, 8)
    text = dllogger_log(loss) + f"{STAMP}Epoch: 0 Iteration: {N}  rank : 0  train.loss : 1."
    path = tmp_path / "live.log"
    path.write_text(text)
    assert re.findall(r"rank : 0  train.loss : ([\d\.e-]+)", text)[-1] == "1."  # what loss.py reads
    got = load_curve(str(path))
    assert got.curve.loss.tolist() == values(loss) + [1.0]
    assert any("no line end" in n and "train.loss : 1." in n for n in got.notes)

    decode = logs.decode_text

    def decode_while_the_run_writes(data, spec):  # the training appends the rest of its line meanwhile
        with path.open("a") as f:
            f.write("2345  train.ips : 3.6 imgs/s\n")
        return decode(data, spec)

    monkeypatch.setattr(logs, "decode_text", decode_while_the_run_writes)
    with pytest.raises(BaselineError, match=r"live.log: the file changed size while it was read .*still being written"):
        load_curve(str(path))
    monkeypatch.setattr(logs, "decode_text", decode)
    json_lines = tmp_path / "live.json"  # dllogger's JSON lines: a cut record is no value, left out with a note
    json_lines.write_text("".join(f'DLLL {{"step": [0, {i}], "data": {{"train.loss": {v!r}}}}}\n'
                                  for i, v in enumerate(values(loss))) + 'DLLL {"step": [0, 60], "data": {"trai')
    cut = load_curve(str(json_lines))
    assert cut.curve.loss.tolist() == values(loss) and any("incomplete JSON record without a line end" in n
                                                           for n in cut.notes)


@pytest.mark.parametrize("suffix,compress", [(".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress)])
def test_compressed_logs_and_curves_are_read_transparently(tmp_path, suffix, compress):
    loss = make_loss(N, 9)
    log = tmp_path / f"train.log{suffix}"
    log.write_bytes(compress(dllogger_log(loss).encode()))
    assert load_curve(str(log)).curve.loss.tolist() == values(loss)
    csv = tmp_path / f"curve.csv{suffix}"
    csv.write_bytes(compress(("step,loss\n" + "".join(f"{i},{v!r}\n" for i, v in enumerate(values(loss)))).encode()))
    for fmt in ("auto", "csv"):
        assert load_curve(str(csv), fmt=fmt).curve.loss.tolist() == values(loss)


def test_undecodable_input_is_exit_2_naming_the_file(project, capsys):
    (project / "good.log").write_text(dllogger_log(make_loss(N, 1)))
    (project / "blob.bin").write_bytes(bytes(range(256)) * 64)
    (project / "cut.gz").write_bytes(gzip.compress(b"step,loss\n0,1.0\n" * 100)[:40])
    for bad, message in (("blob.bin", "binary data"), ("cut.gz", "cannot be decompressed")):
        for fmt in ("auto", "csv"):
            code = compare_main(["--candidate", bad, "--baseline", "good.log", "--format", fmt])
            err = capsys.readouterr().err
            assert code == 2 and bad in err and message in err and "Traceback" not in err, err


def test_compare_gate_exits_as_the_gate_and_writes_every_output(project, capsys):
    """A failing pair: exit 1 with --gate; verdict, overlay, HTML and JUnit beside it; gate, report and
    summary take that verdict too."""
    from pipelines.stages import gate, report, summary

    cuda = make_loss(N, 2)
    (project / "cuda.log").write_text(dllogger_log(cuda))
    (project / "sdaa.log").write_text(dllogger_log(cuda * 1.2))  # 20% above: ModelZoo's rule fails
    assert compare_main(["--candidate", "sdaa.log", "--baseline", "cuda.log", "--gate"]) == 1
    out = project / "reports" / "logs"
    for name in ("verdict.json", "overlay.png", "report.html", "junit.xml"):
        assert (out / name).stat().st_size > 0, name
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["status"] == "fail" and verdict["policy"]["name"] == "foreign"
    assert "failure" in (out / "junit.xml").read_text()
    html = (out / "report.html").read_text()
    assert "Verdict: FAIL" in html and "sdaa.log" in html and "No MLflow run" in html
    capsys.readouterr()
    assert cli.run(gate.main, ["--verdict", str(out / "verdict.json")]) == 1
    assert "gate: FAIL" in capsys.readouterr().err
    (out / "report.html").unlink()
    assert cli.run(report.main, ["--verdict", str(out / "verdict.json")]) == 0
    assert (out / "report.html").is_file()
    assert cli.run(summary.main, [str(out)]) == 1
    assert str(out / "report.html") in capsys.readouterr().out
    # the same pair that passes: exit 0
    (project / "sdaa.log").write_text(dllogger_log(cuda * 1.004))
    assert compare_main(["--candidate", "sdaa.log", "--baseline", "cuda.log", "--gate"]) == 0


def test_summary_never_links_a_report_that_does_not_exist(project, capsys):
    from pipelines.stages import summary

    cuda = make_loss(N, 2)
    (project / "cuda.log").write_text(dllogger_log(cuda))
    (project / "sdaa.log").write_text(dllogger_log(cuda * 1.004))
    compare_main(["--candidate", "sdaa.log", "--baseline", "cuda.log", "--out", "night/verdict.json"])
    (project / "night" / "report.html").unlink()
    capsys.readouterr()
    assert cli.run(summary.main, ["night"]) == 0
    printed = capsys.readouterr().out
    assert "report.html" not in printed and "none written" in printed


def test_foreign_policy_gates_on_modelzoo_and_strict_informs_at_any_scale(project, capsys):
    """Loss ~7, candidate 0.8% above its baseline: strict (now scale-free) and ModelZoo both hold; the
    verdict names the policy that decided and why."""
    cuda = 6.9 + 0.1 * make_loss(N, 3)
    (project / "cuda.log").write_text(dllogger_log(cuda))
    (project / "sdaa.log").write_text(dllogger_log(cuda * 1.008))
    assert compare_main(["--candidate", "sdaa.log", "--baseline", "cuda.log", "--gate"]) == 0
    verdict = json.loads((project / "reports/logs/verdict.json").read_text())
    assert verdict["status"] == "pass"
    assert verdict["policy"] == {"name": "foreign", "gate": ["modelzoo"], "inform": ["strict", "trend"],
                                 "why": verdict["policy"]["why"]}
    assert "without a run record" in verdict["policy"]["why"]
    assert verdict["rules"]["strict"]["gating"] is False and verdict["rules"]["strict"]["passed"] is True
    assert verdict["rules"]["modelzoo"]["gating"] is True
