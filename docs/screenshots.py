"""Screenshots of what a reviewer sees in the MLflow UI, taken by headless Chromium (docs/mlflow-*.png).

  python docs/screenshots.py                 # after `make repro`: ./mlflow.db, the newest judged device run
  python docs/screenshots.py --verdict fail  # the chart of the newest failing run (the curves then part)

Starts `mlflow server` on the project's store and writes:
  docs/mlflow-runs.png     the runs list in the experiment's saved `cait-verdicts` view (pipelines/review.py):
                           runs named profile · device · date, the verdict, its rule and first diverging step
  docs/mlflow-compare.png  a device run's `loss` (solid) and `baseline_loss` (dashed: the stored reference) on one chart
  docs/mlflow-charts.png   the view's charts: each device run and the baseline run in a colour of its own, per metric

The server listens on 127.0.0.2 (loopback): the UI opens its assistant panel by itself for a server it sees
at localhost/127.0.0.1 (a local-only feature a reviewer of a shared server does not get), which would
cover a third of the page.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipelines.review import VIEW_KEY, experiment_tags  # noqa: E402

EXPERIMENT = "cait-acceptance"
HOST = "127.0.0.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"screenshots: {url} did not answer within {timeout_s:.0f} s")


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
    args = p.parse_args(argv)
    store = args.store.resolve()
    if not store.is_file():
        raise SystemExit("screenshots: no mlflow.db; run `make repro` first")
    port = free_port()
    base = f"http://{HOST}:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}",
                               "--host", HOST, "--port", str(port), "--workers", "1",
                               "--allowed-hosts", f"{HOST}:{port}", "--cors-allowed-origins", base],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"{base}/health")
        experiment = json.loads(urllib.request.urlopen(
            f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}", timeout=10).read())
        exp_id = experiment["experiment"]["experiment_id"]
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
        docs = args.out
        for key, value in experiment_tags().items():  # a store from before the view existed gets it now
            post(base, "experiments/set-experiment-tag", {"experiment_id": exp_id, "key": key, "value": value})
        view = f"{base}/#/experiments/{exp_id}/runs?viewStateShareKey={VIEW_KEY}"
        shoot(view, docs / "mlflow-runs.png")
        shoot(f"{view}&compareRunsMode=CHART", docs / "mlflow-charts.png", budget_ms=90000)  # charts load slowly
        ids = json.dumps([child["info"]["run_id"]])  # with the baseline run too, both runs get one colour here
        shoot(f'{base}/#/metric?runs={ids}&metric="loss"&experiments={json.dumps([exp_id])}'
              f'&plot_metric_keys=["loss","baseline_loss"]&x_axis=step', docs / "mlflow-compare.png")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
