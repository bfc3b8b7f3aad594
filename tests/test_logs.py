"""Foreign-log import: every format gives the curve the log holds, and a comparison of two logs prints
exactly what ModelZoo's loss.py prints for them."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cait.errors import BaselineError, ConfigError, CurveError
from pipelines.logs import dllogger_line, load_curve, parse_dllogger, parse_dllogger_json, parse_epoch_lines

SDAA_VERSION_TABLE = """\
---------------------+---------------------------------------------
 Host IP             | 10.0.0.7
 PyTorch             | 2.0.0a0+gitc263bd4
 Torch-SDAA          | 1.6.0b0+git19f8ed5
---------------------+---------------------------------------------
 SDAA Driver         | 1.1.2b1 (N/A)
 SDAA Runtime        | 1.1.2b0 (/opt/tecoai/lib64/libsdaart.so)
 TecoDNN             | 1.19.0b3 (/opt/tecoai/lib64/libtecodnn.so)
 TCCL                | 1.16.0b0 (/opt/tecoai/lib64/libtccl.so)
---------------------+---------------------------------------------
"""


def modelzoo_loss_py(sdaa_text: str, cuda_text: str) -> list[str]:
    """An independent re-implementation of ModelZoo's run_scripts/loss.py as documented: regex over the
    whole text, template pattern then fallback, cut to the shorter, signed numpy means, its print lines."""
    def parse(text):
        values = re.findall(r"rank : 0  train.loss : ([\d\.e-]+)", text) or re.findall(r"loss ([\d\.e-]+)", text)
        return np.array([float(v) for v in values])

    return modelzoo_printout(parse(sdaa_text), parse(cuda_text))


def modelzoo_printout(sdaa: np.ndarray, cuda: np.ndarray) -> list[str]:
    """loss.py's computation and print lines on two parsed value lists."""
    n = min(len(sdaa), len(cuda))
    sdaa, cuda = sdaa[:n], cuda[:n]
    mre = np.mean((sdaa - cuda) / cuda)
    mae = np.mean(sdaa - cuda)
    rule = f"Rule,mean_relative_error {mre}" if mre <= mae else f"Rule,mean_absolute_error {mae}"
    outcome = "pass" if (mre <= 0.05 or mae <= 0.0002) else "fail"
    return [f"MeanRelativeError: {mre}", f"MeanAbsoluteError: {mae}", rule,
            f"{outcome} mean_relative_error={mre} <= 0.05 or mean_absolute_error={mae} <= 0.0002"]


