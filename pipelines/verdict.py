"""Acceptance rules over two loss curves, as plain functions over numpy arrays.

- `modelzoo_rule` reproduces the Tecorigin ModelZoo `loss.py` exactly: both curves cut to the shorter
  length (by position), signed means, pass iff MRE <= 0.05 or MAE <= 0.0002. Because it is signed and
  an "or", a port whose loss sits consistently lower, or swings around the baseline, passes; the rule
  says so in its summary when that is the only reason it holds.
- `strict_rule` bounds the mean per-step |d|/min(|c|,|b|) (unsigned, symmetric, scale-free), from an
  optional first judged step on, allowing a configured fraction of outlier steps.
- `band_rule` needs a multi-run baseline: the candidate must stay within mean +- z*sigma per step.
- `trend_rule` tests the per-step differences for a slow drift that a mean hides (Kendall's tau,
  Theil-Sen slope as the effect size).
- `envelope_rule` (pipelines/envelope.py) keeps the per-step |d| within k x the numerics envelope measured on
  the reference device plus a relative floor: the tolerance that legitimate numeric differences produce,
  step by step. It needs a baseline with envelope runs (schema 3).
- `first_divergence` finds the step where the curves part beyond a fixed tolerance; the verdict's first
  divergence is the first step a gating rule judges outside its tolerance (`first_failing_step`), and that
  fixed tolerance (compare.divergence) only where no gating rule judges single steps (e.g. compare.foreign).

`decide` pairs the curves as each rule does (modelzoo by position, as loss.py; the others on step numbers,
pipelines/align.py), applies the rules the policy names (`gate`: decide; `inform`: reported only) and returns a
verdict: pass, fail or inconclusive, with its reasons. `min_steps` counts each rule's own pairs: a gating rule
with fewer makes the verdict inconclusive, an informing one is "not applied" with the reason. Anything that
makes the numbers meaningless makes it inconclusive, never pass.

The rules' thresholds have no defaults here: they are keyword arguments named as in params.yaml's
`compare.rules` and `compare.divergence`, whose one set of defaults is pipelines/params.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from cait.errors import BaselineError
from pipelines.align import align
from pipelines.envelope import describe as describe_envelope
from pipelines.envelope import envelope_check

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
RULE_NAMES = ("modelzoo", "strict", "band", "trend", "envelope", "throughput", "precision", "layers")
BY_POSITION = ("modelzoo",)  # rules that pair the curves by position (as loss.py); the others but throughput
BY_STEP = ("strict", "band", "trend", "envelope")  # pair them on step numbers
TREND_MAX_POINTS = 2000  # Theil-Sen is quadratic in the number of points: longer curves are subsampled
KENDALL_MAX_POINTS = 50_000  # Kendall's tau sorts every point: past this, evenly spaced points (p is ~0 anyway)


@dataclass
class RuleResult:
    name: str
    passed: bool
    gating: bool
    summary: str  # one line a reviewer reads
    numbers: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    applicable: bool = True  # False: too few steps to evaluate (inconclusive when the rule gates)


@dataclass
class Verdict:
    status: str  # pass | fail | inconclusive
    reasons: list[str]
    rules: dict[str, RuleResult]
    absolute: dict[str, float]
    compared_steps: int
    candidate_steps: int
    baseline_steps: int
    modelzoo_lines: list[str]
    notes: list[str] = field(default_factory=list)
    first_divergence_step: int | None = None
    divergence: dict = field(default_factory=dict)  # the tolerance that defines "parting"
    alignment: dict = field(default_factory=dict)
    baseline_runs: int = 1
    gate: list[str] = field(default_factory=list)  # the rules that decided this verdict
    stopped_early: dict | None = None  # a fail-fast run's stop: failed_step, stopped_step, reason (else None)

    def to_dict(self) -> dict:
        return asdict(self)


def cut_to_shorter(candidate: np.ndarray, baseline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ModelZoo alignment: by position only, both curves cut to the shorter length."""
    n = min(len(candidate), len(baseline))
    return np.asarray(candidate[:n], dtype=np.float64), np.asarray(baseline[:n], dtype=np.float64)


def modelzoo_errors(candidate: np.ndarray, baseline: np.ndarray) -> tuple[float, float]:
    """Signed (MeanRelativeError, MeanAbsoluteError) exactly as ModelZoo's loss.py computes them."""
    c, b = cut_to_shorter(candidate, baseline)
    diff = c - b
    return float(np.mean(diff / b)), float(np.mean(diff))


