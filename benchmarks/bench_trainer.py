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
                                     [--workers 0 2] [--no-loose] [--isolate] [--json out.json]

`--isolate` runs each loop in a fresh process of its own, one after the other, and reports each one's peak
resident memory: at 224 px, batch 64 one fp32 step holds ~10 GB, and loops sharing one process kept their
predecessors' memory (two runs were killed for memory at 12-13.5 GB). Besides the wall-time ratio it gives
the ratio of the main process's CPU time per step and where the trainer's main thread spent time outside the
model's step (waiting for the batch, writing the row), which a loaded machine disturbs less.

Target (issue 7): trainer >= 0.98 x the bare loop's steps/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
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


def _data(params, images: int, img_size: int | None, batch_size: int | None):
    """What every loop shares: the train config, the in-memory images (the same in every process: seeded), the device."""
    import torch

    from cait.devices import resolve_device

    cfg = params.train
    if batch_size:
        cfg = cfg.model_copy(update={"batch_size": batch_size})
    images_n = max(images, 2 * cfg.batch_size)
    img_size = img_size or params.model.resolved_img_size
    num_classes = params.model.num_classes or params.data.synthetic.pattern.num_classes
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(images_n, 3, img_size, img_size, generator=generator)
    labels = torch.randint(0, num_classes, (images_n,), generator=generator)
    return cfg, images_n, img_size, num_classes, pixels, labels, resolve_device(params.device.type, params.device.index)


