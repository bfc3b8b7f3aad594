"""Upgrade a stored baseline to schema 5: its envelope runs partitioned by precision policy, then signed.

Before schema 5 a baseline folded every numerics variant into one envelope, TF32 runs included: on a GPU that
gave every fp32 candidate TF32's latitude (27-813x the CPU's width). A variant's recorded numerics switches say
which policy it ran under (cait/determinism.py `precision_policy`), so the partition needs no retraining:

- the baseline's own policy is the one its precision-neutral variants ran under (threads, ulp probes, fused
  attention: they change nothing about precision, so they ran under the reference's switches); they must agree;
- a variant of another policy joins that policy's envelope; that policy's reference is the variant that is only
  the policy (the old `tf32` variant: the reference seed with TF32 on, nothing else); a policy without such a
  run has no reference to measure an envelope around, and its runs are dropped (listed in the provenance);
- `--probe-growth-from` adds another device's ulp-probe growth (pipelines/baselines.py ProbeGrowth) when the two
  baselines share profile, params, data and policy, and at least one probe (same key) to check that it carries;
  its probes' fingerprint spread joins the localize tolerance the same way.

The layer fingerprints beside the baseline keep only the rows of the variants left in its own policy (plus the
borrowed probes): localize's tolerance then is that policy's too.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np

from cait.errors import BaselineError
from pipelines.baselines import (ENVELOPE_SCHEMA, PolicyEnvelope, ProbeGrowth, load_baseline, save_baseline)
from pipelines.layout import FINGERPRINTS
from pipelines.provenance import file_sha256

# variants that change only reduction order, kernels or the initial weights' last bit: they ran under the
# reference run's precision switches, so they tell its policy
NEUTRAL = ("threads_1", "threads_2", "fused_attention", "matmul_transposed", "weights_ulp", "weights_ulp_2",
           "weights_ulp_3", "adamw_by_hand")


def probe_growth(baseline, probes: tuple[str, ...] | None = None) -> np.ndarray | None:
    """Running maximum over the baseline's ulp probes of |probe - reference| / |reference|; None without probes."""
    from cait.portbugs import PROBE_VARIANTS

    names = probes or PROBE_VARIANTS
    runs = [r.loss for r in baseline.envelope_runs if r.variant in names]
    if not runs:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.max(np.abs(np.stack(runs) - baseline.loss) / np.abs(baseline.loss), axis=0)
    return np.maximum.accumulate(np.nan_to_num(rel, nan=0.0, posinf=0.0))


def carry_check(target, source) -> dict:
    """How the target device's own ulp probes grow against the source's of the same key: per probe, the ratio of
    their running maxima (target / source) over the steps where both moved."""
    out = {}
    source_runs = {r.variant: r.loss for r in source.envelope_runs}
    for run in target.envelope_runs:
        if run.variant not in source_runs or not run.variant.startswith("weights_ulp"):
            continue
        mine = probe_growth(target, (run.variant,))
        theirs = probe_growth(source, (run.variant,))
        both = (mine > 0) & (theirs > 0)
        if both.any():
            ratio = mine[both] / theirs[both]
            out[run.variant] = {"ratio_min": float(ratio.min()), "ratio_median": float(np.median(ratio)),
                                "ratio_max": float(ratio.max()), "steps": int(both.sum())}
    return out


