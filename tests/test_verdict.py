"""The rules, the alignment and the policy on curves built to show each behaviour."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cait.errors import BaselineError, ConfigError
from pipelines.align import align
from pipelines.params import (BandRuleConfig, DivergenceConfig, ModelZooRuleConfig, StrictRuleConfig,
                              ThroughputRuleConfig, TrendRuleConfig, parse_params)
from pipelines.verdict import (FAIL, INCONCLUSIVE, PASS, band_rule, decide, first_divergence, modelzoo_rule,
                               strict_rule, trend_rule)
from rule_settings import rule_settings

STEPS = np.arange(100)
BASE = 2.3 * np.exp(-STEPS / 30) + 1.0


def judge(candidate, baseline=BASE, cand_steps=None, base_steps=None, **kwargs):
    kwargs.setdefault("gate", ["modelzoo", "strict"])
    kwargs.setdefault("min_steps", 10)
    return decide(STEPS if cand_steps is None else cand_steps, candidate,
                  STEPS if base_steps is None else base_steps, baseline, **{**rule_settings(), **kwargs})


def test_modelzoo_says_when_it_passes_only_because_signed_errors_cancel():
    swinging = BASE * (1 + 0.2 * np.where(STEPS % 2, 1, -1))  # +-20% every other step: signed MRE 0
    rule = modelzoo_rule(swinging, BASE, **ModelZooRuleConfig().model_dump())
    assert rule.passed and "only because the signed errors cancel" in rule.summary
    lower = BASE * 0.8  # consistently 20% lower: signed MRE -0.2 passes
    assert modelzoo_rule(lower, BASE, **ModelZooRuleConfig().model_dump()).passed
    verdict = judge(lower)
    assert verdict.status == FAIL and verdict.rules["modelzoo"].passed and not verdict.rules["strict"].passed


def test_strict_judges_from_a_step_on():
    candidate = BASE.copy()
    candidate[:5] *= 1.5  # early steps differ (e.g. another kernel's first iterations), then agree
    assert not strict_rule(candidate, BASE, STEPS, **StrictRuleConfig().model_dump()).passed
    rule = strict_rule(candidate, BASE, STEPS, **StrictRuleConfig(judge_from_step=5).model_dump())
    assert rule.passed and rule.numbers["steps_not_judged"] == 5 and "steps >= 5" in rule.summary


def test_strict_outlier_fraction():
    candidate = BASE.copy()
    candidate[[30, 60, 90]] *= 3.0  # three spikes
    assert not strict_rule(candidate, BASE, STEPS, **StrictRuleConfig().model_dump()).passed
    # 2 of 100 left out: not enough
    assert not strict_rule(candidate, BASE, STEPS, **StrictRuleConfig(outlier_fraction=0.02).model_dump()).passed
    rule = strict_rule(candidate, BASE, STEPS, **StrictRuleConfig(outlier_fraction=0.03).model_dump())
    assert rule.passed and rule.numbers["outliers_allowed"] == 3
    assert rule.numbers["max_abs_relative_error"] == pytest.approx(2.0)  # the worst step is still reported


def test_strict_is_symmetric():
    candidate = BASE * 1.03
    config = StrictRuleConfig().model_dump()
    forward, backward = strict_rule(candidate, BASE, **config), strict_rule(BASE, candidate, **config)
    assert forward.numbers == backward.numbers


def test_band_rule_counts_steps_outside_mean_plus_minus_z_sigma():
    std = np.full_like(BASE, 0.01)
    inside = BASE + 0.02
    assert band_rule(inside, BASE, std, STEPS, runs=3, **BandRuleConfig(z=3).model_dump()).passed
    outside = BASE.copy()
    outside[50:] += 0.05  # 50% of steps beyond 3 sigma
    strict_band, loose_band = (BandRuleConfig(z=3, max_outside_fraction=f).model_dump() for f in (0.05, 0.5))
    rule = band_rule(outside, BASE, std, STEPS, runs=3, **strict_band)
    assert not rule.passed
    assert rule.numbers["outside_steps"] == 50 and rule.numbers["first_outside_step"] == 50
    assert band_rule(outside, BASE, std, STEPS, runs=3, **loose_band).passed


def test_band_rule_with_zero_spread_uses_the_floor():
    zero = np.zeros_like(BASE)
    no_floor, floor = (BandRuleConfig(min_halfwidth_relative=f).model_dump() for f in (0.0, 0.001))
    assert band_rule(BASE, BASE, zero, STEPS, runs=3, **no_floor).passed
    near = BASE * 1.0005
    assert not band_rule(near, BASE, zero, STEPS, runs=3, **no_floor).passed
    rule = band_rule(near, BASE, zero, STEPS, runs=3, **floor)
    assert rule.passed and rule.numbers["zero_spread_steps"] == 100 and "agree exactly" in rule.summary


def test_trend_catches_a_slow_drift_a_mean_hides():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.01, len(STEPS))
    drifting = BASE + np.linspace(-0.04, 0.04, len(STEPS)) + noise  # mean difference ~0: ModelZoo and strict pass
    verdict = judge(drifting, inform=["trend"])
    assert verdict.rules["modelzoo"].passed and verdict.rules["strict"].passed
    trend = verdict.rules["trend"]
    assert not trend.passed and trend.numbers["p_value"] < 1e-6 and trend.numbers["kendall_tau"] > 0.5
    assert trend.numbers["drift_relative"] == pytest.approx(0.08 / np.mean(BASE), rel=0.2)
    assert verdict.status == PASS  # trend only informs here, but the pass says so
    assert any(r.startswith("informative rule trend fails") for r in verdict.reasons)
    assert judge(drifting, gate=["modelzoo", "strict", "trend"]).status == FAIL
    config = TrendRuleConfig().model_dump()
    assert trend_rule(BASE + noise, BASE, STEPS, **config).passed  # noise alone is no trend
    assert trend_rule(BASE + 0.3, BASE, STEPS, **config).passed  # nor is a constant offset (strict's job)


def test_first_divergence_step():
    candidate = BASE.copy()
    candidate[40] *= 1.1  # one noisy step is not a parting
    candidate[70:] *= 1.05
    part = {"max_relative_error": 0.02, "max_abs_error": 0.0}
    assert first_divergence(STEPS, candidate, BASE, **part, consecutive_steps=3) == 70
    assert first_divergence(STEPS, candidate, BASE, **part, consecutive_steps=1) == 40
    assert first_divergence(STEPS, BASE, BASE, **DivergenceConfig().model_dump()) is None
    verdict = judge(candidate)
    assert verdict.first_divergence_step == 70
    assert any("curves part at step 70" in r for r in verdict.reasons)


def test_alignment_on_steps_states_what_was_dropped():
    cand_steps = np.arange(0, 100, 2)  # logged every 2 steps
    verdict = judge(BASE[cand_steps], cand_steps=cand_steps)
    assert verdict.status == PASS
    assert verdict.compared_steps == 50 and verdict.alignment["dropped_baseline_steps"] == list(range(1, 100, 2))
    assert any("dropped 50 baseline step(s)" in n for n in verdict.notes)
    differ = [r for r in verdict.reasons if r.startswith("STEP NUMBERS DIFFER")]  # ModelZoo's pairing is wrong here
    assert len(differ) == 1 and "modelzoo paired the first 50 points by position" in differ[0]
    assert "strict paired 50 on matching step numbers" in differ[0] and verdict.alignment["pairing"] == "steps"
    # ... and visible in its result: by position the candidate seems to sit lower, which the signed rule accepts
    assert "only because the signed errors cancel or the candidate sits lower" in verdict.rules["modelzoo"].summary


def test_alignment_interpolates_and_says_so():
    base_steps = np.arange(0, 100, 10)
    cand_steps = np.arange(0, 105, 5)
    a = align(cand_steps, np.ones(len(cand_steps)), base_steps, base_steps.astype(float), mode="interpolate")
    assert a.steps.tolist() == list(range(0, 95, 5))
    assert a.baseline.tolist() == [float(s) for s in range(0, 95, 5)]
    assert a.interpolated.tolist() == list(range(5, 95, 10))
    assert a.dropped_candidate.tolist() == [95, 100]
    notes = " ".join(a.notes())
    assert "interpolated the baseline linearly at 9" in notes and "dropped 2 candidate step(s)" in notes


def test_unalignable_steps_make_the_verdict_inconclusive():
    steps = STEPS.copy()
    steps[10] = 5  # a restarted or mixed log
    verdict = judge(BASE, cand_steps=steps)
    assert verdict.status == INCONCLUSIVE
    assert any("cannot be aligned" in r and "step 5 follows 9" in r for r in verdict.reasons)
    with pytest.raises(BaselineError, match="increase strictly"):
        align(steps, BASE, STEPS, BASE)


def test_disjoint_or_short_curves_are_inconclusive():
    assert judge(BASE[:5], cand_steps=STEPS[:5]).status == INCONCLUSIVE
    verdict = judge(BASE, cand_steps=STEPS + 1000)
    assert verdict.status == INCONCLUSIVE and verdict.compared_steps == 0
    assert judge(np.array([]), cand_steps=np.array([], dtype=int)).status == INCONCLUSIVE


def test_policy_band_gating_without_a_multi_run_baseline_is_inconclusive():
    verdict = judge(BASE, gate=["modelzoo", "band"])
    assert verdict.status == INCONCLUSIVE and any("single run" in r for r in verdict.reasons)
    informing = judge(BASE, inform=["band"])
    assert informing.status == PASS and any("band rule not applied" in n for n in informing.notes)


def test_policy_rules_in_neither_list_are_not_run():
    verdict = judge(BASE, gate=["strict"])
    assert set(verdict.rules) == {"strict"}
    assert verdict.modelzoo_lines  # ModelZoo's lines are printed whatever the policy


def test_verdict_json_keeps_the_keys_the_report_and_gate_read():
    stats = {"mean": BASE, "std": np.full_like(BASE, 0.01), "runs": 3}
    verdict = judge(BASE, inform=["band", "trend"], band_stats=stats).to_dict()
    for key in ("status", "reasons", "rules", "absolute", "compared_steps", "candidate_steps", "baseline_steps",
                "modelzoo_lines", "notes", "first_divergence_step", "alignment", "baseline_runs"):
        assert key in verdict
    for rule in verdict["rules"].values():
        assert {"passed", "gating", "summary", "numbers", "thresholds"} <= set(rule)
    json.dumps(verdict, allow_nan=False)  # plain JSON for a passing verdict


@pytest.mark.parametrize("compare,message", [
    ({"gate": ["modelzoo"], "inform": ["modelzoo"]}, "compare.inform: modelzoo already gate"),
    ({"gate": ["modelzoo", "wiggle"]}, "compare.gate.1"),
    ({"gate": []}, "compare.gate: name at least one rule"),
    ({"rules": {"strict": {"outlier_fraction": 1.0}}}, "compare.rules.strict.outlier_fraction"),
    ({"rules": {"band": {"z": 0}}}, "compare.rules.band.z"),
    ({"rules": {"trend": {"alpha": 2}}}, "compare.rules.trend.alpha"),
    ({"alignment": "nearest"}, "compare.alignment"),
    ({"divergence": {"consecutive_steps": 0}}, "compare.divergence.consecutive_steps"),
    ({"rules": {"band": {"sigma": 3}}}, "compare.rules.band.sigma: unknown key"),
])
def test_compare_params_are_validated(compare, message):
    with pytest.raises(ConfigError, match=message):
        parse_params({"compare": compare})


def _fake_run(project, loss, seed=0):
    """reports/default/curve.csv and train.json as the train stage writes them, for the stored default baseline."""
    from pipelines.baselines import load_baseline
    from pipelines.curves import write_curve_csv
    from pipelines.params import load_params
    from pipelines.provenance import file_sha256, write_run_record

    params = load_params()
    baseline = load_baseline(params.compare.baseline)
    run = params.model_copy(update={"train": params.train.model_copy(update={"seed": seed})})
    env = {"device": "cuda", "device_name": "NVIDIA H100", "driver": "550", "torch": "2.4.0", "timm": "1.0.9",
           "plugin": "", "cuda": "12.4", "python": "3.11.7", "host": "gpu"}
    write_curve_csv(project / "reports/default/curve.csv",
                    [{"step": s, "loss": v, "lr": 0.1, "samples_per_s": 1.0, "elapsed_s": 0.0}
                     for s, v in zip(baseline.steps, loss)])
    write_run_record(project / "reports/default/train.json",
                     {"profile": "default", "mlflow_run_id": "", "environment": env, "params_hash": run.curve_hash(),
                      "curve_params": run.curve_defining(), "data_manifest_hash": baseline.provenance["data_manifest_hash"],
                      "git_commit": "x", "stopped": None, "mean_samples_per_s": 1.0, "steps_done": len(loss),
                      "curve_sha256": file_sha256(project / "reports/default/curve.csv")})
    return baseline


def test_compare_stage_against_the_stored_multi_run_baseline(project, capsys, monkeypatch):
    from conftest import write_params
    from pipelines.stages import compare

    write_params(project, {"tracking": {"enabled": False}})
    from pipelines.baselines import load_baseline

    seed1 = load_baseline("baselines/default/baseline.json").runs[1].loss
    # a port whose loss sits 0.1% higher: every rule but the envelope lets it through
    _fake_run(project, seed1 * 1.001, seed=1)
    assert compare.main([]) == 0
    verdict = json.loads((project / "reports/default/verdict.json").read_text())
    assert verdict["status"] == FAIL, verdict["reasons"]
    assert [name for name, r in verdict["rules"].items() if not r["passed"]] == ["envelope"]
    # the fake run's 1 sample/s against the baseline's ~100: the throughput rule flags it, and only informs; it is
    # measured (run.json), so it is judged for the printout, report and MLflow, not in verdict.json (a DVC output)
    assert "throughput" not in verdict["rules"]
    assert "  - informative rule throughput fails: candidate 1 samples/s" in capsys.readouterr().out
    write_params(project, {"compare": {"gate": ["envelope", "modelzoo", "throughput"],  # where it gates, it decides
                                       "inform": ["strict", "band", "trend"]}})
    assert compare.main([]) == 0
    throughput = json.loads((project / "reports/default/verdict.json").read_text())["rules"]["throughput"]
    assert not throughput["passed"] and throughput["gating"] and throughput["numbers"]["ratio"] < 0.8
    write_params(project, {"compare": {"gate": ["envelope", "modelzoo"], "inform": ["strict", "band", "trend", "throughput"]}})
    assert verdict["rules"]["strict"]["numbers"]["mean_abs_relative_error"] == pytest.approx(0.001, rel=1e-6)
    # the same seed's run itself, as a port that reproduces it would give
    _fake_run(project, seed1.copy(), seed=1)
    assert compare.main([]) == 0
    verdict = json.loads((project / "reports/default/verdict.json").read_text())
    assert verdict["status"] == PASS, verdict["reasons"]
    assert verdict["baseline_runs"] >= 3 and "band" in verdict["rules"]
    assert any("paired with the baseline run of seed 1" in n for n in verdict["notes"])
    assert any(n.startswith("device differs: baseline cpu, candidate cuda") for n in verdict["notes"])

    # the report draws the baseline's band on the overlay
    import matplotlib.axes

    from pipelines.stages import report

    shaded = []
    original = matplotlib.axes.Axes.fill_between
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between",
                        lambda ax, x, lo, hi, **kw: shaded.append((len(x), kw.get("label"))) or original(ax, x, lo, hi, **kw))
    assert report.main([]) == 0
    assert shaded and shaded[0][0] == 120 and "seed band: mean ± 3·σ of 3 seeds (different randomness" in shaded[0][1]
    assert any(label and label.startswith("envelope: ") for _, label in shaded)
    assert (project / "reports/default/overlay.png").stat().st_size > 0


def test_compare_stage_refuses_a_baseline_for_other_params(project):
    from conftest import write_params
    from pipelines.stages import compare

    write_params(project, {"tracking": {"enabled": False}, "train": {"lr": 0.002}})
    _fake_run(project, np.ones(120))
    assert compare.main([]) == 0
    verdict = json.loads((project / "reports/default/verdict.json").read_text())
    assert verdict["status"] == INCONCLUSIVE
    assert any("other params: train.lr" in r for r in verdict["reasons"])


def test_the_throughput_rule_flags_a_ratio_outside_its_range_and_needs_both_sides():
    from pipelines.verdict import throughput_rule

    config = ThroughputRuleConfig().model_dump()
    assert throughput_rule(90.0, 100.0, **config).passed
    assert throughput_rule(90.0, 100.0, **config).numbers["ratio"] == pytest.approx(0.9)
    slow = throughput_rule(8.0, 100.0, **config)
    assert not slow.passed and "below [0.8, 100]" in slow.summary
    assert not throughput_rule(100.0, 0.5, **ThroughputRuleConfig(max_ratio=100.0).model_dump()).passed  # 200x: above
    for missing in ((None, 100.0), (100.0, float("nan")), (0.0, 100.0)):
        assert throughput_rule(*missing, **config).applicable is False
    gated = judge(BASE, gate=["modelzoo", "throughput"], samples_per_s=(5.0, 100.0))
    assert gated.status == FAIL and any(r.startswith("throughput:") for r in gated.reasons)
    assert judge(BASE, gate=["modelzoo", "throughput"]).status == INCONCLUSIVE  # it gates but cannot run
