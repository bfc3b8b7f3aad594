"""Localize: from a failing curve to the first module (or phase) whose fingerprints leave the tolerance.

Pure numpy over two fingerprint files (cait/fingerprints.py): the candidate's and the baseline's. The
baseline's file also carries, per entry, how far each legitimate numerics variant of the envelope runs
moved it (`spread`: relative L2 error from the reference run). An entry leaves the tolerance when

    rel_l2(candidate, reference) > k x max over variants(spread) + floor

(an update by the relative error of its bulk instead, `bulk_error`: a few elements whose first AdamW step flips
sign are no bug, BULK_PHASES; for the update, the spread is at least the update's float32 resolution, EPS32 x (|weights| + |update|) /
|update|: an update is a difference of two float32 tensors; for an entry the reference computes in bf16 or fp16,
and for the update of a parameter whose gradient it computes so, at least that format's resolution, FORMAT_EPS:
a tensor rounded to bf16 moves by a whole bf16 ulp wherever anything before it differs). The first such entry is
named, walking the fingerprint steps in order and, within a step, the phases in
the order the step computes them: weights before the step, forward (modules in execution order),
backward (output gradients in the order backward reaches them, then parameter gradients), the optimizer
update. A module that ran on one side only, or other shapes, or non-finite values the reference does not
have, count as leaving it. When an earlier fingerprint step agrees everywhere and a later one does not,
the divergence accumulated in between: the later step's first entry is not where it started, and the
result says to replay the step where the curves part (`python -m pipelines.stages.localize replay`).

Metrics, msprobe-style: cosine similarity, relative L2 error, max absolute and max relative error.
They are computed on the whole tensors when both files kept them (train.fingerprints.whole_tensors) and
on the sketches otherwise (then max errors are over the sketch's buckets: an estimate).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cait.errors import RecordError
from cait.fingerprints import PHASES, PRECISIONS, STATS, FingerprintMismatch, Fingerprints, PhasePrints, load
from pipelines.params import diff_keys
from pipelines.provenance import file_sha256, read_record

PHASE_LABELS = {"weights": "weights before the step", "forward": "forward (module outputs)",
                "backward": "backward (output gradients)", "param_grad": "backward (parameter gradients)",
                "update": "optimizer update"}
PARAMETER_PHASES = ("weights", "param_grad", "update")  # entries are parameters, named module.attribute
# what must agree for two fingerprint files to be compared, in the order a difference is reported
COMPATIBLE = ("schema", "model", "profile", "params_hash", "world_size", "global_batch", "sketch_dim")
# Norms below this are zero: a zero bias nudged by one ulp (1e-45) is not an infinite relative error. Far
# below any norm that carries information (float32 gradients of a trained model are >= 1e-10 where not zero).
NORM_FLOOR = 1e-12
# An update is recorded as (weights after) - (weights before), both float32: wherever two runs' steps differ at
# all, their rounded new weights can differ by an ulp of the new weights, up to EPS32 x |w + update| per element.
# Relative to the update that is EPS32 x (|w| + |update|) / |update|: the update's own resolution, the least
# spread it can show.
EPS32 = float(np.finfo(np.float32).eps)
STAT_L2, STAT_NONFINITE = STATS.index("l2"), STATS.index("nonfinite")

# A tensor went through a format when at least this share of its nonzero elements fits the format's mantissa: one
# that did has all of them (1.0), one computed in float32 fits bf16 by chance at 2^-16 and fp16 at 2^-13. The
# midpoint of the two, not a fitted number (cait/fingerprints.py precision_shares).
WENT_THROUGH = 0.5
# Tensors of fewer elements are not judged: they are per-head biases and scalars, and some of their step-0 gradients
# are rounding residue (proj_l.bias of talking heads: mathematically zero, softmax being shift-invariant), whose few
# significant bits fit any format. Measured: the fp32 reference's 24 proj_l.bias gradients (4 elements) fit fp16
# to 75-100%, a legitimate run's to 0-25% (benchmarks/README.md, the precision rule).
MIN_JUDGED_ELEMENTS = 64
LOW_FORMAT = {"fp32": "fp16", "tf32": "fp16", "bf16": "bf16", "fp16": "fp16"}  # the format a policy must not drop to
# The phases whose tensors a precision is computed in. Not the update: it is recorded as (weights after) - (weights
# before), a difference of two float32 tensors whose significant bits are those of |update| / ulp(weights), so an
# update much smaller than its weights fits bf16 whatever precision the optimizer computed it in (measured: AdamW
# with eps inside the root, a 100x smaller first update, "fits" bf16 in 43 parameters).
PRECISION_PHASES = ("weights", "forward", "backward", "param_grad")


@dataclass
class Divergence:
    """One entry that leaves the tolerance (or does not match structurally)."""

    step: int
    phase: str
    entry: str  # the module (forward/backward) or parameter name
    module: str  # the module it belongs to ("" for a model-level parameter such as cls_token)
    kind: str  # "tolerance" | "missing" (ran in the reference only) | "extra" | "shape" | "nonfinite"
    rel_l2: float = float("nan")
    cosine: float = float("nan")
    max_abs_error: float = float("nan")
    max_rel_error: float = float("nan")
    tolerance: float = float("nan")
    spread: float = float("nan")  # the envelope variants' largest relative error at this entry
    exact: bool = False  # metrics from whole tensors (else from sketches)
    bulk_error: float = float("nan")  # the bulk's relative error (bulk_error): what an update is judged by


@dataclass
class Localization:
    status: str  # "clean" | "diverged" | "unavailable"
    message: str
    first: Divergence | None = None
    accumulated: bool = False  # an earlier fingerprint step agreed everywhere
    steps: list[int] = field(default_factory=list)  # the fingerprint steps both sides have
    phase_firsts: dict = field(default_factory=dict)  # {step: {phase: Divergence | None}}
    strip: dict = field(default_factory=dict)  # {phase: {"names": [...], "ratio": [...]}} at the named step
    k: float = 0.0
    floor: float = 0.0
    exclude: str | None = None
    floor_only: bool = False  # the reference has no envelope runs: every tolerance is the floor alone

    def to_json(self) -> dict:
        out = asdict(self)
        out["phase_firsts"] = {str(s): {p: (asdict(d) if d else None) for p, d in phases.items()}
                               for s, phases in self.phase_firsts.items()}
        return _finite(out)


def _finite(obj):
    """JSON has no NaN/inf: write them as strings the reader turns back (json's own would be invalid JSON)."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def module_of(phase: str, entry: str) -> str:
    """The module an entry belongs to: a parameter's owner, a module output's own name (call suffix dropped)."""
    if phase in PARAMETER_PHASES:
        return entry.rpartition(".")[0]
    return entry.partition("#")[0]


# ---- compatibility --------------------------------------------------------------------------------------

def check_compatible(candidate: Fingerprints, reference: Fingerprints, candidate_source: str,
                     reference_source: str) -> None:
    """Refuse fingerprints of another model, profile, params, world size or sketch, naming what differs."""
    for key in COMPATIBLE:
        mine, theirs = candidate.meta.get(key), reference.meta.get(key)
        if mine == theirs:
            continue
        if key == "params_hash":
            keys = diff_keys(candidate.meta.get("curve_params"), reference.meta.get("curve_params"))
            shown = ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
            raise FingerprintMismatch(f"{candidate_source}: made with other params than {reference_source} "
                                   f"({shown or 'params hash'} differ); record both with the same params")
        raise FingerprintMismatch(f"{candidate_source}: {key} {mine!r}, but {reference_source} has {theirs!r}; "
                               f"fingerprints compare only runs of the same {key}")
    mine, theirs = candidate.meta.get("precision"), reference.meta.get("precision")
    if mine and theirs and mine != theirs:  # older files do not say theirs: nothing to check against
        raise FingerprintError(f"{candidate_source}: ran under the {mine} precision policy, {reference_source} is of "
                               f"the {theirs} policy; its tolerance is that policy's, so layers are not compared")


# ---- metrics --------------------------------------------------------------------------------------------

def compare_arrays(a: np.ndarray, b: np.ndarray) -> dict:
    """rel_l2, cosine, max_abs_error, max_rel_error of a against the reference b (flattened, in float64); a
    non-finite a is an infinite error. Localize's metrics, and the op search's (pipelines/oplocate.py)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    diff = a - b
    norm_b, norm_a, norm_d = float(np.linalg.norm(b)), float(np.linalg.norm(a)), float(np.linalg.norm(diff))
    if not np.isfinite(norm_a):
        return {"rel_l2": float("inf"), "cosine": float("nan"), "max_abs_error": float("inf"),
                "max_rel_error": float("inf")}
    cosine = float(a @ b) / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else (1.0 if norm_d == 0 else 0.0)
    max_abs = float(np.abs(diff).max()) if diff.size else 0.0
    max_rel = max_abs / max(float(np.abs(b).max()) if b.size else 0.0, NORM_FLOOR)
    return {"rel_l2": norm_d / max(norm_b, NORM_FLOOR), "cosine": cosine, "max_abs_error": max_abs,
            "max_rel_error": max_rel}


MAD_TO_SIGMA = 1.4826  # median |x| of a normal x is 0.6745 sigma: 1 / 0.6745


def bulk_error(a: np.ndarray, b: np.ndarray, occupied: int | None = None) -> float:
    """The relative error of the bulk of the elements: MAD_TO_SIGMA x median |a - b| over rms(b), over the first
    `occupied` values (a sketch's buckets that hold elements; all when None). Where the difference is spread over
    the tensor it estimates the relative L2 error; a difference in fewer than half of the values (or buckets) does
    not move it. The update is judged by it (BULK_PHASES); an infinite error for a non-finite a."""
    a = np.asarray(a, dtype=np.float64).ravel()[:occupied]
    b = np.asarray(b, dtype=np.float64).ravel()[:occupied]
    if not a.size:
        return 0.0
    if not np.isfinite(a).all():
        return float("inf")
    rms = float(np.linalg.norm(b)) / np.sqrt(b.size)
    return MAD_TO_SIGMA * float(np.median(np.abs(a - b))) / max(rms, NORM_FLOOR)


def occupied_buckets(shape: list[int], dim: int) -> int:
    """How many of a sketch's `dim` buckets hold elements of a tensor of `shape` (cait/fingerprints.py: equal
    groups of ceil(n / dim) elements, the last ones padded with zeros)."""
    n = int(np.prod(shape)) if shape else 1
    return -(-n // -(-n // dim)) if n else 0


def _metrics(cand: PhasePrints, ref: PhasePrints, i: int, j: int) -> tuple[float, float, float, float, bool, float]:
    """(rel_l2, cosine, max_abs_error, max_rel_error, exact, bulk_error) of candidate entry i against reference
    entry j."""
    if cand.whole is not None and ref.whole is not None:
        a, b, exact, occupied = cand.whole[i], ref.whole[j], True, None
    else:
        a, b, exact = cand.sketch[i], ref.sketch[j], False
        occupied = occupied_buckets(ref.shapes[j], ref.sketch.shape[1])
    m = compare_arrays(a, b)
    return m["rel_l2"], m["cosine"], m["max_abs_error"], m["max_rel_error"], exact, bulk_error(a, b, occupied)


def relative_errors(cand: PhasePrints, ref: PhasePrints) -> np.ndarray:
    """rel_l2 of every reference entry (NaN where the candidate lacks it or has another shape)."""
    index = cand.index()
    out = np.full(len(ref.names), np.nan)
    for j, name in enumerate(ref.names):
        i = index.get(name)
        if i is not None and cand.shapes[i] == ref.shapes[j]:
            out[j] = _metrics(cand, ref, i, j)[0]
    return out


# ---- the baseline's tolerance ------------------------------------------------------------------------------

def with_spread(reference: Fingerprints, variants: dict[str, Fingerprints]) -> Fingerprints:
    """The reference run's fingerprints with each envelope variant's relative error per entry attached."""
    names = list(variants)
    for name, prints in variants.items():
        check_compatible(prints, reference, f"envelope run {name}", "the reference run")
    spread: dict[int, dict[str, np.ndarray]] = {}
    for step, phases in reference.steps.items():
        for phase, ref in phases.items():
            rows = []
            for name in names:
                other = variants[name].steps.get(step, {}).get(phase)
                rows.append(relative_errors(other, ref) if other is not None else np.full(len(ref.names), np.nan))
            spread.setdefault(step, {})[phase] = np.array(rows).reshape(len(names), len(ref.names))
    meta = {**reference.meta, "envelope_variants": names}
    return Fingerprints(meta, reference.steps, spread)


def update_resolution(baseline: Fingerprints, step: int) -> np.ndarray:
    """Per update entry: EPS32 x (|weights| + |update|) / |update| of the reference run (see EPS32); 0 where
    unknown."""
    update = baseline.steps[step]["update"]
    weights = baseline.steps[step].get("weights")
    out = np.zeros(len(update.names))
    if weights is None:
        return out
    index = weights.index()
    for j, name in enumerate(update.names):
        i = index.get(name)
        norm = update.stats[j, STAT_L2]
        if i is not None and norm > NORM_FLOOR:
            out[j] = EPS32 * (weights.stats[i, STAT_L2] + norm) / norm
    return out


# The phases judged by the bulk of their elements (bulk_error) rather than the relative L2 error. The update: AdamW's
# first steps are ~lr x sign(g) per element, so a gradient element within its own rounding of zero can take either
# sign and move its update by 2 lr, however small the gradient's difference (measured under bf16: one such element
# of a 192-element LayerScale gamma is a relative L2 error of 0.16 in a legitimate run of other kernels). A handful
# of flips touch a few buckets; an optimizer or schedule bug (lr, bias correction, eps, weight decay, state in bf16)
# changes every element. Blind, by design, to an update bug confined to fewer than half of a tensor's buckets.
BULK_PHASES = ("update",)
FORMAT_EPS = {"bf16": 2.0 ** -7, "fp16": 2.0 ** -10}  # a format's ulp relative to 1: its rounding's resolution


def format_resolution(baseline: Fingerprints, step: int, phase: str) -> np.ndarray:
    """Per entry the reference computes in a low format (its precision shares, WENT_THROUGH): that format's
    resolution, FORMAT_EPS; 0 for float32 entries and where the file has no shares. A tensor rounded to bf16
    either keeps a small difference from its inputs out or moves by a whole bf16 ulp: wherever two runs' bf16
    tensors differ at all, each element can differ by up to one ulp of it, a relative L2 error up to 2^-7, however
    small the difference that tipped the rounding (as EPS32 is the update's resolution)."""
    pp = baseline.steps[step][phase]
    out = np.zeros(len(pp.names))
    if pp.precision is None:
        return out
    for fmt in reversed(PRECISIONS):  # the coarsest format an entry went through sets its resolution
        went = pp.precision[:, PRECISIONS.index(fmt)] >= WENT_THROUGH  # NaN (no nonzero element): False
        out = np.where(went, FORMAT_EPS[fmt], out)
    return out


def tolerance(baseline: Fingerprints, step: int, phase: str, k: float, floor: float,
              exclude: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(tolerance, spread) per reference entry: k x the largest variant error + floor, where for the update
    the spread is at least the update's float32 resolution (update_resolution). `exclude` leaves one variant
    out (a legit run judged held out); no variants: the floor alone (and the update's resolution)."""
    n = len(baseline.steps[step][phase].names)
    rows = baseline.spread.get(step, {}).get(phase)
    if rows is None or rows.shape[0] == 0:
        spread = np.zeros(n)
    else:
        keep = [i for i, name in enumerate(baseline.variants) if name != exclude]
        chosen = rows[keep] if keep else np.zeros((1, n))
        spread = np.where(np.isnan(chosen), 0.0, chosen).max(axis=0)  # a variant without the entry adds none
    if phase == "update":
        spread = np.maximum(spread, update_resolution(baseline, step))
        grads = baseline.steps[step].get("param_grad")
        if grads is not None:  # AdamW's step is a function of the gradient of relative condition <= 1 (m / sqrt(v)):
            # a gradient computed in bf16 moves its update by up to the gradient's own resolution
            index, of_grads = grads.index(), format_resolution(baseline, step, "param_grad")
            names = baseline.steps[step][phase].names
            spread = np.maximum(spread, [of_grads[index[n]] if n in index else 0.0 for n in names])
    else:
        spread = np.maximum(spread, format_resolution(baseline, step, phase))
    return k * spread + floor, spread


# ---- localize -------------------------------------------------------------------------------------------

def _phase_divergences(step: int, phase: str, cand: PhasePrints, ref: PhasePrints, tol: np.ndarray,
                       spread: np.ndarray) -> tuple[list[Divergence], np.ndarray]:
    """Every divergence of one phase in the reference's order (candidate-only entries after), and the
    per-entry ratio rel_l2 / tolerance (inf where structural)."""
    index = cand.index()
    out: list[Divergence] = []
    ratio = np.zeros(len(ref.names))
    for j, name in enumerate(ref.names):
        base = dict(step=step, phase=phase, entry=name, module=module_of(phase, name),
                    tolerance=float(tol[j]), spread=float(spread[j]))
        i = index.get(name)
        if i is None:
            out.append(Divergence(kind="missing", **base))
            ratio[j] = np.inf
            continue
        if cand.shapes[i] != ref.shapes[j]:
            out.append(Divergence(kind="shape", **base))
            ratio[j] = np.inf
            continue
        rel, cosine, max_abs, max_rel, exact, bulk = _metrics(cand, ref, i, j)
        judged = bulk if phase in BULK_PHASES else rel
        new_nonfinite = cand.stats[i, STAT_NONFINITE] > ref.stats[j, STAT_NONFINITE]
        ratio[j] = (judged / tol[j] if 0 < tol[j] < np.inf
                    else (0.0 if judged == 0 or tol[j] == np.inf else np.inf))
        if new_nonfinite or not judged <= tol[j]:
            out.append(Divergence(kind="nonfinite" if new_nonfinite else "tolerance", rel_l2=rel, cosine=cosine,
                                  max_abs_error=max_abs, max_rel_error=max_rel, exact=exact, bulk_error=bulk,
                                  **base))
    known = set(ref.names)
    for name in cand.names:
        if name not in known:
            out.append(Divergence(step=step, phase=phase, entry=name, module=module_of(phase, name), kind="extra"))
    return out, ratio


def localize(candidate: Fingerprints, baseline: Fingerprints, *, k: float, floor: float,
             exclude: str | None = None, candidate_source: str = "candidate fingerprints",
             baseline_source: str = "baseline fingerprints", only_steps=None) -> Localization:
    """Compare phase by phase, step by step; name the first entry that leaves the tolerance. `only_steps`: judge
    these fingerprint steps only (the layers rule: layers_check)."""
    check_compatible(candidate, baseline, candidate_source, baseline_source)
    steps = sorted(set(candidate.steps) & set(baseline.steps))
    if only_steps is not None:
        steps = sorted(set(steps) & set(only_steps))
    result = Localization("unavailable", "", steps=steps, k=k, floor=floor, exclude=exclude,
                          floor_only=not [v for v in baseline.variants if v != exclude])
    if not steps:
        result.message = (f"no fingerprint step in common: {candidate_source} has {sorted(candidate.steps)}, "
                          f"{baseline_source} {sorted(baseline.steps)}; record the same train.fingerprints.steps")
        return result
    clean_steps: list[int] = []
    for step in steps:
        firsts: dict[str, Divergence | None] = {}
        strip: dict = {}
        for phase in PHASES:
            ref = baseline.steps[step].get(phase)
            cand = candidate.steps[step].get(phase)
            if ref is None or cand is None:
                continue
            tol, spread = tolerance(baseline, step, phase, k, floor, exclude)
            divergences, ratio = _phase_divergences(step, phase, cand, ref, tol, spread)
            firsts[phase] = divergences[0] if divergences else None
            strip[phase] = {"names": list(ref.names), "ratio": [float(r) for r in ratio]}
        result.phase_firsts[step] = firsts
        first = next((d for d in firsts.values() if d is not None), None)
        if first is None:
            clean_steps.append(step)
            if step == steps[-1] and result.first is None:
                result.strip = strip
            continue
        result.status, result.first, result.strip = "diverged", first, strip
        result.accumulated = bool(clean_steps)
        break
    if result.first is None:
        result.status = "clean"
    result.message = describe(result)
    return result


def _where(d: Divergence) -> str:
    what = "parameter" if d.phase in PARAMETER_PHASES else "module"
    return f"{what} {d.entry}"


def describe(result: Localization) -> str:
    """One line: where the fingerprints part, or that they agree."""
    if result.status == "unavailable":
        return result.message
    steps = ", ".join(str(s) for s in result.steps)
    if result.first is None:
        if result.floor_only:
            return (f"fingerprints agree within the floor at step(s) {steps} in every phase (the reference has no "
                    f"envelope runs)")
        return f"fingerprints agree within the envelope at step(s) {steps} in every phase"
    d = result.first
    if d.kind == "tolerance" and d.phase in BULK_PHASES:
        how = (f"bulk relative error {d.bulk_error:.3g} against {d.tolerance:.3g} allowed (k x envelope "
               f"{d.spread:.3g} + floor), relative L2 error {d.rel_l2:.3g}, cosine {d.cosine:.6f}")
    elif d.kind == "tolerance":
        how = (f"relative L2 error {d.rel_l2:.3g} against {d.tolerance:.3g} allowed (k x envelope {d.spread:.3g} + "
               f"floor), cosine {d.cosine:.6f}")
    elif d.kind == "nonfinite":
        how = "non-finite values the reference does not have"
    else:
        how = {"missing": "ran in the reference run only", "extra": "ran in the candidate only",
               "shape": "has another shape than in the reference run"}[d.kind]
    earlier = [p for p in PHASES if p in result.phase_firsts.get(d.step, {}) and PHASES.index(p) < PHASES.index(d.phase)]
    agree = f" ({', '.join(earlier)} agree)" if earlier else ""
    line = f"step {d.step}, {PHASE_LABELS[d.phase]}{agree}: {_where(d)} leaves the tolerance first: {how}"
    if d.phase == "update":
        line += "; weights, forward and backward agree, so look at the optimizer and the lr schedule"
    if result.floor_only:
        line += "; the reference has no envelope runs, so every tolerance is the floor alone"
    if result.accumulated:
        line += (f"; every phase agreed at step(s) {', '.join(str(s) for s in result.steps if s < d.step)}, so "
                 f"the divergence accumulated in between: replay the step where the curves part to find where "
                 f"it starts")
    return line


# ---- precision: which format each tensor went through ----------------------------------------------------------

@dataclass
class PrecisionChange:
    step: int
    phase: str
    entry: str
    module: str
    reference_share: float  # share of the reference's nonzero elements that fit the format
    candidate_share: float


@dataclass
class PrecisionCheck:
    """Where the candidate computed in a lower precision than the reference (`lost`), or a higher one (`gained`),
    tensor by tensor at the fingerprint steps both files have. status: "clean" | "lost" | "unavailable"."""

    status: str
    message: str
    format: str = ""  # the format judged: bf16 or fp16 (fp16's 10 mantissa bits also hold every bf16 value)
    lost: list[PrecisionChange] = field(default_factory=list)
    gained: list[PrecisionChange] = field(default_factory=list)
    entries: int = 0  # tensors judged
    threshold: float = WENT_THROUGH  # the share at or above which a tensor went through the format

    def to_json(self) -> dict:
        return _finite(asdict(self))


def precision_changes(candidate: Fingerprints, reference: Fingerprints, policy: str) -> PrecisionCheck:
    """Every tensor the reference computes in float32 (its share of `policy`'s low format below WENT_THROUGH) that
    the candidate computed in the low format (its share at or above it): a master weight, a gradient, a LayerNorm
    kept in bf16 where the policy keeps float32 (PRECISION_PHASES: the update is a difference, not a computation).
    The reverse (a precision gain: a device whose autocast keeps an op in float32) is listed, never a loss. Tensors with no nonzero element or fewer than MIN_JUDGED_ELEMENTS, and
    files recorded before precision shares existed, judge nothing (then status "unavailable", saying which file)."""
    low = LOW_FORMAT.get(policy)
    if low is None:
        return PrecisionCheck("unavailable", f"no low format is known for the precision policy {policy!r}")
    col = PRECISIONS.index(low)
    out = PrecisionCheck("clean", "", format=low)
    missing = []
    for step in sorted(set(candidate.steps) & set(reference.steps)):
        for phase in PRECISION_PHASES:
            cand, ref = candidate.steps[step].get(phase), reference.steps[step].get(phase)
            if cand is None or ref is None:
                continue
            if cand.precision is None or ref.precision is None:
                missing.append("candidate" if cand.precision is None else "reference")
                continue
            theirs = ref.index()
            for i, name in enumerate(cand.names):
                j = theirs.get(name)
                if j is None or int(np.prod(cand.shapes[i])) < MIN_JUDGED_ELEMENTS:
                    continue
                c, r = float(cand.precision[i, col]), float(ref.precision[j, col])
                if np.isnan(c) or np.isnan(r):
                    continue
                out.entries += 1
                change = PrecisionChange(step, phase, name, module_of(phase, name), r, c)
                if r < WENT_THROUGH <= c:
                    out.lost.append(change)
                elif c < WENT_THROUGH <= r:
                    out.gained.append(change)
    if not out.entries:
        side = missing[0] if missing else "either file"
        return PrecisionCheck("unavailable", f"no tensor to judge: the {side}'s fingerprints have no precision shares "
                                             f"(recorded before they existed)", format=low)
    gained = (f"; {len(out.gained)} computed in a higher precision than the reference (first: "
              f"{_change(out.gained[0])}), which is no loss" if out.gained else "")
    if out.lost:
        out.status = "lost"
        out.message = (f"{len(out.lost)} of {out.entries} tensors computed in {low} where the reference keeps float32; "
                       f"first: {_change(out.lost[0])}{gained}")
    else:
        out.message = f"no tensor computed in {low} where the reference keeps float32 ({out.entries} judged){gained}"
    return out


def _change(c: PrecisionChange) -> str:
    return (f"step {c.step} {c.phase} {c.entry} ({c.candidate_share:.0%} of its elements fit, reference "
            f"{c.reference_share:.0%})")


def loss_digest(loss: np.ndarray) -> str:
    """SHA-256 of a baseline's reference loss (float64 bytes): ties a fingerprint file to its baseline."""
    return hashlib.sha256(np.ascontiguousarray(loss, dtype=np.float64).tobytes()).hexdigest()


# ---- reading a run's file -------------------------------------------------------------------------------------

def read_run_fingerprints(fingerprints_path: Path | str, record_path: Path | str) -> Fingerprints:
    """(The one function here that reads files.) A train run's layer fingerprints, checked against the record beside them as a curve is (`read_run`): the
    record names the file's SHA-256 (fingerprints_sha256), so another run's file dropped into the folder (a
    port-bug run's beside a passing curve, or the reverse) is refused, never localized as this run's."""
    fingerprints_path = Path(fingerprints_path)
    record = read_record(record_path)
    expected = record.get("fingerprints_sha256")
    if not isinstance(expected, str):
        raise RecordError(f"{record_path}: run record lacks fingerprints_sha256 (written by an older harness); rerun "
                          f"the train stage (dvc repro -f train)")
    if fingerprints_path.is_file():
        actual = file_sha256(fingerprints_path)
        if actual != expected:
            raise RecordError(f"{fingerprints_path}: SHA-256 {actual[:12]}, but {record_path} names {expected[:12]} "
                              f"(fingerprints_sha256: edited, corrupt or another run's file); rerun the train stage "
                              f"(dvc repro -f train)")
    return load(fingerprints_path)


def baseline_fingerprints(params, baseline=None):
    """The baseline's fingerprints, checked to belong to compare.baseline (`baseline`: that file already loaded,
    pipelines/baselines.py Baseline); (prints, path) or (None, why)."""
    path = Path(params.localize.baseline_fingerprints)
    if not path.exists():
        return None, (f"{path}: the baseline has no layer fingerprints; record them with the baseline "
                      f"(make baseline) to localize a failing run")
    from cait.fingerprints import load_reference
    from pipelines.baselines import load_baseline

    prints = load_reference(path)
    if baseline is None:
        baseline = load_baseline(params.compare.baseline, allow_negative_loss=params.compare.allow_negative_loss)
    if prints.meta.get("baseline_loss_sha256") != loss_digest(baseline.loss):
        raise FingerprintMismatch(f"{path}: belongs to another baseline than {params.compare.baseline} (its reference "
                               f"loss differs); record both together (make baseline) or point "
                               f"localize.baseline_fingerprints at the right file")
    return prints, str(path)


def chain_fingerprints(params, run_folder: Path | str, baseline=None):
    """The train run's fingerprints (checked against its record) and the baseline's (checked to belong to
    compare.baseline, `baseline` that file already loaded), compatible with each other: (candidate, reference,
    reference_path), or (None, None, why) where either has none or they cannot be compared. A file that is
    corrupt or lies is an error."""
    from pipelines.layout import FINGERPRINTS, RECORD

    run_folder = Path(run_folder)
    if not (run_folder / FINGERPRINTS).exists():
        return None, None, (f"{run_folder / FINGERPRINTS}: the run recorded no layer fingerprints "
                            f"(train.fingerprints.steps is empty)")
    candidate = read_run_fingerprints(run_folder / FINGERPRINTS, run_folder / RECORD)
    try:  # fingerprints of another baseline, model or params: not comparable, said (a corrupt file stops it)
        reference, where = baseline_fingerprints(params, baseline)
        if reference is None:
            return None, None, where
        check_compatible(candidate, reference, str(run_folder / FINGERPRINTS), where)
    except FingerprintMismatch as exc:
        return None, None, f"not compared: {exc}"
    return candidate, reference, where


# The step the layers rule judges: one step's computation from the same weights and batch, before anything has
# accumulated (later fingerprint steps are localize's, to name where a divergence grew, not to gate).
LAYERS_STEP = 0


def layers_check(candidate: Fingerprints, reference: Fingerprints, *, k: float, floor: float,
                 exclude: str | None = None, candidate_source: str = "candidate fingerprints",
                 baseline_source: str = "baseline fingerprints") -> Localization:
    """What the layers rule judges: `localize` at LAYERS_STEP alone (the compare stage with localize.k and floor;
    `exclude` a held-out variant)."""
    return localize(candidate, reference, k=k, floor=floor, exclude=exclude, candidate_source=candidate_source,
                    baseline_source=baseline_source, only_steps=[LAYERS_STEP])


def judge_fingerprints(params, run_folder: Path | str, policy: str, baseline=None) -> tuple[dict, dict]:
    """The chain's fingerprint checks (compare stage), from one read of both files (chain_fingerprints): the precision
    check (`precision_changes` under `policy`) and the layers check (`layers_check` with localize.k and floor), as
    JSON; each status "unavailable", saying why, where the files cannot be compared."""
    candidate, reference, where = chain_fingerprints(params, run_folder, baseline)
    if candidate is None:
        return PrecisionCheck("unavailable", where).to_json(), Localization("unavailable", where).to_json()
    layers = layers_check(candidate, reference, k=params.localize.k, floor=params.localize.floor,
                          candidate_source=str(run_folder), baseline_source=where)
    return precision_changes(candidate, reference, policy).to_json(), layers.to_json()
