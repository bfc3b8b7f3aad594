"""Loader benchmark: is the data side fast enough for the trainer, on the default profile?

Measures in one run, with params.yaml's settings:
  - the integrity scan's rate over the prepared images (images/s, every file decoded);
  - the training loader's samples/s from the shards and from the JPEG folders (same batches, same
    sampler, train.num_workers workers, no model);
  - the trainer's consumption: samples/s of train steps on batches already in memory.
Target: the loader delivers at least 3x what the trainer consumes, from shards.

  python benchmarks/bench_loader.py [--params params.yaml] [--steps 20] [--out reports/bench/loader.json]

Needs the prepare stage's output (dvc repro prepare). Exit status 0 when the target is met, 1 when not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cait.config import ExpectedCounts, ImageNetConfig  # noqa: E402
from cait.data import train_loader  # noqa: E402
from cait.manifest import read_manifest  # noqa: E402
from pipelines import cli  # noqa: E402
from pipelines.layout import PREPARED_DIR, SHARDS_DIR  # noqa: E402
from pipelines.params import load_params  # noqa: E402

TARGET = 3.0


def loader_rate(manifest, params, img_size: int, shards_dir) -> float:
    """samples/s of a full pass of the run's loader (train.steps batches), timed from the first request."""
    loader = train_loader(manifest, img_size=img_size, batch_size=params.train.batch_size, steps=params.train.steps,
                          seed=params.train.seed, num_workers=params.train.num_workers, shards_dir=shards_dir)
    start = time.perf_counter()
    samples = sum(len(batch.targets) for batch in loader)
    return samples / (time.perf_counter() - start)


def trainer_rate(manifest, params, img_size: int, steps: int) -> float:
    """samples/s of the trainer (cait.train.train) on batches already in memory; the first step, with its
    one-off costs, not counted."""
    import torch

    from cait.devices import resolve_device
    from cait.models import build_model
    from cait.train import train

    device = resolve_device(params.device.type, params.device.index)
    if params.device.threads:
        torch.set_num_threads(params.device.threads)
    cfg = params.train
    loader = train_loader(manifest, img_size=img_size, batch_size=cfg.batch_size, steps=steps + 1,
                          seed=cfg.seed, num_workers=0, shards_dir=SHARDS_DIR)
    batches = list(loader)
    torch.manual_seed(cfg.seed)
    model = build_model(params.model.name, img_size=img_size, patch_size=params.model.patch_size,
                        num_classes=params.model.num_classes or len(manifest.classes), drop_path=params.model.drop_path)
    stamps: list[float] = []
    run_cfg = cfg.model_copy(update={"steps": steps + 1, "warmup_steps": min(cfg.warmup_steps or 0, steps)})
    train(model, lambda start: batches[start:], device, run_cfg,
          steps_per_epoch=max(1, len(manifest.splits["train"]) // cfg.batch_size),
          on_step=lambda row: stamps.append(time.perf_counter()))
    return cfg.batch_size * steps / (stamps[-1] - stamps[0])


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="train steps timed for the trainer's rate (default 20)")
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    params = load_params(args.params)
    from cait.imagenet import scan_imagenet

    img_size = params.model.resolved_img_size
    manifest = read_manifest(PREPARED_DIR)
    if params.data.source == "imagenet":
        root, cfg = params.data.path, params.data.imagenet
    else:  # the synthetic images are in the ImageNet layout: scan them as ImageNet
        root = PREPARED_DIR
        cfg = ImageNetConfig(expected=ExpectedCounts(classes=None, train=None, val=None))
    _, report = scan_imagenet(root, cfg, workers=params.data.workers, progress=False)
    figures = {
        "profile": params.profile,
        "scan_images": report.images,
        "scan_workers": report.workers,
        "scan_images_per_s": report.images / report.seconds,
        "loader_shards_samples_per_s": loader_rate(manifest, params, img_size, SHARDS_DIR),
        "loader_jpeg_samples_per_s": loader_rate(manifest, params, img_size, None),
        "trainer_samples_per_s": trainer_rate(manifest, params, img_size, args.steps),
        "loader_workers": params.train.num_workers,
        "batch_size": params.train.batch_size,
        "target_ratio": TARGET,
    }
    figures["shards_over_trainer"] = figures["loader_shards_samples_per_s"] / figures["trainer_samples_per_s"]
    figures["jpeg_over_trainer"] = figures["loader_jpeg_samples_per_s"] / figures["trainer_samples_per_s"]
    met = figures["shards_over_trainer"] >= TARGET
    print(f"scan:            {figures['scan_images_per_s']:10.0f} images/s ({report.images} images, "
          f"{report.workers} worker(s), every file decoded)")
    print(f"loader, shards:  {figures['loader_shards_samples_per_s']:10.0f} samples/s "
          f"({figures['shards_over_trainer']:.1f}x the trainer)")
    print(f"loader, JPEGs:   {figures['loader_jpeg_samples_per_s']:10.0f} samples/s "
          f"({figures['jpeg_over_trainer']:.1f}x the trainer)")
    print(f"trainer:         {figures['trainer_samples_per_s']:10.1f} samples/s ({params.model.name}, {img_size}px, "
          f"batch {params.train.batch_size}, {params.device.type})")
    print(f"target: shards >= {TARGET:.0f}x the trainer: {'met' if met else 'NOT met'}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(cli.run(main))
