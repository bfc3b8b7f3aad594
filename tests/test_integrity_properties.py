"""Property tests over the curve, run-record, baseline and layer-fingerprint readers: any corruption of a valid file (cut at
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


# ---- layer fingerprints (cait/fingerprints.py) ---------------------------------------------------------------
# A fingerprint file is an .npz whose meta holds the SHA-256 of its content (meta.digest): a changed number, array
# or meta field that is not signed again is refused; bytes the zip cannot read are refused; anything else reads
# the same numbers. A run's file is also named by its train.json (tests/test_localize.py).

finite = st.floats(-1e6, 1e6, allow_nan=False)


@st.composite
def fingerprint_files(draw):
    from cait.fingerprints import PHASES, STATS, Fingerprints, PhasePrints

    dim = draw(st.integers(2, 6))
    variants = draw(st.lists(st.sampled_from(["threads_1", "weights_ulp", "tf32"]), max_size=2, unique=True))
    reference = draw(st.booleans())
    prints = Fingerprints({"schema": 2, "model": "m", "profile": "default", "sketch_dim": dim,
                           **({"envelope_variants": variants} if reference else {})})
    for step in draw(st.lists(st.integers(0, 200), min_size=1, max_size=2, unique=True)):
        prints.steps[step] = {}
        for phase in draw(st.lists(st.sampled_from(PHASES), min_size=1, max_size=2, unique=True)):
            n = draw(st.integers(1, 3))
            names = [f"blocks.{i}.attn" for i in range(n)]
            values = st.lists(finite, min_size=n * dim, max_size=n * dim)
            stats = np.array(draw(st.lists(finite, min_size=n * len(STATS), max_size=n * len(STATS)))).reshape(n, -1)
            stats[:, -1] = np.abs(np.round(stats[:, -1]))  # the non-finite count
            prints.steps[step][phase] = PhasePrints(names, [[draw(st.integers(0, 9))] for _ in names], stats,
                                                    np.array(draw(values)).reshape(n, dim))
            if reference:
                spread = st.one_of(st.floats(0, 1e3), st.just(float("nan")))
                cells = len(variants) * n
                prints.spread.setdefault(step, {})[phase] = np.array(
                    draw(st.lists(spread, min_size=cells, max_size=cells))).reshape(len(variants), n)
    return prints


def same_prints(a, b) -> bool:
    if sorted(a.steps) != sorted(b.steps) or a.variants != b.variants:
        return False
    for step, phases in a.steps.items():
        if sorted(phases) != sorted(b.steps[step]):
            return False
        for phase, pp in phases.items():
            qq = b.steps[step][phase]
            if (pp.names, pp.shapes) != (qq.names, qq.shapes) or not np.array_equal(pp.stats, qq.stats) \
                    or not np.array_equal(pp.sketch, qq.sketch):
                return False
            sa, sb = a.spread.get(step, {}).get(phase), b.spread.get(step, {}).get(phase)
            if (sa is None) != (sb is None) or (sa is not None and not np.array_equal(sa, sb, equal_nan=True)):
                return False
    return True


def refused_or_the_same(path, whole) -> None:
    """A corrupted fingerprint file is refused, or reads the very numbers it held: never other numbers."""
    from cait.fingerprints import FingerprintError, load

    try:
        read = load(path)
    except FingerprintError:
        event("refused")
        return
    event("read: the same numbers")
    assert same_prints(read, whole)


@SETTINGS
@given(prints=fingerprint_files(), data=st.data())
def test_a_corrupted_fingerprint_file_is_refused_or_reads_the_same(tmp_path_factory, prints, data):
    from cait.fingerprints import load, save

    path = save(tmp_path_factory.mktemp("fp") / "fingerprints.npz", prints)
    original = path.read_bytes()
    whole = load(path)
    assert same_prints(whole, prints)
    corrupted = data.draw(corruptions(original))
    assume(corrupted != original)
    path.write_bytes(corrupted)
    refused_or_the_same(path, whole)


@SETTINGS
@given(prints=fingerprint_files(), data=st.data())
def test_an_edited_fingerprint_array_is_refused_or_reads_the_same(tmp_path_factory, prints, data):
    """Edits a hand or a script makes with numpy: a number changed (NaN, inf, negative, any), an array cut,
    dropped or added, a meta field changed; the file written again as a valid .npz (not signed again)."""
    from cait.fingerprints import load, save

    folder = tmp_path_factory.mktemp("fp")
    path = save(folder / "fingerprints.npz", prints)
    whole = load(path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    key = data.draw(st.sampled_from(sorted(arrays)))
    kind = data.draw(st.sampled_from(["value", "cut", "drop", "add", "meta"]))
    if kind == "value" and key != "meta" and arrays[key].size:
        changed = arrays[key].astype(np.float64).copy()
        changed.flat[data.draw(st.integers(0, changed.size - 1))] = data.draw(
            st.one_of(st.just(np.nan), st.just(np.inf), st.just(-1.0), finite))
        arrays[key] = changed.astype(arrays[key].dtype)
    elif kind == "cut" and arrays[key].size:
        arrays[key] = arrays[key].reshape(-1)[:data.draw(st.integers(0, arrays[key].size - 1))]
    elif kind == "drop":
        del arrays[key]
    elif kind == "add":
        arrays[data.draw(st.sampled_from(["s0.forward.spread", "s1.update.stats", "extra"]))] = np.zeros((1, 2))
    else:
        meta = json.loads(bytes(arrays["meta"]).decode())
        field = data.draw(st.sampled_from(sorted(meta)))
        meta[field] = data.draw(st.one_of(st.none(), st.integers(-2, 9), st.text(max_size=3), st.just([]),
                                          st.just({"0": {"forward": {"names": ["x"], "shapes": [[1]]}}})))
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(folder / "edited.npz", **arrays)
    refused_or_the_same(folder / "edited.npz", whole)


@SETTINGS
@given(prints=fingerprint_files(), data=st.data())
def test_a_signed_fingerprint_file_with_values_no_reference_has_is_refused_as_one(tmp_path_factory, prints, data):
    """Written (and signed) by code: a non-finite stats or sketch value, or a spread that is no relative error
    (NaN is one: a variant that lacked the entry), is read as a run's file (a run may diverge) but never as a
    reference (load_reference)."""
    from cait.fingerprints import FingerprintError, load, load_reference, save

    step = data.draw(st.sampled_from(sorted(prints.steps)))
    phase = data.draw(st.sampled_from(sorted(prints.steps[step])))
    pp = prints.steps[step][phase]
    spread = prints.spread.get(step, {}).get(phase)
    target = data.draw(st.sampled_from(["stats", "sketch"] + (["spread"] if spread is not None and spread.size else [])))
    values = {"stats": pp.stats, "sketch": pp.sketch, "spread": spread}[target]
    values.flat[data.draw(st.integers(0, values.size - 1))] = data.draw(
        st.sampled_from([np.inf, -np.inf, -1e-9, -16.0] if target == "spread" else [np.nan, np.inf, -np.inf]))
    if target == "stats" and np.isnan(pp.stats[:, -1]).any() | np.isinf(pp.stats[:, -1]).any():
        pp.stats[:, -1] = 0.0  # the non-finite count is checked as a count on load anyway
        pp.sketch.flat[0] = np.nan
    path = save(tmp_path_factory.mktemp("fp") / "fingerprints.npz", prints)
    if target != "spread":
        load(path)  # a run's file may hold what a diverged run computed
    with pytest.raises(FingerprintError, match=f"^{re.escape(str(path))}: "):
        load_reference(path)
