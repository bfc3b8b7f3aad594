"""The numerics envelope: how far a legitimate run may be from the reference run at each step.

With identical inputs on every device (keyed randomness, pre-decoded shards), two correct runs differ
only by their arithmetic: reduction order, fused kernels, TF32, a rounding here and there. Training
amplifies such a difference step by step, so the legitimate distance from the reference grows from
~0 at step 0. The baseline command measures it on the reference device: beside the reference run it
records runs with legitimately different numerics (cait/portbugs.py ENVELOPE_VARIANTS), and

    envelope(t) = max over s <= t of max over variants |loss_v(s) - loss_ref(s)|

(a running maximum: a divergence, once reached, is legitimate from then on). The `envelope` rule
accepts a candidate whose |loss_c(t) - loss_ref(t)| stays within

    k * envelope(t) + floor_relative * |loss_ref(t)|

at all but `max_outside_fraction` of the steps. k and the floor come from measurements, not taste
(`calibrate` below, and the comments in params.yaml). The floor is relative, so the rule does not depend
on the loss's scale, and it covers the steps where every variant agreed bitwise with the reference.

Pure functions over numpy arrays; no torch, no files.
"""

from __future__ import annotations

import numpy as np

NO_ENVELOPE = ("the baseline has no envelope runs (schema {version}); record a new baseline with envelope "
               "runs: `make baseline` (python -m pipelines.stages.baseline record --envelope)")


def envelope_width(reference, variants) -> np.ndarray:
    """Running maximum over steps of the largest |variant - reference| at each step."""
    reference = np.asarray(reference, dtype=np.float64)
    if not len(variants):
        return np.zeros_like(reference)
    spread = np.max(np.abs(np.stack([np.asarray(v, dtype=np.float64) for v in variants]) - reference), axis=0)
    return np.maximum.accumulate(spread)


def tolerance(reference, width, k: float, floor_relative: float) -> np.ndarray:
    """Per-step allowed |d|: k x envelope + floor_relative x |reference|."""
    return k * np.asarray(width, dtype=np.float64) + floor_relative * np.abs(np.asarray(reference, dtype=np.float64))


def envelope_check(candidate, reference, width, steps=None, *, k: float, floor_relative: float,
                   max_outside_fraction: float) -> dict:
    """The numbers of the envelope rule: which steps leave the tolerance, the first one and by how much.

    A non-finite candidate value counts as outside (never inside by accident of a NaN comparison)."""
    c, r = np.asarray(candidate, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    steps = np.arange(len(c)) if steps is None else np.asarray(steps)
    tol = tolerance(r, width, k, floor_relative)
    diff = np.abs(c - r)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        outside = ~(diff <= tol)
        ratio = np.where(diff == 0, 0.0, diff / tol)
    n = len(c)
    count = int(outside.sum())
    out = {"steps_used": n, "steps_outside": count, "outside_fraction": count / n if n else float("nan"),
           "allowed_outside": int(np.floor(max_outside_fraction * n)),
           "max_ratio": float(np.nanmax(ratio)) if n and not np.all(np.isnan(ratio)) else float("nan"),
           "max_ratio_step": int(steps[int(np.nanargmax(ratio))]) if n and not np.all(np.isnan(ratio)) else -1,
           "first_outside_step": -1, "first_outside_ratio": float("nan"), "first_outside_abs_diff": float("nan"),
           "first_outside_tolerance": float("nan")}
    if count:
        i = int(np.flatnonzero(outside)[0])
        out.update(first_outside_step=int(steps[i]), first_outside_ratio=float(ratio[i]),
                   first_outside_abs_diff=float(diff[i]), first_outside_tolerance=float(tol[i]),
                   steps_from_first_outside=n - i)
    out["passed"] = bool(n > 0 and count <= out["allowed_outside"])
    return out


def describe(numbers: dict, passed: bool, k: float, floor_relative: float, max_outside_fraction: float) -> str:
    """One line for the verdict: where the candidate leaves the envelope and by how much, or its margin."""
    band = f"{k:g} x envelope + {floor_relative:g} x |reference|"
    n, count = numbers["steps_used"], numbers["steps_outside"]
    if not count:
        return (f"|d| within {band} at all {n} steps (closest: {numbers['max_ratio']:.3g} of it at step "
                f"{numbers['max_ratio_step']})")
    first = (f"leaves {band} at step {numbers['first_outside_step']} (|d| {numbers['first_outside_abs_diff']:.3g} = "
             f"{numbers['first_outside_ratio']:.3g} x the tolerance {numbers['first_outside_tolerance']:.3g})")
    allowed = f"{max_outside_fraction:.0%} allowed"
    verdict = "within" if passed else "beyond"
    return f"{first}; {count} of {n} steps outside ({count / n:.1%}, {verdict} the {allowed})"


def needed_k(candidate, reference, width, floor_relative: float = 0.0) -> tuple[float, int]:
    """(smallest k that keeps `candidate` within k x width + floor at every step, the step that needs it);
    inf where it differs from the reference at a step the envelope is 0 beyond the floor."""
    r = np.asarray(reference, dtype=np.float64)
    diff = np.abs(np.asarray(candidate, dtype=np.float64) - r)
    slack = np.maximum(diff - floor_relative * np.abs(r), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.where(slack == 0, 0.0, slack / np.asarray(width, dtype=np.float64))
    if not len(need):
        return 0.0, -1
    return float(np.max(need)), int(np.argmax(need))


def margins(numbers: dict) -> dict:
    """How clearly the envelope rule failed a candidate, from its numbers (`envelope_check`): the largest |d| over
    the tolerance, the margin at the first failing step, and the share of the steps from the first failing one
    on that are outside (a bug caught at 1.05x, or outside at 1 step in 10, is a bug nearly missed)."""
    first = numbers["first_outside_step"]
    out = {"max_ratio": numbers["max_ratio"], "max_ratio_step": numbers["max_ratio_step"],
           "first_outside_step": first, "first_outside_ratio": numbers["first_outside_ratio"],
           "outside_share": float("nan")}
    if first >= 0:
        after = numbers.get("steps_from_first_outside") or 0
        out["outside_share"] = numbers["steps_outside"] / after if after else float("nan")
    return out


def leave_one_out(reference, variants: dict[str, np.ndarray], floor_relative: float = 0.0) -> dict[str, dict]:
    """For each variant: the envelope of the others, and how far the held-out one goes relative to it.

    `needed_k` is the smallest k for which the held-out variant stays inside k x envelope + floor at every
    step: the measurement k is chosen from (a new device's legitimate difference is, like the held-out
    variant, one the envelope did not see)."""
    r = np.asarray(reference, dtype=np.float64)
    out = {}
    for name, loss in variants.items():
        others = [v for n, v in variants.items() if n != name]
        width = envelope_width(r, others)
        diff = np.abs(np.asarray(loss, dtype=np.float64) - r)
        k, worst = needed_k(loss, r, width, floor_relative)
        out[name] = {"needed_k": k, "worst_step": worst,
                     "max_abs_diff": float(np.max(diff)) if len(diff) else 0.0,
                     "bitwise_equal": bool(np.array_equal(np.asarray(loss, dtype=np.float64), r))}
    return out
