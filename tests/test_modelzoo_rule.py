"""The verdict on hand-made curves, through every branch of the ModelZoo rule and its guards."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.params import ModelZooRuleConfig, StrictRuleConfig
from pipelines.verdict import (FAIL, INCONCLUSIVE, PASS, absolute_errors, decide, modelzoo_errors,
                               modelzoo_lines, modelzoo_rule, strict_rule)
from rule_settings import rule_settings

SHIPPED = ModelZooRuleConfig().model_dump()  # the model card's thresholds, as params.py defaults them

BASE = np.linspace(6.9, 4.0, 101)
STEPS = np.arange(101)


def judge(candidate, baseline=BASE, min_steps=10, gate=("modelzoo", "strict"), **kw):
    return decide(np.arange(len(candidate)), candidate, np.arange(len(baseline)), baseline,
                  gate=list(gate), min_steps=min_steps, **{**rule_settings(), **kw})


def test_identical_curves_pass_with_zero_errors():
    verdict = judge(BASE.copy())
    assert verdict.status == PASS
    assert verdict.rules["modelzoo"].numbers == {"mean_relative_error": 0.0, "mean_absolute_error": 0.0}
    assert verdict.absolute["max_abs_error"] == 0.0


def test_modelzoo_numbers_are_signed_means_over_the_shorter_curve():
    cand = np.array([2.0, 3.0, 5.0, 100.0])  # the 4th value is beyond the baseline and must be ignored
    base = np.array([1.0, 4.0, 5.0])
    mre, mae = modelzoo_errors(cand, base)
    assert mre == pytest.approx(((2 - 1) / 1 + (3 - 4) / 4 + 0) / 3, abs=1e-15)
    assert mae == pytest.approx((1 - 1 + 0) / 3, abs=1e-15)


def test_model_card_lines_are_reproduced():
    lines = modelzoo_lines(0.001251484563571443, 0.008302797185312403, **SHIPPED)
    assert lines == [
        "MeanRelativeError: 0.001251484563571443",
        "MeanAbsoluteError: 0.008302797185312403",
        "Rule,mean_relative_error 0.001251484563571443",
        "pass mean_relative_error=0.001251484563571443 <= 0.05 or mean_absolute_error=0.008302797185312403 <= 0.0002",
    ]
    assert modelzoo_lines(0.2, 0.1, **SHIPPED)[2:] == ["Rule,mean_absolute_error 0.1",
                                            "fail mean_relative_error=0.2 <= 0.05 or mean_absolute_error=0.1 <= 0.0002"]


def test_exact_thresholds_pass():
    """`<=`, not `<`: a value exactly at its threshold passes, the next float below the threshold fails."""
    # the shipped MRE threshold: (21 - 20) / 20 == 0.05 exactly in float64, MAE 1.0 far above 0.0002
    base, cand = np.full(2, 20.0), np.full(2, 21.0)  # two equal terms: the mean is exact too
    assert modelzoo_errors(cand, base) == (0.05, 1.0)
    assert modelzoo_rule(cand, base, **SHIPPED).passed
    assert not modelzoo_rule(cand, base, **{**SHIPPED, "max_mean_relative_error": np.nextafter(0.05, 0)}).passed
    # the MAE branch alone decides: MRE threshold 0, MAE exactly at its threshold
    cand, base = np.linspace(1.0, 2.0, 20) + 0.0002, np.linspace(1.0, 2.0, 20)
    mre, mae = modelzoo_errors(cand, base)
    assert modelzoo_rule(cand, base, max_mean_relative_error=0.0, max_mean_absolute_error=mae).passed
    assert not modelzoo_rule(cand, base, max_mean_relative_error=0.0,
                             max_mean_absolute_error=np.nextafter(mae, 0)).passed
    assert modelzoo_rule(cand, base, max_mean_relative_error=mre, max_mean_absolute_error=0.0).passed


def test_consistently_lower_curve_passes_modelzoo_but_fails_strict():
    cand = BASE * 0.9  # negative MRE and MAE: the ModelZoo rule accepts it
    verdict = judge(cand)
    assert verdict.rules["modelzoo"].passed
    assert verdict.rules["modelzoo"].numbers["mean_absolute_error"] < 0
    assert not verdict.rules["strict"].passed
    assert verdict.status == FAIL
    assert any(r.startswith("strict:") for r in verdict.reasons)
    # with only the ModelZoo rule gating, the same curve passes and strict merely informs
    informed = judge(cand, gate=("modelzoo",), inform=["strict"])
    assert informed.status == PASS and not informed.rules["strict"].gating


def test_higher_curve_fails_modelzoo():
    verdict = judge(BASE * 1.1)
    assert not verdict.rules["modelzoo"].passed
    assert verdict.modelzoo_lines[-1].startswith("fail ")
    assert verdict.status == FAIL


def test_swinging_curve_passes_modelzoo_only_by_cancellation():
    swing = BASE * (1 + 0.2 * np.where(STEPS % 2 == 0, 1, -1))
    verdict = judge(swing)
    assert abs(verdict.rules["modelzoo"].numbers["mean_relative_error"]) < 0.01
    assert verdict.absolute["mean_abs_relative_error"] == pytest.approx(0.2)
    assert verdict.status == FAIL


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["candidate", "baseline"])
def test_non_finite_values_are_inconclusive_never_pass(bad, where):
    curve = BASE.copy()
    curve[37] = bad
    verdict = judge(curve) if where == "candidate" else judge(BASE.copy(), baseline=curve)
    assert verdict.status == INCONCLUSIVE
    assert any(f"{where} loss is not finite" in r and "step 37" in r for r in verdict.reasons)


def test_short_curve_is_inconclusive():
    verdict = judge(BASE[:9].copy(), min_steps=10)
    assert verdict.status == INCONCLUSIVE
    assert "only 9 step(s)" in verdict.reasons[0]
    assert judge(BASE[:10].copy(), min_steps=10).status == PASS


def test_empty_curve_is_inconclusive():
    verdict = judge(np.array([]), min_steps=0)
    assert verdict.status == INCONCLUSIVE
    assert verdict.rules == {}


def test_length_mismatch_is_noted_and_cut():
    verdict = judge(BASE[:60].copy())
    assert verdict.compared_steps == 60
    assert any("different lengths" in n for n in verdict.notes)


def test_refusals_make_it_inconclusive_even_when_equal():
    verdict = judge(BASE.copy(), refusals=["baseline was made with other params: train.lr"])
    assert verdict.status == INCONCLUSIVE
    assert verdict.reasons == ["baseline was made with other params: train.lr"]


def test_strict_rule_bounds_the_mean_relative_error():
    base = np.full(10, 2.0)
    config = StrictRuleConfig(max_mean_abs_relative_error=0.02).model_dump()
    assert strict_rule(base + 0.03, base, **config).passed  # 0.03 / 2.0 = 1.5%
    failed = strict_rule(base + 0.06, base, **config)  # 3%
    assert not failed.passed and "0.03 > 0.02" in failed.summary
    assert failed.numbers["mean_abs_error"] == pytest.approx(0.06)  # reported, not judged


@pytest.mark.parametrize("scale", [1e-3, 1.0, 7.0, 1e4])
def test_strict_rule_does_not_depend_on_the_scale_of_the_loss(scale):
    """A curve 0.8% from its baseline passes at every scale (an absolute bound of 0.05 failed it at loss ~7)."""
    base = BASE * scale
    config = StrictRuleConfig().model_dump()
    assert strict_rule(base * 1.008, base, **config).passed
    assert not strict_rule(base * 1.03, base, **config).passed
    numbers = absolute_errors(np.array([1.0, 3.0]), np.array([2.0, 2.0]))
    assert numbers == {"mean_abs_relative_error": 0.5, "mean_abs_error": 1.0, "max_abs_error": 1.0}
