"""The step-0 fingerprint rules, measured on the port-bug zoo: the precision rule (which entries drop a tensor to
the low format where the reference keeps float32, and does any legitimate run?) and the layers rule (which entries
compute one step outside localize's tolerance, and does any legitimate run?).

  python -m benchmarks --only precision --profile amp --json precision-amp.json
  python benchmarks/bench_precision.py --profile amp --entries grads_bf16,threads_1 --runs-dir /tmp/prec

Per entry of cait/portbugs.py under the profile's precision policy (bench_power.entries_for: the bugs, then the
legitimate variants of the device, the envelope's own included): step 0 trained as the preflight trains it (the
full run's step 0, bitwise, with fingerprints), its fingerprints judged against the stored baseline's
(localize.baseline_fingerprints, with their precision shares) by `pipelines.localize.precision_changes` and
`layers_check`, as the compare stage's precision and layers rules judge a run (an envelope variant held out of
the envelope it is judged by). Step 0 is where a precision that is wrong shows: the master weights, the
gradients, the forward and backward of every module are all in its fingerprints.

A bug is caught when a rule fails; a legitimate run must pass both. The table gives for each entry how many
tensors went to the low format (lost) and how many went the other way (gained: no loss; a device whose autocast
keeps an op in float32), of how many judged, and the first tensor lost; for the layers rule the worst entry's
error over its tolerance at the profile's localize.k (below 1: inside) and the first entry outside.
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


def step0(params, name: str, kind: str, root: Path, data_dir: Path, log) -> Path:
    """Train step 0 of the entry with fingerprints (the preflight's params); cached in root/<name>.step0."""
    from pipelines.layout import FINGERPRINTS
    from pipelines.preflight import PREFLIGHT_STEP, preflight_params
    from pipelines.training import run_training

    folder = root / f"{name}.step0"
    if not (folder / FINGERPRINTS).is_file():
        device = {"port_bug": name} if kind == "bug" else {"numerics_variant": name}
        run = params.model_copy(update={"device": params.device.model_copy(update=device)})
        started = time.perf_counter()
        run_training(preflight_params(run), folder, data_dir=data_dir, quiet=True, stop_after=PREFLIGHT_STEP)
        log(f"{name}: step 0 in {time.perf_counter() - started:.1f} s")
    return folder


def measure(params, *, entries: list[str] | None = None, runs_dir: Path | None = None, data_dir: Path | None = None,
            log=print) -> dict:
    import tempfile

    from pipelines.layout import FINGERPRINTS, PREPARED_DIR, RECORD
    from pipelines.localize import baseline_fingerprints, layers_check, precision_changes, read_run_fingerprints
    from pipelines.verdict import layers_rule
    from pipelines.training import params_precision

    from benchmarks.bench_power import entries_for

    policy = params_precision(params)
    reference, where = baseline_fingerprints(params)
    if reference is None:
        raise SystemExit(where)
    data_dir = data_dir or REPO / PREPARED_DIR
    result: dict = {"policy": policy, "baseline_fingerprints": where, "k": params.localize.k,
                    "floor": params.localize.floor,
                    "precision_source": reference.meta.get("precision_source"), "bugs": {}, "legit": {}}
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        root = runs_dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for name, kind in entries_for(params.device.type, entries, policy):
            folder = step0(params, name, kind, root, data_dir, log)
            candidate = read_run_fingerprints(folder / FINGERPRINTS, folder / RECORD)
            check = precision_changes(candidate, reference, policy)
            first = check.lost[0] if check.lost else None
            layers = layers_check(candidate, reference, k=params.localize.k, floor=params.localize.floor,
                                  exclude=name if name in reference.variants else None).to_json()
            rule = layers_rule(layers)
            named = layers.get("first") or {}
            result["bugs" if kind == "bug" else "legit"][name] = {
                "status": check.status, "lost": len(check.lost), "gained": len(check.gained), "judged": check.entries,
                "first_lost": None if first is None else f"{first.phase} {first.entry}", "message": check.message,
                "layers": layers["status"], "layers_numbers": rule.numbers,
                "layers_first": f"{named['phase']} {named['entry']}" if named else None,
                "layers_message": layers["message"]}
            log(f"{name}: precision {check.status}: {check.message}")
            log(f"{name}: layers {layers['status']}: {layers['message']}")
    return result


def counts(result: dict) -> dict:
    bugs, legit = result["bugs"], result["legit"]
    return {"bugs": len(bugs), "bugs_caught_precision": sum(r["status"] == "lost" for r in bugs.values()),
            "bugs_caught_layers": sum(r["layers"] == "diverged" for r in bugs.values()),
            "bugs_caught_either": sum(r["status"] == "lost" or r["layers"] == "diverged" for r in bugs.values()),
            "legit": len(legit), "legit_clean_precision": sum(r["status"] == "clean" for r in legit.values()),
            "legit_clean_layers": sum(r["layers"] == "clean" for r in legit.values())}


def table(result: dict) -> str:
    lines = [f"precision and layers rules against {result['baseline_fingerprints']} (policy {result['policy']}, "
             f"localize.k {result.get('k')})",
             "| kind | entry | precision rule | tensors lost / gained / judged | first lost | layers rule | worst "
             "error / tolerance (unmatched) | first outside |", "|---|---|---|---|---|---|---|---|"]
    for kind in ("bugs", "legit"):
        for name, r in result[kind].items():
            verdict = {"lost": "**fail**", "clean": "pass"}.get(r["status"], r["status"])
            layers = {"diverged": "**fail**", "clean": "pass"}.get(r["layers"], r["layers"])
            n = r["layers_numbers"]
            worst = (f"{n['worst_matched_ratio']:.3g}" + (f" ({n['entries_unmatched']})" if n["entries_unmatched"]
                                                          else "")) if n else "-"
            lines.append(f"| {kind[:-1] if kind == 'bugs' else kind} | `{name}` | {verdict} | {r['lost']} / "
                         f"{r['gained']} / {r['judged']} | {r['first_lost'] or '-'} | {layers} | {worst} | "
                         f"{r['layers_first'] or '-'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from benchmarks.bench_power import load_profile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default=str(REPO / "params.yaml"))
    p.add_argument("--profile", help="a profile of profiles/ (e.g. amp)")
    p.add_argument("--entries", help="comma-separated zoo entries (default: every one of the profile's policy)")
    p.add_argument("--runs-dir", help="keep (and reuse) each entry's step-0 run here")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    params = load_profile(args.params, args.profile)
    params = params.model_copy(update={"tracking": params.tracking.model_copy(update={"enabled": False})})
    result = measure(params, entries=args.entries.split(",") if args.entries else None,
                     runs_dir=Path(args.runs_dir) if args.runs_dir else None)
    print(table(result))
    print(json.dumps(counts(result)))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