def run_loop(params, kind: str, *, workers: int = 0, steps: int = 20, warmup: int = 3, images: int = 512,
             img_size: int | None = None, batch_size: int | None = None) -> dict:
    """One timed loop in this process: `kind` "bare" (a bare PyTorch + timm loop under the params' numerics),
    "loose" (the same without the deterministic settings) or "trainer" (cait.train.train with `workers` loader
    processes). Returns its steps/s over the `steps` steps after `warmup`, the main process's CPU time per
    timed step (all its threads) and, for the trainer, where its main thread spent time outside the model's
    step (waiting for the batch, for the hashing thread, writing the row) and each step's wait for the hash."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from cait.data import Batch, CollateBatch, StepBatchSampler
    from cait.determinism import configure_numerics
    from cait.devices import synchronize
    from cait.fingerprints import FingerprintRecorder
    from cait.models import build_model
    from cait.train import autocast, param_groups, train
    from pipelines.curves import write_curve_csv
    from pipelines.tracking import RunLogger

    if params.device.threads:
        torch.set_num_threads(params.device.threads)
    configure_numerics(params.device.type, params.device.deterministic and kind != "loose")
    cfg, images_n, img_size, num_classes, pixels, labels, device = _data(params, images, img_size, batch_size)

    def fresh_model():
        torch.manual_seed(cfg.seed)
        return build_model(params.model.name, img_size=img_size, patch_size=params.model.patch_size,
                           num_classes=num_classes, drop_path=params.model.drop_path)

    if kind in ("bare", "loose"):
        model = fresh_model().to(device).train()
        optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, eps=cfg.opt_eps)
        order = torch.randperm(images_n, generator=torch.Generator().manual_seed(1))
        start = cpu = None
        for step in range(warmup + steps):
            if step == warmup:
                start, cpu = time.perf_counter(), time.process_time()
            idx = order[(step * cfg.batch_size) % (images_n - cfg.batch_size + 1):][:cfg.batch_size]
            images_, targets = pixels[idx].to(device, non_blocking=True), labels[idx].to(device, non_blocking=True)
            with autocast(device, cfg.amp):
                loss = F.cross_entropy(model(images_), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()
        synchronize(device)
        seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
        return {"kind": kind, "workers": None, "steps_per_s": steps / seconds, "cpu_per_step_s": cpu_s / steps}
    if kind != "trainer":
        raise ValueError(f"unknown loop {kind!r}")

    waits: list[float] = []  # per step: the wait for the hashing thread
    fetches: list[float] = []  # per step: the wait for the next batch (sampler, collate, loader processes)
    logging: list[float] = []  # per step: keeping the row and logging it to MLflow

    class TimedBatch(Batch):  # times the loop's wait for the hashing thread (a thread beside the step)
        @property
        def sample_hashes(self):
            start = time.perf_counter()
            value = Batch.sample_hashes.fget(self)
            waits.append(time.perf_counter() - start)
            return value

    model = fresh_model()
    total = warmup + steps
    run_cfg = cfg.model_copy(update={"steps": total, "warmup_steps": min(cfg.warmup_steps or 0, total - 1)})
    stamps: list[tuple[float, float]] = []

    def timed(loader):
        batches = iter(loader)
        while True:
            start = time.perf_counter()
            try:
                b = next(batches)
            except StopIteration:
                return
            fetches.append(time.perf_counter() - start)
            yield TimedBatch(b.images, b.targets, b.step, b.positions, b.hashes)

    def make_loader(start_step):
        sampler = StepBatchSampler(images_n, cfg.batch_size, total, cfg.seed, start_step=start_step)
        return timed(DataLoader(InMemory(pixels, labels), batch_sampler=sampler, collate_fn=CollateBatch(),
                                num_workers=workers, pin_memory=device.type == "cuda"))

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:  # the train stage's per-step work: keep the row, log it to MLflow
        tracking = params.tracking.model_copy(update={"uri": f"sqlite:///{tmp}/mlflow.db", "spool_dir": f"{tmp}/spool",
                                                      "experiment": "bench-trainer"})
        logger = RunLogger(tracking)
        logger.start("bench-trainer", params={}, tags={})
        logger.start_system_metrics(tracking.system_metrics_every_s)

        def on_step(row: dict) -> None:
            start = time.perf_counter()
            rows.append(row)
            logger.log_step(row)
            logging.append(time.perf_counter() - start)
            stamps.append((time.perf_counter(), time.process_time()))

        # layer fingerprints as the train stage records them, on a warm-up step: the timed steps are steps
        # without fingerprints, carrying only the recorder's per-step check (the target is about those)
        recorder = FingerprintRecorder([0], sketch_dim=cfg.fingerprints.sketch_dim)
        train(model, make_loader, device, run_cfg, steps_per_epoch=images_n // cfg.batch_size, on_step=on_step,
              fingerprints=recorder)
        write_curve_csv(Path(tmp) / "curve.csv", rows)
        logger.finish("FINISHED")
    (t0, c0), (t1, c1) = stamps[warmup - 1], stamps[-1]
    timed_steps = slice(warmup, None)  # the fetch, wait and row of the timed steps
    return {"kind": kind, "workers": workers, "steps_per_s": steps / (t1 - t0), "cpu_per_step_s": (c1 - c0) / steps,
            "waits": waits[timed_steps], "fetch_s": statistics.fmean(fetches[timed_steps]),
            "row_s": statistics.fmean(logging[timed_steps])}


class InMemory:
    """The images as a map-style dataset of SampleKeys (items as cait.data.ManifestDataset's: no decoding)."""

    def __init__(self, pixels, labels):
        self.pixels, self.labels = pixels, labels

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, key):
        return self.pixels[key.index], int(self.labels[key.index]), key.step, key.position


def loop_in_process(params, kind: str, **kwargs) -> dict:
    """run_loop in a fresh Python process (nothing kept from another loop: each model, optimizer and allocator
    starts empty), with that process's peak resident memory (its loader processes' peak as children_peak_rss_mib)."""
    spec = {"params": params.model_dump(mode="json"), "kind": kind, **kwargs}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--loop", json.dumps(spec)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {kind} loop ({kwargs.get('workers', 0)} loader processes) exited "
                           f"{done.returncode}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _loop_main(spec_json: str) -> int:
    import resource

    from pipelines.params import parse_params

    spec = json.loads(spec_json)
    params = parse_params(spec.pop("params"), "bench_trainer --loop")
    r = run_loop(params, spec.pop("kind"), **spec)
    r["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r["children_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(r))
    return 0