def partition(baseline) -> tuple[str, list, dict, list[str]]:
    """(own policy, own variants, {policy: PolicyEnvelope}, dropped variant names) of a pre-5 baseline."""
    from cait.determinism import precision_policy

    policy_of = {r.variant: precision_policy(r.numerics) for r in baseline.envelope_runs}
    neutral = {policy_of[n] for n in policy_of if n in NEUTRAL}
    if len(neutral) != 1:
        raise BaselineError(f"{baseline.path}: its precision-neutral variants ran under {sorted(neutral) or 'none'}: "
                            f"the reference's precision policy cannot be told; record a new baseline (make baseline)")
    own = neutral.pop()
    mine = [r for r in baseline.envelope_runs if policy_of[r.variant] == own]
    others, dropped = {}, []
    for policy in sorted(set(policy_of.values()) - {own}):
        group = [r for r in baseline.envelope_runs if policy_of[r.variant] == policy]
        reference = next((r for r in group if r.variant == policy), None)
        if reference is None:
            dropped += [r.variant for r in group]
            continue
        others[policy] = PolicyEnvelope(policy, reference.loss, [r for r in group if r is not reference],
                                        reference.source, reference.numerics)
        if not others[policy].runs:
            dropped.append(reference.variant)
            del others[policy]
    return own, mine, others, dropped


def upgrade(baseline, source=None) -> tuple[object, list[str]]:
    """The baseline as schema 5 (partitioned, with `source`'s probe growth if given) and what was done, as lines."""
    lines = []
    if baseline.schema_version < ENVELOPE_SCHEMA:
        own, mine, others, dropped = partition(baseline)
        baseline.precision, baseline.envelope_runs, baseline.policies = own, mine, others
        lines.append(f"{own} policy: envelope of {', '.join(r.variant for r in mine)}")
        lines += [f"{p} policy: reference {e.source or p}, envelope of {', '.join(r.variant for r in e.runs)}"
                  for p, e in others.items()]
        if dropped:
            lines.append(f"dropped (another precision policy with no reference run of its own): {', '.join(dropped)}")
        baseline.provenance = {**baseline.provenance, "precision": own,
                               "envelope_variants": [r.variant for r in mine],
                               "upgraded": {"from_schema": baseline.schema_version,
                                            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                            "dropped_variants": dropped,
                                            "precision_from": "the recorded numerics switches of its precision-neutral "
                                                              "variants (pipelines/upgrade.py)"}}
        if others:
            baseline.provenance["policy_variants"] = {p: [r.variant for r in e.runs] for p, e in others.items()}
    if source is not None:
        baseline.probe_growth = borrowed_growth(baseline, source)
        carry = baseline.probe_growth.carry
        lines.append(f"probe growth of {', '.join(baseline.probe_growth.variants)} from {baseline.probe_growth.device} "
                     f"joins the {baseline.precision} envelope; carry check (own probe / source's, same key): "
                     + "; ".join(f"{n} {c['ratio_min']:.2f}-{c['ratio_max']:.2f} (median {c['ratio_median']:.2f})"
                                 for n, c in carry.items()))
    baseline.schema_version = ENVELOPE_SCHEMA
    return baseline, lines


def borrowed_growth(baseline, source) -> ProbeGrowth:
    """The source baseline's ulp-probe growth, refused unless both describe the same curve under the same policy
    and share a probe to check the carry with."""
    from cait.portbugs import PROBE_VARIANTS

    why = []
    if source.schema_version < ENVELOPE_SCHEMA:
        why.append(f"it is schema {source.schema_version} (upgrade it first)")
    if source.profile != baseline.profile or source.model != baseline.model:
        why.append(f"it is for {source.profile}/{source.model}, this one for {baseline.profile}/{baseline.model}")
    for key in ("params_hash", "data_manifest_hash"):
        if source.provenance.get(key) != baseline.provenance.get(key):
            why.append(f"its {key} differs")
    if source.precision != baseline.precision:
        why.append(f"its policy is {source.precision}, this one's {baseline.precision}")
    if len(source.steps) != len(baseline.steps) or not np.array_equal(source.steps, baseline.steps):
        why.append("it logged other steps")
    probes = [r.variant for r in source.envelope_runs if r.variant in PROBE_VARIANTS]
    if not probes:
        why.append("it has no ulp probes")
    carry = carry_check(baseline, source) if not why else {}
    if not why and not carry:
        why.append("no probe of the same key on both devices to check that the growth carries")
    if why:
        raise BaselineError(f"{source.path}: cannot lend its probe growth: {'; '.join(why)}")
    device = f"{source.provenance.get('device', '?')} ({source.provenance.get('device_name', '?')})"
    return ProbeGrowth(probe_growth(source), source.path, file_sha256(source.path), device, probes, carry)


