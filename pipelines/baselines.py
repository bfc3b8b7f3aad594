"""Stored reference curves with their provenance: one versioned JSON file per baseline.

A baseline says where its curve came from (device and its name, versions, the params that define
the curve and their hash, the data manifest hash, git commit, date), so that a comparison against a
baseline made under other conditions can be refused instead of silently passing or failing.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cait.errors import BaselineError
from cait.files import atomic_write_text
from pipelines.curves import Curve, first_negative
from pipelines.envelope import NO_ENVELOPE, envelope_width
from pipelines.params import diff_keys, hash_json
from pipelines.verdict import band_limits

# 1: a single run. 2: adds "kind", "runs" (every run's curve at full precision) and "stats" (per-step
# mean, std, min, max) for multi-run baselines, and provenance "seeds" and "seed_in_hash".
# 3: adds "envelope": the reference seed's runs under legitimately different numerics (each variant's
# name, curve and provenance) and the per-step envelope width they give (pipelines/envelope.py).
# 4: adds "checksum": the SHA-256 of the rest of the document (canonical JSON). A single-run baseline has no
# second copy of its numbers, so a flipped digit in its loss read as another curve; now it is refused.
# 5: adds the precision policy: "precision" (of `loss`, its runs and "envelope"), "envelope.policy", "policies"
# (other policies recorded on the device: each a reference run of the reference seed under that policy, its
# variants and width) and "envelope.probe_growth" (ulp-probe growth measured on another device of the same
# profile, params and data: pipelines/envelope.py). The envelope rule judges only against schema 5: a file
# whose policy is unknown cannot say which envelope applies (`baseline upgrade` re-partitions an older one).
SCHEMA_VERSION = 5
ENVELOPE_SCHEMA = 5  # the oldest schema the envelope rule judges against
UPGRADE = "python -m pipelines.stages.baseline upgrade --baseline {path}"
PROVENANCE_FIELDS = ("device", "device_name", "versions", "params_hash", "params", "data_manifest_hash",
                     "git_commit", "date", "seed")
STAT_FIELDS = ("mean", "std", "min", "max")
SEED_KEY = ("train", "seed")


def curve_hash(curve_params: dict, with_seed: bool = True) -> str:
    """Hash of the params that define a curve. A multi-seed baseline describes the spread over seeds, so
    its hash leaves train.seed out (any seed's candidate may be judged against the band); a single-run
    baseline, or repeats of one seed, keep it: another seed is another curve."""
    if with_seed:
        return hash_json(curve_params)
    params = copy.deepcopy(curve_params)
    params.get(SEED_KEY[0], {}).pop(SEED_KEY[1], None)
    return hash_json(params)


@dataclass
class BaselineRun:
    """One of a multi-run baseline's runs: its seed, curve and where it came from."""

    seed: int
    loss: np.ndarray
    source: str = ""
    mlflow_run_id: str = ""


@dataclass
class EnvelopeRun:
    """The reference seed trained again under one legitimately different numerics variant."""

    variant: str
    loss: np.ndarray
    description: str = ""
    source: str = ""
    mlflow_run_id: str = ""
    numerics: dict = field(default_factory=dict)


@dataclass
class PolicyEnvelope:
    """The envelope of a precision policy other than the baseline's own: the reference seed trained under that
    policy (its reference) and under each numerics variant of it."""

    policy: str
    reference: np.ndarray
    runs: list[EnvelopeRun]
    source: str = ""
    numerics: dict = field(default_factory=dict)


@dataclass
class ProbeGrowth:
    """How far training carries a one-ulp change of the initial weights, relative to the loss, per step: the
    running maximum over the ulp probes of another device's baseline of |probe - reference| / |reference|.
    Training amplifies a rounding at a rate that belongs to the model and recipe, not the device (measured:
    benchmarks/README.md), so a device whose own envelope has few variants borrows this growth, times its own
    |reference|, as one more envelope member. `carry` records the check that it carries (the target's own
    probe against the source's, same key)."""

    relative: np.ndarray
    source: str
    source_checksum: str
    device: str
    variants: list[str]
    carry: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"relative": [float(v) for v in self.relative], "source": self.source,
                "source_checksum": self.source_checksum, "device": self.device, "variants": list(self.variants),
                "carry": self.carry}


