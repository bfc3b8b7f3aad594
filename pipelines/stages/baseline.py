"""baseline command: record a new baseline from K training runs, or promote existing runs into one.

  python -m pipelines.stages.baseline record --runs 3            # train seeds s, s+1, s+2 (s = train.seed)
  python -m pipelines.stages.baseline record --runs 3 --repeat   # 3 repeats of train.seed: the device's own noise
  python -m pipelines.stages.baseline record --runs 3 --envelope # + train.seed under each numerics variant
                                                                 # of this device (`make baseline`)
  python -m pipelines.stages.baseline promote                    # reports/<profile>/curve.csv + train.json
  python -m pipelines.stages.baseline promote --run-dir a --run-dir b --mlflow-run <id> ...
  python -m pipelines.stages.baseline show                       # print the stored baseline's provenance
  python -m pipelines.stages.baseline upgrade                    # schema 3/4 -> 5: envelope runs by precision policy
  python -m pipelines.stages.baseline add-variants --run-dir d   # new envelope variants joined to a stored baseline
  python -m pipelines.stages.baseline fingerprints --run-dir ref --run-dir threads_1 ...
                                # layer fingerprints for a stored baseline, from runs of its reference and envelope
                                # variants retrained here (each curve must equal the baseline's, bit for bit)
  python -m pipelines.stages.baseline precision --run-dir reports/<profile>/preflight
                                # which format each tensor of the reference goes through (the precision rule), for
                                # fingerprints recorded before they held it: from a run of the same params here

Each recorded run is an ordinary tracked train run: if `record` is interrupted, the finished runs are
not lost; promote them with `promote --mlflow-run <id> ...`.

The baseline is written to compare.baseline (or --out); commit it to git with its provenance. With
several runs it keeps every curve and per-step mean/std/min/max, which the band rule uses. A baseline
of several seeds leaves train.seed out of its params hash (any seed is judged against the spread);
one of a single seed keeps it (see pipelines/baselines.py `curve_hash`). With --envelope, the reference
seed is trained again under every numerics variant of the device (cait/portbugs.py: threads, fused
attention, deterministic algorithms off, TF32 on CUDA, initial weights one ulp away); their per-step
distance from the reference is the envelope the `envelope` rule gates on. A run with a port bug
(device.port_bug) is refused.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cait.errors import BaselineError, ConfigError
from pipelines import cli
from pipelines.baselines import baseline_from_runs, load_baseline, record_precision, save_baseline
from pipelines.layout import CURVE, FINGERPRINTS, RECORD, RUN_INFO, run_dir
from pipelines.logs import read_mlflow_run
from pipelines.params import Params, load_params, parse_params
from pipelines.provenance import read_record, read_run, read_run_info, with_run_info
from pipelines.tracking import tracking_uri
from pipelines.training import params_precision, train_once, with_numerics


def run_from_files(curve_path: Path, record_path: Path) -> tuple:
    """(curve, record, source) of a train stage's curve and record, checked to belong together (read_run)."""
    curve, record = read_run(curve_path, record_path)
    return curve, record, str(curve_path)


def run_from_folder(folder: Path) -> tuple:
    """(curve, record, source) of a train stage's output folder (curve.csv + train.json)."""
    return run_from_files(folder / CURVE, folder / RECORD)


def run_from_mlflow(run_id: str, params: Params) -> tuple:
    """(curve, record, source) of a tracked train run: its `loss` history and its train.json artifact."""
    if not params.tracking.enabled:
        raise ConfigError("--mlflow-run needs tracking.enabled: true (and the store the run is in)")
    uri = tracking_uri(params.tracking)
    curve = read_mlflow_run(run_id, uri).curve
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory(prefix="baseline-promote-") as tmp:
        try:
            local = MlflowClient(tracking_uri=uri).download_artifacts(run_id, RECORD, tmp)
        except Exception:
            raise BaselineError(f"MLflow run {run_id}: has no {RECORD} artifact (not a train stage run?); "
                                f"promote its folder with --run-dir instead") from None
        record = read_record(local)
        try:  # run.json (MLflow ids, throughput): absent from runs of an older harness, whose train.json held them
            info, _ = read_run_info(MlflowClient(tracking_uri=uri).download_artifacts(run_id, RUN_INFO, tmp),
                                    record.get("curve_sha256"))
        except Exception:
            info = {}
    return curve, {"mlflow_run_id": run_id, **with_run_info(record, info)}, f"MLflow run {run_id}"


