"""localize stage: which module (or phase) parts first from the baseline, from the layer fingerprints.

  python -m pipelines.stages.localize                       # the chain's run against the baseline's
  python -m pipelines.stages.localize --candidate A.npz --baseline B.npz   # any two fingerprint files
  python -m pipelines.stages.localize replay --step 57      # train up to step 57 with fingerprints there
  python -m pipelines.stages.localize replay --step 57 --envelope   # the same on the baseline's machine,
                                                            # with the envelope runs: replay-57/reference.npz
  python -m pipelines.stages.localize op --step 57 --phase forward --module blocks.0.attn.proj_l
                                                            # the first diverging op of that module (and a repro)

Writes reports/<profile>/localize.json (the first divergence, msprobe-style metrics beside its
tolerance, the per-phase picture the report draws) and tags the train run in MLflow (localize.*). It
informs: the gate still decides on the curves. In the chain it exits 0 whatever it finds: when the
baseline has no fingerprints, the candidate none, or they cannot be compared (another baseline, model,
profile or params: named), localize.json says so and why and the chain goes on to its verdict. Files that
lie are exit 2, in the chain too: a run's fingerprints.npz that is not the file its train.json names
(fingerprints_sha256), a file whose digest does not match its content, a reference with a non-finite value
or a spread that is no relative error (cait/fingerprints.py `load_reference`). Given two files
(--candidate/--baseline), unreadable or incompatible ones are exit 2, and so is a --baseline that is a run's
file (no envelope spread) rather than a reference.

When the first divergence is where it starts (not accumulated over earlier steps) and lies in the forward or
backward pass, the chain goes on to the op (pipelines/kernel.py): it replays the run to that step, records the
module at the aten level against the reference module in float64 on the CPU, names the first op whose
output leaves what an fp32 kernel may produce while its inputs agree (localize.json `op`, MLflow tag
`localize.op`), and writes a torch-only repro of that call, reports/<profile>/repro/<op>.py with its inputs
(<op>.pt; exit 1 on any device where the op leaves the bound). A weights or update finding names no op.

When every phase agrees at step 0 and the curves part later, the step where they part can be replayed
on each machine (keyed randomness: the same batches and drop-path masks; the same full-run schedule):
`replay --step S` here, `replay --step S --envelope` on the baseline's machine, then `--candidate` /
`--baseline` with the two files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cait.fingerprints import FingerprintError, FingerprintMismatch, load, load_reference
from cait.files import atomic_write_text
from pipelines import cli
from pipelines.baselines import load_baseline
from pipelines.layout import CURVE, FINGERPRINTS, LOCALIZE, RECORD, VERDICT, run_dir
from pipelines.oplocate import OpFinding
from pipelines.localize import (Localization, baseline_fingerprints, describe, localize, read_run_fingerprints,
                                with_spread)
from pipelines.params import Params, load_params
from pipelines.provenance import file_sha256

REPLAY_REFERENCE = "reference.npz"  # replay --envelope: the replayed run's fingerprints with the envelope's spread
REPRO = "repro"  # reports/<profile>/repro/<op>.py and <op>.pt: the first diverging op, standalone


def parting_step(verdict_path: Path) -> tuple[str, int | None]:
    """(verdict status, first step where the curves part) of the chain's verdict, if there is one."""
    try:
        data = json.loads(verdict_path.read_text())
        return str(data.get("status", "")), data.get("first_divergence_step")
    except (OSError, ValueError):
        return "", None


def advice(result: Localization, status: str, parted_at: int | None, profile: str) -> str:
    """What to run next when the fingerprints cannot name where a failing curve starts to part."""
    if status not in ("fail", "inconclusive") and result.status != "diverged":
        return ""
    if result.status == "diverged" and not result.accumulated:
        return ""
    step = parted_at if parted_at is not None else "S"
    return (f"replay the step where the curves part on both machines: here `python -m pipelines.stages.localize "
            f"replay --step {step}`, on the baseline's machine the same with --envelope; then `python -m "
            f"pipelines.stages.localize --candidate reports/{profile}/replay-{step}/{FINGERPRINTS} --baseline "
            f"<its file>`")


def write_result(out: Path, result: Localization, *, candidate: str, baseline: str, verdict_status: str = "",
                 parted_at: int | None = None, next_step: str = "", op: OpFinding | None = None) -> dict:
    inputs = {side: {"path": path, "sha256": file_sha256(path) if path and Path(path).is_file() else None}
              for side, path in (("candidate", candidate), ("baseline", baseline))}
    data = {"schema_version": 1, **result.to_json(), "inputs": inputs, "verdict_status": verdict_status,
            "curves_part_at": parted_at, "next": next_step, "op": op.to_json() if op is not None else None}
    atomic_write_text(out, json.dumps(data, indent=1, sort_keys=True) + "\n")
    return data