@dataclass
class Baseline:
    profile: str
    model: str
    steps: np.ndarray
    loss: np.ndarray  # the reference run: the one with provenance["seed"]
    provenance: dict
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)
    runs: list[BaselineRun] = field(default_factory=list)  # empty for a single-run baseline
    envelope_runs: list[EnvelopeRun] = field(default_factory=list)  # empty: no envelope (schema < 3)
    precision: str = ""  # the precision policy of `loss`, `runs` and `envelope_runs`; "" unknown (schema < 5)
    policies: dict[str, PolicyEnvelope] = field(default_factory=dict)  # other precision policies' envelopes
    probe_growth: ProbeGrowth | None = None  # ulp-probe growth borrowed from another device (own policy only)
    path: str = ""  # the file it was read from (not stored in it)

    def envelope(self, exclude: str | None = None) -> np.ndarray | None:
        """Per-step envelope width of the baseline's own policy on `steps` (pipelines/envelope.py), with the
        borrowed probe growth where there is one; None when the baseline has no envelope runs. `exclude` leaves
        one variant out (the power benchmark's held-out legit runs)."""
        if not self.envelope_runs:
            return None
        variants = [r.loss for r in self.envelope_runs if r.variant != exclude]
        if self.probe_growth is not None:
            variants.append(self.loss + self.probe_growth.relative * np.abs(self.loss))
        return envelope_width(self.loss, variants)

    @property
    def envelope_policies(self) -> list[str]:
        """The precision policies this baseline has an envelope for."""
        own = [self.precision] if self.envelope_runs and self.precision else []
        return own + [p for p, e in self.policies.items() if e.runs]

    def policy_envelope(self, policy: str, exclude: str | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(reference, width) a candidate of `policy` is judged against; None when there is none."""
        if policy and policy == self.precision and self.envelope_runs:
            return self.loss, self.envelope(exclude)
        other = self.policies.get(policy)
        if other is None or not other.runs:
            return None
        return other.reference, envelope_width(other.reference, [r.loss for r in other.runs if r.variant != exclude])

    def envelope_missing(self, policy: str | None = None) -> str:
        """Why the envelope rule cannot judge a candidate of `policy` against this baseline ('' when it can)."""
        if not self.envelope_runs:
            return NO_ENVELOPE.format(version=f"v{self.schema_version}")
        if self.schema_version < ENVELOPE_SCHEMA or not self.precision:
            return (f"the baseline is schema {self.schema_version}, which does not say which precision policy its "
                    f"envelope runs ran under (TF32 runs were folded into the fp32 tolerance); upgrade it: "
                    f"`{UPGRADE.format(path=self.path or '<baseline.json>')}` (or record a new one "
                    f"with `make baseline`)")
        if policy is not None and self.policy_envelope(policy) is None:
            how = (f"`python -m pipelines.stages.baseline record --runs 3 --envelope --policies "
                   f"{','.join(dict.fromkeys([*self.envelope_policies, policy]))}` on the reference device"
                   if policy in ("fp32", "tf32") else
                   f"a baseline of its own recorded with train.amp: {policy} (`make baseline` with that profile)")
            return (f"the candidate ran under the {policy} precision policy and the baseline has envelopes for "
                    f"{', '.join(self.envelope_policies)} only; judging it against another policy's tolerance would "
                    f"be too wide or too narrow. Record a {policy} envelope: {how}")
        return ""

    @property
    def curve(self) -> Curve:
        return Curve(self.steps, self.loss)

    @property
    def kind(self) -> str:
        return "multi-run" if len(self.runs) > 1 else "single-run"

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs] if self.runs else [self.provenance["seed"]]

    @property
    def seed_in_hash(self) -> bool:
        return len(set(self.seeds)) <= 1

    def stats(self) -> dict[str, np.ndarray] | None:
        """Per-step mean, std (ddof 1), min and max over the runs; None for a single-run baseline."""
        if len(self.runs) < 2:
            return None
        values = np.stack([r.loss for r in self.runs])
        low, high = values.min(axis=0), values.max(axis=0)
        agree = low == high  # repeats of one seed on a deterministic device: exactly zero spread, exact mean
        return {"mean": np.where(agree, low, values.mean(axis=0)),
                "std": np.where(agree, 0.0, values.std(axis=0, ddof=1)), "min": low, "max": high}

    def band(self, z: float, min_halfwidth_relative: float = 0.0) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-step (lower, upper) = mean +- max(z*sigma, min_halfwidth_relative*|mean|) on `steps`, as the
        band rule uses it; None for a single-run baseline."""
        stats = self.stats()
        return None if stats is None else band_limits(stats["mean"], stats["std"], z, min_halfwidth_relative)

    def reference_for(self, seed: int | None) -> tuple[Curve, str]:
        """The curve a candidate of `seed` is paired with by the modelzoo/strict/trend rules, and a note
        saying which: the run of the same seed if the baseline has one, else the reference run."""
        if seed is not None and len(self.runs) > 1 and seed != self.provenance["seed"]:
            for run in self.runs:
                if run.seed == seed:
                    return Curve(self.steps, run.loss), f"paired with the baseline run of seed {seed}"
            return self.curve, (f"the baseline has no run of seed {seed}; paired with its reference run "
                                f"(seed {self.provenance['seed']})")
        return self.curve, ""

    def to_json(self) -> dict:
        out = {
            "schema_version": self.schema_version,
            "profile": self.profile,
            "model": self.model,
            "kind": self.kind,
            "provenance": self.provenance,
            # full precision: json writes floats with repr(), which round-trips float64 exactly
            "steps": [int(s) for s in self.steps],
            "loss": [float(v) for v in self.loss],
        }
        if len(self.runs) > 1:
            out["runs"] = [{"seed": r.seed, "source": r.source, "mlflow_run_id": r.mlflow_run_id,
                            "loss": [float(v) for v in r.loss]} for r in self.runs]
            out["stats"] = {"runs": len(self.runs),
                            **{k: [float(v) for v in a] for k, a in self.stats().items()}}
        if self.schema_version >= 5:
            out["precision"] = self.precision
        if self.envelope_runs:
            out["envelope"] = {
                **({"policy": self.precision} if self.schema_version >= 5 else {}),
                "variants": _variants_json(self.envelope_runs, self.loss),
                "width": [float(v) for v in self.envelope()]}
            if self.probe_growth is not None:
                out["envelope"]["probe_growth"] = self.probe_growth.to_json()
        if self.policies:
            out["policies"] = {name: {"reference": {"loss": [float(v) for v in e.reference], "source": e.source,
                                                    "numerics": e.numerics},
                                      "variants": _variants_json(e.runs, e.reference),
                                      "width": [float(v) for v in self.policy_envelope(name)[1]]}
                               for name, e in self.policies.items()}
        document = {**out, **self.extra}
        document.pop("checksum", None)
        if self.schema_version >= 4:
            document["checksum"] = document_checksum(document)
        return document


def _variants_json(runs: list[EnvelopeRun], reference: np.ndarray) -> list[dict]:
    return [{"variant": r.variant, "description": r.description, "source": r.source,
             "mlflow_run_id": r.mlflow_run_id, "numerics": r.numerics,
             "bitwise_equal_to_reference": bool(np.array_equal(r.loss, reference)),
             "loss": [float(v) for v in r.loss]} for r in runs]


def _fail(path, what: str) -> BaselineError:
    return BaselineError(f"{path}: {what}; record a new one with `python -m pipelines.stages.baseline record`")


def _numbers(path, values, what: str) -> np.ndarray:
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in values):
        raise _fail(path, f"{what} must be a list of numbers")
    return np.array(values, dtype=np.float64)