def seeds_for(params: Params, runs: int, repeat: bool, seeds: str | None) -> list[int]:
    if seeds is not None:
        try:
            chosen = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds {seeds!r}: give whole numbers separated by commas, e.g. 0,1,2") from None
        if not chosen:
            raise ConfigError(f"--seeds {seeds!r}: give at least one seed, e.g. 0,1,2")
        for seed in chosen:  # each as train.seed would be checked in params.yaml (e.g. >= 0), before any run
            parse_params({**params.model_dump(mode="json"), "train": {**params.train.model_dump(mode="json"),
                                                                      "seed": seed}}, f"--seeds {seeds}")
        return chosen
    if runs < 1:
        raise ConfigError(f"--runs {runs}: must be at least 1")
    first = params.train.seed
    return [first] * runs if repeat else list(range(first, first + runs))


def record_runs(params: Params, seeds: list[int], quiet: bool = False, keep_dir: Path | None = None) -> list[tuple]:
    """Train once per seed with params.yaml otherwise unchanged; each run is tracked in MLflow as usual.
    With keep_dir each run's folder (its fingerprints) stays in keep_dir/run-<i>."""
    runs = []
    for i, seed in enumerate(seeds):
        run_params = params.model_copy(update={"train": params.train.model_copy(update={"seed": seed})})
        print(f"baseline: run {i + 1} of {len(seeds)} (train.seed {seed})", flush=True)
        runs.append(train_once(run_params, f"seed {seed}", quiet=quiet,
                               out_dir=keep_dir / f"run-{i}" if keep_dir else None))
    return runs


def record_envelope_runs(params: Params, variants: list[str], quiet: bool = False,
                         keep_dir: Path | None = None, policies: list[str] = ("fp32",)) -> list[tuple]:
    """The reference seed once per numerics variant, under each precision policy: the legitimate spread each
    policy's envelope is made of. Under a policy other than the params' own the reference seed is trained once
    more without a variant: that policy's reference run."""
    own = params_precision(params)
    plan = [(own, name) for name in variants]
    for policy in policies:
        if policy != own:
            plan += [(policy, None)] + [(policy, name) for name in variants]
    runs = []
    for i, (policy, name) in enumerate(plan):
        what = f"numerics variant {name}" if name else "the policy's reference run"
        print(f"baseline: envelope run {i + 1} of {len(plan)} ({policy}: {what}, train.seed "
              f"{params.train.seed})", flush=True)
        folder = f"{policy}-{name or 'reference'}" if policy != own else name
        runs.append(train_once(with_numerics(with_policy(params, policy), name), f"{policy}, {what}", quiet=quiet,
                               out_dir=keep_dir / folder if keep_dir else None))
    return runs


# the precision policies a device can record beside its own: TF32 is a device switch (device.tf32); bf16 and fp16
# autocast change train.amp, which is part of the curve's params: such a profile has a baseline of its own
DEVICE_POLICIES = ("fp32", "tf32")


def with_policy(params: Params, policy: str) -> Params:
    """params under a device-level precision policy (fp32 or tf32)."""
    if policy == params_precision(params):
        return params
    if params.train.amp or policy not in DEVICE_POLICIES:
        raise ConfigError(f"--policies {policy}: only {', '.join(DEVICE_POLICIES)} can be recorded beside a profile's "
                          f"own policy ({params_precision(params)}); bf16/fp16 is train.amp, a profile of its own")
    return params.model_copy(update={"device": params.device.model_copy(update={"tf32": policy == "tf32"})})


def default_policies(params: Params) -> list[str]:
    """fp32 everywhere; tf32 too where the device has TF32 (CUDA, SDAA); a mixed-precision profile (train.amp)
    records its own policy only."""
    if params.train.amp:
        return [params.train.amp]
    return ["fp32"] if params.device.type == "cpu" else ["fp32", "tf32"]


def save_fingerprints(out: Path, baseline, reference: Path | None, variants: dict[str, Path]) -> Path | None:
    """The reference run's layer fingerprints with the envelope runs' spread, beside the baseline file and
    tied to it (its reference loss's digest): what `localize` compares a device under test with."""
    return write_fingerprints(out, baseline_prints(out, baseline, reference, variants))


