"""How long the training loop waits for MLflow: time per log_step call, against a local SQLite store,
a real `mlflow server` on loopback, and a tracking server that does not answer.

  python benchmarks/tracking_overhead.py [--steps 2000] [--no-server]

Run by hand; prints the mean and worst per-step time of `RunLogger.log_step` (what the training loop
pays) for each store, and the time `finish` takes to deliver or spool everything afterwards.
`python -m benchmarks` sets the mean against the default profile's step time (target: < 0.5%).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.params import TrackingConfig  # noqa: E402
from pipelines.tracking import RunLogger  # noqa: E402


def measure(uri: str, spool: Path, steps: int) -> dict:
    cfg = TrackingConfig(uri=uri, experiment="overhead", flush_every=50, spool_dir=str(spool),
                         system_metrics_every_s=0)
    logger = RunLogger(cfg)
    logger.start("overhead", params={"steps": str(steps)}, tags={})
    costs = []
    for step in range(steps):
        started = time.perf_counter()
        logger.log_step({"step": step, "loss": 1.0 / (step + 1), "lr": 1e-3, "samples_per_s": 100.0})
        costs.append(time.perf_counter() - started)
    started = time.perf_counter()
    logger.finish()
    return {"mean_us": 1e6 * sum(costs) / len(costs), "max_ms": 1e3 * max(costs),
            "finish_s": time.perf_counter() - started}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_server(tmp: Path):
    """A real `mlflow server` on loopback with its own SQLite store (the UI command's, pipelines/ui.py); yields its
    URI, stops it afterwards."""
    from pipelines.ui import serve

    return serve(f"sqlite:///{tmp / 'server.db'}", "127.0.0.1", free_port(), artifacts=str(tmp / "artifacts"))


def run(steps: int = 2000, server: bool = True) -> dict[str, dict]:
    """{store label: measure(...)} for the SQLite store, a live server (if `server`) and a dead one."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results["sqlite store"] = measure(f"sqlite:///{tmp / 'mlflow.db'}", tmp / "spool-sqlite", steps)
        if server:
            with mlflow_server(tmp) as uri:
                results["mlflow server"] = measure(uri, tmp / "spool-server", steps)
        results["server down"] = measure(f"http://127.0.0.1:{free_port()}", tmp / "spool-down", steps)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--no-server", action="store_true", help="skip the live mlflow server")
    args = p.parse_args()
    for label, r in run(args.steps, not args.no_server).items():
        print(f"{label:13s}: log_step mean {r['mean_us']:.1f} us, worst {r['max_ms']:.2f} ms over "
              f"{args.steps} steps; finish {r['finish_s']:.2f} s")


if __name__ == "__main__":
    main()
