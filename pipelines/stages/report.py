"""report stage: loss overlay and zoom PNGs, a self-contained HTML page and JUnit XML for the verdict.

Outputs: reports/<profile>/overlay.png, zoom.png, report.html, junit.xml, plots.csv (both curves by
step, for `dvc plots`). The figures and page are attached to the run's MLflow record, with the
DVC lock hash as a tag.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipelines import cli
from pipelines.baselines import environment_table, load_baseline
from pipelines.curves import read_curve_csv
from pipelines.envelope import tolerance
from pipelines.layout import CURVE, HTML, JUNIT, OVERLAY, PLOTS, RECORD, VERDICT, ZOOM, run_dir
from pipelines.params import load_params
from pipelines.provenance import file_id, read_record
from pipelines.report import (render_html, render_junit, render_overlay, render_zoom, throughput_rows,
                              write_plot_table)
from pipelines.tracking import RunLogger


def divergence_tolerance(verdict: dict) -> float | None:
    """The relative tolerance the first divergence was found with (else the strict rule's)."""
    found = verdict.get("divergence", {}).get("max_relative_error")
    if found is not None:
        return found
    return verdict.get("rules", {}).get("strict", {}).get("thresholds", {}).get("max_mean_abs_relative_error")


def dvc_lock_hash(path: Path = Path("dvc.lock")) -> str:
    """SHA-256 (first 12 hex digits) of dvc.lock: names the exact inputs and outputs of the chain."""
    try:
        return file_id(path).rsplit("@", 1)[1]
    except FileNotFoundError:
        return "none"


def main(argv=None) -> int:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    params = load_params(args.params)
    out = run_dir(params.profile)
    try:
        verdict = json.loads((out / VERDICT).read_text())
    except FileNotFoundError:
        from cait.errors import BaselineError

        raise BaselineError(f"{out / VERDICT}: no verdict; run the compare stage first (dvc repro compare)") from None
    record = read_record(out / RECORD)
    candidate = read_curve_csv(out / CURVE)
    baseline = load_baseline(params.compare.baseline)
    env = record["environment"]
    labels = (f"candidate: {env['device']} ({env['device_name']})",
              f"baseline: {baseline.provenance['device']} ({baseline.provenance['device_name']})")
    band_cfg = params.compare.rules.band
    limits = baseline.band(band_cfg.z, band_cfg.min_halfwidth_relative)
    band = ((*limits, f"seed band: mean ± {band_cfg.z:g}·σ of {len(baseline.runs)} seeds (different randomness, "
                      f"informs)") if limits else None)
    reference, _ = baseline.reference_for(record["curve_params"]["train"]["seed"])  # the run compare paired with
    env_cfg = params.compare.rules.envelope
    width = baseline.envelope()
    envelope = None
    if width is not None:
        envelope = (tolerance(reference.loss, width, env_cfg.k, env_cfg.floor_relative),
                    f"envelope: ± ({env_cfg.k:g}·env + {env_cfg.floor_relative:g}·|ref|), "
                    f"{len(baseline.envelope_runs)} numerics variants")
    render_overlay(out / OVERLAY, candidate, reference, verdict, labels, band=band, envelope=envelope)
    first = verdict.get("first_divergence_step")
    zoom = None
    if first is not None:
        zoom = out / ZOOM
        render_zoom(zoom, candidate, reference, int(first), band, divergence_tolerance(verdict))
    else:
        (out / ZOOM).unlink(missing_ok=True)
    throughput = throughput_rows(baseline.provenance.get("mean_samples_per_s"), record.get("mean_samples_per_s"))
    render_html(out / HTML, verdict, environment_table(baseline, record), record, out / OVERLAY, throughput,
                zoom_png=zoom, band_shown=band is not None, envelope_shown=envelope is not None)
    render_junit(out / JUNIT, verdict, env['device'])
    write_plot_table(out / PLOTS, candidate, reference)
    print(f"report: {out / HTML} ({verdict['status']}); figures {out / OVERLAY}"
          + (f", {zoom}" if zoom else "") + f"; JUnit {out / JUNIT}")

    logger = RunLogger(params.tracking)
    logger.attach(record.get("mlflow_run_id", ""), record.get("mlflow_parent_run_id", ""))
    logger.set_tags({"dvc_lock_hash": dvc_lock_hash(), "report": str(out / HTML)})
    for path in (out / OVERLAY, zoom, out / HTML, out / JUNIT):
        if path is not None:
            logger.log_artifact(path, "report")
    logger.close()
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
