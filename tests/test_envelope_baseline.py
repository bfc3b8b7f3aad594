"""Baselines with an envelope (schema 3): round trip, older baselines read and refused clearly for the
envelope rule, port-bug runs never a baseline, and the compare stage's gate for foreign logs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cait.errors import BaselineError
from pipelines.baselines import SCHEMA_VERSION, baseline_from_runs, load_baseline, save_baseline
from pipelines.curves import Curve
from pipelines.params import Params
from pipelines.stages.compare import policy_for
from test_baselines import STEPS, curve_for, record_for


def variant(seed: int, name: str, scale: float) -> tuple:
    curve = curve_for(seed)
    return Curve(curve.steps, curve.loss * (1 + scale * np.linspace(0, 1, len(curve.loss)))), \
        {**record_for(seed), "numerics_variant": name}, f"variant {name}"


def with_envelope() -> object:
    runs = [(curve_for(s), record_for(s), f"run {s}") for s in (0, 1)]
    return baseline_from_runs(runs, "default", [variant(0, "threads_1", 1e-5), variant(0, "weights_ulp", -3e-5),
                                                (curve_for(0), {**record_for(0), "numerics_variant": "fused_attention"},
                                                 "variant fused_attention")])


def test_envelope_round_trip(tmp_path):
    baseline = with_envelope()
    save_baseline(tmp_path / "b.json", baseline)
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 5
    assert data["precision"] == data["envelope"]["policy"] == "fp32"
    assert [v["variant"] for v in data["envelope"]["variants"]] == ["threads_1", "weights_ulp", "fused_attention"]
    assert [v["bitwise_equal_to_reference"] for v in data["envelope"]["variants"]] == [False, False, True]
    assert data["provenance"]["envelope_variants"] == ["threads_1", "weights_ulp", "fused_attention"]
    back = load_baseline(tmp_path / "b.json")
    width = back.envelope()
    assert np.all(np.diff(width) >= 0) and width[0] == 0
    ramp = np.linspace(0, 1, len(STEPS)) * curve_for(0).loss
    assert width[-1] == pytest.approx(3e-5 * ramp.max(), rel=1e-9)  # the widest variant's largest distance so far
    assert back.envelope(exclude="weights_ulp")[-1] == pytest.approx(1e-5 * ramp.max(), rel=1e-9)
    assert back.envelope_missing() == ""


def test_an_edited_envelope_width_is_refused(tmp_path):
    save_baseline(tmp_path / "b.json", with_envelope())
    data = json.loads((tmp_path / "b.json").read_text())
    data["envelope"]["width"] = [w * 10 for w in data["envelope"]["width"]]
    (tmp_path / "b.json").write_text(json.dumps(data))
    with pytest.raises(BaselineError, match="envelope.width does not match the envelope runs"):
        load_baseline(tmp_path / "b.json")


def test_a_schema_2_baseline_loads_and_says_how_to_get_an_envelope(tmp_path):
    baseline = baseline_from_runs([(curve_for(s), record_for(s), f"run {s}") for s in (0, 1, 2)], "default")
    data = baseline.to_json()
    data["schema_version"] = 2
    (tmp_path / "b.json").write_text(json.dumps(data))
    back = load_baseline(tmp_path / "b.json")
    assert back.envelope() is None
    assert back.envelope_missing() == ("the baseline has no envelope runs (schema v2); record a new baseline with "
                                       "envelope runs: `make baseline` (python -m pipelines.stages.baseline record "
                                       "--envelope)")


def test_a_port_bug_never_becomes_a_baseline():
    buggy = {**record_for(0), "port_bug": "softmax_bf16"}
    with pytest.raises(BaselineError, match="port bug 'softmax_bf16'"):
        baseline_from_runs([(curve_for(0), buggy, "r")], "default")
    with pytest.raises(BaselineError, match="port bug"):
        baseline_from_runs([(curve_for(0), record_for(0), "r")], "default", [(curve_for(0), buggy, "v")])


def test_envelope_runs_are_the_reference_seed_under_another_numerics():
    ref = [(curve_for(0), record_for(0), "r")]
    with pytest.raises(BaselineError, match="numerics variant 'threads_1'; give it as an envelope run"):
        baseline_from_runs([variant(0, "threads_1", 0)], "default")
    with pytest.raises(BaselineError, match="has no numerics variant"):
        baseline_from_runs(ref, "default", [(curve_for(0), record_for(0), "v")])
    with pytest.raises(BaselineError, match=r"other params .*train.seed"):
        baseline_from_runs(ref, "default", [variant(1, "threads_1", 0)])
    with pytest.raises(BaselineError, match="a second run of the numerics variant"):
        baseline_from_runs(ref, "default", [variant(0, "threads_1", 0), variant(0, "threads_1", 1e-6)])
    other_device = {**record_for(0, device_name="AMD EPYC"), "numerics_variant": "threads_1"}
    with pytest.raises(BaselineError, match="the envelope is measured on one device"):
        baseline_from_runs(ref, "default", [(curve_for(0), other_device, "v")])


def test_foreign_logs_are_gated_by_the_foreign_rules_and_the_verdict_says_why():
    cfg = Params().compare
    chain = policy_for(cfg, True)
    assert (chain["name"], chain["gate"], chain["inform"]) == ("chain", ["envelope", "modelzoo"],
                                                                  ["strict", "band", "trend", "throughput"])
    foreign = policy_for(cfg, False)
    assert foreign["name"] == "foreign" and foreign["gate"] == ["modelzoo"]
    assert "envelope" not in foreign["gate"] + foreign["inform"]
    assert "envelope cannot apply" in foreign["why"] and "compare.foreign decides" in foreign["why"]


def test_params_refuse_the_envelope_for_foreign_logs():
    from cait.errors import ConfigError
    from pipelines.params import parse_params

    with pytest.raises(ConfigError, match="the envelope rule needs identical inputs"):
        parse_params({"compare": {"foreign": {"gate": ["envelope"]}}})
    with pytest.raises(ConfigError, match="device.port_bug: unknown port bug 'nope'"):
        parse_params({"device": {"port_bug": "nope"}})
