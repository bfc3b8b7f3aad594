"""A night of many runners against MLflow on PostgreSQL (pipelines/fleet.py): N device jobs (processes) of
the default profile's recorded curve under one execution id, at N = 1, 4 and 16 on one server, the last with the
MLflow server killed (SIGKILL) and restarted part-way.

  python -m benchmarks --only fleet --json fleet.json

Figures per N: jobs finished per minute (wall time from the first start to the last exit), the training
loop's `log_step` call p50/p99 (what a step pays) and the sender's `log_batch` round trip p50/p99 per writer
(what the store takes), runs lost, duplicates, and at N = 16 the time from the restarted server answering to
the last job exiting with its spool drained. Needs PostgreSQL's server (make test-tools installs it) and psycopg.
"""

from __future__ import annotations

import shutil
from pathlib import Path

FULL = {"jobs": (1, 4, 16), "steps_s": 0.05, "kill_at_s": 2.0, "down_s": 2.0}
SMOKE = {"jobs": (1, 2), "steps_s": 0.0, "kill_at_s": 0.5, "down_s": 0.5}


def measure(tmp: Path, smoke: bool = False, log=print) -> dict:
    from pipelines.fleet import Stack, night, temp_pg_data

    sizes = SMOKE if smoke else FULL
    pg = temp_pg_data()
    stack = Stack(Path(tmp) / "fleet-server", pg_data=pg, workers=4)
    out = {}
    try:
        stack.start()
        for n in sizes["jobs"]:
            last = n == sizes["jobs"][-1]
            figures = night(Path(tmp) / f"fleet-{n}", stack, jobs=n, fail_devices=(n // 2,) if n > 1 else (),
                            kill_at_s=sizes["kill_at_s"] if last else None, down_s=sizes["down_s"],
                            step_s=sizes["steps_s"])
            log(f"  fleet N={n}: {figures['jobs_per_min']:.1f} jobs/min, log_batch p50 "
                f"{figures['log_batch_p50_ms']:.0f} ms, lost {figures['runs_lost']}, duplicates "
                f"{figures['duplicates']}, problems {len(figures['problems'])}")
            out[str(n)] = figures
    finally:
        stack.stop()
        shutil.rmtree(pg, ignore_errors=True)
    return out