def write_fingerprints(out: Path, prints) -> Path | None:
    from cait.fingerprints import save

    if prints is None:
        return None
    path = save(out.with_name(FINGERPRINTS), prints)
    print(f"baseline: layer fingerprints of the reference run at steps {sorted(prints.steps)}, tolerance from "
          f"{len(prints.variants)} envelope run(s) -> {path}", flush=True)
    return path


def baseline_prints(out: Path, baseline, reference: Path | None, variants: dict[str, Path]):
    """The fingerprints `save_fingerprints` writes, made and checked before anything is written: each run's file
    must be the one its train.json names (fingerprints_sha256), and the result a valid reference (finite)."""
    from cait.fingerprints import check_reference
    from pipelines.localize import loss_digest, read_run_fingerprints, with_spread

    def load(path: Path):
        return read_run_fingerprints(path, path.parent / RECORD)

    if reference is None or not reference.exists():
        print("baseline: the reference run has no layer fingerprints; localize will not be available", flush=True)
        return None
    missing = [name for name, path in variants.items() if not path.exists()]
    if missing:
        print(f"baseline: no fingerprints for envelope run(s) {', '.join(missing)}: the tolerance leaves them out",
              flush=True)
    prints = with_spread(load(reference), {n: load(p) for n, p in variants.items() if p.exists()})
    prints.meta["baseline_loss_sha256"] = loss_digest(baseline.loss)
    check_reference(prints, out.with_name(FINGERPRINTS))
    return prints


def refuse_repeated_runs(runs: list[tuple]) -> None:
    """One run given twice is not two repeats (their spread would be zero: a band of no width): refuse a run
    named twice, by its curve file (resolved), its MLflow run, or its run.json (the date and wall time a run was
    trained in: a copied folder keeps them). Repeats of one seed are separate trainings (record --repeat)."""
    seen: dict = {}
    for curve, record, source in runs:
        keys = [("the same file", str(Path(source).resolve()))] if not source.startswith("MLflow run ") else []
        if record.get("mlflow_run_id"):
            keys.append(("MLflow run", record["mlflow_run_id"]))
        if record.get("date") and record.get("wall_s") is not None:
            keys.append(("trained at the same date and wall time (run.json)", (record["date"], record["wall_s"])))
        for what, key in keys:
            if (what, key) in seen:
                shown = key if isinstance(key, str) else f"{key[0]}, {key[1]} s"
                raise BaselineError(f"{source}: the same run as {seen[what, key]} ({what}: {shown}); give each run "
                                    f"once (repeats of one seed are separate trainings: record --runs N --repeat)")
            seen[what, key] = source


