"""The envelope rule (pipelines/envelope.py, verdict.envelope_rule): properties over every curve, and the
cases that must never pass (a NaN, a curve shorter than compare.min_steps, a baseline without envelope)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipelines.envelope import envelope_check, envelope_width, leave_one_out, tolerance
from pipelines.params import EnvelopeRuleConfig
from pipelines.verdict import FAIL, INCONCLUSIVE, PASS, decide, envelope_rule
from rule_settings import rule_settings

MIN_STEPS = 5
losses = st.floats(min_value=1e-2, max_value=20.0, allow_nan=False, allow_infinity=False)
curves = st.lists(losses, min_size=MIN_STEPS, max_size=120).map(np.array)
settings_ = st.fixed_dictionaries({"k": st.floats(0.5, 10.0), "floor_relative": st.floats(0.0, 1e-3),
                                   "max_outside_fraction": st.floats(0.0, 0.3)})


def widths_for(curve, data):
    raw = np.array(data.draw(st.lists(st.floats(0.0, 0.05), min_size=len(curve), max_size=len(curve))))
    return np.maximum.accumulate(raw)


@settings(deadline=None)
@given(curves, st.data(), settings_)
def test_a_deviation_up_and_the_same_deviation_down_get_the_same_verdict(reference, data, config):
    """Unlike ModelZoo's signed means, sitting lower is no better than sitting higher."""
    width = widths_for(reference, data)
    d = np.array(data.draw(st.lists(st.floats(0.0, 0.5), min_size=len(reference), max_size=len(reference))))
    assume(np.all(reference - d > 0))
    up = envelope_rule(reference + d, reference, width, **config)
    down = envelope_rule(reference - d, reference, width, **config)
    assert up.passed == down.passed
    assert up.numbers["first_outside_step"] == down.numbers["first_outside_step"]


@settings(deadline=None)
@given(curves, st.data(), settings_, st.floats(1e-3, 1e3))
def test_the_verdict_does_not_depend_on_the_loss_scale(reference, data, config, scale):
    """Loss, deviation and envelope all scaled alike: the same verdict (the absolute strict threshold fails this)."""
    width = widths_for(reference, data)
    candidate = reference * np.array(data.draw(st.lists(st.floats(0.99, 1.01), min_size=len(reference),
                                                        max_size=len(reference))))
    a = envelope_check(candidate, reference, width, **config)
    b = envelope_check(candidate * scale, reference * scale, width * scale, **config)
    ratios = np.abs(candidate - reference) / np.maximum(tolerance(reference, width, config["k"],
                                                                   config["floor_relative"]), 1e-300)
    assume(np.all(np.abs(ratios - 1) > 1e-6))  # not on the boundary, where rounding of the scaling decides
    assert a["passed"] == b["passed"] and a["steps_outside"] == b["steps_outside"]


@settings(deadline=None)
@given(curves, st.data(), st.sampled_from([math.nan, math.inf, -math.inf]))
def test_a_nan_never_passes(reference, data, bad):
    width = widths_for(reference, data) + 1.0  # a huge envelope: only the NaN can fail it
    candidate = reference.copy()
    candidate[data.draw(st.integers(0, len(candidate) - 1))] = bad
    assert not envelope_rule(candidate, reference, width, **EnvelopeRuleConfig().model_dump()).passed
    verdict = decide(np.arange(len(candidate)), candidate, np.arange(len(reference)), reference, gate=["envelope"],
                     min_steps=MIN_STEPS, envelope_width=width, **rule_settings())
    assert verdict.status == INCONCLUSIVE


@given(st.integers(1, MIN_STEPS - 1))
def test_a_curve_shorter_than_min_steps_is_inconclusive(n):
    reference = np.linspace(2.3, 1.3, 50)
    verdict = decide(np.arange(n), reference[:n].copy(), np.arange(50), reference, gate=["envelope"],
                     min_steps=MIN_STEPS, envelope_width=np.full(50, 1.0), **rule_settings())
    assert verdict.status == INCONCLUSIVE
    assert any("min_steps" in r for r in verdict.reasons)


