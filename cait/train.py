"""The training loop: one function to read top to bottom.

It trains for the recipe's steps (or epochs), reports one row per step (step, loss, lr, samples/s,
elapsed, batch hash) to a callback, optionally evaluates after each epoch, and writes checkpoints.
It knows nothing about MLflow or baselines. Every random draw comes from keyed CPU generators (see
cait/augment.py); the loss logged at step k is that of batch k under the weights before update k
(as ModelZoo's logs do), averaged over all ranks.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cait.augment import DropPathKeys, batch_hash, install_keyed_drop_path
from cait.checkpoint import BEST, LAST, load_model_state, restore_rng_states, rng_states, save_checkpoint
from cait.config import TrainConfig
from cait.devices import synchronize
from cait.distributed import DistContext, RankFailure
from cait.errors import HarnessError


class TrainingStopped(HarnessError):
    """SIGTERM arrived: a checkpoint was written and the run stopped; `--resume` continues it."""

    exit_code = 4


# ---- the recipe's pieces -----------------------------------------------------------------------------

def schedule_length(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(total steps, warm-up steps): explicit step counts win over epoch counts."""
    total = cfg.total_steps(steps_per_epoch)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(cfg.warmup_epochs * steps_per_epoch))
    return total, min(warmup, max(0, total - 1))


def peak_lr(cfg: TrainConfig, global_batch: int) -> float:
    """DeiT's linear scaling rule (lr x global batch / 512) when lr_batch_scaling is on."""
    return cfg.lr * global_batch / 512.0 if cfg.lr_batch_scaling else cfg.lr