def load_baseline(path: Path | str, *, allow_negative_loss: bool = False) -> Baseline:
    """Read and check a baseline file; every structural problem is an error naming the file and field.

    Beyond its structure a baseline must agree with itself (`check_consistency`): a loss below 0 (unless
    compare.allow_negative_loss), a `loss` that is not its reference run's curve, or `stats` that do not
    follow from its runs is an edited or corrupt file, refused before it can judge anything."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BaselineError(
            f"{path}: baseline not found; set compare.baseline in params.yaml or record one with "
            f"`python -m pipelines.stages.baseline record`") from None
    except IsADirectoryError:
        raise BaselineError(f"{path}: is a folder; point compare.baseline at its baseline.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(path, f"not valid JSON ({exc.__class__.__name__} at {getattr(exc, 'pos', '?')}; truncated?)") from None
    return baseline_from_json(data, path, allow_negative_loss=allow_negative_loss)


def baseline_from_json(data, path: Path | str = "baseline", *, allow_negative_loss: bool = False) -> Baseline:
    if not isinstance(data, dict):
        raise _fail(path, "expected a JSON object at the top level")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _fail(path, "missing or non-integer 'schema_version'")
    if version > SCHEMA_VERSION:
        raise BaselineError(f"{path}: schema_version {version} is newer than this harness understands "
                            f"({SCHEMA_VERSION}); update the harness (git pull) to read it")
    if version < 1:
        raise _fail(path, f"schema_version {version} is not a known version (1..{SCHEMA_VERSION})")
    for key, kind in (("profile", str), ("model", str), ("provenance", dict), ("steps", list), ("loss", list)):
        if not isinstance(data.get(key), kind):
            raise _fail(path, f"missing or malformed field {key!r} (expected {kind.__name__})")
    missing = [f for f in PROVENANCE_FIELDS if f not in data["provenance"]]
    if missing:
        raise _fail(path, f"provenance lacks {', '.join(missing)}")
    steps, loss = data["steps"], data["loss"]
    if not loss:
        raise _fail(path, "the curve has no steps")
    if len(steps) != len(loss):
        raise _fail(path, f"'steps' has {len(steps)} entries but 'loss' has {len(loss)}")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in steps):
        raise _fail(path, "'steps' must be whole numbers")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in loss):
        raise _fail(path, "'loss' holds a non-numeric value")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise _fail(path, "'steps' must increase strictly")
    runs = []
    multi_run = version >= 2 and data.get("kind") == "multi-run"
    if not multi_run and ("runs" in data or "stats" in data):  # never drop a file's runs on a misread kind
        raise _fail(path, f"has 'runs' or 'stats' but kind is {data.get('kind')!r} in schema_version {version} "
                          f"(only a multi-run baseline of version 2 or later has them)")
    if multi_run:
        raw_runs = data.get("runs")
        if not isinstance(raw_runs, list) or len(raw_runs) < 2:
            raise _fail(path, "a multi-run baseline needs 'runs' with at least 2 entries")
        for i, run in enumerate(raw_runs):
            if not isinstance(run, dict) or not isinstance(run.get("seed"), int):
                raise _fail(path, f"runs[{i}] needs an integer 'seed' and a 'loss' list")
            values = _numbers(path, run.get("loss"), f"runs[{i}].loss")
            if len(values) != len(steps):
                raise _fail(path, f"runs[{i}].loss has {len(values)} entries but 'steps' has {len(steps)}")
            runs.append(BaselineRun(run["seed"], values, str(run.get("source", "")), str(run.get("mlflow_run_id", ""))))
        stats = data.get("stats")
        if not isinstance(stats, dict) or any(k not in stats for k in STAT_FIELDS):
            raise _fail(path, f"a multi-run baseline needs 'stats' with {', '.join(STAT_FIELDS)}")
        for key in STAT_FIELDS:
            if len(_numbers(path, stats[key], f"stats.{key}")) != len(steps):
                raise _fail(path, f"stats.{key} has {len(stats[key])} entries but 'steps' has {len(steps)}")
    elif data.get("kind", "single-run") not in ("single-run", "multi-run"):
        raise _fail(path, f"unknown kind {data.get('kind')!r} (single-run or multi-run)")
    envelope_runs = _envelope_runs(path, data, len(steps)) if version >= 3 and "envelope" in data else []
    precision, policies, growth = "", {}, None
    if version >= 5:
        precision, policies, growth = _policies(path, data, len(steps))
    known = {"schema_version", "profile", "model", "kind", "provenance", "steps", "loss", "runs", "stats", "envelope",
             "checksum", "precision", "policies"}
    baseline = Baseline(profile=data["profile"], model=data["model"], steps=np.array(steps, dtype=np.int64),
                        loss=np.array(loss, dtype=np.float64), provenance=data["provenance"],
                        schema_version=version, extra={k: v for k, v in data.items() if k not in known}, runs=runs,
                        envelope_runs=envelope_runs, precision=precision, policies=policies, probe_growth=growth)
    baseline.path = str(path)
    check_consistency(baseline, data.get("stats"), path, allow_negative_loss=allow_negative_loss)
    if envelope_runs:  # stored for readers; it must be the one the variant runs give
        stored = _numbers(path, data["envelope"].get("width"), "envelope.width")
        if len(stored) != len(steps) or not np.allclose(stored, baseline.envelope(), rtol=1e-9, atol=0):
            raise _fail(path, "envelope.width does not match the envelope runs (edited by hand?)")
    for name in policies:
        stored = _numbers(path, data["policies"][name].get("width"), f"policies.{name}.width")
        if len(stored) != len(steps) or not np.allclose(stored, baseline.policy_envelope(name)[1], rtol=1e-9, atol=0):
            raise _fail(path, f"policies.{name}.width does not match its variant runs (edited by hand?)")
    if version >= 4:  # last, so that the checks above name what is wrong when they can
        if data.get("checksum") != document_checksum(data):
            raise _fail(path, "checksum does not match the file's contents (edited by hand, or corrupt: restore it "
                              "from git)")
    return baseline


def document_checksum(data: dict) -> str:
    """SHA-256 of a baseline document without its "checksum" field, as canonical JSON."""
    return hash_json({k: v for k, v in data.items() if k != "checksum"})


def _first_difference(a: np.ndarray, b: np.ndarray) -> int | None:
    """Index of the first position where two equal-length arrays differ (NaN equals NaN), else None."""
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    return None if same.all() else int(np.argmin(same))


def check_consistency(baseline: Baseline, stored_stats: dict | None, path, *, allow_negative_loss: bool = False) -> None:
    """Refuse a baseline whose numbers contradict each other, naming the field: every value one edit or
    flipped byte changes is tied to another, so such a file never judges a run as if it were whole.

    - steps are 0, 1, ..., n-1: the train stage logs every step, and every baseline comes from its runs;
    - no loss below 0 (a cross-entropy loss never is) unless `allow_negative_loss`;
    - `loss` is the reference run's curve (the run whose seed is provenance.seed) and the runs' seeds are
      provenance.seeds, in order;
    - `stats` are exactly what `Baseline.stats()` computes from the runs: the same code over the same
      float64 numbers (written with repr(), read back bit for bit) gives the same bits on every machine."""
    steps = baseline.steps
    if (k := _first_difference(steps.astype(np.float64), np.arange(len(steps), dtype=np.float64))) is not None:
        raise _fail(path, f"steps[{k}] is {int(steps[k])}, expected {k}: a baseline logs every step from 0")
    curves = ([("loss", baseline.loss)] + [(f"runs[{i}].loss", run.loss) for i, run in enumerate(baseline.runs)]
              + [(f"envelope.variants[{i}].loss", run.loss) for i, run in enumerate(baseline.envelope_runs)])
    for name, other in baseline.policies.items():
        curves += [(f"policies.{name}.reference.loss", other.reference)]
        curves += [(f"policies.{name}.variants[{i}].loss", run.loss) for i, run in enumerate(other.runs)]
    for field_name, values in curves:
        k = None if allow_negative_loss else first_negative(values)
        if k is not None:
            raise _fail(path, f"{field_name}[{k}] is {float(values[k])!r}, below 0, which a cross-entropy loss never is "
                              f"(corrupt file?; compare.allow_negative_loss: true for a metric that can be negative)")
    if not baseline.runs:
        return
    seed = baseline.provenance.get("seed")
    listed = baseline.provenance.get("seeds")
    if isinstance(listed, list) and listed != baseline.seeds:
        raise _fail(path, f"runs have seeds {baseline.seeds} but provenance.seeds says {listed}")
    reference = next((i for i, run in enumerate(baseline.runs) if run.seed == seed), None)
    if reference is None:
        raise _fail(path, f"provenance.seed {seed!r} names none of the runs (seeds {baseline.seeds}); "
                          f"'loss' must be the curve of one of them")
    if (k := _first_difference(baseline.loss, baseline.runs[reference].loss)) is not None:
        raise _fail(path, f"loss[{k}] is {float(baseline.loss[k])!r} but the reference run (runs[{reference}], seed {seed}) "
                          f"has {float(baseline.runs[reference].loss[k])!r}; 'loss' must be that run's curve")
    if not isinstance(stored_stats, dict):
        raise _fail(path, f"a multi-run baseline needs 'stats' with {', '.join(STAT_FIELDS)}")
    if stored_stats.get("runs", len(baseline.runs)) != len(baseline.runs):
        raise _fail(path, f"stats.runs is {stored_stats.get('runs')!r} but there are {len(baseline.runs)} runs")
    recomputed = baseline.stats()
    for key in STAT_FIELDS:  # per-step stats are stored for readers; they must be exactly those of the runs
        stored = np.array(stored_stats[key], dtype=np.float64)
        if (k := _first_difference(stored, recomputed[key])) is not None:
            raise _fail(path, f"stats.{key}[{k}] is {float(stored[k])!r} but the runs give {float(recomputed[key][k])!r}: "
                              f"stats.{key} does not match the runs (edited by hand?)")


def _envelope_runs(path, data: dict, n_steps: int, where: str = "envelope") -> list[EnvelopeRun]:
    envelope = data["envelope"]
    if not isinstance(envelope, dict) or not isinstance(envelope.get("variants"), list) or not envelope["variants"]:
        raise _fail(path, f"'{where}' needs a non-empty 'variants' list and a 'width'")
    out = []
    for i, run in enumerate(envelope["variants"]):
        if not isinstance(run, dict) or not isinstance(run.get("variant"), str):
            raise _fail(path, f"{where}.variants[{i}] needs a 'variant' name and a 'loss' list")
        values = _numbers(path, run.get("loss"), f"{where}.variants[{i}].loss")
        if len(values) != n_steps:
            raise _fail(path, f"{where}.variants[{i}].loss has {len(values)} entries but 'steps' has {n_steps}")
        if not np.all(np.isfinite(values)):
            raise _fail(path, f"{where}.variants[{i}].loss holds non-finite values")
        out.append(EnvelopeRun(run["variant"], values, str(run.get("description", "")), str(run.get("source", "")),
                               str(run.get("mlflow_run_id", "")), dict(run.get("numerics") or {})))
    return out


def _policies(path, data: dict, n_steps: int) -> tuple[str, dict[str, PolicyEnvelope], ProbeGrowth | None]:
    """Schema 5's precision fields: the baseline's own policy, the other policies' envelopes, the probe growth."""
    from cait.determinism import POLICIES

    precision = data.get("precision")
    if precision not in POLICIES:
        raise _fail(path, f"'precision' is {precision!r}; expected one of {', '.join(POLICIES)}")
    envelope = data.get("envelope")
    if isinstance(envelope, dict) and envelope.get("policy") != precision:
        raise _fail(path, f"envelope.policy is {envelope.get('policy')!r} but 'precision' is {precision!r}")
    growth = None
    if isinstance(envelope, dict) and "probe_growth" in envelope:
        raw = envelope["probe_growth"]
        if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) for k in ("source", "source_checksum",
                                                                                      "device")):
            raise _fail(path, "envelope.probe_growth needs 'relative', 'source', 'source_checksum' and 'device'")
        relative = _numbers(path, raw.get("relative"), "envelope.probe_growth.relative")
        if len(relative) != n_steps or not np.all(np.isfinite(relative)) or np.any(relative < 0):
            raise _fail(path, f"envelope.probe_growth.relative must hold {n_steps} finite values >= 0")
        growth = ProbeGrowth(relative, raw["source"], raw["source_checksum"], raw["device"],
                             [str(v) for v in raw.get("variants") or []], dict(raw.get("carry") or {}))
    policies = {}
    raw_policies = data.get("policies", {})
    if not isinstance(raw_policies, dict):
        raise _fail(path, "'policies' must be an object {policy: {reference, variants, width}}")
    for name, raw in raw_policies.items():
        if name not in POLICIES or name == precision:
            raise _fail(path, f"policies.{name}: not a precision policy other than the baseline's own ({precision})")
        if not isinstance(raw, dict) or not isinstance(raw.get("reference"), dict):
            raise _fail(path, f"policies.{name} needs a 'reference' with its 'loss', 'variants' and 'width'")
        reference = _numbers(path, raw["reference"].get("loss"), f"policies.{name}.reference.loss")
        if len(reference) != n_steps or not np.all(np.isfinite(reference)):
            raise _fail(path, f"policies.{name}.reference.loss must hold {n_steps} finite values")
        runs = _envelope_runs(path, {"envelope": raw}, n_steps, where=f"policies.{name}")
        policies[name] = PolicyEnvelope(name, reference, runs, str(raw["reference"].get("source", "")),
                                        dict(raw["reference"].get("numerics") or {}))
    return precision, policies, growth