def main(argv=None) -> int:
    p = cli.parser("record or promote a baseline")
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("promote", help="turn existing runs into the baseline (one run, or several for a band)")
    pr.add_argument("--run-dir", action="append", default=[],
                    help="folder holding curve.csv and train.json; repeat for a multi-run baseline "
                         "(default: reports/<profile>)")
    pr.add_argument("--curve", action="append", default=[],
                    help="a curve CSV; its train.json is read from the same folder unless --record follows")
    pr.add_argument("--record", action="append", default=[], help="train.json of the matching --curve")
    pr.add_argument("--mlflow-run", action="append", default=[], help="id of a tracked train run; repeatable")
    rec = sub.add_parser("record", help="train K runs now with params.yaml and make them the baseline")
    rec.add_argument("--runs", type=int, default=1, help="how many runs (default 1)")
    rec.add_argument("--repeat", action="store_true", help="repeat train.seed instead of seeds s, s+1, ...")
    rec.add_argument("--seeds", help="explicit seeds, e.g. 0,1,2 (overrides --runs)")
    rec.add_argument("--envelope", action="store_true",
                     help="also train train.seed under every numerics variant of the device (the envelope)")
    rec.add_argument("--variants", help="numerics variants for --envelope, comma-separated "
                                        "(default: every one of the device, cait/portbugs.py ENVELOPE_VARIANTS)")
    rec.add_argument("--policies", help="precision policies to record an envelope for, comma-separated: fp32, tf32 "
                                        "(default: fp32 on cpu; fp32,tf32 on cuda and sdaa)")
    add = sub.add_parser("add-variants", help="join envelope runs of new numerics variants (the reference seed, "
                                             "same params, data and device) to a stored schema-5 baseline")
    add.add_argument("--run-dir", action="append", default=[], required=True,
                     help="a run folder (curve.csv, train.json, fingerprints.npz) of one new variant; repeat")
    add.add_argument("--baseline", help="the baseline file (default: compare.baseline)")
    up = sub.add_parser("upgrade", help="rewrite a baseline of schema 3 or 4 as schema 5: its envelope runs "
                                        "partitioned by the precision policy their numerics amount to, signed")
    up.add_argument("--baseline", help="the baseline file (default: compare.baseline)")
    up.add_argument("--out", help="where to write it (default: over --baseline, atomically)")
    up.add_argument("--probe-growth-from", help="another device's schema-5 baseline of the same profile, params and "
                                                "data whose ulp probes' growth joins this one's envelope (and whose "
                                                "probes' fingerprint spread joins this one's localize tolerance)")
    sub.add_parser("show", help="print the baseline's provenance")
    fp = sub.add_parser("fingerprints", help="add layer fingerprints to a stored baseline from retrained runs of it")
    fp.add_argument("--run-dir", action="append", default=[], required=True,
                    help="a run folder (curve.csv, train.json, fingerprints.npz) of the reference seed, plain or under "
                         "one of the baseline's numerics variants; repeat")
    fp.add_argument("--baseline", help="the baseline file (default: compare.baseline)")
    pc = sub.add_parser("precision", help="add the precision shares (which format each tensor went through) to a "
                                          "stored baseline's fingerprints, from a run of its params on this code")
    pc.add_argument("--run-dir", required=True, help="a run folder (train.json, fingerprints.npz) of the baseline's "
                                                      "params and reference seed, e.g. the preflight's")
    for s in (pr, rec):
        s.add_argument("--out", help="baseline file to write (default: compare.baseline)")
    args = p.parse_args(argv)
    params = load_params(args.params)
    if args.command == "show":
        baseline = load_baseline(params.compare.baseline)
        print(json.dumps({"profile": baseline.profile, "model": baseline.model, "kind": baseline.kind,
                          "steps": len(baseline.loss), "seeds": baseline.seeds,
                          "provenance": {k: v for k, v in baseline.provenance.items() if k != "params"}}, indent=1))
        return 0
    if args.command == "fingerprints":
        return fingerprints_for_stored(Path(args.baseline or params.compare.baseline), [Path(d) for d in args.run_dir],
                                       params)
    if args.command == "precision":
        return precision_for_stored(params, Path(args.run_dir))
    if args.command == "add-variants":
        from pipelines.upgrade import add_variants

        for line in add_variants(Path(args.baseline or params.compare.baseline),
                                 [run_from_folder(Path(d)) for d in args.run_dir]):
            print(f"baseline: {line}", flush=True)
        return 0
    if args.command == "upgrade":
        from pipelines.upgrade import upgrade_files

        path = Path(args.baseline or params.compare.baseline)
        for line in upgrade_files(path, Path(args.out) if args.out else path,
                                  Path(args.probe_growth_from) if args.probe_growth_from else None):
            print(f"baseline: {line}", flush=True)
        return 0
    out = Path(args.out or params.compare.baseline)
    envelope_runs: list[tuple] = []
    keep = tempfile.TemporaryDirectory(prefix="baseline-runs-")  # the runs' fingerprints, until they are saved
    keep_dir = Path(keep.name)
    if args.command == "record":
        if params.device.port_bug or params.device.numerics_variant:
            raise ConfigError(f"{args.params}: device.port_bug / device.numerics_variant must be null to record a "
                              f"baseline (the envelope variants are added by --envelope)")
        variants = envelope_variant_names(params.device.type, args.variants, params_precision(params)) \
            if args.envelope else []
        policies = ([p.strip() for p in args.policies.split(",") if p.strip()] if args.policies
                    else default_policies(params))
        for policy in policies:
            with_policy(params, policy)  # a usage error before any training
        started = time.perf_counter()
        runs = record_runs(params, seeds_for(params, args.runs, args.repeat, args.seeds), args.quiet, keep_dir)
        envelope_runs = record_envelope_runs(params, variants, args.quiet, keep_dir,
                                             policies if args.envelope else [params_precision(params)])
        reference_prints = keep_dir / "run-0" / FINGERPRINTS  # seeds start at train.seed: run 0 is the reference
        variant_prints = {name: keep_dir / name / FINGERPRINTS for name in variants}  # the own policy's
        print(f"baseline: {len(runs) + len(envelope_runs)} runs trained in {time.perf_counter() - started:.0f} s",
              flush=True)
    else:
        if args.record and len(args.record) != len(args.curve):
            raise ConfigError("--record: give one per --curve, in the same order (or none: train.json beside each)")
        runs = [run_from_folder(Path(d)) for d in args.run_dir]
        for i, curve_path in enumerate(args.curve):
            record_path = Path(args.record[i]) if args.record else Path(curve_path).parent / RECORD
            runs.append(run_from_files(Path(curve_path), record_path))
        folders = {id(run): Path(run[2]).parent for run in runs}  # where each run's fingerprints are
        runs += [run_from_mlflow(run_id, params) for run_id in args.mlflow_run]
        if not runs:
            runs = [run_from_folder(run_dir(params.profile))]
            folders = {id(runs[0]): run_dir(params.profile)}
        refuse_repeated_runs(runs)
        # runs of a numerics variant are envelope runs; the reference run (the baseline's own curve) is
        # the one of train.seed, whatever order they came in
        # (and so are runs under another precision policy than train.seed's plain run: that policy's reference)
        plain = [run for run in runs if not run[1].get("numerics_variant")]
        own = record_precision(min(plain, key=lambda run: run[1]["curve_params"]["train"]["seed"] != params.train.seed)[1]
                               ) if plain else None
        envelope_runs = [run for run in runs if run[1].get("numerics_variant") or record_precision(run[1]) != own]
        runs = [run for run in runs if not run[1].get("numerics_variant") and record_precision(run[1]) == own]
        runs.sort(key=lambda run: run[1]["curve_params"]["train"]["seed"] != params.train.seed)
        # fingerprints beside each run's curve, when it came from a folder (not from MLflow)
        reference_prints = folders[id(runs[0])] / FINGERPRINTS if runs and id(runs[0]) in folders else None
        variant_prints = {run[1]["numerics_variant"]: folders[id(run)] / FINGERPRINTS for run in envelope_runs
                          if id(run) in folders and run[1].get("numerics_variant") and record_precision(run[1]) == own}
        # (only the own policy's variants: they give localize's tolerance)
    baseline = baseline_from_runs(runs, params.profile, envelope_runs)
    prints = baseline_prints(out, baseline, reference_prints, variant_prints)  # checked before anything is written
    save_baseline(out, baseline)
    write_fingerprints(out, prints)
    keep.cleanup()
    prov = baseline.provenance
    print(f"baseline: {baseline.kind}, {len(baseline.loss)} steps, seeds {baseline.seeds} "
          f"({prov['device']}: {prov['device_name']}) -> {out}")
    for policy, other in baseline.policies.items():
        print(f"baseline: {policy} policy: its reference run and an envelope of {len(other.runs)} variants")
    if baseline.envelope_runs:
        width = baseline.envelope()
        same = [r.variant for r in baseline.envelope_runs if np.array_equal(r.loss, baseline.loss)]
        print(f"baseline: envelope of {len(baseline.envelope_runs)} variants "
              f"({', '.join(r.variant for r in baseline.envelope_runs)}): width {width[0]:.3g} at step "
              f"{baseline.steps[0]}, {width[-1]:.3g} at step {baseline.steps[-1]}"
              + (f"; bitwise equal to the reference: {', '.join(same)}" if same else ""))
    return 0