def upgrade_fingerprints(path: Path, out: Path, keep: list[str], source_path: Path | None,
                         probes: list[str], precision: str) -> str:
    """The fingerprint file with only `keep`'s spread rows, plus the source file's rows of `probes` (renamed
    '<source device>:<probe>') where its entries are the same; returns what was done."""
    from cait.fingerprints import load_reference, save

    prints = load_reference(path)
    names = list(prints.variants)
    rows = [names.index(n) for n in keep if n in names]
    kept = [names[i] for i in rows]
    spread = {step: {phase: values[rows] for phase, values in phases.items()} for step, phases in prints.spread.items()}
    added = []
    if source_path is not None and probes:
        other = load_reference(source_path)
        theirs = list(other.variants)
        device = other.meta.get("device_name") or other.meta.get("device") or "other"
        take = [theirs.index(p) for p in probes if p in theirs]
        same = take and all(
            step in other.steps and phase in other.steps[step]
            and other.steps[step][phase].names == prints.steps[step][phase].names
            for step, phases in spread.items() for phase in phases)
        if same:
            spread = {step: {phase: np.vstack([values, other.spread[step][phase][take]])
                             for phase, values in phases.items()} for step, phases in spread.items()}
            added = [f"{device}:{theirs[i]}" for i in take]
    prints.spread = spread
    prints.meta = {**prints.meta, "envelope_variants": kept + added, "precision": precision}
    save(out, prints)
    return (f"fingerprints: tolerance from {', '.join(kept + added)}"
            + ("" if added or not probes else " (the source's fingerprints do not match entry for entry: no probes "
                                             "borrowed)"))


def upgrade_files(path: Path, out: Path, source_path: Path | None = None) -> list[str]:
    """Read, upgrade and write a baseline and its fingerprints (beside it); the lines say what changed."""
    baseline = load_baseline(path)
    if baseline.schema_version >= ENVELOPE_SCHEMA and source_path is None:
        return [f"{path} is already schema {baseline.schema_version}; nothing to do"]
    if not baseline.envelope_runs:
        raise BaselineError(f"{path}: has no envelope runs to partition; record a new baseline (make baseline)")
    source = load_baseline(source_path) if source_path is not None else None
    upgraded, lines = upgrade(baseline, source)
    prints = path.with_name(FINGERPRINTS)
    fingerprint_line = None
    if prints.exists():
        source_prints = source_path.with_name(FINGERPRINTS) if source_path is not None else None
        probes = upgraded.probe_growth.variants if upgraded.probe_growth is not None else []
        fingerprint_line = upgrade_fingerprints(prints, out.with_name(FINGERPRINTS),
                                                [r.variant for r in upgraded.envelope_runs],
                                                source_prints if source_prints and source_prints.exists() else None,
                                                probes, upgraded.precision)
    save_baseline(out, upgraded)
    check = load_baseline(out)  # what was written reads back whole, checksum included
    lines.append(f"schema {check.schema_version}, checksum {json.loads(Path(out).read_text())['checksum'][:12]} -> {out}")
    if fingerprint_line:
        lines.append(fingerprint_line)
    return lines


