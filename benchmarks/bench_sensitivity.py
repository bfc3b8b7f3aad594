"""Sensitivity, measured: the smallest change of one module's output the gate fails and localize names.

  python benchmarks/bench_sensitivity.py --runs-dir /work/sens-runs             # both baselines, 3 depths, 1e-7..1e-1
  python benchmarks/bench_sensitivity.py --runs-dir DIR --depths shallow --eps 1e-6,1e-4 --baseline B.json
  python -m benchmarks --only sensitivity --json sens.json --sensitivity-runs-dir /work/sens-runs

The perturbation multiplies the output of one block of the profile's model by (1 + eps) in the forward pass
(`output_scale@<module>@<eps>`, cait/portbugs.py), at a shallow, a middle and a deep block (blocks.0,
blocks.<depth // 2>, blocks.<depth - 1>), for eps on a grid of decades. Each run is judged against every
baseline given (default: the CPU and the H200 baseline) by the compare stage's own `judge` with
params.yaml's compare section (the gate's rules, envelope k and floor), and localized against that
baseline's fingerprints (fingerprints.npz beside it) with params.yaml's localize k and floor.

Localize: every eps of the grid, a run trained to step 0 with fingerprints there (as bench_localize does);
found = the named module is the perturbed block or inside it. The gate needs the run's curve: per depth
the grid is walked smallest eps first (`--order ascending`; `descending` walks down from the largest,
`bisect` halves the undecided range; both assume a larger eps is never harder to see), and an eps is run
only while some baseline is undecided there (no smaller eps fails it, no larger one passes). With `max_outside_fraction: 0` a run stops at the first of
STAGES steps where the envelope rule already fails against every baseline still undecided (a step outside
a prefix is outside the whole run, so the full run fails too); otherwise it is resumed from its checkpoint
(bitwise the uninterrupted run) to the end and judged whole. `--runs-dir` keeps every run and reuses it
when its curve params, perturbation and thread count are this run's.

The false-alarm side (legitimate runs must pass at this k) is not measured here: it is the legit rows of
the power and localize benchmarks (bench_power.py, bench_localize.py) at the same params.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEPTHS = ("shallow", "middle", "deep")
GRID = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
BASELINES = ("baselines/default/baseline.json", "baselines/default-cuda/baseline.json")
STAGES = (20, 60)
ORDERS = ("ascending", "descending", "bisect")  # a gate run is judged after these many steps, and stops there if it already fails


def depth_sites(params, part: str = "") -> dict[str, str]:
    """{"shallow": "blocks.0", "middle": "blocks.<n // 2>", "deep": "blocks.<n - 1>"} of the profile's model,
    each followed by `part` (e.g. ".mlp.fc1": a module inside the block)."""
    from cait.models import build_model

    model = build_model(params.model.name, img_size=params.model.resolved_img_size,
                        patch_size=params.model.patch_size, num_classes=2)
    n = len(model.blocks)
    return {"shallow": f"blocks.0{part}", "middle": f"blocks.{n // 2}{part}", "deep": f"blocks.{n - 1}{part}"}


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else REPO / path


def _run_params(params, name: str, **train):
    return params.model_copy(update={"train": params.train.model_copy(update=train),
                                     "device": params.device.model_copy(update={"port_bug": name}),
                                     "tracking": params.tracking.model_copy(update={"enabled": False})})


def _reusable(record: dict, params, name: str) -> bool:
    """Whether a stored run is this one: the same curve params, perturbation and thread count (the runs-dir
    cache must not hand a one-thread run to a two-thread measurement: another reduction order)."""
    import torch

    threads = params.device.threads or torch.get_num_threads()
    return (record.get("params_hash") == params.curve_hash() and record.get("port_bug") == name
            and (record.get("environment") or {}).get("threads") == threads)


def _judge_prefix(params, curve, record, baseline) -> dict:
    """The envelope rule alone on the curve so far, against the baseline cut to the same steps."""
    import numpy as np

    from benchmarks.bench_power import _cut
    from pipelines.baselines import refusals
    from pipelines.stages.compare import judge

    reference, _ = baseline.reference_for(record["curve_params"]["train"]["seed"])
    keep = np.asarray(reference.steps) <= curve.steps[-1]
    ref_part = type(reference)(reference.steps[keep], reference.loss[keep])
    verdict = judge(params.compare.model_copy(update={"min_steps": 1}), curve, ref_part, _cut(baseline, keep),
                    gate=["envelope"], inform=[], refusals=refusals(baseline, params.profile, record))
    rule = verdict.rules.get("envelope")
    return {"status": verdict.status, "steps": len(curve.loss), "summary": rule.summary if rule else
            "; ".join(verdict.reasons), "first_fail_step": _first_outside(rule)}


def _first_outside(rule) -> int | None:
    step = rule.numbers.get("first_outside_step", -1) if rule is not None else -1
    return int(step) if step is not None and step >= 0 else None


def _judge_full(params, curve, record, baseline) -> dict:
    """The gate's verdict (compare.gate, nothing informing) on the whole run, with the envelope rule's numbers."""
    from pipelines.baselines import refusals
    from pipelines.stages.compare import judge

    reference, _ = baseline.reference_for(record["curve_params"]["train"]["seed"])
    cfg = params.compare
    verdict = judge(cfg, curve, reference, baseline, gate=list(cfg.gate), inform=[],
                    refusals=refusals(baseline, params.profile, record))
    rule = verdict.rules.get("envelope")
    return {"status": verdict.status, "steps": len(curve.loss),
            "summary": "; ".join(f"{n}: {r.summary}" for n, r in verdict.rules.items()) or "; ".join(verdict.reasons),
            "first_fail_step": _first_outside(rule)}


def gate_run(params, name: str, root: Path, data_dir: Path, baselines: dict, undecided: list[str], log) -> dict:
    """Train `name` in stages into root/<name> (resuming what is there) and judge it: {baseline: judgement}.

    Stops after a stage of STAGES once the envelope rule fails against every baseline in `undecided`
    (only with max_outside_fraction 0, where a failing prefix implies a failing run)."""
    from pipelines.curves import read_curve_csv
    from pipelines.layout import CHECKPOINTS, CURVE, RECORD
    from pipelines.provenance import read_record
    from pipelines.training import run_training

    total = params.train.steps
    if total is None:
        raise ValueError("bench_sensitivity: needs a profile with train.steps set (params.yaml train.steps)")
    early = params.compare.rules.envelope.max_outside_fraction == 0
    stages = [s for s in STAGES if s < total] if early else []
    every = math.gcd(*stages, total) if stages else 0
    run_params = _run_params(params, name, checkpoint_every=every,
                             fingerprints=params.train.fingerprints.model_copy(update={"steps": []}))
    folder = root / name
    curve = record = None
    if (folder / RECORD).exists() and (folder / CURVE).exists():
        record = read_record(folder / RECORD)
        if _reusable(record, run_params, name):
            curve = read_curve_csv(folder / CURVE)
        else:
            record = None
    started = time.perf_counter()
    for stop in [*stages, total]:
        done = len(curve.loss) if curve is not None else 0
        if done < stop:
            run_training(run_params, folder, data_dir=data_dir, quiet=True, resume=done > 0,
                         stop_after=stop - 1 if stop < total else None)
            curve, record = read_curve_csv(folder / CURVE), read_record(folder / RECORD)
        if stop < total:
            part = type(curve)(curve.steps[:stop], curve.loss[:stop])  # a reused run may be longer
            prefix = {b: _judge_prefix(params, part, record, baselines[b]) for b in undecided}
            if all(j["status"] == "fail" for j in prefix.values()):
                log(f"{name}: fails every undecided baseline's envelope within {stop} steps "
                    f"({time.perf_counter() - started:.0f} s)")
                return {b: {**j, "decided_on": f"first {stop} steps"} for b, j in prefix.items()}
    log(f"{name}: {total} steps ({time.perf_counter() - started:.0f} s)")
    shutil.rmtree(folder / CHECKPOINTS, ignore_errors=True)  # a finished run is never resumed
    return {b: {**_judge_full(params, curve, record, baselines[b]), "decided_on": "whole run"} for b in baselines}


def localize_run(params, name: str, site: str, root: Path, data_dir: Path, fingerprints: dict, log) -> dict:
    """Localize the step-0 fingerprints of `name` against each baseline's: {baseline: {"named", "found"}}."""
    from benchmarks.bench_localize import found, train_to_step0
    from cait.fingerprints import load
    from pipelines.layout import FINGERPRINTS
    from pipelines.localize import localize

    from pipelines.layout import RECORD
    from pipelines.provenance import read_record

    cfg = params.localize
    record_path = root / f"{name}.step0" / RECORD
    if record_path.exists():  # a step-0 run of other params is trained again
        if not _reusable(read_record(record_path), params, name):
            (root / f"{name}.step0" / FINGERPRINTS).unlink(missing_ok=True)
    folder = train_to_step0(params, name, root, data_dir, log)
    prints = load(folder / FINGERPRINTS)
    out = {}
    for label, base in fingerprints.items():
        result = localize(prints, base, k=cfg.k, floor=cfg.floor, candidate_source=str(folder / FINGERPRINTS),
                          baseline_source=label)
        first = result.first
        named = {"step": first.step, "phase": first.phase, "module": first.module, "entry": first.entry,
                 "rel_l2": first.rel_l2, "tolerance": first.tolerance} if first else None
        out[label] = {"named": named, "found": found(site, named), "message": result.message}
    return out


