"""The short training run: a loop to read top to bottom.

It trains for a fixed number of steps and reports one row per step (step, loss, lr, samples/s,
elapsed) to a callback; it knows nothing about files, MLflow or baselines.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

from cait.config import TrainConfig
from cait.devices import synchronize


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up from 0 to `lr`, then cosine decay to `min_lr` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - 1 - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups as in DeiT: no weight decay on norms, biases, pos_embed, cls_token, LayerScale gammas."""
    no_decay_names = getattr(model, "no_weight_decay", lambda: set())()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name in no_decay_names or name.endswith(".gamma_1") or name.endswith(".gamma_2"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class RunSummary:
    steps_done: int
    wall_s: float
    stopped: str = ""  # why the run ended before cfg.steps, if it did
    rows: list[dict] = field(default_factory=list)


def train_steps(model, loader, device, cfg: TrainConfig, on_step: Callable[[dict], None] | None = None) -> RunSummary:
    """Train `model` on the batches of `loader`, one optimizer step per batch.

    The loss logged at step k is that of batch k under the weights before update k (as ModelZoo's
    logs do). A non-finite loss ends the run when cfg.stop_on_nonfinite is set.
    """
    import torch
    import torch.nn.functional as F

    model.to(device).train()
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lr_at(0, cfg), eps=1e-8)
    summary = RunSummary(0, 0.0)
    start = last = time.perf_counter()
    for step, (images, labels) in enumerate(loader):
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()  # synchronises: the step is done
        now = time.perf_counter()
        row = {"step": step, "loss": value, "lr": lr, "samples_per_s": len(labels) / (now - last),
               "elapsed_s": now - start}
        last = now
        summary.rows.append(row)
        summary.steps_done = step + 1
        if on_step is not None:
            on_step(row)
        if not math.isfinite(value) and cfg.stop_on_nonfinite:
            summary.stopped = f"non-finite loss {value} at step {step}"
            break
    synchronize(device)
    summary.wall_s = time.perf_counter() - start
    return summary
