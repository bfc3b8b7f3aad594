"""How long the training loop waits for MLflow: time per log_step call, store up and store down.

  python benchmarks/tracking_overhead.py [--steps 2000]

Run by hand; prints the mean and worst per-step time of `RunLogger.log_step` (what the training loop
pays) against a local SQLite store and against a tracking server that does not answer, and the
time `finish` takes to deliver or spool everything afterwards.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

from pipelines.params import TrackingConfig
from pipelines.tracking import RunLogger


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}"
        for label, uri in (("sqlite store", f"sqlite:///{tmp / 'mlflow.db'}"), ("server down", dead)):
            r = measure(uri, tmp / f"spool-{label.split()[0]}", args.steps)
            print(f"{label:13s}: log_step mean {r['mean_us']:.1f} us, worst {r['max_ms']:.2f} ms over "
                  f"{args.steps} steps; finish {r['finish_s']:.2f} s")


if __name__ == "__main__":
    main()