def add_variants(path: Path, runs: list[tuple], out: Path | None = None) -> list[str]:
    """Join new envelope runs (curve, record, source) of the baseline's own precision policy to a stored schema-5
    baseline, as `make baseline` would have recorded them beside it: each must be the reference seed under one
    new numerics variant, with the reference's params, data and device name; their fingerprints' spread joins
    the file beside it. What a variant run cannot prove (that it ran on the same machine kind) is the record's
    device name, as for any envelope run."""
    from cait.fingerprints import load_reference, save
    from cait.portbugs import describe
    from pipelines.baselines import EnvelopeRun, record_precision
    from pipelines.layout import RECORD
    from pipelines.localize import read_run_fingerprints, with_spread
    from pipelines.params import diff_keys, hash_json

    baseline = load_baseline(path)
    out = out or path
    if baseline.schema_version < ENVELOPE_SCHEMA:
        raise BaselineError(f"{path}: schema {baseline.schema_version}; upgrade it first "
                            f"(python -m pipelines.stages.baseline upgrade --baseline {path})")
    prov, have = baseline.provenance, {r.variant for r in baseline.envelope_runs}
    prints_path = path.with_name(FINGERPRINTS)
    prints = load_reference(prints_path) if prints_path.exists() else None
    lines = []
    for curve, record, source in runs:
        name = record.get("numerics_variant")
        why = []
        if record.get("port_bug"):
            why.append(f"trained with the port bug {record['port_bug']!r}")
        if not name:
            why.append("has no numerics variant")
        elif name in have:
            why.append(f"the baseline already has the variant {name!r}")
        if record["curve_params"]["train"]["seed"] != prov["seed"]:
            why.append(f"seed {record['curve_params']['train']['seed']}, the reference's is {prov['seed']}")
        if hash_json(record["curve_params"]) != hash_json(prov["params"]):
            why.append(f"other params ({', '.join(diff_keys(prov['params'], record['curve_params']))})")
        if record["data_manifest_hash"] != prov["data_manifest_hash"]:
            why.append("other data (manifest hash)")
        if record["environment"]["device_name"] != prov["device_name"]:
            why.append(f"ran on {record['environment']['device_name']}, the baseline on {prov['device_name']}")
        if record_precision(record) != baseline.precision:
            why.append(f"ran under {record_precision(record)}, the baseline's envelope is {baseline.precision}")
        if not np.array_equal(curve.steps, baseline.steps):
            why.append("logged other step numbers")
        if why:
            raise BaselineError(f"{source}: cannot join {path}'s envelope: {'; '.join(why)}")
        baseline.envelope_runs.append(EnvelopeRun(name, np.asarray(curve.loss, dtype=np.float64), describe(name),
                                                  source, record.get("mlflow_run_id") or "",
                                                  dict(record.get("numerics") or {})))
        have.add(name)
        same = np.array_equal(curve.loss, baseline.loss)
        lines.append(f"{name} joins the {baseline.precision} envelope" + (" (bitwise equal to the reference)"
                                                                         if same else ""))
        run_prints = Path(source).parent / FINGERPRINTS
        if prints is not None and run_prints.exists():
            # the file its record names (checked as the chain checks a run's), its rows as make baseline makes them
            row = with_spread(prints, {name: read_run_fingerprints(run_prints, run_prints.with_name(RECORD))}).spread
            prints.spread = {step: {phase: np.vstack([values, row[step][phase]]) for phase, values in phases.items()}
                             for step, phases in prints.spread.items()}
            prints.meta = {**prints.meta, "envelope_variants": [*prints.variants, name]}
        elif prints is not None:
            lines.append(f"{name}: no fingerprints beside {source}; localize's tolerance leaves it out")
    baseline.provenance = {**prov, "envelope_variants": [r.variant for r in baseline.envelope_runs],
                           "added_variants": [*prov.get("added_variants", []),
                                              *({"variant": r[1]["numerics_variant"], "source": r[2],
                                                 "git_commit": r[1].get("git_commit", ""),
                                                 "date": r[1].get("date", "")} for r in runs)]}
    if prints is not None:
        save(out.with_name(FINGERPRINTS), prints)
    save_baseline(out, baseline)
    load_baseline(out)  # reads back whole
    width = baseline.envelope()
    lines.append(f"envelope of {len(baseline.envelope_runs)} variants: width {width[0]:.3g} at step 0, "
                 f"{width[-1]:.3g} at step {baseline.steps[-1]} -> {out}")
    return lines