def test_a_baseline_without_envelope_is_inconclusive_not_pass():
    reference = np.linspace(2.3, 1.3, 60)
    why = "the baseline has no envelope runs (schema v2); record a new baseline with envelope runs: `make baseline`"
    gating = decide(np.arange(60), reference.copy(), np.arange(60), reference, gate=["envelope"], min_steps=MIN_STEPS,
                    envelope_width=None, envelope_missing=why, **rule_settings())
    assert gating.status == INCONCLUSIVE
    assert gating.reasons == [f"the envelope rule gates but cannot run: {why}"]
    informing = decide(np.arange(60), reference.copy(), np.arange(60), reference, gate=["modelzoo"],
                       inform=["envelope"], min_steps=MIN_STEPS, envelope_missing=why, **rule_settings())
    assert informing.status == PASS and f"envelope rule not applied: {why}" in informing.notes


def test_names_the_first_step_outside_and_by_how_much():
    reference = np.full(60, 2.0)
    width = np.full(60, 1e-4)
    candidate = reference.copy()
    candidate[17:] += 1e-3  # a 0.05% port bug from step 17 on
    rule = envelope_rule(candidate, reference, width, np.arange(100, 160),
                         **EnvelopeRuleConfig(k=4.0, floor_relative=1e-5).model_dump())
    assert not rule.passed
    assert rule.numbers["first_outside_step"] == 117
    tol = 4.0 * 1e-4 + 1e-5 * 2.0
    assert rule.numbers["first_outside_ratio"] == pytest.approx(1e-3 / tol)
    assert "at step 117" in rule.summary and "43 of 60 steps outside" in rule.summary
    verdict = decide(np.arange(60), candidate, np.arange(60), reference, gate=["envelope"], min_steps=MIN_STEPS,
                     envelope_width=width, **rule_settings(envelope={"k": 4.0, "floor_relative": 1e-5}))
    assert verdict.status == FAIL and verdict.gate == ["envelope"]
    assert verdict.reasons[0].startswith("envelope: leaves 4 x envelope + 1e-05 x |reference| at step 17")


def test_a_fraction_of_steps_may_be_outside_when_configured():
    reference = np.full(100, 2.0)
    candidate = reference.copy()
    candidate[[10, 50, 90]] += 1.0
    width = np.zeros(100)
    two, three = (EnvelopeRuleConfig(max_outside_fraction=f).model_dump() for f in (0.02, 0.03))
    assert not envelope_rule(candidate, reference, width, **two).passed
    assert envelope_rule(candidate, reference, width, **three).passed


@settings(deadline=None)
@given(curves, st.lists(curves, min_size=1, max_size=4))
def test_envelope_width_is_a_running_max_that_holds_every_variant(reference, variants):
    n = min([len(reference)] + [len(v) for v in variants])
    reference, variants = reference[:n], [v[:n] for v in variants]
    width = envelope_width(reference, variants)
    assert np.all(np.diff(width) >= 0)
    for v in variants:  # each variant is inside its own envelope with k = 1 and no floor
        assert envelope_check(v, reference, width, k=1.0, floor_relative=0.0, max_outside_fraction=0.0)["passed"]
    assert np.array_equal(envelope_width(reference, [reference.copy()]), np.zeros(n))


def test_leave_one_out_says_how_large_k_must_be():
    reference = np.full(10, 2.0)
    a = reference + np.linspace(0, 1e-4, 10)
    b = reference - np.linspace(0, 3e-4, 10)
    found = leave_one_out(reference, {"a": a, "b": b})
    assert found["b"]["needed_k"] == pytest.approx(3.0)  # b goes 3x as far as a's envelope
    assert found["a"]["needed_k"] == pytest.approx(1 / 3)
    assert not found["a"]["bitwise_equal"] and leave_one_out(reference, {"c": reference.copy(), "a": a})["c"][
        "bitwise_equal"]
