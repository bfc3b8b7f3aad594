"""Property tests over the curve, run-record and baseline readers: any corruption of a valid file (cut at
a byte, a flipped or replaced byte, a line dropped or doubled, a number changed) is either rejected with
the project's error or read to the same numbers as the whole file. So a corrupted input is never judged
as if it were whole, and can never give a different `pass`.

Why this holds: the candidate curve is read only together with its run record (`read_run`), which names
the curve's SHA-256, so any change to its bytes is refused; every number of a baseline is tied to another
(`loss` is its reference run, `stats` follow from the runs, steps are 0..n-1), so a change to one is seen.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from cait.errors import BaselineError, CurveError, RecordError
from pipelines.baselines import baseline_from_runs, load_baseline
from pipelines.curves import Curve, read_curve_csv, write_curve_csv
from pipelines.params import Params
from pipelines.provenance import file_sha256, read_run, write_record

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")

losses = st.lists(st.floats(0.01, 10.0, allow_nan=False), min_size=3, max_size=25)


@st.composite
def corruptions(draw, data: bytes) -> bytes:
    """One corruption of `data`: different bytes, as a disk, a copy or a hand could leave them."""
    kind = draw(st.sampled_from(["truncate", "flip", "replace", "drop_line", "double_line", "number"]))
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if kind in ("flip", "replace"):
        i = draw(st.integers(0, len(data) - 1))
        new = data[i] ^ (1 << draw(st.integers(0, 7))) if kind == "flip" else draw(st.integers(0, 255))
        return data[:i] + bytes([new]) + data[i + 1:]
    lines = data.splitlines(keepends=True)
    if kind in ("drop_line", "double_line"):
        i = draw(st.integers(0, len(lines) - 1))
        return b"".join(lines[:i] + ([] if kind == "drop_line" else [lines[i], lines[i]]) + lines[i + 1:])
    numbers = list(NUMBER.finditer(data))
    match = numbers[draw(st.integers(0, len(numbers) - 1))]
    value = draw(st.one_of(st.floats(-10, 10, allow_nan=False).map(repr), st.integers(-5, 200).map(str),
                           st.just(match.group().decode()[:-1] or "0")))  # or its last digit cut
    return data[:match.start()] + value.encode() + data[match.end():]


def write_valid_run(folder, loss: list[float]):
    rows = [{"step": i, "loss": v, "lr": 1e-3, "samples_per_s": 100.0 + i, "elapsed_s": 0.1 * i, "batch_hash": f"{i:016x}"}
            for i, v in enumerate(loss)]
    write_curve_csv(folder / "curve.csv", rows)
    write_record(folder / "train.json", {"environment": {"device": "cpu"}, "params_hash": "p" * 64, "curve_params": {},
                                         "data_manifest_hash": "d" * 64, "git_commit": "abc", "steps_done": len(loss),
                                         "curve_sha256": file_sha256(folder / "curve.csv")})
    return read_curve_csv(folder / "curve.csv")


def same_curve(a: Curve, b: Curve) -> bool:
    return np.array_equal(a.steps, b.steps) and np.array_equal(a.loss, b.loss)


@SETTINGS
@given(loss=losses, data=st.data())
def test_a_corrupted_curve_is_refused_or_reads_the_same(tmp_path_factory, loss, data):
    folder = tmp_path_factory.mktemp("run")
    whole = write_valid_run(folder, loss)
    original = (folder / "curve.csv").read_bytes()
    corrupted = data.draw(corruptions(original))
    assume(corrupted != original)
    (folder / "curve.csv").write_bytes(corrupted)
    try:  # the reader alone: a CurveError, never a crash of another kind
        read_curve_csv(folder / "curve.csv")
    except CurveError:
        pass
    try:  # as compare reads it: with its record
        curve, _ = read_run(folder / "curve.csv", folder / "train.json")
    except (CurveError, RecordError):
        event("refused")
        return
    assert same_curve(curve, whole)


@SETTINGS
@given(loss=losses, data=st.data())
def test_a_corrupted_run_record_is_refused_or_describes_the_same_curve(tmp_path_factory, loss, data):
    folder = tmp_path_factory.mktemp("run")
    whole = write_valid_run(folder, loss)
    original = (folder / "train.json").read_bytes()
    corrupted = data.draw(corruptions(original))
    assume(corrupted != original)
    (folder / "train.json").write_bytes(corrupted)
    try:
        curve, record = read_run(folder / "curve.csv", folder / "train.json")
    except (CurveError, RecordError):
        event("refused")
        return
    event("read: the same curve")
    assert same_curve(curve, whole) and record["steps_done"] == len(loss)


def record_for(seed: int) -> dict:
    params = Params.model_validate({"train": {"seed": seed}})
    return {"environment": {"device": "cpu", "device_name": "Test CPU", "cpu": "Test CPU", "torch": "2.4.0"},
            "params_hash": params.curve_hash(), "curve_params": params.curve_defining(), "data_manifest_hash": "d" * 64,
            "git_commit": "abc", "mlflow_run_id": f"run{seed}", "mean_samples_per_s": 100.0}


@st.composite
def baselines(draw):
    n = draw(st.integers(3, 20))
    k = draw(st.integers(1, 3))
    curve = st.lists(st.floats(0.01, 10.0, allow_nan=False), min_size=n, max_size=n)
    return baseline_from_runs([(Curve(np.arange(n), draw(curve)), record_for(seed), f"run {seed}") for seed in range(k)],
                              "default")


def numbers_of(baseline) -> tuple:
    """Every number a verdict is computed from: steps, the reference curve, each run (seed, curve), the stats."""
    stats = baseline.stats()
    return (baseline.steps.tolist(), baseline.loss.tolist(), [(r.seed, r.loss.tolist()) for r in baseline.runs],
            None if stats is None else {k: v.tolist() for k, v in stats.items()}, baseline.provenance["seed"])


@SETTINGS
@given(baseline=baselines(), data=st.data())
def test_a_corrupted_baseline_is_refused_or_reads_the_same_numbers(tmp_path_factory, baseline, data):
    path = tmp_path_factory.mktemp("baseline") / "baseline.json"
    original = (json.dumps(baseline.to_json(), indent=1) + "\n").encode()
    corrupted = data.draw(corruptions(original))
    assume(corrupted != original)
    path.write_bytes(corrupted)
    try:
        read = load_baseline(path)
    except BaselineError:
        event("refused")
        return
    event("read: the same numbers")
    assert numbers_of(read) == numbers_of(baseline)


def test_a_vertical_tab_in_the_header_is_refused_not_a_crash():
    """Found by the property test above: Python splits lines at \\x0b, pyarrow does not; the two readings of
    the header disagreed and pyarrow's KeyError escaped as a traceback."""
    from pipelines.curves import parse_curve_csv

    raw = (b"step,loss\x0blr,samples_per_s,elapsed_s,batch_hash\r\n0,1.0,0.001,100.0,0.0,0000000000000000\r\n"
           b"1,1.0,0.001,101.0,0.1,0000000000000001\r\n")
    with pytest.raises(CurveError):
        parse_curve_csv(raw, "curve.csv")