def fingerprints_for_stored(path: Path, folders: list[Path], params: Params) -> int:
    """Fingerprints for a baseline recorded before they existed: the same runs trained again with this code (on
    the baseline's machine), accepted only when each run's curve is bitwise the one the baseline stores for it."""
    baseline = load_baseline(path, allow_negative_loss=params.compare.allow_negative_loss)
    stored = {r.variant: r.loss for r in baseline.envelope_runs}
    reference, variants = None, {}
    for folder in folders:
        curve, record, _ = run_from_folder(folder)
        variant = record.get("numerics_variant")
        if record.get("port_bug"):
            raise BaselineError(f"{folder}: trained with the port bug {record['port_bug']!r}: never part of a baseline")
        if record["curve_params"]["train"]["seed"] != baseline.provenance["seed"]:
            raise BaselineError(f"{folder}: seed {record['curve_params']['train']['seed']}, the baseline's reference "
                                f"seed is {baseline.provenance['seed']}")
        expected = baseline.loss if variant is None else stored.get(variant)
        if expected is None:
            raise BaselineError(f"{folder}: numerics variant {variant!r} is not one of {path}'s envelope runs "
                                f"({', '.join(stored) or 'none'})")
        if not (len(curve.loss) == len(expected) and np.array_equal(curve.loss, expected)):
            raise BaselineError(f"{folder}: its curve is not the one {path} stores for "
                                f"{variant or 'the reference run'} (another machine, code or params?); record a new "
                                f"baseline instead (make baseline)")
        if variant is None:
            reference = folder / FINGERPRINTS
        else:
            variants[variant] = folder / FINGERPRINTS
    if reference is None:
        raise BaselineError("--run-dir: none is the reference run (no numerics variant); give its folder too")
    missing = sorted(set(stored) - set(variants))
    if missing:
        print(f"baseline: no run for envelope variant(s) {', '.join(missing)}: the tolerance leaves them out")
    save_fingerprints(path, baseline, reference, variants)
    return 0


