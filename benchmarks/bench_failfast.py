"""Fail fast and the preflight on the default profile (issue 23), measured side by side in one process.

  python benchmarks/bench_failfast.py [--bugs gelu_tanh,softmax_bf16,...] [--json PATH] [--runs-dir DIR]

For each port bug: the preflight (step 0 with fingerprints, localized against localize.baseline_fingerprints:
the entry named and its seconds) and the train stage's run with compare.fail_fast on (the first step outside
the envelope, the step it stopped at, and the seconds from the run's start to the first failing step and to the
stop: train.json stopped_early, its seconds from run.json). Then one plain run of the same params trained in
full with fail fast on: its seconds are the full run's, and it must not stop early. Uses params.yaml as it is
(compare.baseline, localize.*, device.*), fail fast switched on; MLflow off; run folders under --runs-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_BUGS = ("gelu_tanh", "softmax_bf16", "adamw_no_bias_correction", "lr_one_step_late")


def measure(params, bugs, runs_dir: Path) -> dict:
    from pipelines.preflight import run_preflight
    from pipelines.provenance import read_run
    from pipelines.training import run_training

    fail_fast = params.compare.fail_fast.model_copy(update={"enabled": True})
    params = params.model_copy(update={"compare": params.compare.model_copy(update={"fail_fast": fail_fast}),
                                       "tracking": params.tracking.model_copy(update={"enabled": False})})
    out = {"load_start": os.getloadavg()[0], "bugs": {}}
    for name in [*bugs, None]:
        run = params.model_copy(update={"device": params.device.model_copy(update={"port_bug": name})})
        label = name or "none (full run)"
        row = {}
        if name:
            found = run_preflight(run, out_dir=runs_dir / f"preflight-{name}")
            row.update(preflight_status=found.status, preflight_named=f"{found.phase} {found.entry}".strip(),
                       preflight_seconds=found.seconds)
        start = time.perf_counter()
        folder = runs_dir / (name or "full")
        run_training(run, folder, quiet=True, fail_fast=True)
        _, record = read_run(folder / "curve.csv", folder / "train.json")
        stop = record.get("stopped_early")
        row.update(run_seconds=time.perf_counter() - start, steps_done=record["steps_done"],
                   failed_step=stop["failed_step"] if stop else None,
                   stopped_step=stop["stopped_step"] if stop else None,
                   seconds_to_failing_step=stop["failed_after_s"] if stop else None,
                   seconds_to_stop=stop["seconds"] if stop else None)
        out["bugs" if name else "full"] = {**out.get("bugs", {}), label: row} if name else row
        print(f"{label}: {json.dumps(row)}", flush=True)
    out["load_end"] = os.getloadavg()[0]
    return out


def replay(params, runs_dir: Path) -> dict:
    """Fail fast over runs already trained in full (benchmarks/bench_power.py --train-only --runs-dir DIR): each
    run's curve fed step by step to the train stage's watch (`plan`, the same code), with the seconds its own
    timing.csv says it had reached each step (from the start of its training loop): the step it would have
    stopped at and when, against the same run's seconds for all its steps. A numerics variant in the baseline's
    envelope is judged held out of it, as the power benchmark judges it."""
    from pipelines.baselines import record_precision
    from pipelines.curves import read_curve_csv
    from pipelines.failfast import plan
    from pipelines.provenance import read_run

    fail_fast = params.compare.fail_fast.model_copy(update={"enabled": True})
    params = params.model_copy(update={"compare": params.compare.model_copy(update={"fail_fast": fail_fast})})
    out = {}
    for folder in sorted(p for p in runs_dir.iterdir() if (p / "train.json").is_file()):
        curve, record = read_run(folder / "curve.csv", folder / "train.json")
        timing = read_timing(folder / "timing.csv")
        watch, note = plan(params, precision=record_precision(record), record=record, total_steps=len(curve),
                           exclude=record.get("numerics_variant"))
        decision = None
        for step, loss in zip(curve.steps, curve.loss):
            if watch is not None and (decision := watch.observe(int(step), float(loss), timing[int(step)])):
                break
        out[folder.name] = {"kind": "bug" if record.get("port_bug") else "legit", "steps": len(curve),
                            "full_seconds": timing[int(curve.steps[-1])], "note": note,
                            "failed_step": decision["failed_step"] if decision else None,
                            "stopped_step": decision["stopped_step"] if decision else None,
                            "seconds_to_stop": decision["seconds"] if decision else None}
    return out


def read_timing(path: Path) -> dict[int, float]:
    import csv

    with open(path, newline="") as f:
        return {int(r["step"]): float(r["elapsed_s"]) for r in csv.DictReader(f)}


def main(argv=None) -> int:
    from pipelines.params import load_params

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bugs", default=",".join(DEFAULT_BUGS), help="comma-separated port bugs (cait/portbugs.py)")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--runs-dir", help="where the runs go (default: a temporary folder)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--from-runs", help="no training: replay fail fast over the full runs in this folder")
    args = p.parse_args(argv)
    params = load_params(args.params)
    if args.from_runs:
        rows = replay(params, Path(args.from_runs))
        print("| kind | run | first step outside | stopped at | s to stop | full run s | % |")
        print("|---|---|---|---|---|---|---|")
        for name, r in rows.items():
            stop = r["seconds_to_stop"]
            print(f"| {r['kind']} | `{name}` | {r['failed_step'] if r['failed_step'] is not None else '-'} | "
                  f"{r['stopped_step'] if r['stopped_step'] is not None else 'not stopped'} | "
                  + (f"{stop:.1f} | {r['full_seconds']:.1f} | {100 * stop / r['full_seconds']:.0f}% |" if stop is not None
                     else f"- | {r['full_seconds']:.1f} | - |") + (f" {r['note']}" if r["note"] and r["failed_step"] is None and not r["note"].startswith("fail fast on") else ""))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
        return 0
    with tempfile.TemporaryDirectory(prefix="failfast-") as tmp:
        result = measure(params, [b for b in args.bugs.split(",") if b], Path(args.runs_dir or tmp))
    full = result["full"]["run_seconds"]
    print(f"\nload {result['load_start']:.1f} -> {result['load_end']:.1f}; full run {full:.1f} s "
          f"({result['full']['steps_done']} steps, stopped early: {result['full']['stopped_step'] is not None})")
    print("| bug | preflight names | preflight s | first step outside | stopped at | s to stop | % of full run |")
    print("|---|---|---|---|---|---|---|")
    for name, row in result["bugs"].items():
        to_stop = row["seconds_to_stop"]
        print(f"| `{name}` | {row['preflight_named'] or row['preflight_status']} | {row['preflight_seconds']:.1f} | "
              f"{row['failed_step']} | {row['stopped_step']} | "
              + (f"{to_stop:.1f} | {100 * to_stop / full:.0f}% |" if to_stop is not None else "not stopped | - |"))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
