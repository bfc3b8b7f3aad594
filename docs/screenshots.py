"""Screenshots of what a reviewer sees in the MLflow UI, taken by headless Chromium (docs/mlflow-*.png).

  python docs/screenshots.py            # after `make repro`: uses ./mlflow.db and its newest acceptance run

Starts `mlflow server` on the project's store (loopback only), opens the runs list and the compare
view of the newest device run beside its baseline run (pipelines/review.py makes both), and writes:
  docs/mlflow-runs.png     the runs list: runs named profile · device · date, the verdict columns
  docs/mlflow-compare.png  candidate and baseline `loss` on one MLflow chart
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
EXPERIMENT = "cait-acceptance"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
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
    args = p.parse_args(argv)
    store = args.store.resolve()
    if not store.is_file():
        raise SystemExit("screenshots: no mlflow.db; run `make repro` first")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"{base}/health")
        experiment = json.loads(urllib.request.urlopen(
            f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}", timeout=10).read())
        exp_id = experiment["experiment"]["experiment_id"]
        runs = post(base, "runs/search", {"experiment_ids": [exp_id], "max_results": 50,
                                          "filter": "tags.`cait.role` = 'child' and tags.verdict != ''",
                                          "order_by": ["attributes.start_time DESC"]})["runs"]
        if not runs:
            raise SystemExit("screenshots: no judged device run in the store; run `make repro` first")
        child = runs[0]
        tags = {t["key"]: t["value"] for t in child["data"].get("tags", [])}
        baseline_id = tags.get("cait.baseline_run_id")
        if not baseline_id:
            raise SystemExit("screenshots: the newest run has no baseline run (tracking offline during compare?)")
        docs = args.out
        post(base, "experiments/set-experiment-tag", {"experiment_id": exp_id, "key": "mlflow.experimentKind",
                                                      "value": "custom_model_development"})
        shoot(f"{base}/#/experiments/{exp_id}/runs", docs / "mlflow-runs.png")
        ids = json.dumps([child["info"]["run_id"], baseline_id]).replace(" ", "")
        shoot(f'{base}/#/metric?runs={ids}&metric="loss"&experiments={json.dumps([exp_id])}'
              f'&plot_metric_keys=["loss","baseline_loss"]&x_axis=step', docs / "mlflow-compare.png")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
