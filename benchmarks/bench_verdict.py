"""Verdict and report cost against curve length: read the candidate curve, decide by every rule of
params.yaml's compare section, write the verdict, render the report (pipelines.report.write_report:
overlay, zoom, HTML, JUnit, plot table), for curves of 10^3 .. 10^6 steps.

The curves are synthetic (a decaying loss; the candidate 1% off with noise, so the rules have work to
do and the curves part, which draws the zoom too); the baseline has three runs, so the band rule runs.
Everything is in-process with the same functions the compare and report stages call; the MLflow
calls of those stages are left out (benchmarks/tracking_overhead.py measures them).

  python benchmarks/bench_verdict.py [--lengths 1000 10000 100000 1000000]

Target (issue 7): linear growth, and 10^6 steps compared and reported in under 2 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

TARGET_S = 2.0
LENGTHS = (1_000, 10_000, 100_000, 1_000_000)


def synthetic_curves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """steps, candidate, baseline mean and std over 3 runs, for an n-step run."""
    rng = np.random.default_rng(seed)
    steps = np.arange(n, dtype=np.int64)
    clean = 0.95 + 1.4 * np.exp(-steps / max(n / 5, 1))
    runs = clean * (1 + 0.003 * rng.standard_normal((3, n)))
    candidate = clean * (1 + 0.03 * (steps >= n // 2)) * (1 + 0.003 * rng.standard_normal(n))
    return steps, candidate, runs.mean(axis=0), runs.std(axis=0)


def write_candidate(path: Path, steps: np.ndarray, loss: np.ndarray) -> None:
    """The candidate as the train stage writes it (pipelines.curves.write_curve_csv)."""
    from pipelines.curves import write_curve_csv

    write_curve_csv(path, ({"step": s, "loss": v, "lr": 1e-3, "samples_per_s": 100.0, "elapsed_s": 0.1 * s,
                            "batch_hash": "0" * 16} for s, v in zip(steps.tolist(), loss.tolist())))


def cost(n: int, compare_cfg, work: Path) -> dict:
    """Seconds for each phase of compare + report on an n-step curve."""
    from pipelines.curves import read_curve_csv
    from pipelines.report import write_report
    from pipelines.verdict import decide
    from pipelines.verdict_file import input_entry, write_verdict

    steps, cand, mean, std = synthetic_curves(n)
    csv_path = work / f"curve-{n}.csv"
    write_candidate(csv_path, steps, cand)
    rules = compare_cfg.rules
    t = {"n": n}
    cpu = time.process_time()
    start = time.perf_counter()
    candidate = read_curve_csv(csv_path)
    t["read_s"] = time.perf_counter() - start
    mark = time.perf_counter()
    verdict = decide(candidate.steps, candidate.loss, steps, mean, gate=list(compare_cfg.gate),
                     inform=list(compare_cfg.inform), min_steps=compare_cfg.min_steps, alignment=compare_cfg.alignment,
                     divergence=compare_cfg.divergence.model_dump(), modelzoo=rules.modelzoo.model_dump(),
                     strict=rules.strict.model_dump(), band=rules.band.model_dump(), trend=rules.trend.model_dump(),
                     band_stats={"mean": mean, "std": std, "runs": 3}, envelope=rules.envelope.model_dump(),
                     envelope_width=np.maximum.accumulate(std * 1e-3),  # every gating rule runs, the envelope too
                     throughput=rules.throughput.model_dump(), samples_per_s=(100.0, 100.0))
    result = write_verdict(work / f"verdict-{n}.json", verdict, profile="bench", candidate=str(csv_path),
                           baseline="synthetic", compare_params=compare_cfg.model_dump(), baseline_device="cpu",
                           inputs={"candidate": input_entry(csv_path), "baseline": input_entry("synthetic")})
    t["decide_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    baseline = SyntheticBaseline(steps, mean, std)
    write_report(work, result, candidate, baseline.curve, baseline=baseline, rules=rules)
    t["report_s"] = time.perf_counter() - mark
    t["compare_s"] = t["read_s"] + t["decide_s"]
    t["total_s"] = t["compare_s"] + t["report_s"]
    t["cpu_s"] = time.process_time() - cpu  # all threads of the process: on a loaded machine, the work itself
    t["status"] = verdict.status
    return t


class SyntheticBaseline:
    """What write_report asks of a stored multi-run baseline (pipelines.baselines.Baseline): its curve, runs,
    band and provenance."""

    def __init__(self, steps, mean, std):
        from pipelines.curves import Curve

        self.curve, self.std, self.runs, self.seeds = Curve(steps, mean), std, [None] * 3, [0, 1, 2]
        self.provenance = {"device": "cpu", "device_name": "synthetic", "mean_samples_per_s": None, "seed": 0}

    def envelope(self):
        return None  # a seed band only: the envelope needs numerics variants of one seed

    def band(self, z: float, min_halfwidth_relative: float):
        from pipelines.verdict import band_limits

        return band_limits(self.curve.loss, self.std, z, min_halfwidth_relative)


def run(lengths=LENGTHS, params_path: str = "params.yaml") -> list[dict]:
    from pipelines.params import load_params

    cfg = load_params(params_path).compare
    with tempfile.TemporaryDirectory() as tmp:
        cost(100, cfg, Path(tmp))  # warm-up: imports, matplotlib's font cache
        return [cost(n, cfg, Path(tmp)) for n in lengths]


def growth_exponent(rows: list[dict]) -> float:
    """Slope of log(total time) against log(n) over the two longest curves: 1 is linear."""
    a, b = rows[-2], rows[-1]
    return float(np.log(b["total_s"] / a["total_s"]) / np.log(b["n"] / a["n"]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args()
    rows = run(args.lengths, args.params)
    print(f"{'steps':>9} {'read':>7} {'decide':>7} {'report':>7} {'total':>7} {'CPU':>7}  verdict")
    for r in rows:
        print(f"{r['n']:9d} {r['read_s']:7.3f} {r['decide_s']:7.3f} {r['report_s']:7.3f} {r['total_s']:7.3f} "
              f"{r['cpu_s']:7.3f}  {r['status']}")
    if len(rows) > 1:
        print(f"growth exponent over the two longest: {growth_exponent(rows):.2f} (1 = linear); "
              f"longest total {rows[-1]['total_s']:.2f} s (target < {TARGET_S} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
