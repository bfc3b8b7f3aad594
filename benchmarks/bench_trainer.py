"""Trainer overhead: cait.train.train's steps/s against a bare PyTorch + timm loop, side by side.

Both train the default profile's model and batch (params.yaml: model, train.batch_size) on the same
in-memory images, under the same numerics settings (device.deterministic), in alternating rounds so
that a machine's changing load hits both alike. A third loop, the bare one without the deterministic
settings, shows what those settings cost. The trainer's data path is the real one (keyed
sampler, collate with per-sample hashing), and each step's row is kept and logged to MLflow (a local
SQLite store, params.yaml's tracking settings, system metrics included) as the train stage does; the
curve CSV is written after the run, outside the timed steps (the default profile writes no
checkpoints: train.checkpoint_every 0). Only the JPEG decoding is left out of both.

The params file's device (device.type: cpu or cuda), precision (train.amp) and loader processes
(train.num_workers, with pinned memory on CUDA as the train stage) apply to both loops: the images sit
in CPU memory and each step's batch is copied to the device, by the bare loop directly, by the trainer
through its loader.

  python benchmarks/bench_trainer.py [--steps 20] [--rounds 3] [--params params.yaml] [--img-size 224 --batch-size 8]
                                     [--json out.json]

Target (issue 7): trainer >= 0.98 x the bare loop's steps/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET = 0.98


def measure(params, steps: int = 20, warmup: int = 3, rounds: int = 3, images: int = 512,
            img_size: int | None = None, batch_size: int | None = None, log=print) -> dict:
    """Steps/s of the bare loop and of the trainer, side by side in alternating rounds; medians and their ratio.

    `img_size` and `batch_size` override the profile's (cait_XXS24_224 at 224 on CPU needs a small batch)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from cait.data import CollateBatch, StepBatchSampler
    from cait.fingerprints import FingerprintRecorder
    from cait.determinism import configure_numerics
    from cait.devices import resolve_device, synchronize
    from cait.models import build_model
    from cait.train import autocast, param_groups, train
    from pipelines.curves import write_curve_csv
    from pipelines.tracking import RunLogger

    cfg = params.train
    if batch_size:
        cfg = cfg.model_copy(update={"batch_size": batch_size})
    images_n = max(images, 2 * cfg.batch_size)
    if params.device.threads:
        torch.set_num_threads(params.device.threads)
    img_size = img_size or params.model.resolved_img_size
    num_classes = params.model.num_classes or params.data.synthetic.pattern.num_classes
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(images_n, 3, img_size, img_size, generator=generator)
    labels = torch.randint(0, num_classes, (images_n,), generator=generator)
    device = resolve_device(params.device.type, params.device.index)

    def fresh_model():
        torch.manual_seed(cfg.seed)
        return build_model(params.model.name, img_size=img_size, patch_size=params.model.patch_size,
                           num_classes=num_classes, drop_path=params.model.drop_path)

    class InMemory(torch.utils.data.Dataset):
        def __len__(self):
            return images_n

        def __getitem__(self, key):
            return pixels[key.index], int(labels[key.index]), key.step, key.position

    def bare_loop(n: int) -> float:
        model = fresh_model().to(device).train()
        optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, eps=cfg.opt_eps)
        order = torch.randperm(images_n, generator=torch.Generator().manual_seed(1))
        start = None
        for step in range(warmup + n):
            if step == warmup:
                start = time.perf_counter()
            idx = order[(step * cfg.batch_size) % (images_n - cfg.batch_size + 1):][:cfg.batch_size]
            images, targets = pixels[idx].to(device, non_blocking=True), labels[idx].to(device, non_blocking=True)
            with autocast(device, cfg.amp):
                loss = F.cross_entropy(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()
        synchronize(device)
        return n / (time.perf_counter() - start)

    def trainer(n: int) -> float:
        model = fresh_model()
        total = warmup + n
        run_cfg = cfg.model_copy(update={"steps": total, "warmup_steps": min(cfg.warmup_steps or 0, total - 1)})
        stamps: list[float] = []

        def make_loader(start_step):
            sampler = StepBatchSampler(images_n, cfg.batch_size, total, cfg.seed, start_step=start_step)
            return DataLoader(InMemory(), batch_sampler=sampler, collate_fn=CollateBatch(), num_workers=cfg.num_workers,
                              pin_memory=device.type == "cuda")

        rows: list[dict] = []
        with tempfile.TemporaryDirectory() as tmp:  # the train stage's per-step work: keep the row, log it to MLflow
            tracking = params.tracking.model_copy(update={"uri": f"sqlite:///{tmp}/mlflow.db", "spool_dir": f"{tmp}/spool",
                                                          "experiment": "bench-trainer"})
            logger = RunLogger(tracking)
            logger.start("bench-trainer", params={}, tags={})
            logger.start_system_metrics(tracking.system_metrics_every_s)

            def on_step(row: dict) -> None:
                rows.append(row)
                logger.log_step(row)
                stamps.append(time.perf_counter())

            # layer fingerprints as the train stage records them, on a warm-up step: the timed steps are steps
            # without fingerprints, carrying only the recorder's per-step check (the target is about those)
            recorder = FingerprintRecorder([0], sketch_dim=cfg.fingerprints.sketch_dim)
            train(model, make_loader, device, run_cfg, steps_per_epoch=images_n // cfg.batch_size, on_step=on_step,
                  fingerprints=recorder)
            write_curve_csv(Path(tmp) / "curve.csv", rows)
            logger.finish("FINISHED")
        return n / (stamps[-1] - stamps[warmup - 1])

    bare, ours, loose = [], [], []
    for r in range(rounds):
        configure_numerics(device.type, params.device.deterministic)
        bare.append(bare_loop(steps))
        ours.append(trainer(steps))
        if params.device.deterministic:  # for information: what the deterministic settings cost
            configure_numerics(device.type, False)
            loose.append(bare_loop(steps))
        else:  # the bare loop already ran without them
            loose.append(bare[-1])
        log(f"round {r}: bare {bare[-1]:.3f} steps/s, trainer {ours[-1]:.3f} steps/s, ratio {ours[-1] / bare[-1]:.3f}; "
            f"bare without deterministic numerics {loose[-1]:.3f} steps/s")
    configure_numerics(device.type, params.device.deterministic)
    return {"model": params.model.name, "img_size": img_size, "batch_size": cfg.batch_size,
            "device": device.type, "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                                                   else device.type),
            "amp": cfg.amp or "fp32", "num_workers": cfg.num_workers, "steps": steps, "warmup": warmup,
            "rounds": rounds, "images_per_s": statistics.median(ours) * cfg.batch_size,
            "bare_images_per_s": statistics.median(bare) * cfg.batch_size,
            "threads": torch.get_num_threads(), "deterministic": params.device.deterministic,
            "bare_steps_per_s": statistics.median(bare), "trainer_steps_per_s": statistics.median(ours),
            "loose_steps_per_s": statistics.median(loose),
            "ratio": statistics.median(o / b for o, b in zip(ours, bare))}


def main() -> int:
    from pipelines.params import load_params

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--steps", type=int, default=20, help="measured steps per round and loop")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured steps before each measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--img-size", type=int, help="override model.img_size (e.g. 224)")
    p.add_argument("--batch-size", type=int, help="override train.batch_size")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()
    r = measure(load_params(args.params), args.steps, args.warmup, args.rounds, args.images,
                img_size=args.img_size, batch_size=args.batch_size, log=lambda line: print(line, flush=True))
    print(f"model {r['model']} {r['img_size']}px, batch {r['batch_size']}, threads {r['threads']}, "
          f"deterministic {r['deterministic']}: bare {r['bare_steps_per_s']:.3f} steps/s, trainer "
          f"{r['trainer_steps_per_s']:.3f} steps/s; median ratio {r['ratio']:.3f} (target >= {TARGET}); bare loop "
          f"without deterministic numerics {r['loose_steps_per_s']:.3f} steps/s")
    print(f"{r['device']} ({r['device_name']}), {r['amp']}, {r['num_workers']} loader process(es): trainer "
          f"{r['images_per_s']:.1f} images/s, bare loop {r['bare_images_per_s']:.1f} images/s")
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
