"""From a broken port to the broken kernel, measured on the port-bug zoo: how long from the start of a run to a
`fail` verdict (fail fast) and to a named module and op, against a full run; is the op the injected one; do
the legitimate runs stay unstopped and name no op?

  python -m benchmarks --only kernel --json kernel.json --kernel-runs-dir /tmp/kernel-zoo
  python benchmarks/bench_kernel.py --entries gelu_tanh,lr_one_step_late,threads_1 --runs-dir /tmp/kernel-zoo

Per bug of cait/portbugs.py (default profile, params.yaml's localize.k and floor):

  seconds_to_op    the preflight (pipelines.preflight.run_preflight: step 0 with fingerprints, bitwise the full
                   run's step 0), localize against the baseline's fingerprints, then the op search
                   (pipelines/kernel.py: a replay to that step, the module recorded against the float64 oracle)
                   with its repro written: seconds from the preflight's start to the op, in a fresh process
  named_op         what the op search names (None: the phase is the update or weights, or no op parts)
  expected_op      the op the bug changes (EXPECTED_OPS); None for bugs that live in no op of the step
  repro_exit       the repro's exit status run alone from a fresh shell (`env -i`): 1 = it reproduces
  seconds_to_fail  the train stage with compare.fail_fast on (a subprocess, as the chain runs it): its
                   `stopped_early.seconds` (run.json, joined by read_run); None where it was not stopped
  full_run_seconds the same command on the plain profile, which runs in full: its `run_seconds` (run.json). All
                   three count from the start of the run in a fresh process, the set-up (model, data, the
                   imports it triggers) included

Per legitimate run (envelope variants and the runs the envelope never saw): localize at step 0 names nothing
(so no op is searched), the fail-fast run is not stopped early, and `needed_c`: held to the float64 oracle on
the zoo's op sites (blocks.0.norm1, blocks.0.attn, blocks.0.mlp), the C its kernels would need to stay within
the bound (pipelines/oplocate.py OP_C must stay above every one of these).

--runs-dir keeps each run's folder and reuses what is there (`<name>.op.json`, `<name>.failfast/`, `full/`), so a
rerun reports the same seconds; delete the folder to measure again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The op each op bug of the zoo changes (cait/portbugs.py): what the op search must name.
EXPECTED_OPS = {"gelu_tanh": "aten.gelu.default", "softmax_bf16": "aten._softmax.default",
                "layernorm_eps": "aten.native_layer_norm.default", "layernorm_bf16": "aten.native_layer_norm.default",
                "attention_scale": "aten.mul.Tensor"}
LEGIT = ("threads_1", "matmul_transposed", "fused_attention", "weights_ulp_other", "adamw_by_hand")
OP_SITES = ("blocks.0.norm1", "blocks.0.attn", "blocks.0.mlp")


def _with(params, **device):
    return params.model_copy(update={"device": params.device.model_copy(update=device),
                                     "tracking": params.tracking.model_copy(update={"enabled": False})})


def fail_fast_available(params) -> bool:
    return "fail_fast" in type(params.compare).model_fields


def train_stage_run(params_path: Path, name: str | None, kind: str, root: Path, log) -> dict:
    """The train stage with compare.fail_fast on (a subprocess, as the chain runs it) for a zoo entry (None: the
    plain profile, which must run in full); its train.json joined with its run.json (`stopped_early` with its
    seconds, `run_seconds`: both from the same start, the set-up included). Cached in root/<name>.failfast."""
    import yaml

    folder = root / (f"{name}.failfast" if name else "full")
    record = folder / "train.json"
    if not record.exists():
        raw = yaml.safe_load(params_path.read_text())
        if name:
            raw["device"]["port_bug" if kind == "bug" else "numerics_variant"] = name
        raw["tracking"]["enabled"] = False
        raw["compare"]["fail_fast"] = {**(raw["compare"].get("fail_fast") or {}), "enabled": True}
        folder.mkdir(parents=True, exist_ok=True)
        own = folder / "params.yaml"
        own.write_text(yaml.safe_dump(raw, sort_keys=False))
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pipelines.stages.train", "-q", "--params", str(own),
                               "--out-dir", str(folder)], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        log(f"{name or 'plain profile'}: train stage with fail fast on, exit {done.returncode} in "
            f"{time.perf_counter() - started:.1f} s")
        if not record.exists():
            raise RuntimeError(f"{name}: the fail-fast run wrote no train.json: {done.stderr.strip()[-300:]}")
    from pipelines.layout import CURVE
    from pipelines.provenance import read_run

    _, joined = read_run(folder / CURVE, record)  # the seconds live in run.json beside train.json
    return joined


def preflight_to_op(params, name: str, kind: str, root: Path, data_dir: Path) -> dict:
    """The preflight (step 0 with fingerprints, pipelines.preflight.run_preflight, as the preflight stage runs it),
    localize against the baseline's fingerprints (a legitimate variant held out of the envelope it is in), then the
    op search with its repro (the localize stage's find_op). Seconds from the preflight's start to the op: run in a
    fresh process (`--to-op`), so its imports count as they do in the train stage's `run_seconds`."""
    from cait.fingerprints import load, load_reference
    from pipelines.layout import FINGERPRINTS
    from pipelines.localize import localize
    from pipelines.preflight import run_preflight
    from pipelines.stages.localize import find_op

    run_params = _with(params, port_bug=name) if kind == "bug" else _with(params, numerics_variant=name)
    folder = root / f"{name}.step0"
    started = time.perf_counter()
    run_preflight(run_params, data_dir=data_dir, out_dir=folder)
    cfg = params.localize
    baseline_path = Path(cfg.baseline_fingerprints)
    baseline = load_reference(baseline_path if baseline_path.is_absolute() else REPO / baseline_path)
    held_out = name if name in baseline.variants else None
    found = localize(load(folder / FINGERPRINTS), baseline, k=cfg.k, floor=cfg.floor, exclude=held_out,
                     candidate_source=str(folder / FINGERPRINTS), baseline_source=str(baseline_path))
    op = find_op(run_params, found, data_dir=data_dir, repro_dir=root / f"{name}.repro")
    seconds = time.perf_counter() - started
    first = found.first
    return {"named_module": None if first is None else f"{first.phase} {first.module or '(model)'}",
            "named_step": None if first is None else first.step,
            "named_op": op.op if op is not None and op.status == "named" else None,
            "op_status": None if op is None else op.status, "op_message": None if op is None else op.message,
            "op_site": None if op is None else op.site, "arg_diffs": None if op is None else op.arg_diffs,
            "repro": op.repro if op is not None and op.repro else None, "seconds_to_op": seconds}


def to_op_in_a_fresh_process(params_path: Path, name: str, kind: str, root: Path, log) -> dict:
    """preflight_to_op in its own process (cached in root/<name>.op.json)."""
    out = root / f"{name}.op.json"
    if not out.exists():
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--params", str(params_path),
                               "--runs-dir", str(root), "--to-op", name, "--kind", kind], cwd=REPO,
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        if done.returncode or not out.exists():
            raise RuntimeError(f"{name}: the preflight and op search failed (exit {done.returncode}): "
                               f"{done.stderr.strip()[-400:]}")
    row = json.loads(out.read_text())
    log(f"{name}: preflight and op search in {row['seconds_to_op']:.1f} s")
    return row


