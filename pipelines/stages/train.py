"""train stage: a short CaiT run of train.steps steps on the chosen device, tracked in MLflow.

Outputs: reports/<profile>/curve.csv (step, loss, lr, samples_per_s, elapsed_s) and
reports/<profile>/train.json (MLflow run id, environment, params hash, data manifest hash).
Prints one ModelZoo-style (tcap_dllogger) line per step (pipelines/logs.py, which also reads them back),
so existing ModelZoo tooling reads our runs.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from cait.errors import ConfigError
from pipelines import cli
from pipelines.curves import write_curve_csv
from pipelines.layout import CURVE, PREPARED_DIR, RECORD, SHARDS_DIR, run_dir
from pipelines.logs import dllogger_line
from pipelines.params import Params, load_params
from pipelines.progress import Progress
from pipelines.provenance import git_commit, write_record
from pipelines.tracking import RunLogger


def run_training(params: Params, out_dir: Path, quiet: bool = False) -> tuple[Path, Path]:
    """Train and write curve.csv and train.json into out_dir; returns their paths.

    On a terminal a progress bar runs under the per-step lines; off one (CI) a progress line every
    few seconds; `quiet` leaves only the closing summary."""
    import torch

    from cait.data import read_manifest, train_loader
    from cait.devices import describe_device, resolve_device
    from cait.models import build_model, get_variant

    device = resolve_device(params.device.type, params.device.index)  # fails before any work
    if params.device.threads:
        torch.set_num_threads(params.device.threads)
    manifest = read_manifest(PREPARED_DIR)
    variant = get_variant(params.model.name)
    img_size = params.model.img_size or variant.img_size
    num_classes = params.model.num_classes or len(manifest.classes)
    if num_classes < len(manifest.classes):
        raise ConfigError(f"model.num_classes {num_classes} is smaller than the {len(manifest.classes)} classes "
                        f"of the data; raise it or set it to null")
    environment = describe_device(device)
    commit = git_commit()

    logger = RunLogger(params.tracking)
    logger.start(run_name=f"{params.profile}-{device.type}", params=params.flat(),
                 tags={"profile": params.profile, "stage": "train", "model": params.model.name,
                       "git_commit": commit, "mlflow.source.git.commit": commit.removesuffix("-dirty"),
                       "data_manifest_hash": manifest.hash, "params_hash": params.curve_hash(),
                       **{f"env.{k}": v for k, v in environment.items()}})
    logger.start_system_metrics(params.tracking.system_metrics_every_s)

    torch.manual_seed(params.train.seed)  # the weights come from the CPU generator: the same on every device
    model = build_model(params.model.name, img_size=img_size, patch_size=params.model.patch_size,
                        num_classes=num_classes, drop_path=params.model.drop_path)
    shards_dir = SHARDS_DIR if params.data.shards else None
    loader = train_loader(manifest, img_size=img_size, batch_size=params.train.batch_size,
                          steps=params.train.steps, seed=params.train.seed, num_workers=params.train.num_workers,
                          shards_dir=shards_dir)
    pixels_hash = ""
    if shards_dir is not None:
        from cait.shards import read_shard_meta

        pixels_hash = read_shard_meta(shards_dir)["splits"]["train"]["pixels_sha256"]

    from cait.train import train_steps

    rows: list[dict] = []
    progress = Progress(params.train.steps, f"train {params.profile} on {device.type}", quiet=quiet)

    steps_per_epoch = max(1, len(manifest.splits["train"]) // params.train.batch_size)

    def on_step(row: dict) -> None:
        rows.append(row)
        progress.write(dllogger_line(row, epoch=row["step"] // steps_per_epoch))
        progress.update(1, loss=f"{row['loss']:.4f}", ips=f"{row['samples_per_s']:.1f}")
        logger.log_step(row)

    curve_path, record_path = out_dir / CURVE, out_dir / RECORD
    try:
        summary = train_steps(model, loader, device, params.train, on_step=on_step)
    except BaseException:
        progress.close()
        write_curve_csv(curve_path, rows)  # keep every step already trained
        print(f"train: interrupted after {len(rows)} step(s); partial curve kept in {curve_path}", file=sys.stderr)
        try:
            logger.finish("FAILED")
        except Exception:  # the original error matters more than the tracking one
            pass
        raise
    progress.close()
    write_curve_csv(curve_path, rows)
    record = {
        "profile": params.profile,
        "mlflow_run_id": logger.run_id,
        "mlflow_parent_run_id": logger.parent_run_id,
        "mlflow_experiment_id": logger.experiment_id,
        "tracking_uri": logger.uri,
        "environment": environment,
        "git_commit": commit,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "params_hash": params.curve_hash(),
        "curve_params": params.curve_defining(),
        "data_manifest_hash": manifest.hash,
        "data_source": manifest.source,
        "data_input": "shards" if shards_dir is not None else "jpeg",
        "data_pixels_hash": pixels_hash,  # sha256 of the train shard's pixels: the same on every device
        "steps_done": summary.steps_done,
        "stopped": summary.stopped,
        "wall_s": summary.wall_s,
        "mean_samples_per_s": sum(r["samples_per_s"] for r in rows[1:]) / max(1, len(rows) - 1),
    }
    write_record(record_path, record)
    logger.log_metrics({"wall_s": summary.wall_s, "final_loss": rows[-1]["loss"] if rows else float("nan")})
    logger.log_artifact(curve_path)
    logger.log_artifact(record_path)
    logger.finish("FINISHED")
    done = f"stopped early: {summary.stopped}" if summary.stopped else "done"
    print(f"train: {summary.steps_done} steps on {environment['device_name']} in {summary.wall_s:.1f} s ({done}); "
          f"loss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}; curve {curve_path}; MLflow run {logger.run_id or '-'}")
    return curve_path, record_path


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--out-dir", help="where to write curve.csv and train.json (default: reports/<profile>)")
    args = p.parse_args(argv)
    params = load_params(args.params)
    run_training(params, Path(args.out_dir) if args.out_dir else run_dir(params.profile), quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
