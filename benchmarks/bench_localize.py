"""Localize, measured on the port-bug zoo: does it name the module (or phase) where each bug was injected,
and nothing for a legitimate numerics variant?

  python benchmarks/bench_localize.py --runs-dir /tmp/zoo             # every bug and legit variant (~19 runs)
  python -m benchmarks --only localize --json localize.json          # the same, as a benchmark group
  python benchmarks/bench_localize.py --profile amp --runs-dir /tmp/amp-zoo   # the bf16 profile's zoo and baseline

Each entry of cait/portbugs.py is trained on the default profile and its fingerprints are compared with
the stored baseline's
(localize.baseline_fingerprints) by `pipelines.localize.localize`, with params.yaml's localize.k and
floor. A bug counts as found when the named entry's module is the injection site or inside it (the first
module the bug changes in execution order), or, for optimizer and schedule bugs, when the named phase is
the update. The envelope's own variants are judged held out (tolerance from the other variants), so none
is judged against itself. For every legitimate run the table also gives the k it would need to stay
clean (the largest (error - floor) / envelope spread over all entries), the figure k is chosen from; for
a bug the same figure says up to which k it is still named.

Legitimate runs are trained in full (their fingerprints at the last step are the hard case: training has
amplified their rounding differences for 120 steps). A bug run is trained only up to step 0, with
fingerprints there, unless --runs-dir holds its full run from the power benchmark: with keyed
randomness and the full run's lr schedule, step 0 of the short run is bitwise that of the full run, and
a full run is compared at its last step only when step 0 names nothing, which then counts as not found
here (so the short form can only understate what localize finds).
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


def found(site: str, named: dict | None) -> bool:
    """Whether localize's first divergence is at the injection site (a module path, or the phase "update")."""
    from cait.fingerprints import PHASES

    if named is None:
        return False
    if site in PHASES:
        return named["phase"] == site
    module = named["module"]
    return module == site or module.startswith(site + ".")


def needed_k(candidate, baseline, floor: float, exclude: str | None) -> float:
    """The smallest k that keeps `candidate` inside k x spread + floor at every entry of every common step."""
    import numpy as np

    from pipelines.localize import relative_errors, tolerance

    worst = 0.0
    for step, phases in baseline.steps.items():
        for phase, ref in phases.items():
            cand = candidate.steps.get(step, {}).get(phase)
            if cand is None:
                continue
            rel = relative_errors(cand, ref)
            _, spread = tolerance(baseline, step, phase, 1.0, 0.0, exclude)
            over = rel - floor
            with np.errstate(divide="ignore", invalid="ignore"):
                k = np.where(over <= 0, 0.0, np.where(spread > 0, over / spread, np.inf))
            worst = max(worst, float(np.nanmax(k)) if k.size else 0.0)
    return worst


def stored_rows_held_out(baseline, k: float, floor: float) -> dict[str, dict]:
    """Each envelope run stored in the baseline's file, judged held out from its spread row alone (its relative
    error per entry is exactly what localize would measure for its fingerprints): whether it would be named at
    k, and the k it needs. This judges a device's own variants where only the baseline file travelled (the
    GPU's runs on this CPU)."""
    import numpy as np

    from pipelines.localize import tolerance

    out = {}
    for i, name in enumerate(baseline.variants):
        worst, where = 0.0, None
        for step, phases in baseline.spread.items():
            for phase, rows in phases.items():
                _, spread = tolerance(baseline, step, phase, 1.0, 0.0, exclude=name)
                over = np.nan_to_num(rows[i], nan=0.0) - floor
                with np.errstate(divide="ignore", invalid="ignore"):
                    need = np.where(over <= 0, 0.0, np.where(spread > 0, over / spread, np.inf))
                if need.size and float(need.max()) > worst:
                    j = int(np.argmax(need))
                    worst, where = float(need[j]), f"step {step}, {phase} `{baseline.steps[step][phase].names[j]}`"
        out[name] = {"needed_k": worst, "worst": where, "clean": worst <= k}
    return out


def train_to_step0(params, name: str, root: Path, data_dir: Path, log) -> Path:
    """A bug run up to step 0 with fingerprints there, in root/<name>.step0 (reused when it is there)."""
    from pipelines.layout import FINGERPRINTS
    from pipelines.training import train_once

    folder = root / f"{name}.step0"
    if (folder / FINGERPRINTS).exists():
        log(f"{name}: reusing {folder}")
        return folder
    train = params.train.model_copy(update={"fingerprints": params.train.fingerprints.model_copy(update={"steps": [0]})})
    run_params = params.model_copy(update={"train": train,
                                           "device": params.device.model_copy(update={"port_bug": name}),
                                           "tracking": params.tracking.model_copy(update={"enabled": False})})
    started = time.perf_counter()
    train_once(run_params, name, data_dir=data_dir, quiet=True, out_dir=folder, stop_after=0)
    log(f"{name} (bug): step 0 with fingerprints in {time.perf_counter() - started:.0f} s")
    return folder