def save_baseline(path: Path | str, baseline: Baseline) -> None:
    atomic_write_text(path, json.dumps(baseline.to_json(), indent=1) + "\n")


def _provenance(record: dict, source: str) -> dict:
    env = record["environment"]
    return {
        "device": env["device"],
        "device_name": env["device_name"],
        "driver": env.get("driver", ""),
        "versions": {k: env.get(k, "") for k in ("torch", "timm", "plugin", "cuda", "cudnn", "python")},
        # a GPU's compute capability, memory and multiprocessors (cait.devices.describe_device); empty elsewhere
        "device_details": {k: env[k] for k in ("device_capability", "device_memory_gib", "device_sms") if k in env},
        "host": env.get("host", ""),
        "cpu_model": env.get("cpu", ""),  # the host CPU: its arithmetic decides a CPU curve's last bits
        "params_hash": record["params_hash"],
        "params": record["curve_params"],
        "data_manifest_hash": record["data_manifest_hash"],
        "data_pixels_hash": record.get("data_pixels_hash", ""),  # the train shard's pixels (data.shards)
        "git_commit": record.get("git_commit", ""),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": record["curve_params"]["train"]["seed"],
        "source": source,
        "mlflow_run_id": record.get("mlflow_run_id") or "",
        "mean_samples_per_s": record.get("mean_samples_per_s"),
    }


