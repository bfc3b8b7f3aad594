"""Trainer overhead: cait.train.train's steps/s against a bare PyTorch + timm loop, side by side.

Both train the default profile's model and batch (params.yaml: model, train.batch_size) on the same
in-memory images, under the same numerics settings (device.deterministic), in alternating rounds so
that a machine's changing load hits both alike. A third loop, the bare one without the deterministic
settings, shows what those settings cost. The trainer's data path is the real one (keyed
sampler, collate with per-sample hashing: in the loader processes, or with none in a thread beside the
step, whose wait the loop's steps record), and each step's row is kept and logged to MLflow (a local
SQLite store, params.yaml's tracking settings, system metrics included) as the train stage does; the
curve CSV is written after the run, outside the timed steps (the default profile writes no
checkpoints: train.checkpoint_every 0). Only the JPEG decoding is left out of both.

The params file's device (device.type: cpu or cuda), precision (train.amp) and loader processes
(train.num_workers, with pinned memory on CUDA as the train stage) apply to both loops: the images sit
in CPU memory and each step's batch is copied to the device, by the bare loop directly, by the trainer
through its loader.

  python benchmarks/bench_trainer.py [--steps 20] [--rounds 3] [--params params.yaml] [--img-size 224 --batch-size 8]
                                     [--workers 0 2] [--no-loose] [--json out.json]

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


def hash_cost(images, targets, repeats: int = 3) -> dict:
    """The per-sample batch hashing of one collated batch, as the collate did it before issue 28 (each
    sample's bytes copied out, then BLAKE2b) and as it does now (BLAKE2b over the bytes in place): the
    best of `repeats` wall times, GB/s, and the CPU time of the current way. Both give the same values."""
    import hashlib

    import numpy as np

    from cait.data import hash_samples

    def copied_then_hashed():  # the code the batch_hash column was written with until issue 28
        out = []
        for i in range(len(images)):
            h = hashlib.blake2b(digest_size=8)
            for a in (images[i].numpy(), targets[i].numpy()):
                h.update(str(a.dtype).encode())
                h.update(np.ascontiguousarray(a).tobytes())
            value = int(h.hexdigest(), 16)
            out.append(value - (1 << 64) if value >= 1 << 63 else value)
        return out

    def best(fn):
        times, cpu = [], []
        for _ in range(repeats):
            t, c = time.perf_counter(), time.thread_time()
            value = fn()
            times.append(time.perf_counter() - t)
            cpu.append(time.thread_time() - c)
        return min(times), min(cpu), value

    nbytes = images.numel() * images.element_size()
    before_s, _, before = best(copied_then_hashed)
    after_s, after_cpu_s, after = best(lambda: hash_samples(images, targets).tolist())
    if before != after:
        raise RuntimeError("the batch hash changed meaning: the current hashes differ from the recorded definition")
    return {"bytes": nbytes, "before_s": before_s, "after_s": after_s, "after_cpu_s": after_cpu_s,
            "before_gb_s": nbytes / before_s / 1e9, "after_gb_s": nbytes / after_s / 1e9}


def measure(params, steps: int = 20, warmup: int = 3, rounds: int = 3, images: int = 512,
            img_size: int | None = None, batch_size: int | None = None, workers=None, loose: bool = True,
            log=print) -> dict:
    """Steps/s of the bare loop and of the trainer, side by side in alternating rounds; medians and their ratio.

    `img_size` and `batch_size` override the profile's (cait_XXS24_224 at 224 on CPU needs a small batch).
    `workers`: the trainer's loader process counts, each a trainer loop of every round (default: the
    profile's train.num_workers); the top-level figures are the first count's, `by_workers` has each.
    `loose=False` skips the bare loop without the deterministic settings. Each round also measures the
    batch hashing of one batch (`hash_cost`), and each trainer step's wait for its hashing thread."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from cait.data import Batch, CollateBatch, StepBatchSampler
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

    class TimedBatch(Batch):  # times the loop's wait for the hashing thread (a thread beside the step)
        @property
        def sample_hashes(self):
            start = time.perf_counter()
            value = Batch.sample_hashes.fget(self)
            waits.append(time.perf_counter() - start)
            return value

    def trainer(n: int, num_workers: int) -> float:
        model = fresh_model()
        total = warmup + n
        run_cfg = cfg.model_copy(update={"steps": total, "warmup_steps": min(cfg.warmup_steps or 0, total - 1)})
        stamps: list[float] = []

        def make_loader(start_step):
            sampler = StepBatchSampler(images_n, cfg.batch_size, total, cfg.seed, start_step=start_step)
            loader = DataLoader(InMemory(), batch_sampler=sampler, collate_fn=CollateBatch(), num_workers=num_workers,
                                pin_memory=device.type == "cuda")
            return (TimedBatch(b.images, b.targets, b.step, b.positions, b.hashes) for b in loader)

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
        del waits[:len(waits) - n]  # the timed steps' waits only
        timed_waits.extend(waits)
        waits.clear()
        return n / (stamps[-1] - stamps[warmup - 1])

    workers = tuple(workers) if workers is not None else (cfg.num_workers,)
    waits: list[float] = []
    timed_waits: list[float] = []
    bare, loose_rates, hashing = [], [], []
    ours: dict[int, list[float]] = {w: [] for w in workers}
    for r in range(rounds):
        configure_numerics(device.type, params.device.deterministic)
        bare.append(bare_loop(steps))
        for w in workers:
            ours[w].append(trainer(steps, w))
        hashing.append(hash_cost(pixels[:cfg.batch_size], labels[:cfg.batch_size]))
        if not loose:
            pass
        elif params.device.deterministic:  # for information: what the deterministic settings cost
            configure_numerics(device.type, False)
            loose_rates.append(bare_loop(steps))
        else:  # the bare loop already ran without them
            loose_rates.append(bare[-1])
        log(f"round {r}: bare {bare[-1]:.3f} steps/s, " + ", ".join(
            f"trainer ({w} loader processes) {ours[w][-1]:.3f} steps/s, ratio {ours[w][-1] / bare[-1]:.3f}"
            for w in workers) + (f"; bare without deterministic numerics {loose_rates[-1]:.3f} steps/s" if loose_rates else "")
            + f"; hashing a batch {hashing[-1]['before_s'] * 1e3:.1f} -> {hashing[-1]['after_s'] * 1e3:.1f} ms")
    configure_numerics(device.type, params.device.deterministic)
    by_workers = {w: {"trainer_steps_per_s": statistics.median(ours[w]),
                      "ratio": statistics.median(o / b for o, b in zip(ours[w], bare)),
                      "ratios": [o / b for o, b in zip(ours[w], bare)]} for w in workers}
    first = workers[0]
    hash_figures = {k: statistics.median(h[k] for h in hashing) for k in hashing[0]}
    step_s = 1 / by_workers[first]["trainer_steps_per_s"]
    hash_figures.update({"share_of_step": hash_figures["after_cpu_s"] / step_s,
                         "wait_mean_s": statistics.fmean(timed_waits) if timed_waits else 0.0,
                         "wait_max_s": max(timed_waits, default=0.0)})
    hash_figures["wait_share_of_step"] = hash_figures["wait_mean_s"] / step_s
    return {"model": params.model.name, "img_size": img_size, "batch_size": cfg.batch_size,
            "device": device.type, "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                                                   else device.type),
            "amp": cfg.amp or "fp32", "num_workers": first, "steps": steps, "warmup": warmup,
            "rounds": rounds, "images_per_s": by_workers[first]["trainer_steps_per_s"] * cfg.batch_size,
            "bare_images_per_s": statistics.median(bare) * cfg.batch_size,
            "threads": torch.get_num_threads(), "deterministic": params.device.deterministic,
            "bare_steps_per_s": statistics.median(bare), "trainer_steps_per_s": by_workers[first]["trainer_steps_per_s"],
            "loose_steps_per_s": statistics.median(loose_rates) if loose_rates else float("nan"),
            "ratio": by_workers[first]["ratio"], "by_workers": by_workers, "hash": hash_figures}


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
    p.add_argument("--workers", type=int, nargs="+", help="the trainer's loader process counts, each measured "
                   "every round (default: train.num_workers)")
    p.add_argument("--no-loose", action="store_true", help="skip the bare loop without deterministic numerics")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()
    r = measure(load_params(args.params), args.steps, args.warmup, args.rounds, args.images,
                img_size=args.img_size, batch_size=args.batch_size, workers=args.workers, loose=not args.no_loose,
                log=lambda line: print(line, flush=True))
    print(f"model {r['model']} {r['img_size']}px, batch {r['batch_size']}, threads {r['threads']}, "
          f"deterministic {r['deterministic']}: bare {r['bare_steps_per_s']:.3f} steps/s, trainer "
          f"{r['trainer_steps_per_s']:.3f} steps/s; median ratio {r['ratio']:.3f} (target >= {TARGET}); bare loop "
          f"without deterministic numerics {r['loose_steps_per_s']:.3f} steps/s")
    print(f"{r['device']} ({r['device_name']}), {r['amp']}, {r['num_workers']} loader process(es): trainer "
          f"{r['images_per_s']:.1f} images/s, bare loop {r['bare_images_per_s']:.1f} images/s")
    for w, figures in r["by_workers"].items():
        print(f"{w} loader process(es): trainer / bare {figures['ratio']:.3f} (rounds "
              f"{', '.join(f'{x:.3f}' for x in figures['ratios'])})")
    h = r["hash"]
    print(f"batch hashing, {h['bytes'] / 1e6:.1f} MB: {h['before_gb_s']:.2f} GB/s before, {h['after_gb_s']:.2f} GB/s "
          f"now; {h['after_cpu_s'] * 1e3:.1f} ms CPU = {h['share_of_step']:.2%} of a step; the loop waited "
          f"{h['wait_mean_s'] * 1e3:.2f} ms a step for it (max {h['wait_max_s'] * 1e3:.2f})")
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