def measure(params, *, entries: list[str] | None = None, runs_dir: Path | None = None, data_dir: Path | None = None,
            log=print) -> dict:
    """{"bugs": {name: {"expected", "named", "found", ...}}, "legit": {name: {...}}, "seconds"}."""
    import tempfile

    from benchmarks.bench_power import entries_for, policy_of, run_entry
    from cait.fingerprints import load, load_reference
    from cait.portbugs import BUGS
    from pipelines.layout import FINGERPRINTS, PREPARED_DIR
    from pipelines.localize import localize

    cfg = params.localize
    data_dir = data_dir or REPO / PREPARED_DIR
    baseline_path = Path(cfg.baseline_fingerprints)
    baseline = load_reference(baseline_path if baseline_path.is_absolute() else REPO / baseline_path)
    started = time.perf_counter()
    result: dict = {"bugs": {}, "legit": {}, "k": cfg.k, "floor": cfg.floor, "envelope_variants": baseline.variants}
    with tempfile.TemporaryDirectory(prefix="bench-localize-") as tmp:
        root = runs_dir or Path(tmp)
        for name, kind in entries_for(params.device.type, entries, policy_of(params)):
            folder = root / name
            if kind == "legit" or (folder / FINGERPRINTS).exists():
                if not (folder / FINGERPRINTS).exists():  # a power-benchmark run of older code: train again
                    (folder / "train.json").unlink(missing_ok=True)
                run_entry(params, name, kind, root, data_dir, log)
            else:
                folder = train_to_step0(params, name, root, data_dir, log)
            prints = load(folder / FINGERPRINTS)
            held_out = name if name in baseline.variants else None
            found_at = localize(prints, baseline, k=cfg.k, floor=cfg.floor, exclude=held_out,
                                candidate_source=str(folder / FINGERPRINTS), baseline_source=str(baseline_path))
            first = found_at.first
            named = {"step": first.step, "phase": first.phase, "module": first.module, "entry": first.entry,
                     "kind": first.kind, "rel_l2": first.rel_l2, "tolerance": first.tolerance} if first else None
            row = {"named": named, "message": found_at.message, "held_out": held_out,
                   "needed_k": needed_k(prints, baseline, cfg.floor, held_out)}
            if kind == "bug":
                row["expected"] = BUGS[name].site
                row["found"] = found(BUGS[name].site, named)
                result["bugs"][name] = row
            else:
                row["expected"] = None
                row["found"] = named is None  # a legitimate run: nothing to name
                result["legit"][name] = row
            log(f"{name}: {found_at.message[:160]}")
    result["stored_held_out"] = stored_rows_held_out(baseline, cfg.k, cfg.floor)
    result["seconds"] = time.perf_counter() - started
    return result


def counts(result: dict) -> dict:
    stored = [r for n, r in (result.get("stored_held_out") or {}).items() if n not in result["legit"]]
    return {"bugs_localized": sum(r["found"] for r in result["bugs"].values()), "bugs": len(result["bugs"]),
            "legit_clean": sum(r["found"] for r in result["legit"].values()) + sum(r["clean"] for r in stored),
            "legit": len(result["legit"]) + len(stored)}


def _named(row: dict) -> str:
    named = row["named"]
    if named is None:
        return "none"
    what = named["phase"] if named["phase"] == "update" else f"{named['phase']} `{named['entry']}`"
    return f"step {named['step']}, {what}"


def table(result: dict) -> str:
    """Markdown: each zoo entry, where it was injected, what localize named, and the k it would need."""
    lines = ["| kind | entry | injected at | localize names | ok | clean from k |", "|---|---|---|---|---|---|"]
    for group, label in (("bugs", "bug"), ("legit", "legit")):
        for name, row in result[group].items():
            held = " (held out)" if row["held_out"] else ""
            lines.append(f"| {label} | `{name}`{held} | {row['expected'] or '-'} | {_named(row)} | "
                         f"{'yes' if row['found'] else '**no**'} | {row['needed_k']:.3g} |")
    for name, row in (result.get("stored_held_out") or {}).items():
        if name in result["legit"]:
            continue
        lines.append(f"| legit | `{name}` (the baseline's stored run, held out) | - | "
                     f"{'none' if row['clean'] else 'named: ' + str(row['worst'])} | {'yes' if row['clean'] else '**no**'} "
                     f"| {row['needed_k']:.3g} |")
    c = counts(result)
    lines.append(f"| | **bugs localized** | | | {c['bugs_localized']} / {c['bugs']} | |")
    lines.append(f"| | **legit clean** | | | {c['legit_clean']} / {c['legit']} | |")
    return "\n".join(lines)


def expected_named(result: dict) -> dict:
    """{entry: {"expected": site or None, "named": "phase module" or None}}: the issue's JSON shape."""
    out = {}
    for group in ("bugs", "legit"):
        for name, row in result[group].items():
            named = row["named"]
            out[name] = {"expected": row["expected"],
                         "named": None if named is None else f"{named['phase']} {named['module'] or '(model)'}",
                         "found": row["found"]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default=str(REPO / "params.yaml"))
    p.add_argument("--profile", help="a profile of profiles/ (e.g. amp): params.yaml with its keys changed")
    p.add_argument("--entries", help="comma-separated zoo entries (default: every bug and legit variant)")
    p.add_argument("--runs-dir", help="keep (and reuse) each run's folder here (shared with bench_power)")
    p.add_argument("--json", help="write {entry: {expected, named}} here")
    args = p.parse_args(argv)
    from benchmarks.bench_power import load_profile

    result = measure(load_profile(args.params, args.profile), entries=args.entries.split(",") if args.entries else None,
                     runs_dir=Path(args.runs_dir) if args.runs_dir else None, log=lambda line: print(line, flush=True))
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(expected_named(result), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
