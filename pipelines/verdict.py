"""Acceptance rules over two loss curves, as plain functions over numpy arrays.

`modelzoo_rule` reproduces the Tecorigin ModelZoo `loss.py` exactly: both curves cut to the shorter
length (by position), signed means, pass iff MRE <= 0.05 or MAE <= 0.0002. Because it is signed and
an "or", a port whose loss sits consistently lower passes; `strict_rule` bounds the absolute errors.
`decide` combines the rules named in the gate into a verdict: pass, fail or inconclusive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


@dataclass
class RuleResult:
    name: str
    passed: bool
    gating: bool
    summary: str  # one line a reviewer reads
    numbers: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)


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


def absolute_errors(candidate: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
    """The unsigned versions a reviewer needs beside the signed ModelZoo means."""
    c, b = cut_to_shorter(candidate, baseline)
    diff = np.abs(c - b)
    return {
        "mean_abs_relative_error": float(np.mean(diff / np.abs(b))),
        "mean_abs_error": float(np.mean(diff)),
        "max_abs_error": float(np.max(diff)),
    }


def modelzoo_lines(mre: float, mae: float, max_mre: float = 0.05, max_mae: float = 0.0002) -> list[str]:
    """The result lines ModelZoo's script prints, so users recognise them."""
    rule = f"Rule,mean_relative_error {mre}" if mre <= mae else f"Rule,mean_absolute_error {mae}"
    outcome = "pass" if (mre <= max_mre or mae <= max_mae) else "fail"
    return [
        f"MeanRelativeError: {mre}",
        f"MeanAbsoluteError: {mae}",
        rule,
        f"{outcome} mean_relative_error={mre} <= {max_mre} or mean_absolute_error={mae} <= {max_mae}",
    ]


def modelzoo_rule(candidate, baseline, max_mean_relative_error=0.05, max_mean_absolute_error=0.0002,
                  gating=True) -> RuleResult:
    mre, mae = modelzoo_errors(candidate, baseline)
    passed = mre <= max_mean_relative_error or mae <= max_mean_absolute_error
    return RuleResult(
        name="modelzoo",
        passed=passed,
        gating=gating,
        summary=(f"signed MRE {mre:.6g} <= {max_mean_relative_error} or signed MAE {mae:.6g} <= "
                 f"{max_mean_absolute_error}: {'holds' if passed else 'neither holds'}"),
        numbers={"mean_relative_error": mre, "mean_absolute_error": mae},
        thresholds={"max_mean_relative_error": max_mean_relative_error,
                    "max_mean_absolute_error": max_mean_absolute_error},
    )


def strict_rule(candidate, baseline, max_mean_abs_relative_error=0.02, max_mean_abs_error=0.05,
                gating=True) -> RuleResult:
    numbers = absolute_errors(candidate, baseline)
    rel_ok = numbers["mean_abs_relative_error"] <= max_mean_abs_relative_error
    abs_ok = numbers["mean_abs_error"] <= max_mean_abs_error
    broken = [f"mean |d|/|b| {numbers['mean_abs_relative_error']:.6g} > {max_mean_abs_relative_error}"] if not rel_ok else []
    broken += [f"mean |d| {numbers['mean_abs_error']:.6g} > {max_mean_abs_error}"] if not abs_ok else []
    return RuleResult(
        name="strict",
        passed=rel_ok and abs_ok,
        gating=gating,
        summary="; ".join(broken) if broken else (
            f"mean |d|/|b| {numbers['mean_abs_relative_error']:.6g} <= {max_mean_abs_relative_error} and "
            f"mean |d| {numbers['mean_abs_error']:.6g} <= {max_mean_abs_error}"),
        numbers=numbers,
        thresholds={"max_mean_abs_relative_error": max_mean_abs_relative_error,
                    "max_mean_abs_error": max_mean_abs_error},
    )


def _first_nonfinite(values: np.ndarray, steps: np.ndarray) -> str | None:
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad) == 0:
        return None
    i = bad[0]
    return f"{values[i]} at step {steps[i]} ({len(bad)} non-finite value(s))"


def decide(candidate_steps: np.ndarray, candidate: np.ndarray, baseline_steps: np.ndarray, baseline: np.ndarray,
           *, gate: list[str], min_steps: int, modelzoo: dict | None = None, strict: dict | None = None,
           refusals: list[str] | None = None) -> Verdict:
    """Apply every rule; the gating ones decide. Anything that makes the numbers meaningless
    (non-finite values, too few steps, a baseline made under other conditions: `refusals`) makes the
    verdict inconclusive, never pass."""
    modelzoo = modelzoo or {}
    strict = strict or {}
    candidate = np.asarray(candidate, dtype=np.float64)
    baseline = np.asarray(baseline, dtype=np.float64)
    n = min(len(candidate), len(baseline))
    reasons = list(refusals or [])
    notes = []
    for label, values, steps in (("candidate", candidate, candidate_steps), ("baseline", baseline, baseline_steps)):
        if (bad := _first_nonfinite(values[:n], np.asarray(steps)[:n])) is not None:
            reasons.append(f"{label} loss is not finite: {bad}")
    if n < min_steps:
        reasons.append(f"only {n} step(s) can be compared (candidate {len(candidate)}, baseline {len(baseline)}); "
                       f"compare.min_steps is {min_steps}")
    if len(candidate) != len(baseline):
        notes.append(f"curves have different lengths (candidate {len(candidate)}, baseline {len(baseline)}); "
                     f"compared the first {n} steps, as ModelZoo does")
    if n and not np.array_equal(np.asarray(candidate_steps)[:n], np.asarray(baseline_steps)[:n]):
        notes.append("step numbers differ between the curves; compared by position, as ModelZoo does")

    rules: dict[str, RuleResult] = {}
    lines: list[str] = []
    absolute: dict[str, float] = {}
    if n:
        with np.errstate(divide="ignore", invalid="ignore"):
            rules["modelzoo"] = modelzoo_rule(candidate, baseline, gating="modelzoo" in gate, **modelzoo)
            rules["strict"] = strict_rule(candidate, baseline, gating="strict" in gate, **strict)
            absolute = absolute_errors(candidate, baseline)
        mz = rules["modelzoo"]
        lines = modelzoo_lines(mz.numbers["mean_relative_error"], mz.numbers["mean_absolute_error"],
                               mz.thresholds["max_mean_relative_error"], mz.thresholds["max_mean_absolute_error"])
    else:
        reasons.append("one of the curves is empty")

    if reasons:
        status = INCONCLUSIVE
    else:
        failed = [r for r in rules.values() if r.gating and not r.passed]
        status = FAIL if failed else PASS
        reasons = [f"{r.name}: {r.summary}" for r in failed] or [
            f"{r.name}: {r.summary}" for r in rules.values() if r.gating]
    return Verdict(status=status, reasons=reasons, rules=rules, absolute=absolute, compared_steps=n,
                   candidate_steps=len(candidate), baseline_steps=len(baseline), modelzoo_lines=lines, notes=notes)