def per_step_errors(candidate: np.ndarray, baseline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(|d|, |d| / min(|c|, |b|)) per step. Relative to the smaller magnitude, so that swapping the
    curves never changes a result and the error is never smaller than |d|/|b|; 0 where d is 0."""
    c, b = np.asarray(candidate, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    diff = np.abs(c - b)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.minimum(np.abs(c), np.abs(b)))
    return diff, rel


def absolute_errors(candidate: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
    """The unsigned versions a reviewer needs beside the signed ModelZoo means (pairs as given)."""
    c, b = np.asarray(candidate, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if not len(c):
        return {}
    diff = np.abs(c - b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"mean_abs_relative_error": float(np.mean(diff / np.abs(b))),
                "mean_abs_error": float(np.mean(diff)),
                "max_abs_error": float(np.max(diff))}


def modelzoo_lines(mre: float, mae: float, *, max_mean_relative_error: float,
                   max_mean_absolute_error: float) -> list[str]:
    """The result lines ModelZoo's script prints, so users recognise them."""
    max_mre, max_mae = max_mean_relative_error, max_mean_absolute_error
    rule = f"Rule,mean_relative_error {mre}" if mre <= mae else f"Rule,mean_absolute_error {mae}"
    outcome = "pass" if (mre <= max_mre or mae <= max_mae) else "fail"
    return [
        f"MeanRelativeError: {mre}",
        f"MeanAbsoluteError: {mae}",
        rule,
        f"{outcome} mean_relative_error={mre} <= {max_mre} or mean_absolute_error={mae} <= {max_mae}",
    ]


def modelzoo_rule(candidate, baseline, *, max_mean_relative_error, max_mean_absolute_error,
                  gating=True) -> RuleResult:
    mre, mae = modelzoo_errors(candidate, baseline)
    passed = mre <= max_mean_relative_error or mae <= max_mean_absolute_error
    summary = (f"signed MRE {mre:.6g} <= {max_mean_relative_error} or signed MAE {mae:.6g} <= "
               f"{max_mean_absolute_error}: {'holds' if passed else 'neither holds'}")
    if passed:
        c, b = cut_to_shorter(candidate, baseline)
        with np.errstate(divide="ignore", invalid="ignore"):
            abs_mre, abs_mae = float(np.mean(np.abs(c - b) / np.abs(b))), float(np.mean(np.abs(c - b)))
        if not (abs_mre <= max_mean_relative_error or abs_mae <= max_mean_absolute_error):
            summary += (f", but only because the signed errors cancel or the candidate sits lower "
                        f"(unsigned: mean |d|/|b| {abs_mre:.6g}, mean |d| {abs_mae:.6g})")
    return RuleResult(
        name="modelzoo", passed=passed, gating=gating, summary=summary,
        numbers={"mean_relative_error": mre, "mean_absolute_error": mae},
        thresholds={"max_mean_relative_error": max_mean_relative_error,
                    "max_mean_absolute_error": max_mean_absolute_error},
    )


def judged_steps(steps: np.ndarray, judge_from_step: int) -> np.ndarray:
    """Mask of the steps a rule looks at: those numbered judge_from_step or later (the ones before are not judged)."""
    return np.asarray(steps) >= judge_from_step


def _mean_without_worst(values: np.ndarray, k: int) -> float:
    """Mean after dropping the k largest values (the allowed outliers); NaN sorts last, so it is dropped
    only if it is among the k largest, which is what we want: a NaN is never hidden by averaging."""
    if k <= 0:
        return float(np.mean(values))
    return float(np.mean(np.sort(values)[:len(values) - k]))


def strict_rule(candidate, baseline, steps=None, *, max_mean_abs_relative_error, judge_from_step,
                outlier_fraction, gating=True) -> RuleResult:
    """The mean of the per-step |d|/min(|c|,|b|) bounded, over the steps from judge_from_step on, with the worst
    floor(outlier_fraction * n) steps left out. Relative only, so the same port passes or fails whatever the
    loss's scale (an absolute bound would fail a loss of ~7 that sits 0.8% from its baseline); mean |d| is
    reported beside it."""
    c, b = np.asarray(candidate, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    steps = np.arange(len(c)) if steps is None else np.asarray(steps)
    keep = judged_steps(steps, judge_from_step)
    diff, rel = per_step_errors(c[keep], b[keep])
    n = len(diff)
    thresholds = {"max_mean_abs_relative_error": max_mean_abs_relative_error, "judge_from_step": judge_from_step,
                  "outlier_fraction": outlier_fraction}
    if n == 0:
        return RuleResult("strict", False, gating, f"no steps to judge: steps before {judge_from_step} are not judged",
                          {"steps_used": 0}, thresholds, applicable=False)
    k = int(math.floor(outlier_fraction * n))
    numbers = {"mean_abs_relative_error": _mean_without_worst(rel, k), "mean_abs_error": _mean_without_worst(diff, k),
               "max_abs_relative_error": float(np.max(rel)), "max_abs_error": float(np.max(diff)),
               "steps_used": n, "outliers_allowed": k, "steps_not_judged": int(np.sum(~keep))}
    passed = numbers["mean_abs_relative_error"] <= max_mean_abs_relative_error
    parts = [f"steps >= {judge_from_step}"] if judge_from_step else []
    parts += [f"worst {k} of {n} steps left out"] if k else []
    scope = f" ({', '.join(parts)})" if parts else ""
    summary = (f"mean |d|/min(|c|,|b|) {numbers['mean_abs_relative_error']:.6g} "
               f"{'<=' if passed else '>'} {max_mean_abs_relative_error} (mean |d| {numbers['mean_abs_error']:.6g})"
               + scope)
    return RuleResult("strict", passed, gating, summary, numbers, thresholds)


def band_limits(mean, std, z: float, min_halfwidth_relative: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """mean +- max(z*std, min_halfwidth_relative*|mean|). The floor matters where the baseline runs agree
    exactly (repeats of one seed on a deterministic device have zero spread)."""
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    half = np.maximum(z * std, min_halfwidth_relative * np.abs(mean))
    return mean - half, mean + half


def band_rule(candidate, mean, std, steps=None, runs: int = 0, *, z, max_outside_fraction, min_halfwidth_relative,
              judge_from_step, gating=True) -> RuleResult:
    c = np.asarray(candidate, dtype=np.float64)
    steps = np.arange(len(c)) if steps is None else np.asarray(steps)
    keep = judged_steps(steps, judge_from_step)
    c, mean, std, steps = c[keep], np.asarray(mean)[keep], np.asarray(std)[keep], steps[keep]
    thresholds = {"z": z, "max_outside_fraction": max_outside_fraction,
                  "min_halfwidth_relative": min_halfwidth_relative, "judge_from_step": judge_from_step}
    if not len(c):
        return RuleResult("band", False, gating, f"no steps to judge: steps before {judge_from_step} are not judged",
                          {"steps_used": 0}, thresholds, applicable=False)
    lower, upper = band_limits(mean, std, z, min_halfwidth_relative)
    outside = ~((c >= lower) & (c <= upper))  # NaN counts as outside
    fraction = float(np.mean(outside))
    zero_spread = int(np.sum(std == 0))
    numbers = {"outside_fraction": fraction, "outside_steps": int(np.sum(outside)), "steps_used": len(c),
               "baseline_runs": runs, "zero_spread_steps": zero_spread,
               "mean_sigma": float(np.mean(std))}
    if np.any(outside):
        numbers["first_outside_step"] = int(steps[np.argmax(outside)])
    passed = fraction <= max_outside_fraction
    summary = (f"{numbers['outside_steps']} of {len(c)} steps ({fraction:.1%}) outside mean +- {z} sigma of "
               f"{runs} baseline runs; at most {max_outside_fraction:.1%} allowed")
    if np.any(outside):
        summary += f"; first outside at step {numbers['first_outside_step']}"
    if zero_spread:
        summary += (f"; the runs agree exactly at {zero_spread} step(s), where the band is "
                    f"+- {min_halfwidth_relative:g} x |mean|")
    return RuleResult("band", passed, gating, summary, numbers, thresholds)


def trend_rule(candidate, baseline, steps=None, *, alpha, max_drift_relative, judge_from_step,
               gating=True) -> RuleResult:
    """Kendall's tau of the differences d = c - b against the step number (a monotonic drift), with the
    Theil-Sen slope over the compared span, relative to the mean baseline loss, as its effect size.
    Fails only when the drift is both significant (p < alpha) and large (|drift| > max_drift_relative)."""
    from scipy import stats

    c, b = np.asarray(candidate, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    steps = np.arange(len(c)) if steps is None else np.asarray(steps)
    keep = judged_steps(steps, judge_from_step)
    c, b, steps = c[keep], b[keep], steps[keep].astype(np.float64)
    d = c - b
    thresholds = {"alpha": alpha, "max_drift_relative": max_drift_relative, "judge_from_step": judge_from_step}
    if len(d) < 3:
        return RuleResult("trend", False, gating,
                          f"{len(d)} step(s) from step {judge_from_step} on: too few for a trend test",
                          {"steps_used": len(d)}, thresholds, applicable=False)
    if np.ptp(d) == 0:  # the same difference at every step: no trend (a constant offset is strict's job)
        tau, p, slope = 0.0, 1.0, 0.0
    else:
        every = np.linspace(0, len(d) - 1, min(len(d), KENDALL_MAX_POINTS)).round().astype(int)
        tau, p = stats.kendalltau(steps[every], d[every])
        pick = np.linspace(0, len(d) - 1, min(len(d), TREND_MAX_POINTS)).round().astype(int)
        slope = float(stats.theilslopes(d[pick], steps[pick])[0])
        tau, p = float(tau), float(p)
    drift = slope * (steps[-1] - steps[0])
    scale = float(np.mean(np.abs(b)))
    drift_relative = drift / scale if scale > 0 else (0.0 if drift == 0 else math.inf)
    passed = not (p < alpha and abs(drift_relative) > max_drift_relative)
    numbers = {"kendall_tau": tau, "p_value": p, "theil_sen_slope": slope, "drift": drift,
               "drift_relative": drift_relative, "steps_used": len(d)}
    direction = "upward" if drift > 0 else "downward"
    if passed:
        summary = (f"no drift both significant and large: tau {tau:.3g}, p {p:.3g} (alpha {alpha}), "
                   f"drift {drift_relative:+.3%} of the mean loss over steps {int(steps[0])}-{int(steps[-1])} "
                   f"(limit {max_drift_relative:.1%})")
    else:
        summary = (f"{direction} drift of the difference: tau {tau:.3g}, p {p:.3g} < {alpha}, Theil-Sen drift "
                   f"{drift_relative:+.3%} of the mean loss over steps {int(steps[0])}-{int(steps[-1])} "
                   f"> {max_drift_relative:.1%}")
    return RuleResult("trend", passed, gating, summary, numbers, thresholds)


def envelope_rule(candidate, reference, width, steps=None, *, k, floor_relative, max_outside_fraction,
                  gating=True) -> RuleResult:
    """|c - r| <= k x envelope(t) + floor_relative x |r| at all but max_outside_fraction of the steps; names
    the first step outside and by how much (pipelines/envelope.py)."""
    numbers = envelope_check(candidate, reference, width, steps, k=k, floor_relative=floor_relative,
                             max_outside_fraction=max_outside_fraction)
    passed = numbers.pop("passed")
    thresholds = {"k": k, "floor_relative": floor_relative, "max_outside_fraction": max_outside_fraction}
    if numbers["steps_used"] == 0:
        return RuleResult("envelope", False, gating, "no steps to compare", numbers, thresholds, applicable=False)
    return RuleResult("envelope", passed, gating, describe_envelope(numbers, passed, k, floor_relative, max_outside_fraction),
                      numbers, thresholds)


def envelope_sides(baseline, precision: str | None, exclude: str | None = None) -> tuple:
    """(width, reference, missing): what the envelope rule judges a candidate of precision policy `precision` with,
    from a stored baseline (pipelines/baselines.py Baseline): the envelope of the baseline's own policy (reference
    None: around the curve the candidate is paired with) or of another policy (reference: that policy's reference
    run); width None where there is none, and `missing` says why (the compare stage and fail fast read it here)."""
    policy = precision or baseline.precision
    missing = baseline.envelope_missing(policy)
    found = None if missing else baseline.policy_envelope(policy, exclude=exclude)
    if found is None:
        return None, None, missing
    return found[1], (found[0] if policy != baseline.precision else None), missing


def throughput_rule(candidate_ips, baseline_ips, *, min_ratio, max_ratio, gating=False) -> RuleResult:
    """The candidate's mean samples/s over the baseline's within [min_ratio, max_ratio]; not applicable when
    either side has no throughput (a log without one, an old record)."""
    thresholds = {"min_ratio": min_ratio, "max_ratio": max_ratio}
    values = [v for v in (candidate_ips, baseline_ips) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(values) < 2 or not all(math.isfinite(v) and v > 0 for v in values):
        return RuleResult("throughput", False, gating, "no throughput on one side (samples/s unknown)",
                          {}, thresholds, applicable=False)
    ratio = candidate_ips / baseline_ips
    passed = min_ratio <= ratio <= max_ratio
    where = "within" if passed else ("below" if ratio < min_ratio else "above")
    summary = (f"candidate {candidate_ips:.4g} samples/s, baseline {baseline_ips:.4g}: {ratio:.3g}x, {where} "
               f"[{min_ratio:g}, {max_ratio:g}]")
    return RuleResult("throughput", passed, gating, summary,
                      {"ratio": ratio, "candidate_samples_per_s": float(candidate_ips),
                       "baseline_samples_per_s": float(baseline_ips)}, thresholds)


def precision_rule(check: dict | None, *, gating=True) -> RuleResult:
    """Layer fingerprints, not the loss: no tensor computed in the policy's low format (bf16, fp16) where the
    reference keeps float32 (pipelines/localize.py precision_changes; `check` is its to_json()). A mixed-precision
    port that keeps its gradients or master weights in bf16 changes the loss by about one bf16 rounding, as
    much as a legitimate kernel does, but changes what those tensors are. Not applicable without fingerprints on
    both sides (`check` None, or status unavailable)."""
    thresholds = {"went_through_share": check["threshold"]} if check and "threshold" in check else {}
    if not check or check.get("status") not in ("clean", "lost"):
        why = (check or {}).get("message") or "no layer fingerprints to judge (the run or the baseline has none)"
        return RuleResult("precision", False, gating, why, {}, thresholds, applicable=False)
    numbers = {"tensors_judged": check.get("entries", 0), "tensors_lost": len(check.get("lost", [])),
               "tensors_gained": len(check.get("gained", []))}
    return RuleResult("precision", check["status"] == "clean", gating, check.get("message", ""), numbers, thresholds)


def layers_rule(check: dict | None, *, gating=True) -> RuleResult:
    """Layer fingerprints at one step, not the loss: every module output, gradient, weight and update of the first
    step within localize's tolerance of the reference's (pipelines/localize.py layers_check; `check` is its
    Localization JSON). A bug that bf16's own rounding hides in the loss curve until it has grown past it (weight
    decay on the norms, a skipped op, a gradient halved) changes what one step computes, beyond the spread the
    envelope's variants show there. Not applicable without fingerprints on both sides at that step."""
    check = check or {}
    thresholds = {k: check[k] for k in ("k", "floor") if isinstance(check.get(k), (int, float))}
    if check.get("status") not in ("clean", "diverged"):
        why = check.get("message") or "no layer fingerprints to judge (the run or the baseline has none)"
        return RuleResult("layers", False, gating, why, {}, thresholds, applicable=False)
    ratios = [float(r) for phase in (check.get("strip") or {}).values() for r in phase.get("ratio", [])]
    finite = [r for r in ratios if math.isfinite(r)]  # inf: ran on one side only, another shape
    numbers = {"entries_judged": len(ratios), "entries_outside": sum(1 for r in ratios if not r <= 1.0),
               "entries_unmatched": len(ratios) - len(finite), "worst_matched_ratio": max(finite, default=0.0)}
    return RuleResult("layers", check["status"] == "clean", gating, check.get("message", ""), numbers, thresholds)


def first_divergence(steps, candidate, baseline, *, max_relative_error, max_abs_error,
                     consecutive_steps) -> int | None:
    """The first step from which |c - b| exceeds max(max_relative_error * |b|, max_abs_error) for
    `consecutive_steps` logged steps in a row (one noisy step is not a parting); None if never."""
    c, b = np.asarray(candidate, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        beyond = ~(np.abs(c - b) <= np.maximum(max_relative_error * np.abs(b), max_abs_error))
    k = max(1, int(consecutive_steps))
    if len(beyond) < k:
        return None
    runs = np.convolve(beyond.astype(int), np.ones(k, dtype=int), mode="valid")
    hits = np.flatnonzero(runs == k)
    return int(np.asarray(steps)[hits[0]]) if len(hits) else None


STEP_RULES = ("envelope", "band")  # rules that judge each step (and record first_outside_step)


def first_failing_step(rules: dict[str, RuleResult]) -> tuple[int | None, str]:
    """(step, rule): the first step a gating rule that judges single steps finds outside its tolerance (the
    earliest over such rules, from each rule's recorded first_outside_step). (None, their names) when none
    of them leaves its tolerance; (None, "") when no gating rule judges single steps."""
    judging = [name for name, r in rules.items() if name in STEP_RULES and r.gating and r.applicable]
    found = sorted((int(rules[name].numbers.get("first_outside_step", -1)), name) for name in judging)
    found = [(step, name) for step, name in found if step >= 0]
    return found[0] if found else (None, ",".join(judging))


def _first_nonfinite(values: np.ndarray, steps: np.ndarray) -> str | None:
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad) == 0:
        return None
    i = bad[0]
    where = f"step {steps[i]}" if i < len(steps) else f"position {i}"
    return f"{values[i]} at {where} ({len(bad)} non-finite value(s))"


def decide(candidate_steps: np.ndarray, candidate: np.ndarray, baseline_steps: np.ndarray, baseline: np.ndarray,
           *, gate: list[str], min_steps: int, modelzoo: dict, strict: dict,
           refusals: list[str] | None = None, inform: list[str] = (), band: dict,
           trend: dict, divergence: dict, alignment: str = "steps",
           band_stats: dict | None = None, notes: list[str] | None = None, envelope: dict,
           envelope_width: np.ndarray | None = None, envelope_missing: str = "", throughput: dict,
           samples_per_s: tuple | None = None, envelope_reference: np.ndarray | None = None,
           stopped_early: dict | None = None, precision_check: dict | None = None,
           layers_check: dict | None = None) -> Verdict:
    """Apply the rules named in `gate` (they decide) and `inform` (reported only).

    `modelzoo`, `strict`, `band`, `trend`, `envelope`, `throughput` and `divergence` are every rule's settings
    as keyword dicts (compare.rules.<name> and compare.divergence, e.g. `.model_dump()` of their config
    models in pipelines/params.py); they are required, whether or not the policy applies the rule.

    `band_stats` is a multi-run baseline's per-step {"mean", "std", "runs"} on `baseline_steps`; without
    it the band rule cannot run (inconclusive if it gates). Anything that makes the numbers meaningless
    (non-finite values, too few comparable steps, step numbers that cannot be aligned, a baseline made
    under other conditions: `refusals`) makes the verdict inconclusive, never pass.
    `envelope_width` is the baseline's per-step envelope on `baseline_steps`; without it the envelope rule
    cannot run (inconclusive if it gates; `envelope_missing` says why and what to do). `envelope_reference` is
    the curve the envelope is measured around when it is not `baseline` (another precision policy's reference).
    `samples_per_s` is (candidate, baseline) mean throughput for the throughput rule; `precision_check` the
    fingerprints' precision comparison for the precision rule (pipelines/localize.py precision_changes);
    `layers_check` their localization at one step for the layers rule (pipelines/localize.py layers_check).
    `stopped_early` is a fail-fast run's stop (pipelines/failfast.py: failed_step, stopped_step, reason): its curve
    is truncated, so the envelope rule judges the steps it has whatever min_steps says, rules that cannot judge a
    truncated curve are notes, and the verdict is `fail` only where the gating envelope rule fails here too (the
    stop is re-judged, never trusted): else inconclusive, never pass.
    """
    divergence = dict(divergence)
    candidate = np.asarray(candidate, dtype=np.float64)
    baseline = np.asarray(baseline, dtype=np.float64)
    candidate_steps, baseline_steps = np.asarray(candidate_steps), np.asarray(baseline_steps)
    active = list(gate) + [r for r in inform if r not in gate]
    reasons = list(refusals or [])
    notes = list(notes or [])

    for label, values, steps in (("candidate", candidate, candidate_steps), ("baseline", baseline, baseline_steps)):
        if (bad := _first_nonfinite(values, steps)) is not None:
            reasons.append(f"{label} loss is not finite: {bad}")
    if band_stats is not None:
        for key in ("mean", "std"):
            if (bad := _first_nonfinite(np.asarray(band_stats[key], dtype=np.float64), baseline_steps)) is not None:
                reasons.append(f"baseline band {key} is not finite: {bad}")

    # ModelZoo's own pairing: by position, cut to the shorter curve
    n_pos = min(len(candidate), len(baseline))
    if len(candidate) != len(baseline):
        notes.append(f"curves have different lengths (candidate {len(candidate)}, baseline {len(baseline)}); "
                     f"the modelzoo rule compares the first {n_pos} by position, as ModelZoo does")
    steps_differ = bool(n_pos) and not np.array_equal(candidate_steps[:n_pos], baseline_steps[:n_pos])

    # every other rule: paired on step numbers
    extra = {"mean": band_stats["mean"], "std": band_stats["std"]} if band_stats is not None else {}
    if envelope_width is not None:
        if (bad := _first_nonfinite(np.asarray(envelope_width, dtype=np.float64), baseline_steps)) is not None:
            reasons.append(f"baseline envelope is not finite: {bad}")
        extra["envelope"] = envelope_width
        if envelope_reference is not None:
            extra["envelope_reference"] = np.asarray(envelope_reference, dtype=np.float64)
    aligned, unaligned = None, ""
    try:
        aligned = align(candidate_steps, candidate, baseline_steps, baseline, mode=alignment, baseline_extra=extra)
    except BaselineError as exc:
        unaligned = f"the curves cannot be aligned on step numbers: {exc}"
    n = len(aligned) if aligned is not None else 0
    if aligned is not None:
        notes += aligned.notes()
    if n_pos == 0:
        reasons.append("one of the curves is empty")

    # min_steps counts the pairs each rule uses: too few, and the rule is not applied (inconclusive if it gates)
    settings = {"modelzoo": modelzoo, "strict": strict, "band": band, "trend": trend, "envelope": envelope}
    too_few: dict[str, RuleResult] = {}
    for name in (r for r in active if r in settings):
        pairs, how = (n_pos, "by position") if name in BY_POSITION else (n, "on matching step numbers")
        if n_pos and pairs < min_steps and not (stopped_early and name == "envelope"):
            why = unaligned if name in BY_STEP and unaligned else (
                f"only {pairs} step(s) paired {how} (candidate {len(candidate)}, baseline {len(baseline)} "
                f"points); compare.min_steps is {min_steps}")
            too_few[name] = RuleResult(name, False, name in gate, why, {"steps_used": pairs}, dict(settings[name]),
                                       applicable=False)
    # the pairs the deciding rules use: the verdict's step count, its absolute errors and where the curves part
    by_step = any(r in BY_STEP for r in gate)
    pairing = "steps" if by_step else "position"
    if by_step:
        compared, pair_steps, pair_c, pair_b = (n, aligned.steps, aligned.candidate, aligned.baseline) if n else \
            (0, None, None, None)
    else:
        compared, pair_steps, pair_c, pair_b = n_pos, candidate_steps[:n_pos], candidate[:n_pos], baseline[:n_pos]
    if by_step and not n and n_pos and not any(r.gating for r in too_few.values()):  # (min_steps 0)
        reasons.append(unaligned or "the curves share no step number")

    rules: dict[str, RuleResult] = dict(too_few)
    lines: list[str] = []
    absolute: dict[str, float] = {}
    fixed_split = None
    with np.errstate(divide="ignore", invalid="ignore"):
        if n_pos:
            mz = modelzoo_rule(candidate, baseline, gating="modelzoo" in gate, **modelzoo)
            if "modelzoo" in active and "modelzoo" not in too_few:
                rules["modelzoo"] = mz
            lines = modelzoo_lines(mz.numbers["mean_relative_error"], mz.numbers["mean_absolute_error"],
                                   **modelzoo)
        if compared:
            absolute = absolute_errors(pair_c, pair_b)
            fixed_split = first_divergence(pair_steps, pair_c, pair_b, **divergence)
        if n:
            s, c, b = aligned.steps, aligned.candidate, aligned.baseline
            if "strict" in active and "strict" not in too_few:
                rules["strict"] = strict_rule(c, b, s, gating="strict" in gate, **strict)
            if "trend" in active and "trend" not in too_few:
                rules["trend"] = trend_rule(c, b, s, gating="trend" in gate, **trend)
            if "envelope" in active and envelope_width is not None and "envelope" not in too_few:
                rules["envelope"] = envelope_rule(c, aligned.baseline_extra.get("envelope_reference", b),
                                                  aligned.baseline_extra["envelope"], s,
                                                  gating="envelope" in gate, **envelope)
            if "band" in active and band_stats is not None and "band" not in too_few:
                rules["band"] = band_rule(c, aligned.baseline_extra["mean"], aligned.baseline_extra["std"], s,
                                          runs=int(band_stats.get("runs", 0)), gating="band" in gate,
                                          **band)
    if "throughput" in active:
        rules["throughput"] = throughput_rule(*(samples_per_s or (None, None)), gating="throughput" in gate,
                                              **throughput)
    for name, fingerprint_rule, check in (("precision", precision_rule, precision_check),
                                          ("layers", layers_rule, layers_check)):  # the fingerprints' rules
        if name not in active:
            continue
        rule = fingerprint_rule(check, gating=name in gate)
        if rule.applicable:
            rules[name] = rule
        elif rule.gating:
            reasons.append(f"the {name} rule gates but cannot run: {rule.summary}")
        else:
            notes.append(f"{name} rule not applied: {rule.summary}")
    if "band" in active and band_stats is None:
        rules.pop("band", None)
        if "band" in gate:
            reasons.append("the band rule gates but the baseline has a single run; record a multi-run baseline "
                           "(python -m pipelines.stages.baseline record --runs 3) or move band to compare.inform")
        else:
            notes.append("band rule not applied: the baseline has a single run")
    if "envelope" in active and envelope_width is None:
        rules.pop("envelope", None)
        why = envelope_missing or "the baseline has no envelope; record one with `make baseline`"
        if "envelope" in gate:
            reasons.append(f"the envelope rule gates but cannot run: {why}")
        else:
            notes.append(f"envelope rule not applied: {why}")
    for name, rule in rules.items():
        if not rule.applicable:
            (reasons if rule.gating and not stopped_early else notes).append(
                f"{name} rule not applied: {rule.summary}" + (" (the run stopped early)" if stopped_early else ""))
    stop_line = ""
    if stopped_early:
        env = rules.get("envelope")
        stop_line = (f"stopped early at step {stopped_early.get('stopped_step')} (fail fast): "
                     f"{stopped_early.get('reason', '')}")
        if env is None or not env.gating or not env.applicable or env.passed:
            reasons.append(f"the run stopped early at step {stopped_early.get('stopped_step')} (fail fast), but the "
                           f"gating envelope rule does not fail its curve here: a truncated curve is not judged as a "
                           f"full one; rerun the train stage (with compare.fail_fast.enabled false for a full curve)")
    # step numbers that differ by side: said loudly, with how each rule paired them
    pairing_line = ""
    if steps_differ:
        at = int(np.argmax(candidate_steps[:n_pos] != baseline_steps[:n_pos]))  # the first point they differ at
        shown = {side: ", ".join(str(int(x)) for x in steps[at:at + 4]) + (", ..." if n_pos > at + 4 else "")
                 for side, steps in (("candidate", candidate_steps), ("baseline", baseline_steps))}
        by_rule = []
        used_pos = [r for r in active if r in BY_POSITION]
        used_step = [r for r in active if r in BY_STEP and r in rules]
        if used_pos:
            by_rule.append(f"{', '.join(used_pos)} paired the first {n_pos} points by position, as ModelZoo does")
        if used_step:
            by_rule.append(f"{', '.join(used_step)} paired {n} on matching step numbers"
                           + (" (too few: not applied)" if all(r in too_few for r in used_step) else ""))
        pairing_line = (f"STEP NUMBERS DIFFER between the curves from point {at} on (candidate {shown['candidate']}; "
                        f"baseline {shown['baseline']}): " + "; ".join(by_rule or ["no rule paired them"])
                        + f"; the verdict's {compared} steps are paired "
                        + ("on step numbers" if by_step else "by position"))

    first_split, by = first_failing_step(rules)
    if not by:  # no gating rule judges single steps: compare.divergence's fixed tolerance says where they part
        first_split, by = (fixed_split if compared else None), "compare.divergence"
        divergence["by"] = by
        tol = (f"max({divergence['max_relative_error']} x |b|, {divergence['max_abs_error']}) for "
               f"{divergence['consecutive_steps']} logged steps in a row (compare.divergence: no gating rule judges "
               f"single steps)")
        split_line = (f"curves part at step {first_split}: |d| > {tol}" if first_split is not None
                      else f"curves never part beyond {tol}")
    else:
        divergence = {"by": by}
        split_line = (f"first divergence at step {first_split}: the first step outside the gating {by} rule's "
                      f"tolerance" if first_split is not None else f"no step outside the gating {by} rule's tolerance")
    if reasons:
        status = INCONCLUSIVE
        if compared:
            notes.append(split_line)
        reasons += [pairing_line] if pairing_line else []
    else:
        failed = [r for r in rules.values() if r.gating and not r.passed and r.applicable]
        status = FAIL if failed else PASS
        reasons = ([stop_line] if stop_line else []) + [f"{r.name}: {r.summary}" for r in failed] or [
            f"{r.name}: {r.summary}" for r in rules.values() if r.gating]
        reasons += [pairing_line] if pairing_line else []
        reasons += [f"informative rule {r.name} fails: {r.summary}" for r in rules.values()
                    if not r.gating and not r.passed and r.applicable]
        reasons.append(split_line)
    alignment_info = aligned.to_dict() if aligned is not None else {"mode": alignment, "compared_steps": 0}
    alignment_info.update(pairing=pairing, position_pairs=n_pos, step_numbers_differ=steps_differ)
    return Verdict(status=status, reasons=reasons, rules=rules, absolute=absolute, compared_steps=compared,
                   candidate_steps=len(candidate), baseline_steps=len(baseline), modelzoo_lines=lines, notes=notes,
                   first_divergence_step=first_split, divergence=divergence,
                   alignment=alignment_info,
                   baseline_runs=int(band_stats.get("runs", 1)) if band_stats is not None else 1, gate=list(gate),
                   stopped_early=dict(stopped_early) if stopped_early else None)