def baseline_from_run(curve: Curve, record: dict, profile: str, source: str) -> Baseline:
    """Turn a train stage's curve and record (train.json) into a baseline with full provenance."""
    return baseline_from_runs([(curve, record, source)], profile)


def _check_same_conditions(reference: tuple, run: tuple, one_device: str) -> None:
    """A run joins a baseline only if it saw the reference run's data, on its device, at its step numbers."""
    ref_curve, ref_record, ref_source = reference
    curve, record, source = run
    if record["data_manifest_hash"] != ref_record["data_manifest_hash"]:
        raise BaselineError(f"{source}: made from other data than {ref_source} (data manifest hash differs)")
    if record["environment"]["device_name"] != ref_record["environment"]["device_name"]:
        raise BaselineError(f"{source}: ran on {record['environment']['device_name']}, {ref_source} on "
                            f"{ref_record['environment']['device_name']}; {one_device}")
    if not np.array_equal(curve.steps, ref_curve.steps):
        raise BaselineError(f"{source}: logged other step numbers than {ref_source}")


def baseline_from_runs(runs: list[tuple[Curve, dict, str]], profile: str,
                       envelope_runs: list[tuple[Curve, dict, str]] = ()) -> Baseline:
    """One baseline from K runs of the same params (but perhaps the seed) on the same device and data.

    The first run is the reference (its curve is `loss`, its seed `provenance.seed`); with K > 1 every
    run's curve is kept and per-step statistics are computed over them. `envelope_runs` are the reference
    seed trained under numerics variants (record["numerics_variant"]); they give the envelope."""
    if not runs:
        raise BaselineError("no runs given to make a baseline from")
    for curve, record, source in [*runs, *envelope_runs]:
        if record.get("port_bug"):
            raise BaselineError(f"{source}: trained with the simulated port bug {record['port_bug']!r}; "
                                f"a run with a port bug never becomes a baseline")
        if len(curve) == 0:
            raise BaselineError(f"{source}: the curve has no steps; it cannot become a baseline")
        if not np.all(np.isfinite(curve.loss)):
            raise BaselineError(f"{source}: the curve holds non-finite losses; it cannot become a baseline")
        if record.get("stopped"):
            raise BaselineError(f"{source}: training stopped early ({record['stopped']}); it cannot become a baseline")
    for curve, record, source in runs:
        if record.get("numerics_variant"):
            raise BaselineError(f"{source}: trained with the numerics variant {record['numerics_variant']!r}; "
                                f"give it as an envelope run, not as a baseline run")
    ref_curve, ref_record, ref_source = runs[0]
    seeds = [r["curve_params"]["train"]["seed"] for _, r, _ in runs]
    seed_in_hash = len(set(seeds)) == 1
    ref_hash = curve_hash(ref_record["curve_params"], seed_in_hash)
    for curve, record, source in runs[1:]:
        if curve_hash(record["curve_params"], seed_in_hash) != ref_hash:
            keys = [k for k in diff_keys(ref_record["curve_params"], record["curve_params"]) if k != "train.seed"]
            raise BaselineError(f"{source}: made with other params than {ref_source} ({', '.join(keys)}); "
                                f"the runs of one baseline differ only in their seed")
        _check_same_conditions(runs[0], (curve, record, source), "a baseline comes from one device")
    precision = record_precision(ref_record)
    for curve, record, source in runs[1:]:
        if record_precision(record) != precision:
            raise BaselineError(f"{source}: ran under the {record_precision(record)} precision policy, {ref_source} "
                                f"under {precision}; the runs of one baseline share a policy")
    variants, policies = [], {}  # the own policy's variants; {policy: [reference run, variants...]}
    for curve, record, source in envelope_runs:
        name = record.get("numerics_variant")
        policy = record_precision(record)
        if not name and policy == precision:
            raise BaselineError(f"{source}: has no numerics variant (device.numerics_variant); an envelope run "
                                f"is the reference seed under another numerics (or another precision policy)")
        if hash_json(record["curve_params"]) != hash_json(ref_record["curve_params"]):
            keys = diff_keys(ref_record["curve_params"], record["curve_params"])
            raise BaselineError(f"{source}: made with other params than the reference run ({', '.join(keys)}); "
                                f"an envelope run differs from it only in its numerics")
        _check_same_conditions(runs[0], (curve, record, source), "the envelope is measured on one device")
        from cait.portbugs import describe

        run = EnvelopeRun(name or "", np.asarray(curve.loss, dtype=np.float64), describe(name) if name else "",
                          source, record.get("mlflow_run_id") or "", dict(record.get("numerics") or {}))
        group = variants if policy == precision else policies.setdefault(policy, [])
        if name and name in [v.variant for v in group]:
            raise BaselineError(f"{source}: a second run of the numerics variant {name!r} under {policy}")
        if not name and any(not v.variant for v in group):
            raise BaselineError(f"{source}: a second reference run of the {policy} policy")
        group.append(run)
    other_policies = {}
    for policy, group in policies.items():
        reference = [r for r in group if not r.variant]
        if not reference:
            raise BaselineError(f"the {policy} policy's runs ({', '.join(r.variant for r in group)}) have no reference "
                                f"run (the reference seed under {policy} with no numerics variant)")
        other_policies[policy] = PolicyEnvelope(policy, reference[0].loss, [r for r in group if r.variant],
                                                reference[0].source, reference[0].numerics)
    provenance = _provenance(ref_record, ref_source if len(runs) == 1 else f"{len(runs)} runs")
    provenance["precision"] = precision
    if variants:
        provenance["envelope_variants"] = [v.variant for v in variants]
    if other_policies:
        provenance["policy_variants"] = {p: [r.variant for r in e.runs] for p, e in other_policies.items()}
    provenance["seeds"] = seeds
    provenance["seed_in_hash"] = seed_in_hash
    provenance["params_hash"] = ref_hash
    baseline_runs = [BaselineRun(seed, curve.loss, source, record.get("mlflow_run_id") or "")
                     for seed, (curve, record, source) in zip(seeds, runs)] if len(runs) > 1 else []
    return Baseline(profile=profile, model=ref_record["curve_params"]["model"]["name"], steps=ref_curve.steps,
                    loss=ref_curve.loss, provenance=provenance, runs=baseline_runs, envelope_runs=variants,
                    precision=precision, policies=other_policies)


