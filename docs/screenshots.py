"""Screenshots of what a reviewer sees, taken by headless Chromium (docs/*.png).

  python docs/screenshots.py                 # after `make repro`: ./mlflow.db, the newest judged device run
  python docs/screenshots.py --verdict fail  # the chart of the newest failing run (the curves then part)
  python docs/screenshots.py --report reports/default/report.html   # also that report, as docs/report-fail.png

Serves the project's store as `make ui` does (pipelines/ui.py: the same address, flags and view) and writes:
  docs/mlflow-runs.png     the runs list in the experiment's saved `cait-verdicts` view (pipelines/review.py):
                           runs named profile · device · date, the verdict, its rule and first diverging step
  docs/mlflow-charts.png   the same view's charts: the candidate's `loss` and the baseline's `baseline_loss` on one
                           chart, then the per-step relative difference
  docs/mlflow-compare.png  a device run's `loss` (solid) and `baseline_loss` on one chart (its metric page)
  docs/report-fail.png     with --report: the report page (a failing night's, for the docs)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipelines.review import DEFAULT_UI_HOST  # noqa: E402
from pipelines.ui import port_free, serve, view_url  # noqa: E402

EXPERIMENT = "cait-acceptance"


def post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=10).read())


def shoot(url: str, out: Path, size: str = "1900,1000", budget_ms: int = 20000) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        raise SystemExit("screenshots: chromium not found (make test-tools installs it)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--window-size={size}", f"--virtual-time-budget={budget_ms}",
                        f"--screenshot={out}", url], check=True, capture_output=True, timeout=180)
    print(f"screenshots: {out}")


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=ROOT / "mlflow.db", help="SQLite MLflow store (default: ./mlflow.db)")
    p.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the PNGs (default: docs/)")
    p.add_argument("--verdict", choices=["any", "pass", "fail", "inconclusive"], default="any",
                   help="chart the newest device run of this verdict (default: the newest judged one)")
    p.add_argument("--report", type=Path, help="a report.html to shoot as report-fail.png")
    args = p.parse_args(argv)
    store = args.store.resolve()
    if not store.is_file():
        raise SystemExit("screenshots: no mlflow.db; run `make repro` first")
    docs = args.out
    if args.report:
        shoot(args.report.resolve().as_uri(), docs / "report-fail.png", size="1200,4200", budget_ms=5000)
    port = next(p for p in range(5000, 5100) if port_free(DEFAULT_UI_HOST, p))
    with serve(f"sqlite:///{store}", DEFAULT_UI_HOST, port) as base:
        view = view_url(base, EXPERIMENT)  # the address `make ui` prints (the view's tags brought up to date)
        exp_id = view.split("/experiments/")[1].split("/")[0]
        wanted = "tags.verdict != ''" if args.verdict == "any" else f"tags.verdict = '{args.verdict}'"
        runs = post(base, "runs/search", {"experiment_ids": [exp_id], "max_results": 50,
                                          "filter": f"tags.`cait.role` != 'parent' and {wanted}",
                                          "order_by": ["attributes.start_time DESC"]})["runs"]
        if not runs:
            raise SystemExit(f"screenshots: no device run with verdict {args.verdict} in the store; "
                             "run `make repro` (or a `dvc exp run`) first")
        child = runs[0]
        if not any(m["key"] == "baseline_loss" for m in child["data"].get("metrics", [])):
            raise SystemExit("screenshots: the newest run has no baseline_loss (tracking offline during compare?)")
        shoot(view, docs / "mlflow-runs.png")
        shoot(f"{view}&compareRunsMode=CHART", docs / "mlflow-charts.png", budget_ms=90000)  # charts load slowly
        ids = json.dumps([child["info"]["run_id"]])
        shoot(f'{base}/#/metric?runs={ids}&metric="loss"&experiments={json.dumps([exp_id])}'
              f'&plot_metric_keys=["loss","baseline_loss"]&x_axis=step', docs / "mlflow-compare.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