def find_op(params: Params, result: Localization, *, data_dir: Path | None = None, quiet: bool = True,
            repro_dir: Path | None = None) -> OpFinding | None:
    """The first diverging op of localize's entry, with its repro written (None where localize names nothing).
    In the chain it informs: a replay or recording that fails says why in `op` and the chain goes on."""
    from cait.errors import HarnessError
    from pipelines.kernel import search, write_repro

    repro_dir = repro_dir or run_dir(params.profile) / REPRO
    for stale in (repro_dir.glob("*.py") if repro_dir.is_dir() else []):  # never an earlier run's repro beside this
        stale.unlink()
        stale.with_suffix(".pt").unlink(missing_ok=True)
    first = result.first
    if first is None:
        return None
    if result.accumulated:
        return OpFinding("not_applicable", f"step {first.step} is not where the divergence starts (every phase agreed "
                                           f"at an earlier fingerprint step): replay the step where the curves part, "
                                           f"then `python -m pipelines.stages.localize op` on what it names")
    try:
        finding, found = search(params, first.step, first.phase, first.module, data_dir=data_dir, quiet=quiet)
        if found is not None:
            finding.repro = str(write_repro(repro_dir, finding, found))
        return finding
    except (HarnessError, RuntimeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"localize: warning: op search: {message}", file=sys.stderr)
        return OpFinding("unavailable", f"op search failed: {message}")


def tag_run(params: Params, folder: Path, result: Localization, out: Path, op: OpFinding | None = None) -> None:
    """The localisation as tags of the train run (and localize.json as its artifact)."""
    if not params.tracking.enabled or not (folder / RECORD).exists():
        return
    from pipelines.provenance import read_run
    from pipelines.tracking import RunLogger

    _, record = read_run(folder / CURVE, folder / RECORD)  # with run.json's MLflow ids
    if not record.get("mlflow_run_id"):
        return
    first = result.first
    tags = {"localize.status": result.status, "localize.message": result.message[:4000]}
    if first is not None:
        tags.update({"localize.step": str(first.step), "localize.phase": first.phase,
                     "localize.module": first.module or "(model)", "localize.entry": first.entry,
                     "localize.kind": first.kind})
    if op is not None:
        tags.update({"localize.op": op.op if op.status == "named" else op.status,
                     "localize.op_message": op.message[:4000]})
    logger = RunLogger(params.tracking)
    logger.attach(record["mlflow_run_id"], record.get("mlflow_parent_run_id", ""))
    logger.set_tags(tags)
    logger.update_execution()  # an execution's row shows the worst device's (pipelines/review.py: execution_tags)
    logger.log_artifact(out)
    logger.close()


def run_chain(params: Params, quiet: bool) -> int:
    folder = run_dir(params.profile)
    out = folder / LOCALIZE
    status, parted_at = parting_step(folder / VERDICT)
    candidate_path = folder / FINGERPRINTS
    try:
        reference, where = baseline_fingerprints(params)
        if reference is None or not candidate_path.exists():
            why = where if reference is None else f"{candidate_path}: not written by the train stage"
            result = Localization("unavailable", why)
        else:
            candidate = read_run_fingerprints(candidate_path, folder / RECORD)  # the file train.json names
            result = localize(candidate, reference, k=params.localize.k, floor=params.localize.floor,
                              candidate_source=str(candidate_path), baseline_source=where)
    except FingerprintMismatch as exc:
        # in the chain localize informs: fingerprints it cannot compare (another baseline, other params: the
        # verdict says so too) leave the verdict, the report and the gate to run, and say why here. A file that
        # is corrupt or lies (not the one its record names, NaN in a reference) is an error: exit 2
        result = Localization("unavailable", f"not compared: {exc}")
        print(f"localize: warning: {result.message}", file=sys.stderr)
    next_step = advice(result, status, parted_at, params.profile)
    op = find_op(params, result, quiet=quiet)
    write_result(out, result, candidate=str(candidate_path), baseline=params.localize.baseline_fingerprints,
                 verdict_status=status, parted_at=parted_at, next_step=next_step, op=op)
    tag_run(params, folder, result, out, op)
    print(f"localize: {result.message} -> {out}")
    if op is not None:
        print(f"  op: {op.message}" + (f"; repro: python {op.repro} [--device ...]" if op.repro else ""))
    if next_step:
        print(f"  next: {next_step}")
    return 0


