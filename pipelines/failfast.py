"""Fail fast: the train stage stops once the compare stage's verdict is certain to be `fail`.

Under the envelope rule gating with `max_outside_fraction: 0`, one step outside k x envelope + floor fails the
run whatever the other steps do (pipelines/envelope.py): from that step on the verdict is certain. With
`compare.fail_fast.enabled` the train stage judges each finished step as it comes, with the compare stage's
own rule (`pipelines.verdict.envelope_rule` over the same baseline curve and envelope, `envelope_sides`), and
stops `confirm_steps` steps after the first step outside. The record says so (train.json `stopped_early`), the
compare stage re-judges the truncated curve and yields `fail` naming the stop, and such a run never becomes a
baseline (its record says `stopped`).

Fail fast never stops a run that could still pass or whose verdict would be inconclusive: it stays off (with
a one-line note) unless the envelope rule gates with max_outside_fraction 0, the baseline can judge this run
(same profile, model, params and data), has a finite envelope for the run's precision policy, and the full
run would have compare.min_steps steps to judge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipelines.verdict import envelope_rule, envelope_sides


@dataclass
class FailFastWatch:
    """Judges one step at a time; `observe` returns the `stopped_early` record once the run should stop."""

    steps: np.ndarray  # the baseline's step numbers: a candidate step is judged where the baseline has it
    reference: np.ndarray  # the curve the envelope is measured around, on `steps`
    width: np.ndarray  # the envelope, on `steps`
    envelope: dict  # compare.rules.envelope (k, floor_relative, max_outside_fraction: 0)
    confirm_steps: int
    failed: dict | None = None  # the first step outside, once seen
    decision: dict | None = None  # the stopped_early record, once taken
    _index: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._index = {int(s): i for i, s in enumerate(np.asarray(self.steps))}

    def observe(self, step: int, loss: float, seconds: float) -> dict | None:
        """Judge a finished step (`seconds` since the run started); the stopped_early record when the run stops
        after this step, else None."""
        if self.decision is not None:
            return self.decision
        if self.failed is None:
            i = self._index.get(int(step))
            if i is None:  # the baseline has no such step: nothing to judge it by (compare pairs on step numbers)
                return None
            rule = envelope_rule([loss], [self.reference[i]], [self.width[i]], [step], gating=True, **self.envelope)
            if rule.passed:
                return None
            n = rule.numbers
            self.failed = {"step": int(step), "ratio": n["first_outside_ratio"], "abs_diff": n["first_outside_abs_diff"],
                           "tolerance": n["first_outside_tolerance"], "seconds": float(seconds)}
        if step < self.failed["step"] + self.confirm_steps:
            return None
        f = self.failed
        self.decision = {
            "failed_step": f["step"], "stopped_step": int(step), "confirm_steps": self.confirm_steps, "rule": "envelope",
            "reason": (f"fail fast: step {f['step']} is outside the envelope rule's tolerance (|d| {f['abs_diff']:.3g} = "
                       f"{f['ratio']:.3g} x {f['tolerance']:.3g}) and max_outside_fraction is 0, so the verdict is fail "
                       f"whatever the later steps do; stopped {int(step) - f['step']} step(s) later"),
            "seconds": float(seconds), "failed_after_s": f["seconds"]}
        return self.decision


def plan(params, *, precision: str, record: dict, total_steps: int,
         exclude: str | None = None) -> tuple[FailFastWatch | None, str]:
    """(watch, note) for a train run of `params` under `precision` (`record`: the run record's fields known at its
    start: curve_params, data_manifest_hash, data_pixels_hash). No watch, and a one-line note saying why, when
    compare.fail_fast is off ('' then) or cannot make the verdict certain. `exclude` leaves one numerics variant
    out of the envelope (a held-out legitimate run, as the compare stage's `judge` does; benchmarks only)."""
    from cait.errors import HarnessError
    from pipelines.baselines import load_baseline, refusals

    cfg = params.compare
    if not cfg.fail_fast.enabled:
        return None, ""
    off = "fail fast does not stop this run: "
    if "envelope" not in cfg.gate:
        return None, off + "the envelope rule does not gate (compare.gate), so no single step decides the verdict"
    fraction = cfg.rules.envelope.max_outside_fraction
    if fraction > 0:
        return None, (off + f"compare.rules.envelope.max_outside_fraction is {fraction:g}, so a run with steps outside "
                      f"may still pass; only 0 makes one step decide")
    try:
        baseline = load_baseline(cfg.baseline, allow_negative_loss=cfg.allow_negative_loss)
    except HarnessError as exc:
        return None, off + f"no baseline to judge steps by ({exc})"
    refused = refusals(baseline, params.profile, record)
    if refused:
        return None, off + f"the baseline cannot judge it ({refused[0]}), so its verdict is not a certain fail"
    width, reference, missing = envelope_sides(baseline, precision, exclude)
    if width is None:
        return None, off + (missing or "the baseline has no envelope")
    paired, _ = baseline.reference_for(params.train.seed)
    reference = paired.loss if reference is None else reference
    if not (np.all(np.isfinite(width)) and np.all(np.isfinite(reference))):
        return None, off + "the baseline's envelope is not finite (the verdict would be inconclusive)"
    judged = int(np.sum(np.asarray(baseline.steps) < total_steps))
    if judged < cfg.min_steps:
        return None, off + (f"a full run would have {judged} step(s) to judge, fewer than compare.min_steps "
                            f"{cfg.min_steps} (inconclusive, never fail)")
    watch = FailFastWatch(np.asarray(baseline.steps), np.asarray(reference, dtype=np.float64),
                          np.asarray(width, dtype=np.float64), cfg.rules.envelope.model_dump(),
                          cfg.fail_fast.confirm_steps)
    return watch, (f"fail fast on: each step judged against {cfg.baseline} by the envelope rule; the run stops "
                   f"{cfg.fail_fast.confirm_steps} step(s) after the first step outside")
