"""One training session: plain cait settings + a prepared data folder + an output folder -> a finished run.

Everything a run needs between the settings and the loop, in the order that keeps curves bitwise equal:
distributed context, device, thread count, numerics (and a numerics variant or simulated port bug through
`RunPatch`), the data manifest, image size and class count, the resume checkpoint and its checks, the
shard check, the model (initial weights from the seeded CPU generator: the same on every device), the
loaders, the layer-fingerprint recorder, then `cait.train.train`. It writes checkpoints/ and
fingerprints.npz into out_dir (rank 0 alone); the curve, the run record and any tracking are the caller's,
through the callbacks (`on_start` once the set-up is known, before the model is built; `on_step`,
`on_epoch`). A run that fails raises; `session.rows` (given to `on_start`) holds the steps it trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cait.config import DataConfig, DeviceConfig, ModelConfig, TrainConfig
from cait.errors import ConfigError
from cait.files import check_writable

SHARDS = "shards"  # the prepared folder's pre-decoded pixels (pipelines/layout.py SHARDS_DIR is the same place)
CHECKPOINTS = "checkpoints"  # out_dir/checkpoints: last.pt, best.pt
FINGERPRINTS = "fingerprints.npz"  # out_dir/fingerprints.npz: the layer fingerprints (cait/fingerprints.py)


@dataclass
class Session:
    """What a session resolved before training: given to `on_start`, kept in the result."""

    ctx: Any  # cait.distributed context: rank, world_size, backend, is_main
    device: Any  # torch.device
    environment: dict  # describe_device: device, device_name, torch, ...
    numerics: dict  # the numerics switches set for this run (variant included)
    precision: str  # the precision policy they amount to: fp32, tf32, bf16, fp16 (cait/determinism.py)
    manifest: Any  # cait.manifest.Manifest of data_dir
    img_size: int
    num_classes: int
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    shards_dir: Path | None  # None: the run decodes JPEG files
    pixels_hash: str  # sha256 of the train shard's pixels ("" without shards)
    resume_state: dict | None  # the checkpoint resumed from, if any
    rows: list[dict] = field(default_factory=list)  # the curve's rows so far (a resume's included), live


@dataclass
class SessionResult:
    session: Session
    summary: Any  # cait.train.TrainSummary
    fingerprint_path: Path | None  # None on ranks other than 0

    @property
    def rows(self) -> list[dict]:
        return self.session.rows


@dataclass
class Callbacks:
    on_start: Callable[[Session], None] | None = None
    on_step: Callable[[dict], None] | None = None
    on_epoch: Callable[[dict], None] | None = None
    stop_check: Callable[[dict], str] | None = None  # every rank: a reason ends the run after that step (fail fast)


def run_session(data: DataConfig, model: ModelConfig, train: TrainConfig, device: DeviceConfig, *, data_dir: Path,
                out_dir: Path, params_hash: str, callbacks: Callbacks | None = None, resume: bool = False,
                stop_after: int | None = None, fingerprint_meta: dict | None = None) -> SessionResult:
    """Train once; works as one process or one rank of a torchrun/SLURM job (rank 0 alone writes files).

    `params_hash` names the curve-defining settings in checkpoints (a resume must match it);
    `resume` continues from out_dir/checkpoints/last.pt; `stop_after` ends the run after that step;
    `fingerprint_meta` leads the fingerprint file's metadata (default: model name and params hash).
    """
    import torch

    from cait.checkpoint import LAST, CheckpointError, load_checkpoint
    from cait.data import eval_loader, train_loader
    from cait.determinism import configure_numerics, precision_policy, precision_state
    from cait.devices import describe_device, resolve_device
    from cait.distributed import init_distributed, shutdown
    from cait.fingerprints import FingerprintRecorder, resolve_steps
    from cait.fingerprints import save as save_fingerprints
    from cait.manifest import read_manifest
    from cait.models import build_model
    from cait.portbugs import RunPatch
    from cait.train import CheckpointPlan
    from cait.train import train as train_loop

    callbacks = callbacks or Callbacks()
    cfg = train
    ctx = init_distributed(device.type, device.dist_backend, device.dist_timeout_s)
    try:
        if ctx.is_main:
            check_writable(out_dir)  # before any work: a run whose outputs cannot be written is not started
        torch_device = resolve_device(device.type, ctx.local_rank if ctx.enabled else device.index)
        if device.threads:
            torch.set_num_threads(device.threads)
        numerics = configure_numerics(torch_device.type, device.deterministic, device.tf32)  # before the model is built
        patch = RunPatch(device.numerics_variant, device.port_bug)
        numerics.update(patch.configure(torch_device.type))  # a numerics variant's switches, before the model is built
        numerics.update(precision_state(torch_device.type))  # read back: the evidence for the precision policy
        precision = precision_policy(numerics, train.amp)
        manifest = read_manifest(data_dir)
        img_size = model.resolved_img_size
        num_classes = model.num_classes or len(manifest.classes)
        if num_classes < len(manifest.classes):
            raise ConfigError(f"model.num_classes {num_classes} is smaller than the {len(manifest.classes)} classes "
                              f"of the data; raise it or set it to null")
        global_batch = cfg.batch_size * ctx.world_size
        steps_per_epoch = max(1, len(manifest.splits["train"]) // global_batch)
        checkpoint_dir = out_dir / CHECKPOINTS
        meta = {"model": model.name, "world_size": ctx.world_size, "global_batch": global_batch,
                "data_manifest_hash": manifest.hash}
        resume_state = None
        if resume:
            resume_state = load_checkpoint(checkpoint_dir / LAST, params_hash)
            saved = resume_state.get("meta", {})
            for key in ("world_size", "data_manifest_hash"):
                if saved.get(key) != meta[key]:
                    raise CheckpointError(f"{checkpoint_dir / LAST}: written with {key} {saved.get(key)!r}, this "
                                          f"run has {meta[key]!r}; resume under the same conditions or start fresh")
        shards_dir = data_dir / SHARDS if data.shards else None
        pixels_hash = ""
        if shards_dir is not None:
            from cait.shards import verify_shard

            pixels_hash = verify_shard(shards_dir, "train")  # what is read, checked against meta.json
        environment = describe_device(torch_device)
        total_steps = cfg.total_steps(steps_per_epoch)
        session = Session(ctx=ctx, device=torch_device, environment=environment, numerics=numerics,
                          precision=precision, manifest=manifest, img_size=img_size, num_classes=num_classes,
                          global_batch=global_batch,
                          steps_per_epoch=steps_per_epoch, total_steps=total_steps, shards_dir=shards_dir,
                          pixels_hash=pixels_hash, resume_state=resume_state,
                          rows=list(resume_state["rows"]) if resume_state else [])
        if callbacks.on_start:
            callbacks.on_start(session)

        torch.manual_seed(cfg.seed)  # the weights come from the CPU generator: the same on every device
        net = build_model(model.name, img_size=img_size, patch_size=model.patch_size, num_classes=num_classes,
                          drop_path=model.drop_path)

        def make_loader(start_step: int):
            return train_loader(manifest, img_size=img_size, batch_size=cfg.batch_size, steps=total_steps,
                                seed=cfg.seed, num_workers=cfg.num_workers, augment=cfg.augment, mixup=cfg.mixup,
                                num_classes=num_classes, smoothing=cfg.label_smoothing, rank=ctx.rank,
                                world_size=ctx.world_size, repeats=cfg.repeated_aug if ctx.enabled else 1,
                                start_step=start_step, pin_memory=torch_device.type == "cuda", shards_dir=shards_dir)

        def make_eval_loader():
            return eval_loader(manifest, img_size=img_size, batch_size=cfg.batch_size, crop_ratio=cfg.eval_crop_ratio,
                               num_workers=cfg.num_workers, rank=ctx.rank, world_size=ctx.world_size)

        def on_step(row: dict) -> None:
            session.rows.append(row)
            if callbacks.on_step:
                callbacks.on_step(row)

        plan = CheckpointPlan(checkpoint_dir, params_hash, meta)
        recorder = FingerprintRecorder(resolve_steps(cfg.fingerprints.steps, total_steps),
                                       sketch_dim=cfg.fingerprints.sketch_dim,
                                       whole_tensors=cfg.fingerprints.whole_tensors)
        summary = train_loop(net, make_loader, torch_device, cfg, steps_per_epoch=steps_per_epoch, ctx=ctx,
                             checkpoints=plan, resume=resume_state, make_eval_loader=make_eval_loader,
                             on_step=on_step, on_epoch=callbacks.on_epoch, patch=patch, fingerprints=recorder,
                             stop_after=stop_after, stop_check=callbacks.stop_check)
        if not ctx.is_main:
            return SessionResult(session, summary, None)
        fingerprint_path = out_dir / FINGERPRINTS
        head = fingerprint_meta if fingerprint_meta is not None else {"model": model.name, "params_hash": params_hash}
        save_fingerprints(fingerprint_path, recorder.fingerprints({
            **head, "world_size": ctx.world_size, "global_batch": global_batch,
            "device": torch_device.type, "device_name": environment.get("device_name", ""),
            "torch": environment.get("torch", ""), "numerics_variant": device.numerics_variant, "precision": precision,
            "port_bug": device.port_bug, "resumed_from_step": summary.resumed_from}))
        return SessionResult(session, summary, fingerprint_path)
    finally:
        shutdown(ctx)