def replay(params: Params, step: int, envelope: bool, quiet: bool) -> int:
    """Train up to `step` with fingerprints at that step (and, with `envelope`, the envelope runs too)."""
    from cait.portbugs import envelope_variants
    from pipelines.training import params_precision, train_once, with_numerics

    total = run_length(params)
    if not 0 <= step < total:
        raise FingerprintError(f"--step {step}: outside the run's steps 0..{total - 1} (train.steps "
                               f"{params.train.steps}, {total} in all); give the verdict's first_divergence_step")
    train = params.train.model_copy(update={"fingerprints": params.train.fingerprints.model_copy(
        update={"steps": [step]})})
    replay_params = params.model_copy(update={"train": train})
    folder = run_dir(params.profile) / f"replay-{step}"
    train_once(replay_params, f"replay to step {step}", quiet=quiet, out_dir=folder, stop_after=step)
    prints = replayed(folder, step)
    if envelope:
        variants = {}
        for name in envelope_variants(params.device.type, params_precision(params)):
            sub = folder / name
            train_once(with_numerics(replay_params, name), f"replay {name}", quiet=quiet, out_dir=sub, stop_after=step)
            variants[name] = replayed(sub, step)
        from cait.fingerprints import save

        # beside the run's own file, which stays the one its train.json names
        path = save(folder / REPLAY_REFERENCE, with_spread(prints, variants))
        print(f"localize: reference fingerprints at step {step}, with the spread of {len(variants)} envelope run(s) "
              f"-> {path}")
        return 0
    print(f"localize: fingerprints at step {step} -> {folder / FINGERPRINTS}")
    return 0


def op_search(params: Params, step: int, phase: str, module: str, out: str | None, quiet: bool) -> int:
    """The first diverging op of one module at one step (any step: a replay up to it), with its repro."""
    from pipelines.kernel import search, write_repro

    total = run_length(params)
    if not 0 <= step < total:
        raise FingerprintError(f"--step {step}: outside the run's steps 0..{total - 1}")
    finding, found = search(params, step, phase, module, quiet=quiet)
    if found is not None:
        finding.repro = str(write_repro(run_dir(params.profile) / REPRO, finding, found))
    path = Path(out) if out else run_dir(params.profile) / f"op-{step}.json"
    atomic_write_text(path, json.dumps(finding.to_json(), indent=1, sort_keys=True) + "\n")
    print(f"localize: {finding.message} -> {path}")
    if finding.repro:
        print(f"  repro: python {finding.repro} [--device cpu|cuda|sdaa]")
    return 0


def run_length(params: Params) -> int:
    """Steps of the run params.yaml describes, as one process trains it (cait/session.py): train.steps, or
    epochs x steps per epoch of the prepared data."""
    if params.train.steps is not None:
        return params.train.steps
    from cait.manifest import read_manifest
    from pipelines.layout import PREPARED_DIR

    images = len(read_manifest(PREPARED_DIR).splits.get("train", []))  # no manifest: a DataError naming it
    return params.train.epochs * max(1, images // params.train.batch_size)


def replayed(folder: Path, step: int):
    """The fingerprints a replay run wrote (the file its train.json names), refused unless they hold `step`
    (a run that stopped early, e.g. on a non-finite loss, never reached it)."""
    prints = read_run_fingerprints(folder / FINGERPRINTS, folder / RECORD)
    if step not in prints.steps:
        raise FingerprintError(f"{folder / FINGERPRINTS}: holds no fingerprints at step {step} (steps "
                               f"{sorted(prints.steps) or 'none'}: the run stopped before it?); see {folder / RECORD}")
    return prints


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("action", nargs="?", choices=["replay", "op"],
                   help="replay: train up to --step with fingerprints there; op: the first diverging op of --module")
    p.add_argument("--step", type=int, help="replay: the step to fingerprint (where the curves part)")
    p.add_argument("--envelope", action="store_true", help="replay: also the envelope runs (a reference file)")
    p.add_argument("--module", help="op: the module localize named (its `module`)")
    p.add_argument("--phase", default="forward", choices=["forward", "backward", "param_grad"],
                   help="op: the phase localize named (default forward)")
    p.add_argument("--candidate", help="a fingerprint file to localize (default: the chain's)")
    p.add_argument("--baseline", help="the reference fingerprint file (default: localize.baseline_fingerprints)")
    p.add_argument("--out", help=f"result file (default: reports/<profile>/{LOCALIZE})")
    args = p.parse_args(argv)
    params = load_params(args.params)
    if args.action == "replay":
        if args.step is None:
            raise FingerprintError("replay needs --step S (the step where the curves part: the verdict's "
                                   "first_divergence_step)")
        return replay(params, args.step, args.envelope, args.quiet)
    if args.action == "op":
        if args.step is None or args.module is None:
            raise FingerprintError("op needs --step S and --module M (localize's step and module), and --phase for a "
                                   "backward finding")
        return op_search(params, args.step, args.phase, args.module, args.out, args.quiet)
    if not (args.candidate or args.baseline):
        return run_chain(params, args.quiet)
    candidate = args.candidate or str(run_dir(params.profile) / FINGERPRINTS)
    baseline = args.baseline or params.localize.baseline_fingerprints
    record = Path(candidate).parent / RECORD  # a run's folder: the file must be the one its record names
    result = localize(read_run_fingerprints(candidate, record) if record.is_file() else load(candidate),
                      load_reference(baseline), k=params.localize.k, floor=params.localize.floor,
                      candidate_source=candidate, baseline_source=baseline)
    out = Path(args.out) if args.out else run_dir(params.profile) / "localize.files.json"
    write_result(out, result, candidate=candidate, baseline=baseline)
    print(f"localize: {describe(result)} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