def precision_for_stored(params: Params, folder: Path) -> int:
    """The precision shares of a run's fingerprints (cait/fingerprints.py) written into the stored baseline's
    fingerprints (localize.baseline_fingerprints), for the steps and entries both have; the rest unchanged.

    Which format a tensor goes through is the precision policy's and the code's (autocast's op lists, what the
    optimizer keeps), not the CPU's: a run of the same params (model, profile, params hash, world size, policy) on
    this code gives it, where its values differ from the reference's in the last bits. So no bitwise check of the
    curve (as `fingerprints` makes): the run must be compatible and of the baseline's policy, and its machine,
    torch and date go into the file's meta (`precision_source`)."""
    from cait.fingerprints import save
    from pipelines.localize import baseline_fingerprints, check_compatible, read_run_fingerprints

    reference, where = baseline_fingerprints(params)
    if reference is None:
        raise BaselineError(where)
    record = read_record(folder / RECORD)
    if record.get("port_bug") or record.get("numerics_variant"):
        raise BaselineError(f"{folder}: trained with {record.get('port_bug') or record.get('numerics_variant')!r}: "
                            f"only a plain run of the baseline's params gives the reference's precision")
    baseline = load_baseline(params.compare.baseline, allow_negative_loss=params.compare.allow_negative_loss)
    policy = record_precision(record)
    if policy != baseline.precision:
        raise BaselineError(f"{folder}: precision policy {policy}, the baseline's is {baseline.precision}")
    run = read_run_fingerprints(folder / FINGERPRINTS, folder / RECORD)
    check_compatible(run, reference, str(folder / FINGERPRINTS), where)
    filled, steps = [], set()
    for step, phases in reference.steps.items():
        for phase, ref in phases.items():
            mine = run.steps.get(step, {}).get(phase)
            if mine is None or mine.precision is None:
                continue
            if mine.names != ref.names:
                raise BaselineError(f"{folder}: step {step} {phase} has other entries than {where}; not the same model")
            ref.precision = mine.precision.copy()
            filled.append(f"{step} {phase}")
            steps.add(step)
    if not filled:
        raise BaselineError(f"{folder}: no fingerprint step of {where} ({', '.join(map(str, sorted(reference.steps)))}) "
                            f"with precision shares; train step 0 (the preflight) with this code")
    env = record.get("environment", {})
    reference.meta["precision_source"] = {"steps": sorted(steps),
                                          "run": str(folder), "device": env.get("device"), "cpu": env.get("cpu"),
                                          "device_name": env.get("device_name"), "torch": env.get("torch"),
                                          "added_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    save(where, reference)
    print(f"baseline: precision shares of {len(filled)} step/phase(s) ({', '.join(filled)}) from {folder} -> {where}")
    return 0


def envelope_variant_names(device_type: str, given: str | None, policy: str = "fp32") -> list[str]:
    from cait.portbugs import VARIANTS, envelope_variants

    if not given:
        return envelope_variants(device_type, policy)
    names = [n.strip() for n in given.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ConfigError(f"--variants: unknown numerics variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    return names


if __name__ == "__main__":
    sys.exit(cli.run(main))