def _undecided(eps_status: dict, n: int) -> tuple[int, int]:
    """(lo, hi): grid indices strictly between them are undecided for one baseline: hi is the smallest
    failing index (n if none), lo the largest passing one below it (-1 if none)."""
    hi = min([i for i, s in eps_status.items() if s == "fail"], default=n)
    lo = max([i for i, s in eps_status.items() if s == "pass" and i < hi], default=-1)
    return lo, hi


def _next(eps_status: dict, n: int, order: str) -> int | None:
    """The grid index to run next for one baseline, or None when it is decided (monotone in eps assumed)."""
    lo, hi = _undecided(eps_status, n)
    if hi - lo <= 1:
        return None
    return {"ascending": lo + 1, "descending": hi - 1}.get(order, (lo + hi) // 2)


def measure(params, *, baselines: list[str] | None = None, depths: list[str] | None = None,
            eps: list[float] | None = None, runs_dir: Path | None = None, data_dir: Path | None = None,
            order: str = "ascending", gate: bool = True, part: str = "", log=print) -> dict:
    """{baseline: {depth: {"module", "gate_eps", "localize_eps", "localize_names", "grid": {eps: {...}}}}} + "meta".

    The runs use params.device as given: device.threads other than the baseline's thread count is the
    threads_1 / threads_2 numerics variant on top of the perturbation (inside the envelope by construction)."""
    import tempfile

    from cait.fingerprints import load
    from cait.portbugs import perturbation_name
    from pipelines.baselines import load_baseline
    from pipelines.layout import PREPARED_DIR

    data_dir = data_dir or REPO / PREPARED_DIR
    grid = sorted(eps or GRID)
    paths = {str(b): _resolve(b) for b in (baselines or BASELINES)}
    loaded = {label: load_baseline(p) for label, p in paths.items()}
    prints = {label: load(p.parent / "fingerprints.npz") for label, p in paths.items()}
    sites = depth_sites(params, part)
    chosen = depths or list(DEPTHS)
    started = time.perf_counter()
    result: dict = {label: {} for label in paths}
    with tempfile.TemporaryDirectory(prefix="bench-sensitivity-") as tmp:
        root = Path(runs_dir) if runs_dir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for depth in chosen:
            site = sites[depth]
            grid_rows = {label: {} for label in paths}
            for e in grid:  # localize: every eps, step 0 only
                name = perturbation_name(site, e)
                for label, row in localize_run(params, name, site, root, data_dir, prints, log).items():
                    grid_rows[label][e] = {"localize": row}
            status = {label: {} for label in paths}  # grid index -> "pass" | "fail" (measured)
            while gate:
                wanted = {label: _next(status[label], len(grid), order) for label in paths}
                todo = sorted({i for i in wanted.values() if i is not None})
                if not todo:
                    break
                i = todo[-1] if order == "descending" else todo[0]
                undecided = [label for label in paths
                             if _undecided(status[label], len(grid))[0] < i < _undecided(status[label], len(grid))[1]]
                judged = gate_run(params, perturbation_name(site, grid[i]), root, data_dir, loaded, undecided, log)
                for label, j in judged.items():
                    grid_rows[label][grid[i]]["gate"] = j
                    if j["status"] in ("pass", "fail"):
                        status[label][i] = j["status"]
                    elif label in undecided:
                        raise RuntimeError(f"{perturbation_name(site, grid[i])} against {label}: gate "
                                           f"{j['status']} ({j['summary'][:200]})")
            for label in paths:
                rows = grid_rows[label]
                for i, e in enumerate(grid):
                    if gate and "gate" not in rows[e]:
                        lo, hi = _undecided(status[label], len(grid))
                        implied = "fail" if i > hi else "pass" if i < lo else None
                        rows[e]["gate"] = {"status": f"{implied} (implied, not run)" if implied else "not run",
                                           "decided_on": None}
                gate_fails = [e for e in grid if gate and rows[e]["gate"]["status"] == "fail"]
                named = [e for e in grid if rows[e]["localize"]["found"]]
                first_named = rows[named[0]]["localize"]["named"] if named else None
                result[label][depth] = {
                    "module": site,
                    "gate_eps": gate_fails[0] if gate_fails else None,
                    "localize_eps": named[0] if named else None,
                    "localize_names": (f"{first_named['phase']} {first_named['module'] or first_named['entry']}"
                                       if first_named else None),
                    "grid": {f"{e:g}": rows[e] for e in grid}}
            log(f"{depth} ({site}): " + "; ".join(
                f"{label}: gate {result[label][depth]['gate_eps']}, localize {result[label][depth]['localize_eps']}"
                for label in paths))
    env = params.compare.rules.envelope
    result["meta"] = {"sites": {d: sites[d] for d in chosen}, "eps": grid, "order": order,
                      "threads": params.device.threads,
                      "gate": list(params.compare.gate), "envelope_k": env.k, "envelope_floor": env.floor_relative,
                      "max_outside_fraction": env.max_outside_fraction, "localize_k": params.localize.k,
                      "localize_floor": params.localize.floor, "stages": list(STAGES),
                      "runs_dir": str(runs_dir) if runs_dir else None, "seconds": time.perf_counter() - started}
    return result


def table(result: dict) -> str:
    """Markdown: per baseline and depth, the smallest eps the gate fails and localize names, and the grid."""
    meta = result["meta"]
    labels = [k for k in result if k != "meta"]
    eps_cols = [f"{e:g}" for e in meta["eps"]]
    lines = ["| baseline | depth | module | gate fails from | localize names from | localize names | "
             + " | ".join(f"eps {e}" for e in eps_cols) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(eps_cols)]

    def cell(row):
        gate = row.get("gate", {})
        status = gate.get("status", "-")
        at = f" @{gate['first_fail_step']}" if status == "fail" and gate.get("first_fail_step") is not None else ""
        g = f"**fail**{at}" if status == "fail" else status.replace(" (implied, not run)", "*")
        loc = "named" if row["localize"]["found"] else ("other" if row["localize"]["named"] else "clean")
        return f"{g} / {loc}"

    for label in labels:
        for depth, r in result[label].items():
            lines.append(f"| `{label}` | {depth} | {r['module']} | "
                         f"{'**%g**' % r['gate_eps'] if r['gate_eps'] is not None else '> grid'} | "
                         f"{'**%g**' % r['localize_eps'] if r['localize_eps'] is not None else '> grid'} | "
                         f"{r['localize_names'] or '-'} | " + " | ".join(cell(r['grid'][e]) for e in eps_cols) + " |")
    lines.append("")
    lines.append(f"Cells: gate verdict (first step outside the envelope) / localize at step 0 (named: the perturbed "
                 f"block or inside it; other: something else named; clean: nothing). *: not run, implied (a larger eps "
                 f"passes, or a smaller one fails). Gate {' + '.join(meta['gate'])}, envelope k {meta['envelope_k']:g}, floor "
                 f"{meta['envelope_floor']:g}; localize k {meta['localize_k']:g}, floor {meta['localize_floor']:g}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default=str(REPO / "params.yaml"))
    p.add_argument("--baseline", action="append", help="baseline.json with fingerprints.npz beside it (repeatable; "
                                                         f"default: {', '.join(BASELINES)})")
    p.add_argument("--depths", help=f"comma-separated of {', '.join(DEPTHS)} (default: all)")
    p.add_argument("--eps", help="comma-separated eps grid (default: " + ",".join(f"{e:g}" for e in GRID) + ")")
    p.add_argument("--order", choices=ORDERS, default="ascending",
                   help="gate runs: smallest eps first; largest first (failing runs stop early: cheapest when "
                        "most of the grid fails); or halve the undecided range")
    p.add_argument("--no-gate", action="store_true", help="localize only (step-0 runs)")
    p.add_argument("--part", default="", help="a module inside each block instead of the block's output, e.g. "
                                              ".mlp.fc1 or .norm1 (default: the block itself)")
    p.add_argument("--runs-dir", help="keep (and reuse, resume) every run here")
    p.add_argument("--threads", type=int, help="device.threads for the runs (default: params.yaml's; on a loaded "
                                               "machine 1 is far faster, and is the threads_1 numerics variant)")
    p.add_argument("--json", help="write {baseline: {depth: {gate_eps, localize_eps, grid}}, meta} here")
    args = p.parse_args(argv)
    from cait.files import atomic_write_text
    from pipelines.params import load_params

    depths = args.depths.split(",") if args.depths else None
    if depths and set(depths) - set(DEPTHS):
        p.error(f"--depths: one of {', '.join(DEPTHS)}")
    try:
        eps = [float(e) for e in args.eps.split(",")] if args.eps else None
    except ValueError:
        p.error(f"--eps: {args.eps!r} is not a comma-separated list of numbers")
    for b in args.baseline or []:
        if not _resolve(b).exists() or not (_resolve(b).parent / "fingerprints.npz").exists():
            p.error(f"--baseline {b}: needs the file and fingerprints.npz beside it")
    params = load_params(args.params)
    if args.threads:
        params = params.model_copy(update={"device": params.device.model_copy(update={"threads": args.threads})})
    result = measure(params, baselines=args.baseline, depths=depths, eps=eps,
                     runs_dir=Path(args.runs_dir) if args.runs_dir else None, order=args.order,
                     gate=not args.no_gate, part=args.part, log=lambda line: print(line, flush=True))
    print(table(result))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
