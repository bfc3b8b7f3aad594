"""Pipeline wall time and peak memory: `dvc repro` of the default chain in a fresh copy of the project
(cold: no data, no runs, no DVC cache; the virtual environment already set up), then again with
nothing changed; the peak resident memory of the train stage, and of the compare stage on a
10^6-step curve.

The copy is made as the tests make theirs (tests/conftest.py: the tracked files, git init, commit),
with its own MLflow store. The cold chain runs as `dvc repro prepare`, `dvc repro train` and
`dvc repro`, so that the train stage's peak memory can be read apart (resource.getrusage of the
children of a wrapper process); the three DVC start-ups are counted in the cold time.

  python benchmarks/bench_pipeline.py [--smoke]

Targets (issue 7): cold <= 90 s, nothing changed <= 3 s. Memory targets: see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from conftest import TINY, copy_project, stage_env, write_params  # noqa: E402  (one way to copy the project)

COLD_TARGET_S, WARM_TARGET_S = 90.0, 3.0
# run a command, then print the peak RSS (KiB on Linux) of it and everything it waited for
PEAK_RSS = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
            "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
            "sys.exit(rc)")


def run_measured(cmd: list[str], project: Path, check: bool = True) -> dict:
    """Wall seconds and peak RSS (MiB) of cmd run in the project copy, in a fresh wrapper process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, *cmd], cwd=project, env=stage_env(project),
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    rss = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("peak_rss_kib ")]
    return {"seconds": seconds, "peak_rss_mib": int(rss[-1]) / 1024, "returncode": done.returncode,
            "stdout": done.stdout}


def make_copy(dest: Path, smoke: bool) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    copy_project(dest)
    if smoke:  # the tests' tiny profile; its verdict is inconclusive (the baseline is the default profile's)
        write_params(dest, TINY)
    return dest


def repro(project: Path, smoke: bool) -> dict:
    """Cold chain (three dvc calls), then nothing changed; with the train stage's peak RSS."""
    last = "report" if smoke else None  # the tiny profile's gate is inconclusive by design: stop before it
    prepare = run_measured(["dvc", "repro", "prepare"], project)
    train = run_measured(["dvc", "repro", "train"], project)
    rest = run_measured(["dvc", "repro"] + ([last] if last else []), project, check=False)  # the gate may say fail
    warm = run_measured(["dvc", "repro"] + ([last] if last else []), project, check=False)
    from pipelines.verdict_file import read_verdict

    verdict = read_verdict(next((project / "reports").glob("*/verdict.json"))).status
    return {"cold_s": prepare["seconds"] + train["seconds"] + rest["seconds"], "prepare_s": prepare["seconds"],
            "train_s": train["seconds"], "rest_s": rest["seconds"], "warm_s": warm["seconds"],
            "warm_ran_nothing": "Running stage" not in warm["stdout"], "verdict": verdict,
            "exit_status": rest["returncode"],
            "train_peak_rss_mib": train["peak_rss_mib"]}


def compare_memory(project: Path, steps: int) -> dict:
    """Peak RSS and wall time of the compare stage (as a process) on a candidate and a baseline of `steps` steps."""
    from benchmarks.bench_verdict import synthetic_curves, write_candidate

    s, cand, mean, _ = synthetic_curves(steps)
    work = project / "bench"
    write_candidate(work / "candidate.csv", s, cand)
    write_candidate(work / "baseline.csv", s, mean)
    r = run_measured([sys.executable, "-m", "pipelines.stages.compare", "--candidate", str(work / "candidate.csv"),
                      "--baseline", str(work / "baseline.csv"), "--out", str(work / "verdict.json")], project)
    return {"steps": steps, "peak_rss_mib": r["peak_rss_mib"], "seconds": r["seconds"]}


def main() -> int:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="the tests' tiny profile, a 10^4-step compare")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = make_copy(Path(tmp) / "project", args.smoke)
        r = repro(project, args.smoke)
        m = compare_memory(project, 10_000 if args.smoke else 1_000_000)
    print(f"cold dvc repro {r['cold_s']:.1f} s (prepare {r['prepare_s']:.1f}, train {r['train_s']:.1f}, rest "
          f"{r['rest_s']:.1f}; target <= {COLD_TARGET_S:.0f} s), verdict {r['verdict']}; nothing changed "
          f"{r['warm_s']:.1f} s (target <= {WARM_TARGET_S:.0f} s)")
    print(f"peak RSS: train stage {r['train_peak_rss_mib']:.0f} MiB; compare on {m['steps']} steps "
          f"{m['peak_rss_mib']:.0f} MiB ({m['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