def measure(params, steps: int = 20, warmup: int = 3, rounds: int = 3, images: int = 512,
            img_size: int | None = None, batch_size: int | None = None, workers=None, loose: bool = True,
            isolate: bool = False, log=print) -> dict:
    """Steps/s of the bare loop and of the trainer, side by side in alternating rounds; medians and their ratio.

    `img_size` and `batch_size` override the profile's. `workers`: the trainer's loader process counts, each a
    trainer loop of every round (default: the profile's train.num_workers); the top-level figures are the first
    count's, `by_workers` has each. `loose=False` skips the bare loop without the deterministic settings.
    `isolate`: each loop in a fresh process of its own, one after the other (at 224 px, batch 64 one step holds
    ~10 GB: loops sharing a process kept their predecessors' memory), with each process's peak RSS. Each round
    also measures the batch hashing of one batch (`hash_cost`), and each trainer step's wait for its hashing thread."""
    import torch

    from cait.determinism import configure_numerics

    sizes = {"steps": steps, "warmup": warmup, "images": images, "img_size": img_size, "batch_size": batch_size}
    loop = (lambda kind, **kw: loop_in_process(params, kind, **sizes, **kw)) if isolate else \
        (lambda kind, **kw: run_loop(params, kind, **sizes, **kw))
    cfg, _, img_size, _, pixels, labels, device = _data(params, images, img_size, batch_size)
    batch = (pixels[:cfg.batch_size].clone(), labels[:cfg.batch_size].clone())
    del pixels, labels
    workers = tuple(workers) if workers is not None else (cfg.num_workers,)
    results: dict[str, list[dict]] = {"bare": [], "loose": [], **{f"trainer{w}": [] for w in workers}}
    hashing = []
    for r in range(rounds):
        results["bare"].append(loop("bare"))
        for w in workers:
            results[f"trainer{w}"].append(loop("trainer", workers=w))
        hashing.append(hash_cost(*batch))
        if not loose:
            pass
        elif params.device.deterministic:  # for information: what the deterministic settings cost
            results["loose"].append(loop("loose"))
        else:  # the bare loop already ran without them
            results["loose"].append(results["bare"][-1])
        bare = results["bare"][-1]["steps_per_s"]
        log(f"round {r}: bare {bare:.3f} steps/s, " + ", ".join(
            f"trainer ({w} loader processes) {results[f'trainer{w}'][-1]['steps_per_s']:.3f} steps/s, ratio "
            f"{results[f'trainer{w}'][-1]['steps_per_s'] / bare:.3f}" for w in workers)
            + (f"; bare without deterministic numerics {results['loose'][-1]['steps_per_s']:.3f} steps/s"
               if results["loose"] else "")
            + f"; hashing a batch {hashing[-1]['before_s'] * 1e3:.1f} -> {hashing[-1]['after_s'] * 1e3:.1f} ms"
            + ("; peak RSS " + ", ".join(f"{k} {v[-1]['peak_rss_mib']:.0f}" for k, v in results.items() if v)
               + " MiB" if isolate else ""))
    configure_numerics(device.type, params.device.deterministic)  # as it was (the in-process loops change it)

    def rates(kind):
        return [x["steps_per_s"] for x in results[kind]]

    bare = rates("bare")
    bare_cpu = statistics.median(x["cpu_per_step_s"] for x in results["bare"])
    by_workers = {}
    for w in workers:
        mine = results[f"trainer{w}"]
        cpu = statistics.median(x["cpu_per_step_s"] for x in mine)
        step_s = 1 / statistics.median(rates(f"trainer{w}"))
        by_workers[w] = {"trainer_steps_per_s": statistics.median(rates(f"trainer{w}")),
                         "ratio": statistics.median(o / b for o, b in zip(rates(f"trainer{w}"), bare)),
                         "ratios": [o / b for o, b in zip(rates(f"trainer{w}"), bare)],
                         "cpu_per_step_s": cpu, "cpu_ratio": bare_cpu / cpu,  # > 1: the trainer's step costs less
                         # the main thread's time outside the model's step, per step, as a share of a step
                         "fetch_share": statistics.median(x["fetch_s"] for x in mine) / step_s,
                         "row_share": statistics.median(x["row_s"] for x in mine) / step_s}
    first = workers[0]
    timed_waits = [s for x in results[f"trainer{first}"] for s in x["waits"]]
    hash_figures = {k: statistics.median(h[k] for h in hashing) for k in hashing[0]}
    step_s = 1 / by_workers[first]["trainer_steps_per_s"]
    hash_figures.update({"share_of_step": hash_figures["after_cpu_s"] / step_s,
                         "wait_mean_s": statistics.fmean(timed_waits) if timed_waits else 0.0,
                         "wait_max_s": max(timed_waits, default=0.0)})
    hash_figures["wait_share_of_step"] = hash_figures["wait_mean_s"] / step_s
    peak = ({k: max(x["peak_rss_mib"] for x in v) for k, v in results.items() if v} if isolate else {})
    peak_children = ({k: max(x["children_peak_rss_mib"] for x in v) for k, v in results.items() if v}
                     if isolate else {})
    return {"model": params.model.name, "img_size": img_size, "batch_size": cfg.batch_size,
            "device": device.type, "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                                                   else device.type),
            "amp": cfg.amp or "fp32", "num_workers": first, "steps": steps, "warmup": warmup,
            "rounds": rounds, "images_per_s": by_workers[first]["trainer_steps_per_s"] * cfg.batch_size,
            "bare_images_per_s": statistics.median(bare) * cfg.batch_size,
            "threads": params.device.threads or torch.get_num_threads(), "deterministic": params.device.deterministic,
            "bare_steps_per_s": statistics.median(bare), "bare_cpu_per_step_s": bare_cpu,
            "trainer_steps_per_s": by_workers[first]["trainer_steps_per_s"],
            "loose_steps_per_s": statistics.median(rates("loose")) if results["loose"] else float("nan"),
            "ratio": by_workers[first]["ratio"], "by_workers": by_workers, "hash": hash_figures,
            "isolated": isolate, "peak_rss_mib": peak, "loader_peak_rss_mib": peak_children}


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
    p.add_argument("--isolate", action="store_true", help="each loop in a fresh process of its own, one after the "
                   "other, with its peak resident memory (at 224 px, batch 64: ~10 GB a loop)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--loop", help=argparse.SUPPRESS)  # one loop, as loop_in_process runs it: a JSON spec
    args = p.parse_args()
    if args.loop:
        return _loop_main(args.loop)
    r = measure(load_params(args.params), args.steps, args.warmup, args.rounds, args.images,
                img_size=args.img_size, batch_size=args.batch_size, workers=args.workers, loose=not args.no_loose,
                isolate=args.isolate, log=lambda line: print(line, flush=True))
    print(f"model {r['model']} {r['img_size']}px, batch {r['batch_size']}, threads {r['threads']}, "
          f"deterministic {r['deterministic']}: bare {r['bare_steps_per_s']:.3f} steps/s, trainer "
          f"{r['trainer_steps_per_s']:.3f} steps/s; median ratio {r['ratio']:.3f} (target >= {TARGET}); bare loop "
          f"without deterministic numerics {r['loose_steps_per_s']:.3f} steps/s")
    print(f"{r['device']} ({r['device_name']}), {r['amp']}, {r['num_workers']} loader process(es): trainer "
          f"{r['images_per_s']:.1f} images/s, bare loop {r['bare_images_per_s']:.1f} images/s")
    for w, figures in r["by_workers"].items():
        print(f"{w} loader process(es): trainer / bare {figures['ratio']:.3f} (rounds "
              f"{', '.join(f'{x:.3f}' for x in figures['ratios'])}); by the main process's CPU time per step "
              f"{figures['cpu_ratio']:.3f} ({figures['cpu_per_step_s']:.2f} vs {r['bare_cpu_per_step_s']:.2f} s); "
              f"waiting for the batch {figures['fetch_share']:.2%} of a step, the row {figures['row_share']:.3%}")
    if r["isolated"]:
        print("peak RSS (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in r["peak_rss_mib"].items())
              + "; loader processes: " + ", ".join(f"{k} {v:.0f}" for k, v in r["loader_peak_rss_mib"].items()))
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