def run_repro(script: str) -> int:
    """The repro alone from a fresh shell: no project on the path, nothing of this environment but PATH."""
    import tempfile

    with tempfile.TemporaryDirectory() as elsewhere:
        done = subprocess.run(["python", str(Path(script).resolve())], cwd=elsewhere, capture_output=True, text=True,
                              env={"PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin"})
    return done.returncode


def legit_needed_c(params, data_dir: Path) -> dict:
    """The C each op site's kernels need to stay within the bound (the worst op), at step 0."""
    from pipelines.kernel import capture, search_module
    from pipelines.oplocate import needed_c

    captured = capture(params, 0, list(OP_SITES), want_grads=False, data_dir=data_dir)
    out = {}
    for site in OP_SITES:
        _, cand, _, oracle, _, fp32 = search_module(params, captured, site, backward=False)
        c, where = needed_c(cand, oracle, fp32)
        out[site] = {"needed_c": c, "worst": where}
    return out


def measure(params, *, params_path: Path, entries: list[str] | None = None, runs_dir: Path | None = None,
            data_dir: Path | None = None, log=print) -> dict:
    import tempfile

    from cait.portbugs import BUGS
    from pipelines.layout import PREPARED_DIR
    from pipelines.training import params_precision

    cfg = params.localize
    data_dir = data_dir or REPO / PREPARED_DIR
    policy = params_precision(params)  # the zoo's entries of other policies mean nothing in its runs
    names = entries or [*(n for n, e in BUGS.items() if policy in e.policies), *LEGIT]
    result: dict = {"bugs": {}, "legit": {}, "fail_fast": fail_fast_available(params), "k": cfg.k,
                    "policy": policy}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-kernel-") as tmp:
        root = runs_dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        plain = train_stage_run(params_path, None, "plain", root, log)
        if plain.get("stopped_early"):
            raise RuntimeError(f"the plain profile was stopped early: {plain['stopped_early']['reason']}")
        full = float(plain["run_seconds"])
        for name in names:
            kind = "bug" if name in BUGS else "legit"
            run_params = _with(params, port_bug=name) if kind == "bug" else _with(params, numerics_variant=name)
            row = {**to_op_in_a_fresh_process(params_path, name, kind, root, log), "full_run_seconds": full,
                   "seconds_to_fail": None, "stopped_early": None}
            seconds_to_op = row["seconds_to_op"]
            if row["repro"]:
                row["repro_exit"] = run_repro(row["repro"])
            if result["fail_fast"]:
                stopped = train_stage_run(params_path, name, kind, root, log).get("stopped_early")
                row["stopped_early"] = stopped
                row["seconds_to_fail"] = float(stopped["seconds"]) if stopped else None
            if kind == "bug":
                row["expected_op"] = EXPECTED_OPS.get(name)
                row["expected_site"] = BUGS[name].site
                row["ok"] = row["named_op"] == row["expected_op"] and (
                    row["expected_op"] is None or row.get("repro_exit") == 1)
                result["bugs"][name] = row
            else:
                row["expected_op"] = None
                row["needed_c"] = legit_needed_c(run_params, data_dir)
                row["ok"] = row["named_op"] is None and row["named_module"] is None and not row["stopped_early"]
                result["legit"][name] = row
            log(f"{name}: {row['named_module']} -> {row['named_op']} ({row['op_message'] or 'no op searched'}); "
                f"{seconds_to_op:.1f} s to the op, full run {full:.1f} s")
    result["summary"] = summary(result)
    result["seconds"] = time.perf_counter() - started
    return result


