"""One tracked training run, as every command that trains runs it: cait's session (cait/session.py) with
MLflow, the progress display, the ModelZoo per-step lines, curve.csv and the run record around it.

The train stage is its command line; the baseline stage (reference and envelope runs), localize's replay,
the model card command and the benchmarks call the same functions, so no stage reaches into another.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

from cait.errors import HarnessError
from pipelines.curves import write_curve_csv
from pipelines.layout import CURVE, PARTIAL_CURVE, PREPARED_DIR, RECORD
from pipelines.logs import dllogger_line
from pipelines.params import Params
from pipelines.progress import Progress
from pipelines.provenance import file_sha256, git_commit, read_run, write_run_record
from pipelines.review import run_name
from pipelines.tracking import RunLogger


def run_training(params: Params, out_dir: Path, *, data_dir: Path = PREPARED_DIR,
                 resume: bool = False, quiet: bool = False, stop_after: int | None = None,
                 fail_fast: bool = False) -> tuple[Path, Path]:
    """Train and write curve.csv, train.json and checkpoints/ into out_dir; returns the first two paths.

    Works as one process or as one rank of a torchrun/SLURM job (rank 0 alone writes files and MLflow).
    `resume` continues from out_dir/checkpoints/last.pt, which must come from a run with the same params.
    On a terminal a progress bar runs under the per-step lines; off one (CI) a progress line every few
    seconds; `quiet` leaves only the closing summary. Layer fingerprints (train.fingerprints) go to
    fingerprints.npz beside the curve. `stop_after` ends the run after that step (localize's replay).
    With `fail_fast` (the train stage's run; never a baseline run, a replay or a preflight, which must reach their
    steps) and compare.fail_fast on, each step is judged as it comes (pipelines/failfast.py) and the run stops once
    its verdict is a certain fail; train.json's `stopped_early` says where and why (null for a full run).
    The training itself is cait's session (cait/session.py); this adds MLflow, the progress display,
    the per-step lines, the curve and the run record.
    """
    from cait.session import Callbacks, Session, run_session

    curve_path, record_path, partial_path = out_dir / CURVE, out_dir / RECORD, out_dir / PARTIAL_CURVE
    state: dict = {}  # what on_start set up: the session, the MLflow logger, the progress display
    started = time.perf_counter()  # fail fast's seconds count from here: the set-up is part of the wait

    def on_start(session: Session) -> None:
        ctx, device = session.ctx, session.device
        commit = git_commit()
        tracking = params.tracking if ctx.is_main else params.tracking.model_copy(update={"enabled": False})
        logger = RunLogger(tracking)
        resume_state = session.resume_state
        resumed = f" · resumed at step {resume_state['step']}" if resume_state else ""
        logger.start(run_name=run_name(params.profile, device.type, suffix=resumed), params=params.flat(),
                     tags={"profile": params.profile, "stage": "train", "model": params.model.name,
                           "git_commit": commit, "mlflow.source.git.commit": commit.removesuffix("-dirty"),
                           "data_manifest_hash": session.manifest.hash, "params_hash": params.curve_hash(),
                           "world_size": ctx.world_size, "dist_backend": ctx.backend or "none",
                           "numerics_variant": params.device.numerics_variant or "none",
                           "precision": session.precision,
                           "port_bug": params.device.port_bug or "none",
                           **{f"numerics.{k}": v for k, v in session.numerics.items()},
                           **{f"env.{k}": v for k, v in session.environment.items() if v not in ("", None)}})
        state.update(session=session, commit=commit, logger=logger)
        from pipelines.failfast import plan

        watch, note = plan(params, precision=session.precision, total_steps=session.total_steps,
                           record={"curve_params": params.curve_defining(), "data_manifest_hash": session.manifest.hash,
                                   "data_pixels_hash": session.pixels_hash}) if fail_fast else (None, "")
        state["failfast"] = watch
        if note and ctx.is_main:
            print(f"train: {note}", file=sys.stderr)
        logger.start_system_metrics(params.tracking.system_metrics_every_s)
        progress = Progress(session.total_steps, f"train {params.profile} on {device.type}",
                            quiet=quiet or not ctx.is_main)
        progress.update(len(session.rows))
        state["progress"] = progress

    def on_step(row: dict) -> None:
        session, progress = state["session"], state["progress"]
        progress.write(dllogger_line(row, epoch=row["step"] // session.steps_per_epoch, rank=session.ctx.rank))
        progress.update(1, loss=f"{row['loss']:.4f}", ips=f"{row['samples_per_s']:.1f}")
        state["logger"].log_step(row)

    def stop_check(row: dict) -> str:
        watch = state.get("failfast")
        decision = watch.observe(row["step"], row["loss"], time.perf_counter() - started) if watch else None
        return decision["reason"] if decision else ""

    def on_epoch(metrics: dict) -> None:
        state["progress"].write(f"Epoch[{metrics['epoch']}]: val_loss {metrics['val_loss']:.4f} "
                                f"acc1 {metrics['top1']:.2f} acc5 {metrics['top5']:.2f} "
                                f"({metrics['val_images']} images)")
        state["logger"].log_metrics({k: metrics[k] for k in ("val_loss", "top1", "top5")}, step=metrics["epoch"])
        state["logger"].flush()

    try:
        result = run_session(params.data, params.model, params.train, params.device, data_dir=data_dir,
                             out_dir=out_dir, params_hash=params.curve_hash(),
                             callbacks=Callbacks(on_start=on_start, on_step=on_step, on_epoch=on_epoch,
                                                 stop_check=stop_check),
                             resume=resume, stop_after=stop_after,
                             fingerprint_meta={"profile": params.profile, "model": params.model.name,
                                               "params_hash": params.curve_hash(),
                                               "curve_params": params.curve_defining()})
    except BaseException:
        if "progress" not in state:  # failed during the set-up: no step trained, nothing tracked
            if "logger" in state and state["session"].ctx.is_main:
                try:
                    state["logger"].finish("FAILED")
                except Exception:
                    pass
            raise
        state["progress"].close()
        session = state["session"]
        rows = session.rows
        if session.ctx.is_main and rows:
            # keep every step already trained, beside the DVC output, never over it: curve.csv is only
            # ever a finished run's curve (a resume continues from the checkpoints, not from this file)
            try:
                write_curve_csv(partial_path, rows)
                print(f"train: interrupted after {len(rows)} step(s); partial curve kept in {partial_path}",
                      file=sys.stderr)
            except HarnessError as exc:  # the original error matters more
                print(f"train: partial curve not kept: {exc}", file=sys.stderr)
        if session.ctx.is_main:
            try:
                state["logger"].finish("FAILED")
            except Exception:  # the original error matters more than the tracking one
                pass
        raise
    state["progress"].close()
    session, summary, logger = result.session, result.summary, state["logger"]
    ctx, rows, environment = session.ctx, session.rows, session.environment
    if not ctx.is_main:
        return curve_path, record_path
    write_curve_csv(curve_path, rows)
    partial_path.unlink(missing_ok=True)
    fingerprint_path = result.fingerprint_path
    watch = state.get("failfast")
    stopped_early = watch.decision if watch is not None and watch.decision is not None and \
        summary.stopped == watch.decision["reason"] else None
    record = {
        "profile": params.profile,
        "mlflow_run_id": logger.run_id,
        "mlflow_parent_run_id": logger.parent_run_id,
        "mlflow_experiment_id": logger.experiment_id,
        "tracking_uri": logger.uri,
        "environment": environment,
        "numerics": session.numerics,
        "precision": session.precision,  # the precision policy the numerics amount to (cait/determinism.py)
        "numerics_variant": params.device.numerics_variant,  # null: the device's own numerics
        "port_bug": params.device.port_bug,  # a simulated port bug: never a baseline
        "world_size": ctx.world_size,
        "global_batch": session.global_batch,
        "git_commit": state["commit"],
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "params_hash": params.curve_hash(),
        "curve_params": params.curve_defining(),
        "data_manifest_hash": session.manifest.hash,
        "data_source": session.manifest.source,
        "data_input": "shards" if session.shards_dir is not None else "jpeg",
        "data_pixels_hash": session.pixels_hash,  # sha256 of the train shard's pixels: the same on every device
        "steps_done": summary.steps_done,  # the curve's rows; compare refuses a curve of another length
        "curve_sha256": file_sha256(curve_path),  # ties the record to these exact bytes (a cut curve is refused)
        "fingerprints_sha256": file_sha256(fingerprint_path),  # the layer fingerprints localize reads
        "resumed_from_step": summary.resumed_from,
        "stopped": summary.stopped,
        "total_steps": session.total_steps,  # the run's length: a curve shorter than it is a stopped run's
        # fail fast: where and why the run stopped (null: a full run, or one not stopped by fail fast); its seconds
        # from the run's start differ in every run, so they go to run.json (stopped_early_seconds, joined back by read_run)
        "stopped_early": ({k: v for k, v in stopped_early.items() if k not in ("seconds", "failed_after_s")}
                          if stopped_early else None),
        "stopped_early_seconds": stopped_early["seconds"] if stopped_early else None,
        "failed_after_seconds": stopped_early["failed_after_s"] if stopped_early else None,
        "wall_s": summary.wall_s,
        # from the same start as stopped_early_seconds (the set-up included): what a stopped run is set against
        "run_seconds": time.perf_counter() - started,
        "mean_samples_per_s": sum(r["samples_per_s"] for r in rows[1:]) / max(1, len(rows) - 1),
        "epochs": summary.epochs,
        "best_top1": summary.best_top1,
    }
    sidecars = write_run_record(record_path, record, rows)  # timing.csv, run.json, then train.json
    # one-value numbers are tags (columns), not metrics: the UI would draw each as a chart of one bar
    logger.set_tags({"wall_s": f"{summary.wall_s:.1f}", "final_loss": repr(rows[-1]["loss"]) if rows else "nan"})
    if fail_fast and params.compare.fail_fast.enabled:
        logger.set_tags({"fail_fast": "stopped" if stopped_early else ("watched" if watch is not None else "off")})
    if stopped_early:
        logger.set_tags({"stopped_early": f"stopped early at step {stopped_early['stopped_step']}",
                         "stopped_early.step": str(stopped_early["stopped_step"]),
                         "stopped_early.failed_step": str(stopped_early["failed_step"]),
                         "stopped_early.seconds": f"{stopped_early['seconds']:.1f}",
                         "stopped_early.reason": stopped_early["reason"][:4000]})
    if summary.best_top1 is not None:
        logger.log_metrics({"best_top1": summary.best_top1})
    logger.log_artifact(curve_path)
    logger.log_artifact(record_path)
    logger.log_artifact(fingerprint_path)
    for path in sidecars:
        logger.log_artifact(path)
    logger.finish("FINISHED")
    done = f"stopped early: {summary.stopped}" if summary.stopped else "done"
    print(f"train: {summary.steps_done} steps on {environment['device_name']} x{ctx.world_size} in "
          f"{summary.wall_s:.1f} s ({done}); loss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}; "
          f"curve {curve_path}; MLflow run {logger.run_id or '-'}")
    return curve_path, record_path


def with_numerics(params: Params, variant: str | None) -> Params:
    """params with device.numerics_variant set (the device section is not part of the params hash)."""
    return params.model_copy(update={"device": params.device.model_copy(update={"numerics_variant": variant})})


def train_once(params: Params, label: str, data_dir: Path | None = None, quiet: bool = False,
               out_dir: Path | None = None, stop_after: int | None = None) -> tuple:
    """(curve, record, source) of one ordinary train-stage run, in out_dir (kept, with its fingerprints) or a
    temporary folder. Variants change process-wide switches (threads, fused attention); the thread count is
    restored afterwards and the train stage sets the others afresh at the start of every run."""
    import torch

    threads = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory(prefix="baseline-run-") as tmp:
            folder = out_dir or Path(tmp)
            curve_path, record_path = run_training(params, folder, data_dir=data_dir or PREPARED_DIR, quiet=quiet,
                                                   stop_after=stop_after)
            curve, record = read_run(curve_path, record_path)
    finally:
        torch.set_num_threads(threads)
    return curve, record, f"baseline record, {label} (MLflow run {record.get('mlflow_run_id') or 'untracked'})"


def params_precision(params: Params) -> str:
    """The precision policy params ask for (the run records what torch really had on: cait/determinism.py)."""
    if params.train.amp:
        return params.train.amp
    tf32 = (not params.device.deterministic) if params.device.tf32 is None else params.device.tf32
    return "tf32" if tf32 else "fp32"