def record_precision(record: dict) -> str:
    """The precision policy of a train run's record: its own field, or for a record of an older harness what its
    numerics switches and train.amp amount to (cait/determinism.py)."""
    from cait.determinism import precision_policy

    if record.get("precision"):
        return str(record["precision"])
    amp = ((record.get("curve_params") or {}).get("train") or {}).get("amp")
    return precision_policy(record.get("numerics") or {}, amp)


def refusals(baseline: Baseline, profile: str, record: dict) -> list[str]:
    """Reasons the baseline cannot judge this run: another profile, model, params or data. Each names
    the keys that differ. A multi-seed baseline's hash leaves train.seed out (see `curve_hash`)."""
    out = []
    if baseline.profile != profile:
        out.append(f"baseline is for profile {baseline.profile!r}, this run is {profile!r}")
    prov = baseline.provenance
    run_model = record["curve_params"].get("model", {}).get("name")
    if baseline.model != run_model:
        out.append(f"baseline is for model {baseline.model!r}, this run trained {run_model!r}")
    if prov["params_hash"] != curve_hash(record["curve_params"], baseline.seed_in_hash):
        keys = diff_keys(prov.get("params", {}), record["curve_params"])
        if not baseline.seed_in_hash:
            keys = [k for k in keys if k != "train.seed"]
        out.append("baseline was made with other params: " + (", ".join(keys) if keys else "params hash differs"))
    if prov["data_manifest_hash"] != record["data_manifest_hash"]:
        out.append("baseline was made from other data (data manifest hash differs)")
    elif prov.get("data_pixels_hash") and record.get("data_pixels_hash") and \
            prov["data_pixels_hash"] != record["data_pixels_hash"]:
        out.append("baseline saw other pixels from the same files (shard pixel hash differs: another image "
                   "decoder); share data/prepared/shards between the machines (dvc push / dvc pull)")
    return out


