"""Alignment of two curves on their step numbers, with every dropped or interpolated step stated.

Curves logged at different intervals or for different lengths cannot be compared by position (that
is what ModelZoo's script does, and it pairs step 10 of one run with step 5 of the other when the
intervals differ). Two modes, chosen by `compare.alignment` in params.yaml:

- `steps`: only the step numbers both curves logged are compared; the others are dropped.
- `interpolate`: the baseline is interpolated linearly at the candidate's steps inside the
  baseline's step range; candidate steps outside it are dropped.

Either way, the `Alignment` lists what was dropped or interpolated so the verdict can say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cait.errors import BaselineError

ALIGNMENT_MODES = ("steps", "interpolate")
SHOWN_STEPS = 10  # how many step numbers a note lists before "..."


@dataclass
class Alignment:
    mode: str
    steps: np.ndarray  # the compared step numbers
    candidate: np.ndarray
    baseline: np.ndarray
    baseline_extra: dict[str, np.ndarray] = field(default_factory=dict)  # per-step baseline stats, aligned too
    dropped_candidate: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))
    dropped_baseline: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))
    interpolated: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.steps)

    def notes(self) -> list[str]:
        """One sentence per kind of change made to the curves; empty when they were compared as logged."""
        out = []
        if len(self.dropped_candidate):
            out.append(f"dropped {len(self.dropped_candidate)} candidate step(s) the baseline does not cover: "
                       f"{_show(self.dropped_candidate)}")
        if len(self.dropped_baseline):
            out.append(f"dropped {len(self.dropped_baseline)} baseline step(s) the candidate does not cover: "
                       f"{_show(self.dropped_baseline)}")
        if len(self.interpolated):
            out.append(f"interpolated the baseline linearly at {len(self.interpolated)} candidate step(s) it did "
                       f"not log: {_show(self.interpolated)}")
        return out

    def to_dict(self) -> dict:
        return {"mode": self.mode, "compared_steps": len(self.steps),
                "first_step": int(self.steps[0]) if len(self.steps) else None,
                "last_step": int(self.steps[-1]) if len(self.steps) else None,
                "dropped_candidate_steps": [int(s) for s in self.dropped_candidate],
                "dropped_baseline_steps": [int(s) for s in self.dropped_baseline],
                "interpolated_steps": [int(s) for s in self.interpolated]}


def _show(steps: np.ndarray) -> str:
    shown = ", ".join(str(int(s)) for s in steps[:SHOWN_STEPS])
    return shown + (f", ... ({len(steps) - SHOWN_STEPS} more)" if len(steps) > SHOWN_STEPS else "")


def check_steps(steps: np.ndarray, label: str) -> np.ndarray:
    """Step numbers must be whole and strictly increasing; anything else is an error naming the curve."""
    steps = np.asarray(steps)
    if steps.ndim != 1:
        raise BaselineError(f"{label}: step numbers must be a flat list")
    if len(steps) and not np.issubdtype(steps.dtype, np.integer):
        if not np.all(np.isfinite(steps)) or np.any(steps != np.round(steps)):
            raise BaselineError(f"{label}: step numbers must be whole numbers")
    steps = steps.astype(np.int64)
    bad = np.flatnonzero(np.diff(steps) <= 0)
    if len(bad):
        i = bad[0]
        raise BaselineError(f"{label}: step numbers must increase strictly, but step {steps[i + 1]} follows "
                            f"{steps[i]} (position {i + 1}); several runs or ranks mixed in one log?")
    return steps


def _member(steps: np.ndarray, sorted_steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask of `steps` found in `sorted_steps`, their positions there): a binary search, since both are
    strictly increasing (np.intersect1d hashes or sorts both again: seconds at 10^6 steps)."""
    if not len(sorted_steps):
        return np.zeros(len(steps), dtype=bool), np.zeros(0, dtype=np.int64)
    at = np.minimum(np.searchsorted(sorted_steps, steps), len(sorted_steps) - 1)
    found = sorted_steps[at] == steps
    return found, at[found]


def align(candidate_steps, candidate, baseline_steps, baseline, mode: str = "steps",
          baseline_extra: dict[str, np.ndarray] | None = None) -> Alignment:
    """Pair the curves on step numbers. `baseline_extra` holds per-step baseline arrays (band mean and
    spread) that must follow the baseline through the same alignment."""
    if mode not in ALIGNMENT_MODES:
        raise ValueError(f"alignment mode {mode!r}: use one of {', '.join(ALIGNMENT_MODES)}")
    cs, bs = check_steps(candidate_steps, "candidate"), check_steps(baseline_steps, "baseline")
    c, b = np.asarray(candidate, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    extra = {k: np.asarray(v, dtype=np.float64) for k, v in (baseline_extra or {}).items()}
    if mode == "steps":
        in_baseline, bi = _member(cs, bs)
        in_candidate = np.zeros(len(bs), dtype=bool)
        in_candidate[bi] = True
        return Alignment(mode, cs[in_baseline], c[in_baseline], b[bi], {k: v[bi] for k, v in extra.items()},
                         dropped_candidate=cs[~in_baseline], dropped_baseline=bs[~in_candidate])
    inside = (cs >= bs[0]) & (cs <= bs[-1]) if len(bs) else np.zeros(len(cs), dtype=bool)
    steps = cs[inside]
    interpolated = steps[~_member(steps, bs)[0]]
    return Alignment(mode, steps, c[inside], np.interp(steps, bs, b) if len(steps) else steps.astype(np.float64),
                     {k: np.interp(steps, bs, v) for k, v in extra.items()} if len(steps) else
                     {k: v[:0] for k, v in extra.items()},
                     dropped_candidate=cs[~inside],
                     dropped_baseline=bs[(bs < cs[0]) | (bs > cs[-1])] if len(cs) else bs,
                     interpolated=interpolated)
