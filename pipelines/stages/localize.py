"""localize stage: which module (or phase) parts first from the baseline, from the layer fingerprints.

  python -m pipelines.stages.localize                       # the chain's run against the baseline's
  python -m pipelines.stages.localize --candidate A.npz --baseline B.npz   # any two fingerprint files
  python -m pipelines.stages.localize replay --step 57      # train up to step 57 with fingerprints there
  python -m pipelines.stages.localize replay --step 57 --envelope   # the same on the baseline's machine,
                                                            # with the envelope runs: replay-57/reference.npz

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
from pipelines.localize import Localization, describe, localize, loss_digest, read_run_fingerprints, with_spread
from pipelines.params import Params, load_params
from pipelines.provenance import file_sha256

REPLAY_REFERENCE = "reference.npz"  # replay --envelope: the replayed run's fingerprints with the envelope's spread


def baseline_fingerprints(params: Params):
    """The baseline's fingerprints, checked to belong to compare.baseline; (prints, path) or (None, why)."""
    path = Path(params.localize.baseline_fingerprints)
    if not path.exists():
        return None, (f"{path}: the baseline has no layer fingerprints; record them with the baseline "
                      f"(make baseline) to localize a failing run")
    prints = load_reference(path)
    baseline = load_baseline(params.compare.baseline, allow_negative_loss=params.compare.allow_negative_loss)
    if prints.meta.get("baseline_loss_sha256") != loss_digest(baseline.loss):
        raise FingerprintMismatch(f"{path}: belongs to another baseline than {params.compare.baseline} (its reference "
                               f"loss differs); record both together (make baseline) or point "
                               f"localize.baseline_fingerprints at the right file")
    return prints, str(path)


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
                 parted_at: int | None = None, next_step: str = "") -> dict:
    inputs = {side: {"path": path, "sha256": file_sha256(path) if path and Path(path).is_file() else None}
              for side, path in (("candidate", candidate), ("baseline", baseline))}
    data = {"schema_version": 1, **result.to_json(), "inputs": inputs, "verdict_status": verdict_status,
            "curves_part_at": parted_at, "next": next_step}
    atomic_write_text(out, json.dumps(data, indent=1, sort_keys=True) + "\n")
    return data


def tag_run(params: Params, folder: Path, result: Localization, out: Path) -> None:
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
    logger = RunLogger(params.tracking)
    logger.attach(record["mlflow_run_id"], record.get("mlflow_parent_run_id", ""))
    logger.set_tags(tags)
    # an execution's row shows the worst device's (pipelines/review.py: execution_tags)
    if logger.parent_run_id and (logger.run_tags(logger.parent_run_id).get("verdict")
                                 == logger.run_tags(logger.run_id).get("verdict")):
        logger.set_tags({"localize.module": tags.get("localize.module", "")}, run_id=logger.parent_run_id)
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
    write_result(out, result, candidate=str(candidate_path), baseline=params.localize.baseline_fingerprints,
                 verdict_status=status, parted_at=parted_at, next_step=next_step)
    tag_run(params, folder, result, out)
    print(f"localize: {result.message} -> {out}")
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
    p.add_argument("action", nargs="?", choices=["replay"], help="replay: train up to --step with fingerprints there")
    p.add_argument("--step", type=int, help="replay: the step to fingerprint (where the curves part)")
    p.add_argument("--envelope", action="store_true", help="replay: also the envelope runs (a reference file)")
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
