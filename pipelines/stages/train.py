"""train stage: a short CaiT run of train.steps steps on the chosen device, tracked in MLflow.

Outputs: reports/<profile>/curve.csv (step, loss, lr, batch_hash), reports/<profile>/train.json
(environment, numerics settings, params hash, data manifest hash, the curve's SHA-256), beside them
run.json and timing.csv (MLflow ids, date, wall time, throughput, git commit, host; per-step samples/s:
what differs between two runs of the same curve, so not DVC outputs) and reports/<profile>/checkpoints/ (when train.checkpoint_every is set, on SIGTERM, each epoch in
full training mode). A run that fails or is stopped keeps the steps it trained in curve.partial.csv
(not a DVC output): curve.csv is only ever a finished run's curve. `--resume` continues from checkpoints/last.pt. Runs as one process or under torchrun.
Prints one ModelZoo-style (tcap_dllogger) line per step (pipelines/logs.py, which also reads them back),
so existing ModelZoo tooling reads our runs. With data.shards the run reads the prepare stage's
pre-decoded pixels (no JPEG decoded), and their hash goes into the record.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from cait.errors import ConfigError, HarnessError
from cait.files import check_writable
from pipelines import cli
from pipelines.curves import write_curve_csv
from pipelines.layout import (CHECKPOINTS, CURVE, FINGERPRINTS, PARTIAL_CURVE, PREPARED_DIR, RECORD, SHARDS_DIR,
                              run_dir)
from pipelines.logs import dllogger_line
from pipelines.params import Params, load_params
from pipelines.progress import Progress
from pipelines.provenance import file_sha256, git_commit, write_run_record
from pipelines.review import run_name
from pipelines.tracking import RunLogger


def run_training(params: Params, out_dir: Path, *, data_dir: Path = PREPARED_DIR,
                 resume: bool = False, quiet: bool = False, stop_after: int | None = None) -> tuple[Path, Path]:
    """Train and write curve.csv, train.json and checkpoints/ into out_dir; returns the first two paths.

    Works as one process or as one rank of a torchrun/SLURM job (rank 0 alone writes files and MLflow).
    `resume` continues from out_dir/checkpoints/last.pt, which must come from a run with the same params.
    On a terminal a progress bar runs under the per-step lines; off one (CI) a progress line every few
    seconds; `quiet` leaves only the closing summary. Layer fingerprints (train.fingerprints) go to
    fingerprints.npz beside the curve. `stop_after` ends the run after that step (localize's replay).
    """
    import torch

    from cait.checkpoint import LAST, CheckpointError, load_checkpoint
    from cait.data import eval_loader, train_loader
    from cait.manifest import read_manifest
    from cait.determinism import configure_numerics
    from cait.devices import describe_device, resolve_device
    from cait.distributed import init_distributed, shutdown
    from cait.fingerprints import FingerprintRecorder, resolve_steps
    from cait.fingerprints import save as save_fingerprints
    from cait.models import build_model
    from cait.portbugs import RunPatch
    from cait.train import CheckpointPlan, train

    cfg = params.train
    ctx = init_distributed(params.device.type, params.device.dist_backend, params.device.dist_timeout_s)
    try:
        if ctx.is_main:
            check_writable(out_dir)  # before any work: a run whose curve cannot be written is not started
        device = resolve_device(params.device.type, ctx.local_rank if ctx.enabled else params.device.index)
        if params.device.threads:
            torch.set_num_threads(params.device.threads)
        numerics = configure_numerics(device.type, params.device.deterministic)  # before the model is built
        patch = RunPatch(params.device.numerics_variant, params.device.port_bug)
        numerics.update(patch.configure(device.type))  # a numerics variant's switches, before the model is built
        manifest = read_manifest(data_dir)
        img_size = params.model.resolved_img_size
        num_classes = params.model.num_classes or len(manifest.classes)
        if num_classes < len(manifest.classes):
            raise ConfigError(f"model.num_classes {num_classes} is smaller than the {len(manifest.classes)} classes "
                              f"of the data; raise it or set it to null")
        global_batch = cfg.batch_size * ctx.world_size
        steps_per_epoch = max(1, len(manifest.splits["train"]) // global_batch)
        checkpoint_dir = out_dir / CHECKPOINTS
        meta = {"model": params.model.name, "world_size": ctx.world_size, "global_batch": global_batch,
                "data_manifest_hash": manifest.hash}
        resume_state = None
        if resume:
            resume_state = load_checkpoint(checkpoint_dir / LAST, params.curve_hash())
            saved = resume_state.get("meta", {})
            for key in ("world_size", "data_manifest_hash"):
                if saved.get(key) != meta[key]:
                    raise CheckpointError(f"{checkpoint_dir / LAST}: written with {key} {saved.get(key)!r}, this "
                                          f"run has {meta[key]!r}; resume under the same conditions or start fresh")
        shards_dir = data_dir / SHARDS_DIR.relative_to(PREPARED_DIR) if params.data.shards else None
        pixels_hash = ""
        if shards_dir is not None:
            from cait.shards import verify_shard

            pixels_hash = verify_shard(shards_dir, "train")  # what is read, checked against meta.json
        environment = describe_device(device)
        commit = git_commit()

        tracking = params.tracking if ctx.is_main else params.tracking.model_copy(update={"enabled": False})
        logger = RunLogger(tracking)
        resumed = f" · resumed at step {resume_state['step']}" if resume_state else ""
        logger.start(run_name=run_name(params.profile, device.type, suffix=resumed), params=params.flat(),
                     tags={"profile": params.profile, "stage": "train", "model": params.model.name,
                           "git_commit": commit, "mlflow.source.git.commit": commit.removesuffix("-dirty"),
                           "data_manifest_hash": manifest.hash, "params_hash": params.curve_hash(),
                           "world_size": ctx.world_size, "dist_backend": ctx.backend or "none",
                           "numerics_variant": params.device.numerics_variant or "none",
                           "port_bug": params.device.port_bug or "none",
                           **{f"numerics.{k}": v for k, v in numerics.items()},
                           **{f"env.{k}": v for k, v in environment.items() if v not in ("", None)}})
        logger.start_system_metrics(params.tracking.system_metrics_every_s)

        torch.manual_seed(cfg.seed)  # the weights come from the CPU generator: the same on every device
        model = build_model(params.model.name, img_size=img_size, patch_size=params.model.patch_size,
                            num_classes=num_classes, drop_path=params.model.drop_path)

        def make_loader(start_step: int):
            total = cfg.total_steps(steps_per_epoch)
            return train_loader(manifest, img_size=img_size, batch_size=cfg.batch_size, steps=total, seed=cfg.seed,
                                num_workers=cfg.num_workers, augment=cfg.augment, mixup=cfg.mixup,
                                num_classes=num_classes, smoothing=cfg.label_smoothing, rank=ctx.rank,
                                world_size=ctx.world_size, repeats=cfg.repeated_aug if ctx.enabled else 1,
                                start_step=start_step, pin_memory=device.type == "cuda", shards_dir=shards_dir)

        def make_eval_loader():
            return eval_loader(manifest, img_size=img_size, batch_size=cfg.batch_size, crop_ratio=cfg.eval_crop_ratio,
                               num_workers=cfg.num_workers, rank=ctx.rank, world_size=ctx.world_size)

        rows: list[dict] = list(resume_state["rows"]) if resume_state else []
        total_steps = cfg.total_steps(steps_per_epoch)
        progress = Progress(total_steps, f"train {params.profile} on {device.type}", quiet=quiet or not ctx.is_main)
        progress.update(len(rows))

        def on_step(row: dict) -> None:
            rows.append(row)
            progress.write(dllogger_line(row, epoch=row["step"] // steps_per_epoch, rank=ctx.rank))
            progress.update(1, loss=f"{row['loss']:.4f}", ips=f"{row['samples_per_s']:.1f}")
            logger.log_step(row)

        def on_epoch(metrics: dict) -> None:
            progress.write(f"Epoch[{metrics['epoch']}]: val_loss {metrics['val_loss']:.4f} acc1 {metrics['top1']:.2f} "
                           f"acc5 {metrics['top5']:.2f} ({metrics['val_images']} images)")
            logger.log_metrics({k: metrics[k] for k in ("val_loss", "top1", "top5")}, step=metrics["epoch"])
            logger.flush()

        curve_path, record_path, partial_path = out_dir / CURVE, out_dir / RECORD, out_dir / PARTIAL_CURVE
        plan = CheckpointPlan(checkpoint_dir, params.curve_hash(), meta)
        recorder = FingerprintRecorder(resolve_steps(cfg.fingerprints.steps, total_steps),
                                       sketch_dim=cfg.fingerprints.sketch_dim,
                                       whole_tensors=cfg.fingerprints.whole_tensors)
        try:
            summary = train(model, make_loader, device, cfg, steps_per_epoch=steps_per_epoch, ctx=ctx,
                            checkpoints=plan, resume=resume_state, make_eval_loader=make_eval_loader,
                            on_step=on_step, on_epoch=on_epoch, patch=patch, fingerprints=recorder,
                            stop_after=stop_after)
        except BaseException:
            progress.close()
            if ctx.is_main and rows:
                # keep every step already trained, beside the DVC output, never over it: curve.csv is only
                # ever a finished run's curve (a resume continues from the checkpoints, not from this file)
                try:
                    write_curve_csv(partial_path, rows)
                    print(f"train: interrupted after {len(rows)} step(s); partial curve kept in {partial_path}",
                          file=sys.stderr)
                except HarnessError as exc:  # the original error matters more
                    print(f"train: partial curve not kept: {exc}", file=sys.stderr)
            if ctx.is_main:
                try:
                    logger.finish("FAILED")
                except Exception:  # the original error matters more than the tracking one
                    pass
            raise
        progress.close()
        if not ctx.is_main:
            return curve_path, record_path
        write_curve_csv(curve_path, rows)
        partial_path.unlink(missing_ok=True)
        fingerprint_path = out_dir / FINGERPRINTS
        save_fingerprints(fingerprint_path, recorder.fingerprints({
            "profile": params.profile, "model": params.model.name, "params_hash": params.curve_hash(),
            "curve_params": params.curve_defining(), "world_size": ctx.world_size, "global_batch": global_batch,
            "device": device.type, "device_name": environment.get("device_name", ""),
            "torch": environment.get("torch", ""), "numerics_variant": params.device.numerics_variant,
            "port_bug": params.device.port_bug, "resumed_from_step": summary.resumed_from}))
        record = {
            "profile": params.profile,
            "mlflow_run_id": logger.run_id,
            "mlflow_parent_run_id": logger.parent_run_id,
            "mlflow_experiment_id": logger.experiment_id,
            "tracking_uri": logger.uri,
            "environment": environment,
            "numerics": numerics,
            "numerics_variant": params.device.numerics_variant,  # null: the device's own numerics
            "port_bug": params.device.port_bug,  # a simulated port bug: never a baseline
            "world_size": ctx.world_size,
            "global_batch": global_batch,
            "git_commit": commit,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "params_hash": params.curve_hash(),
            "curve_params": params.curve_defining(),
            "data_manifest_hash": manifest.hash,
            "data_source": manifest.source,
            "data_input": "shards" if shards_dir is not None else "jpeg",
            "data_pixels_hash": pixels_hash,  # sha256 of the train shard's pixels: the same on every device
            "steps_done": summary.steps_done,  # the curve's rows; compare refuses a curve of another length
            "curve_sha256": file_sha256(curve_path),  # ties the record to these exact bytes (a cut curve is refused)
            "fingerprints_sha256": file_sha256(fingerprint_path),  # the layer fingerprints localize reads
            "resumed_from_step": summary.resumed_from,
            "stopped": summary.stopped,
            "wall_s": summary.wall_s,
            "mean_samples_per_s": sum(r["samples_per_s"] for r in rows[1:]) / max(1, len(rows) - 1),
            "epochs": summary.epochs,
            "best_top1": summary.best_top1,
        }
        sidecars = write_run_record(record_path, record, rows)  # timing.csv, run.json, then train.json
        logger.log_metrics({"wall_s": summary.wall_s, "final_loss": rows[-1]["loss"] if rows else float("nan")})
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
    finally:
        shutdown(ctx)


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--out-dir", help="where to write curve.csv and train.json (default: reports/<profile>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out-dir>/checkpoints/last.pt (written with the same params)")
    args = p.parse_args(argv)
    params = load_params(args.params)
    run_training(params, Path(args.out_dir) if args.out_dir else run_dir(params.profile), resume=args.resume,
                 quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