def make_loss(n: int, seed: int, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (6.9 * np.exp(-np.arange(n) / 40) + 1.0 + rng.normal(0, 0.05, n)) * scale


def dllogger_log(loss: np.ndarray, ranks=(0,), glue_every: int = 0, epoch_len: int = 1000) -> str:
    """stdout of a multi-rank ModelZoo run: the plugin's version table, then interleaved rank records;
    every `glue_every`-th record is glued to the previous one without a newline, as ranks racing on stdout do."""
    parts = [SDAA_VERSION_TABLE, "number of params: 46916200\n"]
    k = 0
    for step, value in enumerate(loss):
        for rank in ranks:
            row = {"step": step % epoch_len, "loss": float(value) + 0.01 * rank, "samples_per_s": 3.66}
            line = dllogger_line(row, epoch=step // epoch_len, rank=rank)
            k += 1
            parts.append(line if (glue_every and k % glue_every == 0) else "\n" + line)
    return "".join(parts) + "\n"


def test_dllogger_reads_rank_zero_of_glued_multi_rank_logs():
    loss = make_loss(101, 0)
    text = dllogger_log(loss, ranks=(0, 1, 2, 3), glue_every=3)
    assert "imgs/sTCAPPDLL" in text  # glued records really are in the text
    got = parse_dllogger(text)
    assert got.curve.steps.tolist() == list(range(101))
    assert got.curve.loss.tolist() == [float(v) for v in loss]  # exact: repr() printed, float() read
    assert any("ranks 0, 1, 2, 3" in n for n in got.notes)
    other = parse_dllogger(text, rank=2)
    assert np.allclose(other.curve.loss, loss + 0.02)


def test_dllogger_rank_missing_is_an_error_naming_the_ranks():
    with pytest.raises(BaselineError, match="no records of rank 5.*ranks 0, 1"):
        parse_dllogger(dllogger_log(make_loss(10, 0), ranks=(0, 1)), rank=5)


def test_dllogger_rank_listing_beside_the_scan_gives_what_inline_gives(monkeypatch):
    """A long log lists its ranks in a forked process beside the rank's scan: the same curve, notes and errors
    as the listing inline (forced here on a short log); an error in the child comes back as itself."""
    import pipelines.logs as logs

    text = dllogger_log(make_loss(50, 0), ranks=(0, 1, 2), glue_every=4)
    bad = re.sub(r"(Iteration: 7  rank : 1  train\.loss : )\S+", r"\1x7", text)

    def outcomes():
        got = [parse_dllogger(text, rank=r) for r in (0, 2)]
        with pytest.raises(BaselineError) as missing:
            parse_dllogger(text, rank=5)
        with pytest.raises(BaselineError) as not_a_number:
            parse_dllogger(bad, rank=1)
        return ([(g.curve.steps.tolist(), g.curve.loss.tolist(), g.notes) for g in got],
                str(missing.value), str(not_a_number.value))

    inline = outcomes()
    monkeypatch.setattr(logs, "BESIDE_CHARS", 0)
    assert outcomes() == inline
    with pytest.raises(ZeroDivisionError), logs._Beside(lambda: 1 // 0, 1) as beside:
        beside.result()
    with logs._Beside(lambda: 1 // 0, 1):  # left without asking: the child is stopped and reaped
        pass


def test_dllogger_iterations_restarting_each_epoch_are_numbered_by_position():
    got = parse_dllogger(dllogger_log(make_loss(30, 0), epoch_len=10))
    assert got.curve.steps.tolist() == list(range(30))
    assert any("restart each epoch" in n for n in got.notes)


def test_dllogger_non_numeric_loss_names_the_line():
    text = re.sub(r"train\.loss : ", "train.loss : x", dllogger_log(make_loss(5, 0)), count=1)
    with pytest.raises(BaselineError, match=r":13: loss 'x\d"):
        parse_dllogger(text)


def test_dllogger_nan_loss_is_read_as_nan_not_skipped():
    """ModelZoo's pattern silently skips a `nan` and misaligns the rest; we keep it so the verdict is inconclusive."""
    text = dllogger_log(make_loss(5, 0))
    text = re.sub(r"(Iteration: 2  rank : 0  train\.loss : )\S+", r"\1nan", text)
    got = parse_dllogger(text)
    assert len(got.curve) == 5 and np.isnan(got.curve.loss[2])


@pytest.mark.parametrize("ranks,glue", [((0,), 0), ((0, 1), 2), ((0, 1, 2, 3, 4, 5, 6, 7), 5)])
def test_compare_of_two_modelzoo_logs_prints_exactly_the_modelzoo_lines(project, capsys, ranks, glue):
    from pipelines.stages import compare

    (project / "sdaa.log").write_text(dllogger_log(make_loss(101, 1, 1.003), ranks=ranks, glue_every=glue))
    (project / "cuda.log").write_text(dllogger_log(make_loss(101, 1), ranks=ranks, glue_every=glue + 1))
    expected = modelzoo_loss_py((project / "sdaa.log").read_text(), (project / "cuda.log").read_text())
    assert compare.main(["--candidate", "sdaa.log", "--baseline", "cuda.log"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:4] == expected
    verdict = json.loads((project / "reports/logs/verdict.json").read_text())
    assert verdict["modelzoo_lines"] == expected
    assert verdict["candidate"] == "sdaa.log" and verdict["baseline"] == "cuda.log"
    assert any("provenance not checked" in n for n in verdict["notes"])


def test_modelzoo_card_numbers_come_back_from_logs_built_to_match(project, capsys):
    """Logs whose differences give the model card's MRE reproduce it to the last printed digit of loss.py."""
    from pipelines.stages import compare

    cuda = make_loss(101, 3)
    sdaa = cuda * (1 + 0.001251484563571443)
    (project / "a.log").write_text(dllogger_log(sdaa, ranks=(0, 1), glue_every=4))
    (project / "b.log").write_text(dllogger_log(cuda, ranks=(0, 1)))
    compare.main(["--candidate", "a.log", "--baseline", "b.log", "--out", "out/v.json"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == modelzoo_loss_py((project / "a.log").read_text(), (project / "b.log").read_text())
    assert abs(float(lines[0].split(": ")[1]) - 0.001251484563571443) < 1e-12
    assert json.loads((project / "out/v.json").read_text())["status"] in ("pass", "fail")


def write_in_format(path, fmt: str, loss: np.ndarray) -> list[str]:
    """Write `loss` (logged every 5 steps) as `fmt`; returns the compare arguments that name it."""
    steps = [5 * i for i in range(len(loss))]
    values = [float(v) for v in loss]
    if fmt == "mlflow":
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient()  # the project's own store (MLFLOW_TRACKING_URI)
        experiment = client.get_experiment_by_name("logs") or client.create_experiment("logs")
        run = client.create_run(getattr(experiment, "experiment_id", experiment)).info.run_id
        client.log_batch(run, metrics=[Metric("loss", v, 0, s) for s, v in zip(steps, values)])
        return [f"mlflow:{run}"]
    if fmt == "dllogger-json":
        path.write_text("".join("DLLL " + json.dumps({"type": "LOG", "step": [0, s], "data": {"train.loss": v}}) + "\n"
                                for s, v in zip(steps, values)))
    elif fmt == "epoch":
        path.write_text("".join(f"Epoch[{s}]: train_loss {v!r} acc1 1.0 | val_loss 9.9\n" for s, v in zip(steps, values)))
    elif fmt == "regex":
        path.write_text("".join(f"it={s} objective={v!r}\n" for s, v in zip(steps, values)))
        return [path.name, "--regex", r"it=(?P<step>\d+) objective=(?P<loss>\S+)"]
    elif fmt == "csv":
        path.write_text("step,loss\n" + "".join(f"{s},{v!r}\n" for s, v in zip(steps, values)))
    elif fmt == "json":
        path.write_text(json.dumps({"steps": steps, "loss": values}))
    return [path.name]


@pytest.mark.parametrize("fmt", ["dllogger-json", "epoch", "regex", "csv", "json", "mlflow"])
def test_compare_of_two_logs_in_each_format_gives_the_modelzoo_numbers(project, capsys, fmt):
    from pipelines.stages import compare

    cuda, sdaa = make_loss(60, 7), make_loss(60, 7, 1.01)
    candidate, *extra = write_in_format(project / "sdaa.out", fmt, sdaa)
    baseline, *_ = write_in_format(project / "cuda.out", fmt, cuda)
    assert compare.main(["--candidate", candidate, "--baseline", baseline, *extra]) == 0
    assert capsys.readouterr().out.splitlines()[:4] == modelzoo_printout(sdaa, cuda)
    verdict = json.loads((project / "reports/logs/verdict.json").read_text())
    assert verdict["compared_steps"] == 60 and verdict["status"] == "pass"


def test_dllogger_json_lines(tmp_path):
    loss = make_loss(20, 2)
    lines = ['DLLL {"timestamp": "1", "datetime": "x", "elapsedtime": 0, "type": "PARAMETER", "step": "PARAMETER", '
             '"data": {"lr": 0.1}}']
    for i, v in enumerate(loss):
        for rank in (0, 1):
            lines.append("DLLL " + json.dumps({"timestamp": str(i), "type": "LOG", "step": [0, i],
                                               "data": {"rank": rank, "train.loss": float(v) + rank,
                                                        "train.ips": 3.0}}))
    lines.append("DLLL " + json.dumps({"type": "LOG", "step": [0], "data": {"val.loss": 1.0}}))
    text = "\n".join(lines) + "\n"
    got = parse_dllogger_json(text)
    assert got.curve.loss.tolist() == [float(v) for v in loss]
    assert got.curve.steps.tolist() == list(range(20))
    assert any("skipped 2" in n for n in got.notes)
    (tmp_path / "dll.json").write_text(text)
    assert load_curve(str(tmp_path / "dll.json")).format == "dllogger-json"
    with pytest.raises(BaselineError, match=r":3: not a JSON record"):  # a damaged line with its line end
        parse_dllogger_json("\n".join(lines[:2] + [lines[2][:30]]) + "\n")


def test_epoch_lines(tmp_path):
    text = ("starting\n"
            "Epoch[0]: train_loss 4.1116 acc1 6.46 acc5 22.61 | val_loss 4.0334 val_acc1 8.1\n"
            "Epoch[1]: train_loss 3.5021 acc1 15.2 acc5 38.0 | val_loss 3.4011 val_acc1 17.3\n"
            "Epoch[2]: train_loss 3.1 acc1 22.0 acc5 47.5 | val_loss 3.0 val_acc1 24.0\n")
    got = parse_epoch_lines(text)
    assert got.curve.steps.tolist() == [0, 1, 2]
    assert got.curve.loss.tolist() == [4.1116, 3.5021, 3.1]  # train_loss, never val_loss
    (tmp_path / "epochs.log").write_text(text)
    assert load_curve(str(tmp_path / "epochs.log")).format == "epoch"
    assert parse_epoch_lines(text, key="val_loss").curve.loss.tolist() == [4.0334, 3.4011, 3.0]


def test_user_regex(tmp_path):
    path = tmp_path / "train.out"
    path.write_text("".join(f"[it {i * 10}] objective={float(v)!r} lr=0.1\n" for i, v in enumerate(make_loss(12, 4))))
    got = load_curve(str(path), regex=r"\[it (?P<step>\d+)\] objective=(?P<loss>\S+)")
    assert got.curve.steps.tolist() == list(range(0, 120, 10))
    assert got.curve.loss.tolist() == [float(v) for v in make_loss(12, 4)]
    by_position = load_curve(str(path), regex=r"objective=(\S+)")
    assert by_position.curve.steps.tolist() == list(range(12))
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        load_curve(str(path), regex="(unclosed")
    with pytest.raises(ConfigError, match="needs a group named `loss`"):
        load_curve(str(path), regex=r"(\d+) (\d+)")


def test_csv_and_json(tmp_path):
    loss = make_loss(15, 5)
    csv = tmp_path / "c.csv"
    csv.write_text("step,loss,lr\n" + "".join(f"{i},{float(v)!r},0.1\n" for i, v in enumerate(loss)))
    assert load_curve(str(csv)).curve.loss.tolist() == loss.tolist()
    as_dict = tmp_path / "d.json"
    as_dict.write_text(json.dumps({"steps": list(range(15)), "loss": loss.tolist()}))
    as_rows = tmp_path / "r.json"
    as_rows.write_text(json.dumps([{"step": 2 * i, "loss": v} for i, v in enumerate(loss.tolist())]))
    assert load_curve(str(as_dict)).curve.loss.tolist() == loss.tolist()
    rows = load_curve(str(as_rows)).curve
    assert rows.steps.tolist() == list(range(0, 30, 2)) and rows.loss.tolist() == loss.tolist()


@pytest.mark.parametrize("content,message", [
    ("", "the file is empty"),
    ('{"steps": [0, 1], "loss": [1.0', "not valid JSON"),
    ('{"steps": [0, 1], "loss": [1.0, "x"]}', "non-numeric"),
    ('{"steps": [0], "loss": [1.0, 2.0]}', "equal length"),
    ('{"loss": []}', "no steps"),
    ("step,loss\n0,1.0\n1,abc\n", "non-numeric"),
    ("just some words\n", "cannot tell the log's format"),
])
def test_bad_foreign_input_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises((BaselineError, CurveError), match=message):  # a CSV goes through the curve reader
        load_curve(str(path))


def test_missing_file_and_bad_run_id(tmp_path):
    with pytest.raises(BaselineError, match="no such file"):
        load_curve(str(tmp_path / "nope.log"))
    with pytest.raises(ConfigError, match="not an MLflow run id"):
        load_curve("nope", fmt="mlflow", tracking_uri="sqlite:///x.db")


def test_mlflow_run_id(tmp_path):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("t"))
    loss = make_loss(30, 6)
    client.log_batch(run.info.run_id, metrics=[Metric("loss", float(v), 0, i) for i, v in enumerate(loss)])
    for spec in (run.info.run_id, f"mlflow:{run.info.run_id}", f"runs:/{run.info.run_id}"):
        got = load_curve(spec, tracking_uri=uri)
        assert got.format == "mlflow"
        assert got.curve.steps.tolist() == list(range(30))
        assert got.curve.loss.tolist() == loss.tolist()


def test_train_stage_output_is_read_back_by_the_importer(tiny_project, capsys):
    """The train stage prints its steps as ModelZoo dllogger lines; the importer gets curve.csv back exactly."""
    from conftest import write_params
    from pipelines.curves import read_curve_csv
    from pipelines.stages import prepare, train

    write_params(tiny_project, {"tracking": {"enabled": False}, "device": {"threads": 1}})
    assert prepare.main([]) == 0
    capsys.readouterr()
    assert train.main([]) == 0
    stdout = capsys.readouterr().out
    (tiny_project / "train.log").write_text(stdout)
    got = load_curve("train.log")
    written = read_curve_csv(tiny_project / "reports/default/curve.csv")
    assert got.format == "dllogger"
    assert got.curve.steps.tolist() == written.steps.tolist()
    assert got.curve.loss.tolist() == written.loss.tolist()