def environment_differences(baseline: Baseline, record: dict) -> list[str]:
    """Device and version differences between baseline and candidate, as sentences for the verdict's
    notes: they do not refuse a comparison (a port is exactly such a difference) but are never hidden."""
    unknown_cpu = not baseline.provenance.get("cpu_model")  # a baseline older than that field: no claim
    return [f"{name} differs: baseline {a or '(none)'}, candidate {b or '(none)'}"
            for name, a, b in environment_table(baseline, record)
            if a != b and name in ("device", "device name", "cpu model", "driver", "torch", "timm", "plugin", "cuda",
                                  "python", "precision policy") and not (name == "cpu model" and unknown_cpu)
            and not (name == "precision policy" and (not b or not baseline.precision))]


def environment_table(baseline: Baseline, record: dict) -> list[tuple[str, str, str]]:
    """(field, baseline, candidate) rows for the report; device and version differences are shown, not hidden."""
    prov, env = baseline.provenance, record["environment"]
    rows = [("device", prov["device"], env["device"]), ("device name", prov["device_name"], env["device_name"]),
            ("driver", prov.get("driver", ""), env.get("driver", ""))]
    rows += [(k, prov["versions"].get(k, ""), env.get(k, "")) for k in ("torch", "timm", "plugin", "cuda", "python")]
    rows += [("precision policy", baseline.precision or "unknown (schema < 5)",
              record_precision(record) if "numerics" in record or "precision" in record else "")]
    rows += [("cpu model", prov.get("cpu_model", ""), env.get("cpu", "")),  # absent from older baselines: blank
             ("host", prov.get("host", ""), env.get("host", "")),
             ("git commit", prov["git_commit"], record.get("git_commit", "")),
             # like with like: a multi-seed baseline's hash leaves train.seed out, so the run's is taken the same way
             ("params hash", prov["params_hash"][:12],
              curve_hash(record["curve_params"], baseline.seed_in_hash)[:12] if "curve_params" in record
              else record["params_hash"][:12]),
             ("data manifest hash", prov["data_manifest_hash"][:12], record["data_manifest_hash"][:12]),
             ("date", prov["date"], record.get("date", ""))]
    return [(name, str(a), str(b)) for name, a, b in rows]
