"""report stage: loss overlay and zoom PNGs, a self-contained HTML page and JUnit XML for the verdict.

Outputs: reports/<profile>/overlay.png, zoom.png, report.html, junit.xml, plots.csv (both curves by
step, for `dvc plots`). The figures and page are attached to the run's MLflow record, with the
DVC lock hash as a tag. Renders only a verdict of the files on disk (a stale one is refused, exit 3),
and writes the verdict's SHA-256 into report.html so the gate knows which verdict the page shows.

  python -m pipelines.stages.report                              # the chain's reports/<profile>/verdict.json
  python -m pipelines.stages.report --verdict reports/logs/verdict.json   # any verdict, written beside it

A verdict of logs (compare --candidate/--baseline) names the files and how they were read; the report
reads them again the same way. Rendering is pipelines.report.write_report, which compare's log path calls too.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from cait.files import check_writable
from pipelines import cli
from pipelines.baselines import load_baseline
from pipelines.layout import EXPERIMENT_ENV, CURVE, FINGERPRINTS, HTML, JUNIT, LOCALIZE, OVERLAY, RECORD, VERDICT, run_dir
from pipelines.params import load_params
from pipelines.provenance import file_id, file_sha256, read_run
from pipelines.report import write_report
from pipelines.review import EXPERIMENT_TAG, REPORT_ARTIFACT, report_link
from pipelines.tracking import RunLogger, workspace_path
from pipelines.verdict_file import VerdictFile, read_verdict, require_fresh


def dvc_lock_hash(path: Path = Path("dvc.lock")) -> str:
    """SHA-256 (first 12 hex digits) of dvc.lock: names the exact inputs and outputs of the chain."""
    try:
        return file_id(path).rsplit("@", 1)[1]
    except FileNotFoundError:
        return "none"


def report_logs(verdict: VerdictFile, out_dir: Path, params) -> dict[str, Path]:
    """The report of a verdict on logs: each side read again as compare read it (verdict["sources"])."""
    from pipelines.logs import load_curve
    from pipelines.tracking import tracking_uri

    uri = tracking_uri(params.tracking) if params.tracking.enabled else None
    curves = {}
    for side in ("candidate", "baseline"):
        how = verdict.data["sources"][side]
        curves[side] = load_curve(how["source"], how.get("format", "auto"), rank=how.get("rank", 0),
                                  regex=how.get("regex"), tracking_uri=uri, metric=how.get("metric"),
                                  run=how.get("run"))
    baseline = curves["baseline"].baseline
    reference = baseline.reference_for(None)[0] if baseline is not None else curves["baseline"].curve
    return write_report(out_dir, verdict.data, curves["candidate"].curve, reference, baseline=baseline,
                        rules=params.compare.rules, verdict_sha256=verdict.sha256, ui_url=params.tracking.ui_url)


def read_localization(folder: Path) -> dict | None:
    """localize.json of this run, if it judged the fingerprints on disk now (else None: not shown)."""
    path = folder / LOCALIZE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    judged = (data.get("inputs") or {}).get("candidate", {}).get("sha256")
    now = folder / FINGERPRINTS
    if judged and now.exists() and file_sha256(now) != judged:
        print(f"report: {path} judged other fingerprints than {now}; not shown (run the localize stage)")
        return None
    return data


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--verdict", type=Path, help=f"verdict to report on; the report is written beside it "
                                                f"(default: reports/<profile>/{VERDICT})")
    args = p.parse_args(argv)
    params = load_params(args.params)
    path = args.verdict or run_dir(params.profile) / VERDICT
    out = check_writable(path.parent)
    verdict = read_verdict(path)
    # the curve, record and baseline read below are the ones judged (a log verdict: its compare params may differ)
    require_fresh(verdict, None if verdict.data.get("sources") else params.compare.model_dump())
    if verdict.data.get("sources"):
        paths = report_logs(verdict, out, params)
        print(f"report: {paths['html']} ({verdict.status}); figures {paths['overlay']}; JUnit {paths['junit']}")
        return 0
    candidate, record = read_run(out / CURVE, out / RECORD)
    baseline_path = verdict.inputs["baseline"]["path"]
    baseline = load_baseline(baseline_path, allow_negative_loss=params.compare.allow_negative_loss)
    reference, _ = baseline.reference_for(record["curve_params"]["train"]["seed"])  # the run compare paired with
    logger = RunLogger(params.tracking)  # opened before any file is written: a corrupt store stops the stage first
    paths = write_report(out, verdict.data, candidate, reference, baseline=baseline, record=record,
                         rules=params.compare.rules, verdict_sha256=verdict.sha256, ui_url=params.tracking.ui_url,
                         localization=read_localization(out))
    zoom = paths.get("zoom")
    print(f"report: {out / HTML} ({verdict.status}); figures {out / OVERLAY}"
          + (f", {zoom}" if zoom else "") + f"; JUnit {out / JUNIT}")

    logger.attach(record.get("mlflow_run_id", ""), record.get("mlflow_parent_run_id", ""))
    # the report that judged the run: its artifact (in the UI when there is one), its path only where it stays
    link = report_link(params.tracking, record) or (f"runs:/{logger.run_id}/{REPORT_ARTIFACT}" if logger.run_id else "")
    tags = {"dvc_lock_hash": dvc_lock_hash(), "report": link, "report.path": workspace_path(out / HTML)}
    if os.environ.get(EXPERIMENT_ENV):  # inside `dvc exp run`: the experiment's name, as `dvc exp show` lists it
        tags[EXPERIMENT_TAG] = os.environ[EXPERIMENT_ENV]
    logger.set_tags({key: value for key, value in tags.items() if value})
    for artifact in (out / OVERLAY, zoom, paths.get("strip"), out / HTML, out / JUNIT):
        if artifact is not None:
            logger.log_artifact(artifact, "report")
    logger.close()
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
