"""CPU efficiency: achieved training FLOP/s over this machine's measured fp32 matmul peak.

The model's FLOPs for one training step (forward + backward, the batch of the profile) are counted by
torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions and attention; elementwise ops are not
counted, so the figure is a slight underestimate of the work done). Multiplied by the trainer's steps/s
(benchmarks/bench_trainer.py, same model, batch and resolution) it gives the achieved FLOP/s; the peak
is the best of several fp32 square matmuls at torch's thread count.

  python benchmarks/bench_efficiency.py [--params params.yaml] [--img-size 224 --batch-size 8] [--steps 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def matmul_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an fp32 size x size matmul at torch's current thread count."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up: thread pool, allocator
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def training_flops_per_step(params, img_size: int | None = None, batch_size: int | None = None) -> float:
    """FLOPs of one forward + backward of the profile's model on one batch (counted, not estimated)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from cait.models import build_model

    img_size = img_size or params.model.resolved_img_size
    batch = batch_size or params.train.batch_size
    num_classes = params.model.num_classes or params.data.synthetic.pattern.num_classes
    model = build_model(params.model.name, img_size=img_size, patch_size=params.model.patch_size,
                        num_classes=num_classes, drop_path=params.model.drop_path).train()
    x = torch.randn(batch, 3, img_size, img_size)
    y = torch.randint(0, num_classes, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return float(counter.get_total_flops())


def main() -> int:
    from benchmarks.bench_trainer import measure
    from pipelines.params import load_params

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--img-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    params = load_params(args.params)
    flops = training_flops_per_step(params, args.img_size, args.batch_size)
    rates = measure(params, steps=args.steps, warmup=2, rounds=1, img_size=args.img_size, batch_size=args.batch_size)
    peak = matmul_peak_flops()
    achieved = flops * rates["trainer_steps_per_s"]
    loose = flops * rates["loose_steps_per_s"]
    print(f"{rates['model']} {rates['img_size']}px batch {rates['batch_size']}: {flops / 1e9:.1f} GFLOP/step; "
          f"trainer {achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.1%} of the {peak / 1e9:.1f} GFLOP/s fp32 matmul "
          f"peak ({rates['threads']} threads); bare loop without deterministic numerics {loose / peak:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
