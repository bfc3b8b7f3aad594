"""The power of the gate, measured: train the profile once per port bug and legitimate variant of the zoo
(cait/portbugs.py) and judge every curve with every rule against the stored baseline.

  python benchmarks/bench_power.py                       # every bug and legit variant, default profile (~20 runs)
  python benchmarks/bench_power.py --entries softmax_bf16,threads_1 --runs-dir /tmp/power
  python -m benchmarks --only power --json power.json    # the same, as a benchmark group
  python benchmarks/bench_power.py --profile amp --runs-dir /tmp/amp-zoo   # the bf16 profile (profiles/amp.yaml):
                    # its zoo (the mixed-precision bugs and variants too; the fp16 loss-scaler bugs only under fp16)

Each curve is judged through `pipelines.stages.compare.judge` (the compare stage's own `decide` call),
once per rule with that rule alone gating: modelzoo, strict, band, envelope. A cell says pass, fail or
inconclusive and, for a fail, the first step by which the rule would have failed (the shortest prefix of
the curve it fails on). Legitimate variants the baseline's envelope was made of are judged against the
envelope of the *other* variants (held out), so none is judged against itself; their curves are the
baseline's own (trained by `make baseline` with this code on the same machine; `--retrain-envelope`
trains them again). `--runs-dir` keeps each run's curve.csv and train.json and reuses them on the next
call (same params, same entry).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RULES = ("modelzoo", "strict", "band", "envelope")
# legitimate runs that must pass: the envelope's own kinds (judged held out) and those it never saw; the
# mixed-precision ones only under a mixed-precision policy (a profile with train.amp)
LEGIT = ("threads_1", "threads_2", "fused_attention", "nondeterministic", "matmul_transposed", "weights_ulp",
         "weights_ulp_2", "weights_ulp_3", "weights_ulp_other", "adamw_by_hand", "softmax_fp32",
         "matmul_fp32_accumulate", "gelu_epilogue")


def entries_for(device_type: str, names: list[str] | None = None, policy: str = "fp32") -> list[tuple[str, str]]:
    """(name, kind) of every zoo entry to run under this precision policy: the bugs, then the legitimate variants
    of this device."""
    from cait.portbugs import BUGS, VARIANTS

    every = [(n, "bug") for n, e in BUGS.items() if policy in e.policies]
    every += [(n, "legit") for n in LEGIT if device_type in VARIANTS[n].devices and policy in VARIANTS[n].policies]
    if names is None:
        return every
    known = dict(every)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--entries: unknown or not for {device_type} under {policy}: {', '.join(unknown)}")
    return [(n, known[n]) for n in names]


def load_profile(params_path, profile: str | None):
    """params.yaml (or --params) under --profile (profiles/<name>.yaml; pipelines/profiles.py)."""
    from pipelines.profiles import load

    return load(profile, Path(params_path))


def policy_of(params) -> str:
    from pipelines.training import params_precision

    return params_precision(params)


def run_entry(params, name: str, kind: str, runs_dir: Path | None, data_dir: Path, log) -> tuple:
    """(curve, record) of the profile trained with this bug or variant; reused from runs_dir when there."""
    from pipelines.curves import read_curve_csv
    from pipelines.provenance import read_record
    from pipelines.training import train_once

    update = {"port_bug": name} if kind == "bug" else {"numerics_variant": name}
    run_params = params.model_copy(update={"device": params.device.model_copy(update=update),
                                           "tracking": params.tracking.model_copy(update={"enabled": False})})
    folder = runs_dir / name if runs_dir else None
    if folder and (folder / "train.json").exists():
        record = read_record(folder / "train.json")
        if record.get("params_hash") == run_params.curve_hash() and \
                (record.get("port_bug") or record.get("numerics_variant")) == name:
            log(f"{name}: reusing {folder}")
            return read_curve_csv(folder / "curve.csv"), record
    started = time.perf_counter()
    curve, record, _ = train_once(run_params, name, data_dir=data_dir, quiet=True, out_dir=folder)
    log(f"{name} ({kind}): trained in {time.perf_counter() - started:.0f} s, loss {curve.loss[0]:.4f} -> "
        f"{curve.loss[-1]:.4f}")
    return curve, record


def judge_entry(params, baseline, curve, record, name: str, precision: str | None = None,
                held_out: str | None = None) -> dict:
    """Every rule alone as the gate: {rule: {"status", "first_fail_step", "summary"}}, the envelope rule's margins
    (pipelines/envelope.py `margins`) and the k the candidate needs against the envelope it was judged with.
    `record` None: a curve without a run record (a baseline's stored run), of `precision` (default the
    baseline's); `held_out` leaves that variant out of the envelope."""
    import numpy as np

    from pipelines.baselines import record_precision, refusals
    from pipelines.envelope import margins, needed_k
    from pipelines.stages.compare import judge

    cfg = params.compare
    if record is None:  # one of the baseline's own envelope runs, or another baseline's stored run
        reference, refused = baseline.curve, []
        precision = precision or baseline.precision
    else:
        reference, _ = baseline.reference_for(record["curve_params"]["train"]["seed"])
        refused = refusals(baseline, params.profile, record)
        precision = record_precision(record)
    prefix_cfg = cfg.model_copy(update={"min_steps": 1})
    out = {}
    for rule in RULES:
        verdict = judge(cfg, curve, reference, baseline, gate=[rule], inform=[], refusals=refused,
                        envelope_exclude=held_out, precision=precision)
        first = None
        if verdict.status == "fail":
            for t in range(1, len(curve.loss) + 1):
                part = type(curve)(curve.steps[:t], curve.loss[:t])
                keep = np.asarray(reference.steps) <= curve.steps[t - 1]
                ref_part = type(reference)(reference.steps[keep], reference.loss[keep])
                if judge(prefix_cfg, part, ref_part, _cut(baseline, keep), gate=[rule], inform=[],
                         envelope_exclude=held_out, precision=precision).status == "fail":
                    first = int(curve.steps[t - 1])
                    break
        rule_result = verdict.rules.get(rule)
        out[rule] = {"status": verdict.status, "first_fail_step": first,
                     "summary": rule_result.summary if rule_result else "; ".join(verdict.reasons)}
        if rule == "envelope" and rule_result is not None:
            out["margins"] = margins(rule_result.numbers)
            found = baseline.policy_envelope(precision, exclude=held_out)
            if found is not None and np.array_equal(curve.steps, baseline.steps):
                k, step = needed_k(curve.loss, found[0] if precision != baseline.precision else reference.loss,
                                   found[1], cfg.rules.envelope.floor_relative)
                out["margins"].update(needed_k=k, needed_k_step=step)
    out["held_out"] = held_out
    out["precision"] = precision
    return out


def _cut(baseline, keep):
    """The baseline restricted to the steps in `keep` (for judging a prefix of the candidate)."""
    import copy

    part = copy.copy(baseline)
    part.steps, part.loss = baseline.steps[keep], baseline.loss[keep]
    part.runs = [type(r)(r.seed, r.loss[keep], r.source, r.mlflow_run_id) for r in baseline.runs]
    part.envelope_runs = [_cut_run(r, keep) for r in baseline.envelope_runs]
    part.policies = {name: type(e)(e.policy, e.reference[keep], [_cut_run(r, keep) for r in e.runs], e.source,
                                   e.numerics) for name, e in baseline.policies.items()}
    if baseline.probe_growth is not None:
        part.probe_growth = copy.copy(baseline.probe_growth)
        part.probe_growth.relative = baseline.probe_growth.relative[keep]
    return part


def _cut_run(run, keep):
    return type(run)(run.variant, run.loss[keep], run.description, run.source, run.mlflow_run_id, run.numerics)


def other_device_runs(path, baseline) -> list[tuple[str, object]]:
    """(name, curve) of another device's baseline's reference and own-policy envelope runs, as legitimate
    candidates trained elsewhere (the same profile, params and data, checked)."""
    from pipelines.baselines import load_baseline
    from pipelines.curves import Curve

    other = load_baseline(path)
    if other.provenance.get("params_hash") != baseline.provenance.get("params_hash") or \
            other.provenance.get("data_manifest_hash") != baseline.provenance.get("data_manifest_hash"):
        raise SystemExit(f"--legit-from {path}: made with other params or data than the judged baseline")
    device = other.provenance.get("device_name") or other.provenance.get("device")
    runs = [(f"{device}: reference", Curve(other.steps, other.loss))]
    runs += [(f"{device}: {r.variant}", Curve(other.steps, r.loss)) for r in other.envelope_runs]
    return [(name, curve, other.precision) for name, curve in runs]


def measure(params, *, entries: list[str] | None = None, runs_dir: Path | None = None,
            data_dir: Path | None = None, retrain_envelope: bool = False, legit_from: list[str] = (),
            log=print) -> dict:
    """Train and judge every entry; returns {"bugs": {name: {rule: status}}, "legit": {...}, "margins": {name:
    {"max_ratio", "outside_share", ...}}, "detail": ...}. `legit_from` names other devices' baselines whose stored
    runs are judged too, as legitimate runs trained elsewhere."""
    import numpy as np

    from pipelines.baselines import load_baseline
    from pipelines.curves import Curve
    from pipelines.layout import PREPARED_DIR

    baseline = load_baseline(REPO / params.compare.baseline if not Path(params.compare.baseline).is_absolute()
                             else params.compare.baseline)
    data_dir = data_dir or REPO / PREPARED_DIR
    result: dict = {"bugs": {}, "legit": {}, "detail": {}, "first_fail_step": {}, "margins": {}}
    started = time.perf_counter()
    stored = {r.variant: r for r in baseline.envelope_runs}
    legit_seen: dict = {}
    for name, kind in entries_for(params.device.type, entries, policy_of(params)):
        if name in stored and not retrain_envelope:
            # trained by `make baseline` with this code on this machine: the same curve a retraining gives
            curve, record = Curve(baseline.steps, stored[name].loss), None
            log(f"{name}: the baseline's own envelope run ({stored[name].source})")
        else:
            curve, record = run_entry(params, name, kind, runs_dir, data_dir, log)
        held_out = name if name in stored else None
        judged = judge_entry(params, baseline, curve, record, name, held_out=held_out)
        if kind == "legit" and np.array_equal(curve.steps, baseline.steps):
            legit_seen[name] = curve.loss
        _keep(result, name, kind, judged)
    for path in legit_from:
        for name, curve, precision in other_device_runs(path, baseline):
            log(f"{name}: stored in {path}, judged as a legitimate run trained elsewhere")
            _keep(result, name, "legit", judge_entry(params, baseline, curve, None, name, precision=precision))
    # the measurement k is chosen from: each legitimate run against the envelope of the others
    from pipelines.envelope import leave_one_out

    legit_curves = {r.variant: r.loss for r in baseline.envelope_runs}
    legit_curves.update({n: c for n, c in legit_seen.items() if n not in legit_curves})
    result["leave_one_out"] = leave_one_out(baseline.loss, legit_curves, params.compare.rules.envelope.floor_relative)
    result["seconds"] = time.perf_counter() - started
    result["baseline"] = {"device_name": baseline.provenance["device_name"], "path": str(baseline.path),
                          "precision": baseline.precision, "policies": baseline.envelope_policies,
                          "envelope_variants": [r.variant for r in baseline.envelope_runs],
                          "probe_growth_from": baseline.probe_growth.device if baseline.probe_growth else None,
                          "k": params.compare.rules.envelope.k,
                          "floor_relative": params.compare.rules.envelope.floor_relative}
    return result


def _keep(result: dict, name: str, kind: str, judged: dict) -> None:
    group = "bugs" if kind == "bug" else "legit"
    result[group][name] = {rule: judged[rule]["status"] for rule in RULES}
    result["first_fail_step"][name] = {rule: judged[rule]["first_fail_step"] for rule in RULES}
    result["margins"][name] = judged.get("margins", {})
    result["detail"][name] = {"kind": kind, "held_out": judged["held_out"], "precision": judged["precision"],
                              **{rule: judged[rule]["summary"] for rule in RULES}}


def counts(result: dict) -> dict:
    """Per rule: bugs failed (caught) and legitimate runs passed."""
    out = {}
    for rule in RULES:
        out[rule] = {"bugs_caught": sum(v[rule] == "fail" for v in result["bugs"].values()),
                     "bugs": len(result["bugs"]),
                     "legit_passed": sum(v[rule] == "pass" for v in result["legit"].values()),
                     "legit": len(result["legit"])}
    return out


def table(result: dict) -> str:
    """Markdown: rows = bugs and legitimate variants, columns = rules, cells = verdict (first failing step)."""
    from cait.portbugs import describe

    def cell(name, rule):
        status = (result["bugs"].get(name) or result["legit"][name])[rule]
        first = result["first_fail_step"][name][rule]
        return f"**fail** @{first}" if status == "fail" and first is not None else status

    def margin(name):
        m = result.get("margins", {}).get(name) or {}
        if not m:
            return "| | |"
        if m.get("first_outside_step", -1) >= 0:
            return (f"| {m['first_outside_ratio']:.3g}x @{m['first_outside_step']}, max {m['max_ratio']:.3g}x "
                    f"| {m['outside_share']:.0%} |")
        return f"| needs k {m.get('needed_k', float('nan')):.3g} | |"

    lines = ["| kind | entry | what | " + " | ".join(RULES) + " | envelope margin (first fail, max) or k needed "
             "| outside after first |", "|---|---|---|" + "---|" * (len(RULES) + 2)]
    for group, label in (("bugs", "bug"), ("legit", "legit")):
        for name in result[group]:
            held = " (held out of the envelope)" if result["detail"][name]["held_out"] else ""
            lines.append(f"| {label} | `{name}` | {describe(name) or 'stored run of another device'}{held} | "
                         + " | ".join(cell(name, r) for r in RULES) + " " + margin(name))
    c = counts(result)
    lines.append("| | **bugs caught** | | " + " | ".join(f"{c[r]['bugs_caught']} / {c[r]['bugs']}" for r in RULES) + " |")
    lines.append("| | **legit passed** | | " + " | ".join(f"{c[r]['legit_passed']} / {c[r]['legit']}" for r in RULES)
                 + " |")
    loo = result.get("leave_one_out", {})
    if loo:
        lines.append("")
        lines.append("Held out, each legitimate run needs k >= " + ", ".join(
            f"{n} {v['needed_k']:.2f}" + (" (bitwise equal)" if v["bitwise_equal"] else "") for n, v in loo.items())
            + " against the envelope of the others (floor included).")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default=str(REPO / "params.yaml"))
    p.add_argument("--profile", help="a profile of profiles/ (e.g. amp): params.yaml with its keys changed")
    p.add_argument("--entries", help="comma-separated zoo entries (default: every bug and legit variant)")
    p.add_argument("--runs-dir", help="keep (and reuse) each run's curve.csv and train.json here")
    p.add_argument("--json", help="write {bugs: {name: {rule: status}}, legit: {...}, ...} here")
    p.add_argument("--retrain-envelope", action="store_true",
                   help="train the baseline's envelope variants again instead of taking their stored curves")
    p.add_argument("--train-only", action="store_true", help="train the entries into --runs-dir, judge nothing")
    p.add_argument("--legit-from", action="append", default=[],
                   help="another device's baseline.json (same profile, params, data): its stored runs are judged as "
                        "legitimate runs trained elsewhere; repeatable")
    args = p.parse_args(argv)
    params = load_profile(args.params, args.profile)
    if args.train_only:
        if not args.runs_dir:
            raise SystemExit("--train-only needs --runs-dir")
        from pipelines.layout import PREPARED_DIR

        for name, kind in entries_for(params.device.type, args.entries.split(",") if args.entries else None,
                                      policy_of(params)):
            run_entry(params, name, kind, Path(args.runs_dir), REPO / PREPARED_DIR, lambda line: print(line, flush=True))
        return 0
    result = measure(params, entries=args.entries.split(",") if args.entries else None,
                     runs_dir=Path(args.runs_dir) if args.runs_dir else None,
                     retrain_envelope=args.retrain_envelope, legit_from=args.legit_from,
                     log=lambda line: print(line, flush=True))
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
