"""Run every benchmark side by side and print one table: name, target, measured, met.

  python -m benchmarks                  # the full figures (benchmarks/README.md says how long)
  python -m benchmarks --smoke          # tiny sizes, to check that every benchmark still runs (tests)
  python -m benchmarks --only verdict   # one group: trainer efficiency tracking verdict logs pipeline loader memory
  python -m benchmarks --json out.json  # also write every row and the raw figures as JSON
  python -m benchmarks --only fleet --json fleet.json   # 1, 4, 16 job processes on MLflow + PostgreSQL
                                        # (a server restart at 16): jobs/min, log_step/log_batch p50/p99
  python -m benchmarks --only power     # the gate's power: one training per port bug and legit variant
                                        # (~15 runs of the default profile; not in the default set)
  python -m benchmarks --only localize --json out.json   # localize on the same zoo: {entry: {expected, named}}
  python -m benchmarks --only power --only localize --power-runs-dir /tmp/zoo   # both, one training each
  python -m benchmarks --only kernel --json kernel.json --kernel-runs-dir /tmp/kernel-zoo   # per bug: seconds to
                                        # a fail verdict and to the named op vs a full run, the op, its repro
  python -m benchmarks --only power --profile amp --json amp.json   # the mixed-precision profile (profiles/amp.yaml)
  python -m benchmarks --only precision --profile amp --json prec.json   # the precision rule on the profile's zoo:
                                        # step 0 of each entry against the baseline's fingerprints
  python -m benchmarks --only sensitivity --json sens.json --sensitivity-runs-dir /work/sens-runs
                                        # the smallest eps of output x (1 + eps) at 3 depths the gate fails
                                        # and localize names, per baseline (--baseline, repeatable)

Rows that share a measurement take it from the same run (the CPU efficiency and the tracking cost use
the trainer benchmark's step rates; the loader and memory benchmarks use the pipeline benchmark's
project copy), so each ratio is measured side by side. Exit status 0 whatever the targets say: the
table is the result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import (bench_efficiency, bench_fleet, bench_kernel, bench_localize, bench_logs,  # noqa: E402
                        bench_precision,
                        bench_pipeline, bench_power, bench_sensitivity, bench_trainer, bench_verdict, tracking_overhead)

GROUPS = ("trainer", "efficiency", "tracking", "verdict", "logs", "pipeline", "loader", "memory", "power", "localize",
          "sensitivity", "kernel", "precision", "fleet")
# power, localize, sensitivity, kernel and precision train ~19 runs or more, fleet starts PostgreSQL: only with --only
DEFAULT_GROUPS = GROUPS[:-6]
TRACKING_TARGET = 0.005  # of the default profile's step time
GROWTH_MAX = 1.2  # log-log slope of the verdict + report cost between the two longest curves: linear is 1
LOADER_TARGET = 3.0  # bench_loader.TARGET: the loader delivers >= 3x what the trainer consumes
TRAIN_RSS_TARGET_MIB = 2048  # the default profile's train stage: measured 1.5 GiB (benchmarks/README.md), +30%
HASH_SHARE_TARGET = 0.01  # issue 28: the batch hash's CPU time per batch, of a trainer step at 224 px, batch 64
COMPARE_RSS_TARGET_MIB = 512  # compare on 10^6 steps: the arrays are 50 MB; the rest is the interpreter and libraries

FULL = {"trainer_default": {"steps": 10, "warmup": 2, "rounds": 3},
        "trainer_224": {"steps": 1, "warmup": 1, "rounds": 2, "img_size": 224, "batch_size": 64, "images": 128,
                        "workers": (0, 2), "loose": False, "isolate": True},
        "tracking_steps": 2000, "verdict_lengths": bench_verdict.LENGTHS, "compare_steps": 1_000_000,
        "loader_steps": 5, "log_mb": 200, "power_entries": None, "localize_entries": None,
        "kernel_entries": None, "precision_entries": None,
        "sensitivity": {"depths": None, "eps": None, "order": "descending"}}  # failing runs stop early: cheapest
SMOKE = {"trainer_default": {"steps": 2, "warmup": 1, "rounds": 1, "img_size": 32, "batch_size": 4, "images": 16},
         "trainer_224": {"steps": 1, "warmup": 1, "rounds": 1, "img_size": 32, "batch_size": 2, "images": 8,
                         "workers": (0, 2), "loose": False, "isolate": True},
         "tracking_steps": 50, "verdict_lengths": (1_000, 10_000), "compare_steps": 10_000, "loader_steps": 2,
         "log_mb": 2, "power_entries": ["lr_one_step_late", "adamw_no_bias_correction", "weights_ulp_other"],
         "localize_entries": ["lr_one_step_late", "gelu_tanh", "weights_ulp_other"],
         "kernel_entries": ["gelu_tanh", "lr_one_step_late", "threads_1"],
         "precision_entries": ["layernorm_bf16", "threads_1"],
         "sensitivity": {"depths": ["shallow"], "eps": [1e-6, 1e-2]}}


@dataclass
class Row:
    group: str
    name: str
    target: str
    measured: str
    met: bool | None  # None: reported, no target
    value: float  # the figure the target is about, as a number


class Context:
    """Measurements more than one benchmark needs, made once per run."""

    def __init__(self, smoke: bool, params_path: str, tmp: Path, log, profile: str | None = None):
        self.smoke, self.sizes, self.tmp, self.log = smoke, SMOKE if smoke else FULL, tmp, log
        self.params = bench_power.load_profile(params_path, profile)
        self.params_path = params_path
        self._cache: dict = {}
        self.raw: dict = {}

    def once(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
            self.raw[key] = self._cache[key]
        return self._cache[key]

    def trainer(self, which: str) -> dict:
        return self.once(f"trainer_{which}", lambda: bench_trainer.measure(
            self.params, **self.sizes[f"trainer_{which}"], log=lambda line: self.log(f"  trainer {which}: {line}")))

    def pipeline(self) -> dict:
        def make():
            project = bench_pipeline.make_copy(self.tmp / "project", self.smoke)
            return {"project": str(project), **bench_pipeline.repro(project, self.smoke)}
        return self.once("pipeline", make)


def label(r: dict) -> str:
    return f"{r['model']} {r['img_size']}px b{r['batch_size']}"


def trainer_rows(ctx: Context) -> list[Row]:
    rows = []
    for which in ("default", "224"):
        r = ctx.trainer(which)
        for w, f in r["by_workers"].items():
            rounds = ", ".join(f"{x:.3f}" for x in f["ratios"])
            rows.append(Row("trainer", f"trainer / bare loop, {label(r)}, {w} loader processes", ">= 0.98",
                            f"{f['ratio']:.3f} ({f['trainer_steps_per_s']:.3f} vs {r['bare_steps_per_s']:.3f} steps/s; "
                            f"rounds {rounds}; by CPU time per step {f['cpu_ratio']:.3f}; waiting for the batch "
                            f"{f['fetch_share']:.2%} of a step" + (f"; peak RSS {r['peak_rss_mib'][f'trainer{w}']:.0f} "
                            f"MiB, bare {r['peak_rss_mib']['bare']:.0f}" if r["isolated"] else "") + ")",
                            f["ratio"] >= bench_trainer.TARGET, f["ratio"]))
    r = ctx.trainer("224")
    h = r["hash"]
    rows.append(Row("trainer", f"batch hash throughput, {h['bytes'] / 1e6:.1f} MB ({label(r)})", "report",
                    f"{h['before_gb_s']:.2f} GB/s before (bytes copied out) -> {h['after_gb_s']:.2f} GB/s "
                    f"(read in place; same values)", None, h["after_gb_s"]))
    rows.append(Row("trainer", f"batch hash cost per batch / trainer step, {label(r)}, "
                    f"{r['num_workers']} loader processes", f"< {HASH_SHARE_TARGET:.0%} of a step",
                    f"{h['share_of_step']:.2%} ({h['after_cpu_s'] * 1e3:.1f} ms CPU in a thread beside the step; the "
                    f"loop waited {h['wait_mean_s'] * 1e3:.2f} ms a step for it = {h['wait_share_of_step']:.3%})",
                    h["share_of_step"] < HASH_SHARE_TARGET, h["share_of_step"]))
    return rows


def efficiency_rows(ctx: Context) -> list[Row]:
    peak = ctx.once("matmul_peak_flops", bench_efficiency.matmul_peak_flops)
    rows = []
    for which in ("default", "224"):
        r = ctx.trainer(which)
        sizes = ctx.sizes[f"trainer_{which}"]
        flops = ctx.once(f"flops_per_step_{which}", lambda: bench_efficiency.training_flops_per_step(
            ctx.params, sizes.get("img_size"), sizes.get("batch_size")))
        share = flops * r["trainer_steps_per_s"] / peak
        loose = flops * r["loose_steps_per_s"] / peak
        rows.append(Row("efficiency", f"training FLOP/s / fp32 matmul peak, {label(r)}", "report",
                        f"{share:.1%} of {peak / 1e9:.0f} GFLOP/s ({flops / 1e9:.1f} GFLOP/step; "
                        + (f"{loose:.1%} without deterministic numerics)" if math.isfinite(loose) else
                           "the bare loop without them not measured at this size)"), None, share))
    return rows


def tracking_rows(ctx: Context) -> list[Row]:
    step_s = 1 / ctx.trainer("default")["trainer_steps_per_s"]
    results = ctx.once("tracking", lambda: tracking_overhead.run(ctx.sizes["tracking_steps"], server=True))
    rows = []
    for store, r in results.items():
        share = r["mean_us"] * 1e-6 / step_s
        rows.append(Row("tracking", f"MLflow log_step per step, {store}", f"< {TRACKING_TARGET:.1%} of a step",
                        f"{share:.4%} ({r['mean_us']:.0f} us of {step_s:.2f} s; worst {r['max_ms']:.1f} ms; "
                        f"finish {r['finish_s']:.1f} s)", share < TRACKING_TARGET, share))
    return rows


def verdict_rows(ctx: Context) -> list[Row]:
    costs = ctx.once("verdict", lambda: bench_verdict.run(ctx.sizes["verdict_lengths"]))
    longest = costs[-1]
    exponent = bench_verdict.growth_exponent(costs)
    by_n = ", ".join(f"{c['n']:.0e}: {c['total_s']:.2f} s" for c in costs)
    return [Row("verdict", f"compare + report, {longest['n']:.0e} steps", f"< {bench_verdict.TARGET_S:.0f} s",
                f"{longest['total_s']:.2f} s (read {longest['read_s']:.2f}, decide {longest['decide_s']:.2f}, "
                f"report: overlay/zoom/HTML/JUnit/plot table {longest['report_s']:.2f}; CPU {longest['cpu_s']:.2f})",
                longest["total_s"] < bench_verdict.TARGET_S, longest["total_s"]),
            Row("verdict", f"growth, {costs[-2]['n']:.0e} -> {longest['n']:.0e} steps", f"linear (slope <= {GROWTH_MAX})",
                f"log-log slope {exponent:.2f} ({by_n})", exponent <= GROWTH_MAX, exponent)]


def logs_rows(ctx: Context) -> list[Row]:
    r = ctx.once("logs", lambda: bench_logs.run(ctx.sizes["log_mb"]))
    return [Row("logs", f"dllogger log import, {r['bytes'] / 1e6:.0f} MB", f">= {bench_logs.TARGET_MB_S:.0f} MB/s",
                f"{r['mb_per_s']:.0f} MB/s ({r['seconds']:.2f} s, CPU {r['cpu_s']:.2f} s, {r['points']} points of "
                f"rank 0 of {bench_logs.RANKS}; peak RSS {r['peak_rss_mib']:.0f} MiB)",
                r["mb_per_s"] >= bench_logs.TARGET_MB_S, r["mb_per_s"])]


def pipeline_rows(ctx: Context) -> list[Row]:
    r = ctx.pipeline()
    return [Row("pipeline", "dvc repro, cold", f"<= {bench_pipeline.COLD_TARGET_S:.0f} s",
                f"{r['cold_s']:.1f} s (prepare {r['prepare_s']:.1f}, train {r['train_s']:.1f}, compare/report/gate "
                f"{r['rest_s']:.1f}); verdict {r['verdict']}, exit {r['exit_status']}", r["cold_s"] <= bench_pipeline.COLD_TARGET_S, r["cold_s"]),
            Row("pipeline", "dvc repro, nothing changed", f"<= {bench_pipeline.WARM_TARGET_S:.0f} s",
                f"{r['warm_s']:.1f} s ({'no stage ran' if r['warm_ran_nothing'] else 'a stage ran'})",
                r["warm_s"] <= bench_pipeline.WARM_TARGET_S and r["warm_ran_nothing"], r["warm_s"])]


def loader_rows(ctx: Context) -> list[Row]:
    project = Path(ctx.pipeline()["project"])
    out = project / "bench" / "loader.json"

    def make():
        done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_loader.py"), "--steps",
                               str(ctx.sizes["loader_steps"]), "--out", str(out)], cwd=project,
                              env=bench_pipeline.stage_env(project), capture_output=True, text=True)
        if not out.exists():
            raise RuntimeError(f"bench_loader.py wrote no figures: {done.stderr.strip()[-1500:]}")
        return json.loads(out.read_text())
    r = ctx.once("loader", make)
    return [Row("loader", "loader from shards / trainer consumption", f">= {LOADER_TARGET:.0f}x",
                f"{r['shards_over_trainer']:.1f}x ({r['loader_shards_samples_per_s']:.0f} vs "
                f"{r['trainer_samples_per_s']:.1f} samples/s; from JPEGs {r['jpeg_over_trainer']:.1f}x; scan "
                f"{r['scan_images_per_s']:.0f} images/s)", r["shards_over_trainer"] >= LOADER_TARGET,
                r["shards_over_trainer"])]


def memory_rows(ctx: Context) -> list[Row]:
    r = ctx.pipeline()
    m = ctx.once("compare_memory", lambda: bench_pipeline.compare_memory(Path(r["project"]), ctx.sizes["compare_steps"]))
    return [Row("memory", "peak RSS, train stage (dvc repro train)", f"<= {TRAIN_RSS_TARGET_MIB} MiB",
                f"{r['train_peak_rss_mib']:.0f} MiB", r["train_peak_rss_mib"] <= TRAIN_RSS_TARGET_MIB,
                r["train_peak_rss_mib"]),
            Row("memory", f"peak RSS, compare stage, {m['steps']:.0e} steps", f"<= {COMPARE_RSS_TARGET_MIB} MiB",
                f"{m['peak_rss_mib']:.0f} MiB ({m['seconds']:.1f} s as a process)",
                m["peak_rss_mib"] <= COMPARE_RSS_TARGET_MIB, m["peak_rss_mib"])]


def power_rows(ctx: Context) -> list[Row]:
    runs_dir = Path(ctx.power_runs_dir) if ctx.power_runs_dir else None
    result = ctx.once("power", lambda: bench_power.measure(ctx.params, entries=ctx.sizes["power_entries"],
                                                            runs_dir=runs_dir,
                                                            log=lambda line: ctx.log(f"  power: {line}")))
    ctx.log("\n" + bench_power.table(result) + "\n")
    rows = []
    for rule, c in bench_power.counts(result).items():
        target = ">= 90% of bugs, every legit" if rule == "envelope" else "report"
        met = (c["bugs_caught"] >= 0.9 * c["bugs"] and c["legit_passed"] == c["legit"]) if rule == "envelope" else None
        rows.append(Row("power", f"{rule} rule: bugs failed / legit variants passed", target,
                        f"{c['bugs_caught']} / {c['bugs']} bugs, {c['legit_passed']} / {c['legit']} legit",
                        met, c["bugs_caught"] / max(1, c["bugs"])))
    return rows


def localize_rows(ctx: Context) -> list[Row]:
    runs_dir = Path(ctx.power_runs_dir) if ctx.power_runs_dir else ctx.tmp / "zoo"
    result = ctx.once("localize", lambda: bench_localize.measure(ctx.params, entries=ctx.sizes["localize_entries"],
                                                                  runs_dir=runs_dir,
                                                                  log=lambda line: ctx.log(f"  localize: {line}")))
    ctx.log("\n" + bench_localize.table(result) + "\n")
    c = bench_localize.counts(result)
    met = c["bugs_localized"] >= 0.9 * c["bugs"] and c["legit_clean"] == c["legit"]
    return [Row("localize", "localize: bugs at their injection site / legit variants clean",
                ">= 90% of bugs, every legit", f"{c['bugs_localized']} / {c['bugs']} bugs, "
                f"{c['legit_clean']} / {c['legit']} legit", met, c["bugs_localized"] / max(1, c["bugs"]))]


def sensitivity_rows(ctx: Context) -> list[Row]:
    runs_dir = Path(ctx.sensitivity_runs_dir) if ctx.sensitivity_runs_dir else ctx.tmp / "sensitivity"
    result = ctx.once("sensitivity", lambda: bench_sensitivity.measure(
        ctx.params, baselines=ctx.baselines, runs_dir=runs_dir, **ctx.sizes["sensitivity"],
        log=lambda line: ctx.log(f"  sensitivity: {line}")))
    ctx.log("\n" + bench_sensitivity.table(result) + "\n")
    rows = []
    for label, depths in result.items():
        if label == "meta":
            continue
        for depth, r in depths.items():
            for what, key, target in (("gate fails", "gate_eps", 1e-4), ("localize names", "localize_eps", 1e-5)):
                eps = r[key]
                rows.append(Row("sensitivity", f"smallest eps {what}, output x (1 + eps) of {r['module']} ({depth}), "
                                f"{label}", f"<= {target:g}", "beyond the grid" if eps is None else f"{eps:g}",
                                eps is not None and eps <= target,
                                10 * max(result["meta"]["eps"]) if eps is None else eps))  # beyond: a lower bound
    return rows


def kernel_rows(ctx: Context) -> list[Row]:
    runs_dir = Path(ctx.kernel_runs_dir) if ctx.kernel_runs_dir else ctx.tmp / "kernel"
    result = ctx.once("kernel", lambda: bench_kernel.measure(ctx.params, params_path=Path(ctx.params_path),
                                                              entries=ctx.sizes["kernel_entries"], runs_dir=runs_dir,
                                                              log=lambda line: ctx.log(f"  kernel: {line}")))
    ctx.log("\n" + bench_kernel.table(result) + "\n")
    s = result["summary"]
    rows = [Row("kernel", "op bugs: the injected op named, its repro failing alone / legit: no op, not stopped",
                "every one", f"{s['op_bugs_named']} / {s['op_bugs']} op bugs, {s['legit_ok']} / {s['legit']} legit",
                s["op_bugs_named"] == s["op_bugs"] and s["legit_ok"] == s["legit"],
                s["op_bugs_named"] / max(1, s["op_bugs"]))]
    for key, what, target in (("median_op_fraction", "a named op", 0.25), ("median_fail_fraction", "a fail verdict",
                                                                          0.15)):
        value = s[key]
        rows.append(Row("kernel", f"median time to {what}, of a full run", f"<= {100 * target:.0f}%",
                        "not measured (no compare.fail_fast)" if value is None else f"{100 * value:.1f}%",
                        None if value is None else value <= target, float("nan") if value is None else value))
    return rows


def fleet_rows(ctx: Context) -> list[Row]:
    nights = ctx.once("fleet", lambda: bench_fleet.measure(ctx.tmp, ctx.smoke, log=ctx.log))
    rows = []
    for n, f in nights.items():
        rows.append(Row("fleet", f"night of {n} job processes on MLflow + PostgreSQL: jobs finished per minute",
                        "report", f"{f['jobs_per_min']:.1f} ({f['wall_s']:.0f} s)", None, f["jobs_per_min"]))
        rows.append(Row("fleet", f"N={n}: log_step call p50 / p99 (what a training step pays)", "report",
                        f"{f['log_step_p50_us']:.0f} / {f['log_step_p99_us']:.0f} us", None, f["log_step_p99_us"]))
        rows.append(Row("fleet", f"N={n}: log_batch round trip p50 / p99 per writer", "report",
                        f"{f['log_batch_p50_ms']:.0f} / {f['log_batch_p99_ms']:.0f} ms", None, f["log_batch_p50_ms"]))
        rows.append(Row("fleet", f"N={n}: runs lost, duplicates, other differences", "0, 0, 0",
                        f"{f['runs_lost']}, {f['duplicates']}, {len(f['problems'])}",
                        f["runs_lost"] == f["duplicates"] == len(f["problems"]) == 0,
                        f["runs_lost"] + f["duplicates"] + len(f["problems"])))
        if f["drain_after_restart_s"] is not None:
            rows.append(Row("fleet", f"N={n}: server killed and restarted; restart to every spool drained", "report",
                            f"{f['drain_after_restart_s']:.1f} s ({f['spooled_jobs']} of {n} jobs spooled)", None,
                            f["drain_after_restart_s"]))
    return rows


def precision_rows(ctx: Context) -> list[Row]:
    result = ctx.once("precision", lambda: bench_precision.measure(ctx.params, entries=ctx.sizes["precision_entries"],
                                                                    log=lambda line: ctx.log(f"  precision: {line}")))
    ctx.log("\n" + bench_precision.table(result) + "\n")
    c = bench_precision.counts(result)
    rows = []
    for rule in ("precision", "layers"):
        caught, clean = c[f"bugs_caught_{rule}"], c[f"legit_clean_{rule}"]
        rows.append(Row("precision", f"{rule} rule ({result['policy']}): bugs failed / legit variants clean",
                        "every legit", f"{caught} / {c['bugs']} bugs, {clean} / {c['legit']} legit",
                        clean == c["legit"], caught / max(1, c["bugs"])))
    return rows


BENCHMARKS = {"trainer": trainer_rows, "efficiency": efficiency_rows, "tracking": tracking_rows,
              "verdict": verdict_rows, "logs": logs_rows, "pipeline": pipeline_rows, "loader": loader_rows,
              "memory": memory_rows, "power": power_rows, "localize": localize_rows,
              "sensitivity": sensitivity_rows, "kernel": kernel_rows, "precision": precision_rows,
              "fleet": fleet_rows}


def table(rows: list[Row]) -> str:
    cells = [("benchmark", "target", "measured", "met")] + [
        (r.name, r.target, r.measured, "-" if r.met is None else ("yes" if r.met else "NO")) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    lines = [" | ".join(c[i].ljust(widths[i]) for i in range(3)) + " | " + c[3] for c in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes: seconds, figures meaningless")
    p.add_argument("--only", choices=GROUPS, action="append", help="run this group (repeatable)")
    p.add_argument("--params", default=str(REPO / "params.yaml"))
    p.add_argument("--profile", help="power, localize, precision: a profile of profiles/ (e.g. amp), params.yaml with its keys "
                                     "changed; judged against that profile's baseline")
    p.add_argument("--json", help="write the rows and raw figures here")
    p.add_argument("--power-runs-dir", help="power: keep each run's curve and record here and reuse them")
    p.add_argument("--sensitivity-runs-dir", help="sensitivity: keep (reuse, resume) its runs here")
    p.add_argument("--kernel-runs-dir", help="kernel: keep (and reuse) its runs here")
    p.add_argument("--baseline", action="append",
                   help="sensitivity: a baseline.json with fingerprints.npz beside it (repeatable; default: "
                        f"{', '.join(bench_sensitivity.BASELINES)})")
    args = p.parse_args(argv)
    import torch

    if args.smoke:  # one thread: on a loaded machine two OpenMP threads spin against each other (4x slower)
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"  # and the stages the pipeline benchmark starts
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="cait-bench-") as tmp:
        ctx = Context(args.smoke, args.params, Path(tmp), log=lambda line: print(line, flush=True),
                      profile=args.profile)
        ctx.power_runs_dir = args.power_runs_dir
        ctx.sensitivity_runs_dir, ctx.baselines = args.sensitivity_runs_dir, args.baseline
        ctx.kernel_runs_dir = args.kernel_runs_dir
        for group in args.only or DEFAULT_GROUPS:
            t = time.perf_counter()
            try:
                rows += BENCHMARKS[group](ctx)
            except Exception as exc:  # one broken benchmark must not hide the others' figures
                print(f"{group} failed: {type(exc).__name__}: {exc}", flush=True)
                first_line = (str(exc).strip().splitlines() or [""])[0]
                rows.append(Row(group, f"{group} (failed)", "runs", f"error: {type(exc).__name__}: {first_line}"[:200],
                                False, math.nan))
            print(f"[{group}: {time.perf_counter() - t:.1f} s]", flush=True)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"\n{'SMOKE (tiny sizes, figures meaningless) ' if args.smoke else ''}{when}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end, "
          f"{time.perf_counter() - started:.0f} s in all\n")
    print(table(rows))
    if args.json:
        power = {k: ctx.raw["power"][k] for k in ("bugs", "legit")} if "power" in ctx.raw else {}
        # localize alone: the file is {entry: {"expected", "named"}} (with the rows and raw figures beside)
        located = bench_localize.expected_named(ctx.raw["localize"]) if "localize" in ctx.raw else {}
        # sensitivity: {baseline: {depth: {"gate_eps", "localize_eps", "grid"}}} at the top level too
        sensitivity = {k: v for k, v in ctx.raw.get("sensitivity", {}).items() if k != "meta"}
        # kernel: {entry: {"expected_op", "named_op", "seconds_to_fail", "seconds_to_op", "full_run_seconds"}}
        located.update(bench_kernel.by_entry(ctx.raw["kernel"]) if "kernel" in ctx.raw else {})
        Path(args.json).write_text(json.dumps({**located, **sensitivity, "date": when, "smoke": args.smoke,
                                               "rows": [asdict(r) for r in rows], **power, "raw": ctx.raw},
                                              indent=1, default=str) + "\n")
    return 0 if all(math.isfinite(r.value) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
