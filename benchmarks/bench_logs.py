"""Foreign-log import speed: a ModelZoo dllogger log of ~200 MB (4 ranks, some records glued without a
newline, as ranks racing on stdout write them) read by pipelines.logs.load_curve, as compare reads it.

  python benchmarks/bench_logs.py [--mb 200] [--against OTHER_CHECKOUT --rounds 3]

Runs the import in a fresh process under a small wrapper (bench_pipeline.PEAK_RSS: getrusage of its child),
so the peak resident memory is the import's alone (a process forked from a big one inherits its peak).
`--against` times another checkout's load_curve on the same log, alternating with this one round by round
(e.g. `git archive HEAD~3 | tar -x -C /tmp/old`), so a speed-up is measured side by side under the same load.
Target (issues 15, 28): >= 100 MB/s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TARGET_MB_S = 100.0
RANKS = 4
MEASURE = """
import json, os, sys, time
sys.path.insert(0, sys.argv[2])
def cpu_time():  # this process's threads and its waited-for children (the rank listing's forked process)
    t = os.times()
    return time.process_time() + t.children_user + t.children_system
start = time.perf_counter()
cpu = cpu_time()
from pipelines.logs import load_curve
import pyarrow.csv  # imported by the first scan; counted with the imports
imported = time.perf_counter()
got = load_curve(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - imported, "import_s": imported - start,
                  "cpu_s": cpu_time() - cpu, "points": len(got.curve)}))
"""


def write_log(path: Path, megabytes: float) -> int:
    """A dllogger stdout of about `megabytes` MB; returns the number of rank-0 records."""
    import numpy as np

    record = 143  # bytes of one record, about
    steps = int(megabytes * 1e6 / record / RANKS)
    rng = np.random.default_rng(0)
    loss = 6.9 * np.exp(-np.arange(steps) / max(steps / 5, 1)) + 1 + rng.normal(0, 0.01, steps)
    with path.open("w") as f:
        for start in range(0, steps, 10_000):
            parts = []
            for step in range(start, min(start + 10_000, steps)):
                for rank in range(RANKS):
                    glue = "" if (step * RANKS + rank) % 7 == 3 else "\n"
                    parts.append(f"{glue}TCAPPDLL 2025-05-18 07:03:37.648152 - Epoch: 0 Iteration: {step}  "
                                 f"rank : {rank}  train.loss : {float(loss[step]) + 0.01 * rank!r}  "
                                 f"train.ips : 3.665468728314256 imgs/s")
            f.write("".join(parts))
        f.write("\n")
    return steps


def measure(log: Path, repo: Path, steps: int) -> dict:
    """One import of `log` by `repo`'s load_curve in a fresh process: seconds, CPU, peak RSS, MB/s."""
    from benchmarks.bench_pipeline import PEAK_RSS

    done = subprocess.run([sys.executable, "-c", PEAK_RSS, sys.executable, "-c", MEASURE, str(log), str(repo)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"load_curve failed: {done.stderr.strip()[-1500:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    r["peak_rss_mib"] = int(done.stderr.split("peak_rss_kib ")[-1].split()[0]) / 1024
    if r["points"] != steps:
        raise RuntimeError(f"read {r['points']} points of rank 0, expected {steps}")
    size = log.stat().st_size
    return {**r, "bytes": size, "mb_per_s": size / 1e6 / r["seconds"], "cpu_mb_per_s": size / 1e6 / r["cpu_s"]}


def run(megabytes: float = 200.0, against: Path | None = None, rounds: int = 1) -> dict:
    """This checkout's import figures (the median round by wall time); with `against`, the other checkout's
    too, measured in alternation on the same log ({"against": {...}, "ratio": wall-time speed-up})."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "dllogger.log"
        steps = write_log(log, megabytes)
        ours, theirs = [], []
        for _ in range(max(rounds, 1)):
            if against is not None:
                theirs.append(measure(log, against, steps))
            ours.append(measure(log, REPO, steps))

    def median(results: list[dict]) -> dict:
        return {**sorted(results, key=lambda r: r["seconds"])[len(results) // 2],
                "rounds_mb_per_s": [round(r["mb_per_s"], 1) for r in results]}

    out = median(ours)
    if against is not None:
        out["against"] = median(theirs)
        out["ratio"] = out["mb_per_s"] / out["against"]["mb_per_s"]
    return out


def describe(r: dict) -> str:
    return (f"{r['mb_per_s']:.0f} MB/s ({r['seconds']:.2f} s; CPU {r['cpu_s']:.2f} s = {r['cpu_mb_per_s']:.0f} MB/s; "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB; rounds {r['rounds_mb_per_s']} MB/s)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=200.0, help="log size in MB (default 200)")
    p.add_argument("--against", type=Path, help="another checkout of the project, timed on the same log")
    p.add_argument("--rounds", type=int, default=1, help="imports per checkout, alternating (default 1)")
    args = p.parse_args()
    start = time.perf_counter()
    r = run(args.mb, args.against, args.rounds)
    print(f"{r['bytes'] / 1e6:.0f} MB dllogger log ({RANKS} ranks, {r['points']} rank-0 points), target >= "
          f"{TARGET_MB_S:.0f} MB/s; imports {r['import_s']:.2f} s")
    print(f"  this checkout: {describe(r)}")
    if args.against is not None:
        print(f"  {args.against}: {describe(r['against'])}")
        print(f"  speed-up (median wall time): {r['ratio']:.2f}x")
    print(f"(whole benchmark {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