def lr_at(step: int, cfg: TrainConfig, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up from warmup_lr to `peak`, then cosine decay to min_lr at the last step (per step)."""
    if step < warmup:
        return cfg.warmup_lr + (peak - cfg.warmup_lr) * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - 1 - warmup)
    return cfg.min_lr + 0.5 * (peak - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


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


def loss_fn(logits, targets, label_smoothing: float):
    """Soft-target cross-entropy for Mixup/CutMix targets, else (label-smoothed) cross-entropy."""
    import torch
    import torch.nn.functional as F

    if targets.dtype.is_floating_point:
        return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def autocast(device, amp: str | None):
    """Mixed precision on `device` (bf16 or fp16), or a no-op context for fp32."""
    import contextlib

    import torch

    if amp is None:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "sdaa" and hasattr(torch, "sdaa") and hasattr(torch.sdaa, "amp"):
        return torch.sdaa.amp.autocast(dtype=dtype)
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device, amp: str | None):
    """A GradScaler for fp16 (bf16 needs none); None otherwise."""
    import torch

    if amp != "fp16":
        return None
    if device.type == "sdaa":
        return torch.sdaa.amp.GradScaler()
    return torch.amp.GradScaler(device.type)


def evaluate(model, loader, device, ctx: DistContext, amp: str | None = None) -> dict:
    """Loss, top-1 and top-5 accuracy (%) on the whole val split, summed over the ranks' shards."""
    import torch
    import torch.nn.functional as F

    from cait.distributed import global_sum

    was_training = model.training
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    with torch.no_grad():
        for batch in loader:
            images, labels = batch.images.to(device), batch.targets.to(device)
            with autocast(device, amp):
                logits = model(images)
            loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top.eq(labels.view(-1, 1))
            correct1 += hits[:, :1].sum().item()
            correct5 += hits.any(dim=1).sum().item()
            count += len(labels)
    model.train(was_training)
    loss_sum, correct1, correct5, count = global_sum([loss_sum, correct1, correct5, count], ctx, device)
    return {"val_loss": loss_sum / max(count, 1), "top1": 100.0 * correct1 / max(count, 1),
            "top5": 100.0 * correct5 / max(count, 1), "val_images": int(round(count))}


class SigtermFlag:
    """Turns SIGTERM (a scheduler's pre-emption, torchrun's shutdown) into a flag the loop checks."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, no flag
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def step_exchange(loss: float, stop: bool, batch, ctx: DistContext) -> tuple[float, bool, str]:
    """One collective per step: the global mean loss, whether any rank must stop, the global batch hash."""
    if not ctx.enabled:
        return loss, stop, batch.hash
    import torch
    import torch.distributed as dist

    # [loss, stop, positions..., sample hashes...] as int64 bit patterns: all_gather moves them untouched
    loss_bits = torch.tensor([loss], dtype=torch.float64).view(torch.int64)
    mine = torch.cat([loss_bits, torch.tensor([int(stop)]), batch.positions, batch.sample_hashes])
    if ctx.backend != "gloo":
        mine = mine.to(f"{_device_type(ctx)}:{ctx.local_rank}")
    gathered = [torch.empty_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, mine)
    rows = torch.stack(gathered).cpu()
    losses = rows[:, 0].contiguous().view(torch.float64)
    half = (rows.shape[1] - 2) // 2
    positions, hashes = rows[:, 2:2 + half].reshape(-1), rows[:, 2 + half:].reshape(-1)
    return (losses.sum() / ctx.world_size).item(), bool(rows[:, 1].max() > 0), batch_hash(positions.numpy(),
                                                                                           hashes.numpy())


def _device_type(ctx: DistContext) -> str:
    return {"nccl": "cuda", "tccl": "sdaa"}.get(ctx.backend, "cpu")


# ---- the loop ----------------------------------------------------------------------------------------

@dataclass
class CheckpointPlan:
    """Where and when to write checkpoints, and what identifies the run that writes them."""

    folder: Path
    params_hash: str
    meta: dict = field(default_factory=dict)  # written into every checkpoint (model name, params, ...)


@dataclass
class RunSummary:
    steps_done: int
    wall_s: float
    stopped: str = ""  # why the run ended before its last step, if it did
    rows: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)  # per-epoch evaluation results
    best_top1: float | None = None
    resumed_from: int = 0  # the step a resumed run started at


def train(model, make_loader: Callable[[int], object], device, cfg: TrainConfig, *, steps_per_epoch: int,
          ctx: DistContext = DistContext(), checkpoints: CheckpointPlan | None = None, resume: dict | None = None,
          make_eval_loader: Callable[[], object] | None = None,
          on_step: Callable[[dict], None] | None = None,
          on_epoch: Callable[[dict], None] | None = None, patch=None, fingerprints=None,
          stop_after: int | None = None, stop_check: Callable[[dict], str] | None = None) -> RunSummary:
    """Train `model` on the Batches `make_loader(start_step)` yields, one optimizer step per batch.

    `resume` is a loaded checkpoint (cait.checkpoint.load_checkpoint): the run continues at its step
    with its weights, optimizer, scaler, EMA and RNG states. Callbacks run on rank 0 only.
    `patch` (cait.portbugs.RunPatch) injects a numerics variant or a port bug: the one seam for them.
    `fingerprints` (cait.fingerprints.FingerprintRecorder) hooks the model on its steps only. `stop_after`
    ends the run after that step (a replay up to a step where curves part; the schedule stays the full run's).
    `stop_check` sees every finished step's row on every rank (the loss is the global mean: every rank decides
    alike); a non-empty string it returns ends the run after that step, as `summary.stopped` (fail fast).
    """
    import torch

    global_batch = cfg.batch_size * ctx.world_size
    total, warmup = schedule_length(cfg, steps_per_epoch)
    peak = peak_lr(cfg, global_batch)

    # model, optimizer, scaler, EMA: drop path draws from keyed CPU generators, not the device
    drop_path_keys = DropPathKeys(cfg.seed, global_batch)
    install_keyed_drop_path(model, drop_path_keys)
    if patch is not None:
        patch.model(model, cfg.seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lr_at(0, cfg, total, warmup, peak),
                                  eps=cfg.opt_eps)
    if patch is not None:
        optimizer = patch.optimizer(optimizer, model)
    if fingerprints is not None:
        fingerprints.attach(model, optimizer)
    scaler = grad_scaler(device, cfg.amp)
    compute_loss = loss_fn
    if patch is not None:  # a mixed-precision port bug's loss or loss-scaler slip (cait/portbugs.py)
        scaler, compute_loss = patch.scaler(scaler), patch.loss(loss_fn)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    summary = RunSummary(0, 0.0)
    best_top1 = -1.0
    start_step = 0
    if resume is not None:
        where = checkpoints.folder / LAST if checkpoints else "checkpoint"
        load_model_state(model, resume["model"], where)
        optimizer.load_state_dict(resume["optimizer"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        if ema is not None and resume.get("ema"):
            load_model_state(ema.module, resume["ema"], where)
        restore_rng_states(resume["rng"])
        start_step = int(resume["step"])
        summary.rows = [dict(r) for r in resume["rows"]]
        summary.epochs = [dict(e) for e in resume.get("epochs", [])]
        best_top1 = float(resume.get("best_top1", -1.0))
        summary.resumed_from = summary.steps_done = start_step
    train_model = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=None if device.type == "cpu" else [device.index])

    def write_checkpoint(name: str, next_step: int) -> None:
        if checkpoints is None or not ctx.is_main:
            return
        save_checkpoint(checkpoints.folder / name, {
            "step": next_step, "params_hash": checkpoints.params_hash, "meta": checkpoints.meta,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "ema": ema.module.state_dict() if ema is not None else None,
            "rng": rng_states(), "rows": summary.rows, "epochs": summary.epochs, "best_top1": best_top1})

    start = last = time.perf_counter()
    with SigtermFlag() as sigterm:
        for batch in make_loader(start_step):
            step = batch.step
            lr = (lr_at(step, cfg, total, warmup, peak) if patch is None else
                  patch.lr(step, lambda s: lr_at(s, cfg, total, warmup, peak)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            drop_path_keys.begin_step(step, batch.positions.numpy())
            fingerprinting = fingerprints is not None and fingerprints.begin(step)
            images = batch.images.to(device, non_blocking=True)
            targets = batch.targets.to(device, non_blocking=True)

            try:
                with autocast(device, cfg.amp):
                    loss = compute_loss(train_model(images), targets, cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if cfg.clip_grad:
                        scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if cfg.clip_grad:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                if ema is not None:
                    ema.update(model)  # constant decay, as DeiT's ModelEma
                value = loss.item()  # synchronises: the step is done
                if fingerprinting:
                    fingerprints.end(step, value, lr)
                value, stop_requested, global_hash = step_exchange(value, sigterm.raised, batch, ctx)
            except RuntimeError as exc:
                if ctx.enabled and _is_peer_failure(exc):
                    raise RankFailure(f"rank {ctx.rank}: lost contact with another rank at step {step} "
                                      f"({str(exc).splitlines()[0][:160]}); the job stops") from None
                raise

            now = time.perf_counter()
            row = {"step": step, "loss": value, "lr": lr, "samples_per_s": global_batch / (now - last),
                   "elapsed_s": now - start, "batch_hash": global_hash,
                   "drop_path_hash": drop_path_keys.step_hash()}
            last = now
            summary.rows.append(row)
            summary.steps_done = step + 1
            if on_step is not None and ctx.is_main:
                on_step(row)
            if not math.isfinite(value) and cfg.stop_on_nonfinite:
                summary.stopped = f"non-finite loss {value} at step {step}"
                break
            if stop_check is not None and (why := stop_check(row)):
                summary.stopped = why
                break

            epoch_end = (step + 1) % steps_per_epoch == 0 or step + 1 == total
            if epoch_end and cfg.eval_every_epoch and make_eval_loader is not None:
                metrics = {"epoch": step // steps_per_epoch, "step": step,
                           **evaluate(model, make_eval_loader(), device, ctx, cfg.amp)}
                summary.epochs.append(metrics)
                if on_epoch is not None and ctx.is_main:
                    on_epoch(metrics)
                if metrics["top1"] > best_top1:
                    best_top1 = metrics["top1"]
                    write_checkpoint(BEST, step + 1)
            if (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0) or stop_requested or (
                    epoch_end and cfg.eval_every_epoch):
                write_checkpoint(LAST, step + 1)
            if stop_after is not None and step >= stop_after and not stop_requested:
                summary.stopped = f"replay: stopped after step {step}"
                break
            if stop_requested:
                where = f"; checkpoint {checkpoints.folder / LAST}" if checkpoints else " (no checkpoint folder)"
                raise TrainingStopped(f"stopped by SIGTERM after step {step}{where}; rerun with --resume to continue")
    synchronize(device)
    summary.wall_s = time.perf_counter() - start
    summary.best_top1 = best_top1 if best_top1 >= 0 else None
    return summary


def _is_peer_failure(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("connection closed", "connection reset", "broken pipe", "timed out",
                                   "timeout", "nccl", "gloo", "peer"))
