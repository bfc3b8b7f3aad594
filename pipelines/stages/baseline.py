"""baseline command: record a new baseline, or promote an existing run's curve into one.

  python -m pipelines.stages.baseline promote   # reports/<profile>/curve.csv + train.json -> compare.baseline
  python -m pipelines.stages.baseline record    # train now with params.yaml, then promote that run
  python -m pipelines.stages.baseline show      # print the stored baseline's provenance

The baseline is written to compare.baseline (or --out); commit it to git with its provenance.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from pipelines import cli
from pipelines.baselines import baseline_from_run, load_baseline, save_baseline
from pipelines.curves import read_curve_csv
from pipelines.layout import CURVE, RECORD, run_dir
from pipelines.params import load_params
from pipelines.provenance import read_record


def promote(curve_path: Path, record_path: Path, out: Path, profile: str, source: str | None = None) -> None:
    record = read_record(record_path)
    baseline = baseline_from_run(read_curve_csv(curve_path), record, profile, source or str(curve_path))
    save_baseline(out, baseline)
    prov = baseline.provenance
    print(f"baseline: {len(baseline.loss)} steps from {curve_path} ({prov['device']}: {prov['device_name']}) -> {out}")


def main(argv=None) -> int:
    p = cli.parser("record or promote a baseline")
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("promote", help="turn an existing run's curve into the baseline")
    pr.add_argument("--run-dir", help="folder holding curve.csv and train.json (default: reports/<profile>)")
    rec = sub.add_parser("record", help="train now with params.yaml and promote that run")
    sub.add_parser("show", help="print the baseline's provenance")
    for s in (pr, rec):
        s.add_argument("--out", help="baseline file to write (default: compare.baseline)")
    args = p.parse_args(argv)
    params = load_params(args.params)
    if args.command == "show":
        baseline = load_baseline(params.compare.baseline)
        print(json.dumps({"profile": baseline.profile, "model": baseline.model, "steps": len(baseline.loss),
                          "provenance": {k: v for k, v in baseline.provenance.items() if k != "params"}}, indent=1))
        return 0
    out = Path(args.out or params.compare.baseline)
    if args.command == "promote":
        folder = Path(args.run_dir) if args.run_dir else run_dir(params.profile)
        promote(folder / CURVE, folder / RECORD, out, params.profile)
        return 0
    from pipelines.stages.train import run_training

    with tempfile.TemporaryDirectory(prefix="baseline-run-") as tmp:
        curve_path, record_path = run_training(params, Path(tmp))
        run_id = read_record(record_path).get("mlflow_run_id") or "untracked"
        promote(curve_path, record_path, out, params.profile, source=f"baseline record (MLflow run {run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
