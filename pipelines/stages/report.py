"""report stage: loss overlay PNG, self-contained HTML page and JUnit XML for the verdict.

Outputs: reports/<profile>/overlay.png, report.html, junit.xml; the figure and page are attached to
the run's MLflow record.
"""

from __future__ import annotations

import json
import sys

from pipelines import cli
from pipelines.baselines import environment_table, load_baseline
from pipelines.curves import read_curve_csv
from pipelines.layout import CURVE, HTML, JUNIT, OVERLAY, RECORD, VERDICT, run_dir
from pipelines.params import load_params
from pipelines.provenance import read_record
from pipelines.report import render_html, render_junit, render_overlay
from pipelines.tracking import RunLogger


def main(argv=None) -> int:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    params = load_params(args.params)
    out = run_dir(params.profile)
    verdict = json.loads((out / VERDICT).read_text())
    record = read_record(out / RECORD)
    candidate = read_curve_csv(out / CURVE)
    baseline = load_baseline(params.compare.baseline)
    env = record["environment"]
    labels = (f"candidate: {env['device']} ({env['device_name']})",
              f"baseline: {baseline.provenance['device']} ({baseline.provenance['device_name']})")
    band_cfg = params.compare.rules.band
    limits = baseline.band(band_cfg.z, band_cfg.min_halfwidth_relative)
    band = (*limits, f"baseline band: mean +- {band_cfg.z:g} sigma of {len(baseline.runs)} runs") if limits else None
    reference, _ = baseline.reference_for(record["curve_params"]["train"]["seed"])  # the run compare paired with
    render_overlay(out / OVERLAY, candidate, reference, verdict, labels, band=band)
    base_ips = baseline.provenance.get("mean_samples_per_s")
    throughput = (f"{base_ips:.1f}" if isinstance(base_ips, (int, float)) else "not recorded",
                  f"{record.get('mean_samples_per_s', float('nan')):.1f}")
    render_html(out / HTML, verdict, environment_table(baseline, record), record, out / OVERLAY, throughput)
    render_junit(out / JUNIT, verdict)
    print(f"report: {out / HTML}, {out / OVERLAY}, {out / JUNIT}")

    logger = RunLogger(params.tracking)
    logger.attach(record.get("mlflow_run_id", ""))
    logger.log_artifact(out / OVERLAY, "report")
    logger.log_artifact(out / HTML, "report")
    logger.log_artifact(out / JUNIT, "report")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
