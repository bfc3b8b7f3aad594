"""Properties of the gate itself (hypothesis): what must hold for every pair of curves, not just the ones we thought of."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipelines.verdict import (FAIL, INCONCLUSIVE, PASS, RULE_NAMES, decide, modelzoo_errors, per_step_errors,
                               strict_rule)
from rule_settings import rule_settings

MIN_STEPS = 5
losses = st.floats(min_value=1e-3, max_value=20.0, allow_nan=False, allow_infinity=False)
curves = st.lists(losses, min_size=MIN_STEPS, max_size=150).map(np.array)
strict_configs = st.fixed_dictionaries({
    "max_mean_abs_relative_error": st.floats(0.0, 0.5),
    "judge_from_step": st.integers(0, 3),
    "outlier_fraction": st.floats(0.0, 0.5),
})


def every_rule(candidate, baseline, band_runs=None, band=None, **kwargs):
    steps = np.arange(len(candidate))
    runs = np.stack(band_runs if band_runs is not None else [baseline] * 3)
    stats = {"mean": runs.mean(axis=0), "std": runs.std(axis=0, ddof=1), "runs": len(runs)}
    kwargs.setdefault("envelope_width", np.zeros(len(baseline)))  # a zero-width envelope: the floor alone
    kwargs.setdefault("samples_per_s", (100.0, 100.0))  # equal throughput: the throughput rule holds
    kwargs.setdefault("precision_check", {"status": "clean", "message": "no tensor lost precision", "entries": 10,
                                          "lost": [], "gained": []})  # the fingerprints' precision agrees
    kwargs.setdefault("layers_check", {"status": "clean", "message": "fingerprints agree", "k": 16.0, "floor": 1e-6,
                                       "strip": {"forward": {"names": ["a"], "ratio": [0.0]}}})  # and their layers
    return decide(steps, candidate, np.arange(len(baseline)), baseline, gate=list(RULE_NAMES),
                  min_steps=MIN_STEPS, band_stats=stats, **rule_settings(band=band or {}), **kwargs)


@settings(deadline=None)  # the first example pays for importing scipy
@given(curves)
def test_identical_curves_pass_every_rule(curve):
    verdict = every_rule(curve, curve.copy())
    assert verdict.status == PASS, verdict.reasons
    assert set(verdict.rules) == set(RULE_NAMES)
    assert all(rule.passed for rule in verdict.rules.values())
    assert verdict.first_divergence_step is None


@settings(deadline=None)  # the first example pays for importing scipy
@given(curves, strict_configs, st.floats(1.0001, 50.0), st.booleans())
def test_constant_offset_beyond_tolerance_fails_strict(curve, config, factor, downward):
    """A candidate off by a constant relative step beyond the tolerance, up or down, at any scale, fails."""
    ratio = config["max_mean_abs_relative_error"] * factor + 1e-9
    candidate = curve / (1 + ratio) if downward else curve * (1 + ratio)
    _, rel = per_step_errors(candidate, curve)
    assume(np.all(rel > config["max_mean_abs_relative_error"]))  # float rounding of the ratio
    config["judge_from_step"] = min(config["judge_from_step"], len(curve) - 1)
    assert not strict_rule(candidate, curve, **config).passed
    verdict = decide(np.arange(len(curve)), candidate, np.arange(len(curve)), curve, gate=["strict"],
                     min_steps=MIN_STEPS, **rule_settings(strict=config))
    assert verdict.status == FAIL


@settings(deadline=None)  # the first example pays for importing scipy
@given(curves, st.data(), st.sampled_from([math.nan, math.inf, -math.inf]), st.booleans())
def test_any_nan_makes_the_verdict_inconclusive(curve, data, bad, in_candidate):
    other = curve * data.draw(st.floats(0.5, 1.5))
    spoiled = other.copy() if in_candidate else curve.copy()
    # anywhere: also past the end of the other curve, where ModelZoo's cut would never look
    spoiled = np.concatenate([spoiled, np.array(data.draw(st.lists(losses, max_size=5)), dtype=np.float64)])
    spoiled[data.draw(st.integers(0, len(spoiled) - 1))] = bad
    candidate, baseline = (spoiled, curve) if in_candidate else (other, spoiled)
    verdict = decide(np.arange(len(candidate)), candidate, np.arange(len(baseline)), baseline,
                     gate=["modelzoo", "strict"], inform=["trend"], min_steps=MIN_STEPS, **rule_settings())
    assert verdict.status == INCONCLUSIVE
    assert any("not finite" in r for r in verdict.reasons)


@settings(deadline=None)  # the first example pays for importing scipy
@given(curves, curves, strict_configs)
def test_swapping_baseline_and_candidate_never_turns_a_strict_fail_into_a_pass(a, b, config):
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    forward, backward = strict_rule(a, b, **config), strict_rule(b, a, **config)
    if not forward.passed:
        assert not backward.passed
    if not backward.passed:
        assert not forward.passed


@settings(deadline=None)  # the first example pays for importing scipy
@given(curves, curves)
def test_modelzoo_numbers_match_an_independent_computation(candidate, baseline):
    n = min(len(candidate), len(baseline))
    c, b = [float(x) for x in candidate[:n]], [float(x) for x in baseline[:n]]
    expected_mre = math.fsum((x - y) / y for x, y in zip(c, b)) / n
    expected_mae = math.fsum(x - y for x, y in zip(c, b)) / n
    mre, mae = modelzoo_errors(candidate, baseline)
    # np.mean rounds as it sums: its error is relative to the size of the terms (1e-12 absolute fails at ~1e3)
    scale_mre = max(1.0, math.fsum(abs((x - y) / y) for x, y in zip(c, b)) / n)
    scale_mae = max(1.0, math.fsum(abs(x - y) for x, y in zip(c, b)) / n)
    assert abs(mre - expected_mre) <= 1e-12 * scale_mre
    assert abs(mae - expected_mae) <= 1e-12 * scale_mae


@settings(max_examples=50, deadline=None)
@given(curves, st.floats(0.0, 0.2))
def test_band_of_identical_repeats_accepts_the_repeated_curve(curve, floor):
    """Repeats of one seed on a deterministic device have zero spread; the run itself must still pass."""
    verdict = every_rule(curve, curve, band_runs=[curve, curve, curve], band={"min_halfwidth_relative": max(floor, 1e-12)})
    assert verdict.rules["band"].passed, verdict.rules["band"].summary