def summary(result: dict) -> dict:
    bugs = result["bugs"].values()
    to_op = [r["seconds_to_op"] / r["full_run_seconds"] for r in bugs if r["named_module"] is not None]
    to_fail = [r["seconds_to_fail"] / r["full_run_seconds"] for r in bugs if r["seconds_to_fail"] is not None]
    op_bugs = [r for r in bugs if r["expected_op"] is not None]
    needs = [s["needed_c"] for r in result["legit"].values() for s in r.get("needed_c", {}).values()]
    return {"median_op_fraction": statistics.median(to_op) if to_op else None,
            "median_fail_fraction": statistics.median(to_fail) if to_fail else None,
            "op_bugs_named": sum(r["ok"] for r in op_bugs), "op_bugs": len(op_bugs),
            "bugs_ok": sum(r["ok"] for r in bugs), "bugs": len(result["bugs"]),
            "legit_ok": sum(r["ok"] for r in result["legit"].values()), "legit": len(result["legit"]),
            "legit_needed_c": max(needs) if needs else None}


def by_entry(result: dict) -> dict:
    """{entry: {"expected_op", "named_op", "seconds_to_fail", "seconds_to_op", "full_run_seconds"}} (the issue's)."""
    keys = ("expected_op", "named_op", "seconds_to_fail", "seconds_to_op", "full_run_seconds")
    return {name: {k: row.get(k) for k in keys} for group in ("bugs", "legit") for name, row in result[group].items()}


def _s(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(result: dict) -> str:
    lines = ["| kind | entry | localize names | expected op | named op (called in) | repro exit | to the op, s | "
             "to fail, s | full run, s | ok |", "|---|---|---|---|---|---|---|---|---|---|"]
    for group, label in (("bugs", "bug"), ("legit", "legit")):
        for name, r in result[group].items():
            named = f"`{r['named_op']}` ({r['op_site']})" if r["named_op"] else (r["op_status"] or "none")
            lines.append(f"| {label} | `{name}` | {r['named_module'] or 'nothing'} | {r['expected_op'] or '-'} "
                         f"| {named} "
                         f"| {r.get('repro_exit', '-')} | {_s(r['seconds_to_op'])} | {_s(r['seconds_to_fail'])} | "
                         f"{_s(r['full_run_seconds'])} | {'yes' if r['ok'] else '**no**'} |")
    s = result["summary"]
    frac = (lambda v: "-" if v is None else f"{100 * v:.1f}%")
    lines.append(f"\nmedian time to a named op {frac(s['median_op_fraction'])} of a full run, to a fail verdict "
                 f"{frac(s['median_fail_fraction'])}; op bugs named {s['op_bugs_named']} / {s['op_bugs']}, legit "
                 f"clean {s['legit_ok']} / {s['legit']}; legit kernels need C <= {s['legit_needed_c']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default=str(REPO / "params.yaml"))
    p.add_argument("--entries", help="comma-separated zoo entries (default: every bug and " + ", ".join(LEGIT) + ")")
    p.add_argument("--runs-dir", help="keep (and reuse) each run's folder here")
    p.add_argument("--json", help="write {entry: {expected_op, named_op, seconds_to_fail, seconds_to_op, "
                                  "full_run_seconds}} and the raw figures here")
    p.add_argument("--to-op", help=argparse.SUPPRESS)  # the child of to_op_in_a_fresh_process: this entry only
    p.add_argument("--kind", choices=["bug", "legit"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from pipelines.params import load_params

    if args.to_op:
        from pipelines.layout import PREPARED_DIR

        root = Path(args.runs_dir)
        row = preflight_to_op(load_params(args.params), args.to_op, args.kind, root, REPO / PREPARED_DIR)
        (root / f"{args.to_op}.op.json").write_text(json.dumps(row, indent=1, default=str) + "\n")
        return 0

    result = measure(load_params(args.params), params_path=Path(args.params),
                     entries=args.entries.split(",") if args.entries else None,
                     runs_dir=Path(args.runs_dir) if args.runs_dir else None, log=lambda line: print(line, flush=True))
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps({**by_entry(result), "raw": result}, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
