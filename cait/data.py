"""Loaders for training and evaluation: the keyed sampler, the dataset that reads a manifest's images
(decoded from their files, or the pre-decoded shards of cait/shards.py) through the same code path,
and the batches with their content hashes.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cait.augment import batch_hash, sample_hash
from cait.errors import DataError
from cait.manifest import Manifest
from cait.pixels import decode_eval_image, decode_rgb, normalise, open_rgb
from cait.shards import ShardDataset


@dataclass(frozen=True)
class SampleKey:
    """Which image to load and where it sits: `position` is its place in the global batch of `step`."""

    index: int
    step: int
    position: int


class ManifestDataset:
    """The images of one split of a manifest, decoded from their files or read from pre-decoded shards.

    Indexed by an int (plain view, or the evaluation view when `eval_crop_ratio` is given) or by a
    SampleKey (training view: augmentation drawn from the generator keyed by (seed, step, position)).
    Items are (CHW float32 tensor, label, step, position). With `shards_dir` the training and plain
    views start from the shard's uint8 pixels (no JPEG decoded); the evaluation view always decodes.
    """

    def __init__(self, manifest: Manifest, split: str, img_size: int, *, augment=None, seed: int = 0,
                 eval_crop_ratio: float | None = None, shards_dir: Path | None = None):
        from cait.augment import SampleTransform

        self.root = manifest.root
        self.entries = manifest.splits[split]
        self.img_size = img_size
        self.eval_crop_ratio = eval_crop_ratio
        self.transform = SampleTransform(augment, img_size, seed) if augment is not None and augment.enabled else None
        self.shards = None
        if shards_dir is not None and eval_crop_ratio is None:
            self.shards = ShardDataset(shards_dir, split, manifest=manifest, img_size=img_size)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key):
        import torch

        index, step, position = (key.index, key.step, key.position) if isinstance(key, SampleKey) else (key, -1, -1)
        rel, label, _ = self.entries[index]
        path = self.root / rel
        if self.eval_crop_ratio is not None:
            array = decode_eval_image(path, self.img_size, self.eval_crop_ratio)
        elif self.transform is None or step < 0:
            array = normalise(self.shards.pixels(index) if self.shards else decode_rgb(path, self.img_size))
        else:
            from PIL import Image

            rng = self.transform.rng(step, position)
            source = Image.fromarray(self.shards.pixels(index)) if self.shards else open_rgb(path)
            array = self.transform.erase(normalise(self.transform.image(source, rng)), rng)
        return torch.from_numpy(array), label, step, position


class StepBatchSampler:
    """Batches of SampleKeys for steps start_step..steps-1.

    Each epoch is a fresh permutation drawn from a generator keyed by (seed, epoch); with repeated
    augmentation (DeiT's RASampler) every image appears `repeats` times in a row and an epoch still has
    num_samples // global_batch steps. Step k's global batch is the k-th slice of batch_size x world_size;
    rank r takes positions r, r + world_size, ... of it (so the copies of a repeated image land on
    different ranks). The batches therefore depend on the seed and the step only: not on the device,
    the loader workers, or where a resumed run starts.
    """

    def __init__(self, num_samples: int, batch_size: int, steps: int, seed: int, *, rank: int = 0,
                 world_size: int = 1, repeats: int = 1, start_step: int = 0):
        global_batch = batch_size * world_size
        if global_batch > num_samples:
            raise DataError(f"train.batch_size {batch_size} x {world_size} process(es) exceeds the {num_samples} "
                            f"training images; lower the batch size or prepare more data")
        self.num_samples, self.batch_size, self.steps, self.seed = num_samples, batch_size, steps, seed
        self.rank, self.world_size, self.repeats, self.start_step = rank, world_size, repeats, start_step
        self.global_batch = global_batch
        self.steps_per_epoch = num_samples // global_batch

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)

    def epoch_order(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        return np.repeat(order, self.repeats) if self.repeats > 1 else order

    def __iter__(self):
        order, order_epoch = None, -1
        positions = range(self.rank, self.global_batch, self.world_size)
        for step in range(self.start_step, self.steps):
            epoch, slot = divmod(step, self.steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = self.epoch_order(epoch), epoch
            batch = order[slot * self.global_batch:(slot + 1) * self.global_batch]
            yield [SampleKey(int(batch[p]), step, p) for p in positions]


@dataclass
class Batch:
    images: object  # float32 N x C x H x W (after Mixup/CutMix when on)
    targets: object  # int64 labels, or float32 soft targets with Mixup/CutMix
    step: int
    positions: object  # int64 tensor: each sample's place in the global batch
    hashes: object  # int64 tensor of each sample's content hash (image and target); or a Future of it while
    # a thread computes it beside the step (see CollateBatch); None for an evaluation batch

    @property
    def sample_hashes(self):
        """The samples' content hashes, waiting for the hashing thread if it is not done yet."""
        if isinstance(self.hashes, Future):
            self.hashes = self.hashes.result()
        return self.hashes

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader (pin_memory=True) so that copies to the device can overlap compute."""
        return Batch(self.images.pin_memory(), self.targets.pin_memory(), self.step, self.positions, self.hashes)

    @property
    def hash(self) -> str:
        """This batch's hash; with one process it is the global batch's (see cait.augment.batch_hash)."""
        return batch_hash(self.positions.numpy(), self.sample_hashes.numpy())


def hash_samples(images, targets):
    """int64 tensor: each sample's content hash (cait.augment.sample_hash of its image and target)."""
    import torch

    return torch.tensor([sample_hash(images[i], targets[i]) for i in range(len(images))], dtype=torch.int64)


_HASH_THREAD: dict = {}  # the main process's hashing thread (started on first use) and its latest task


def hash_in_thread(images, targets) -> Future:
    """hash_samples in a thread beside the caller: BLAKE2b releases the GIL, so the training step (or
    the wait for the accelerator) goes on meanwhile. The tensors must not change until the result is read
    (the training loop only reads its batch). One batch at a time: a caller that collates faster than the
    thread hashes waits for the previous batch's hashes, so pending batches never pile up in memory (the
    training loop reads each batch's hashes before it asks for the next batch: it never waits here)."""
    if "pool" not in _HASH_THREAD:
        _HASH_THREAD["pool"] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cait-batch-hash")
    previous = _HASH_THREAD.get("latest")
    if previous is not None:
        wait([previous])
    _HASH_THREAD["latest"] = _HASH_THREAD["pool"].submit(hash_samples, images, targets)
    return _HASH_THREAD["latest"]


class CollateBatch:
    """Stack the samples of one step, apply Mixup/CutMix (keyed by the step) and hash each sample.

    In a loader worker process the hashing happens there; in the main process (train.num_workers 0) it
    runs in a thread beside the training step and the loop reads the result after the step
    (`Batch.sample_hashes`). The samples are stacked by numpy: one plain copy, where torch.stack would
    start a parallel region per sample (slow on a busy CPU). `hashes=False` (evaluation) hashes nothing.
    """

    def __init__(self, *, mixup=None, num_classes: int = 0, smoothing: float = 0.0, seed: int = 0,
                 hashes: bool = True):
        self.mixup, self.num_classes, self.smoothing, self.seed = mixup, num_classes, smoothing, seed
        self.hashes = hashes

    def __call__(self, samples) -> Batch:
        import torch
        from torch.utils.data import get_worker_info

        from cait.augment import mix_batch

        images = torch.from_numpy(np.stack([np.asarray(s[0]) for s in samples]))
        targets = torch.tensor([s[1] for s in samples], dtype=torch.int64)
        step = samples[0][2]
        positions = torch.tensor([s[3] for s in samples], dtype=torch.int64)
        if self.mixup is not None and self.mixup.enabled:
            images, targets = mix_batch(images, targets, self.mixup, num_classes=self.num_classes,
                                        smoothing=self.smoothing, seed=self.seed, step=step)
        hashes = None
        if self.hashes:
            hashes = hash_samples(images, targets) if get_worker_info() is not None else hash_in_thread(images, targets)
        return Batch(images, targets, step, positions, hashes)


def train_loader(manifest: Manifest, *, img_size: int, batch_size: int, steps: int, seed: int, num_workers: int,
                 augment=None, mixup=None, num_classes: int | None = None, smoothing: float = 0.0,
                 rank: int = 0, world_size: int = 1, repeats: int = 1, start_step: int = 0, pin_memory: bool = False,
                 shards_dir: Path | None = None):
    """A DataLoader yielding the Batches of steps start_step..steps-1 of the training split (read from
    pre-decoded shards when `shards_dir` is given, else decoded from the image files)."""
    from torch.utils.data import DataLoader

    dataset = ManifestDataset(manifest, "train", img_size, augment=augment, seed=seed, shards_dir=shards_dir)
    sampler = StepBatchSampler(len(dataset), batch_size, steps, seed, rank=rank, world_size=world_size,
                               repeats=repeats, start_step=start_step)
    collate = CollateBatch(mixup=mixup, num_classes=num_classes or len(manifest.classes), smoothing=smoothing,
                           seed=seed)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                      persistent_workers=False, pin_memory=pin_memory)


def eval_loader(manifest: Manifest, *, img_size: int, batch_size: int, crop_ratio: float, num_workers: int,
                rank: int = 0, world_size: int = 1):
    """The val split, rank r taking images r, r + world_size, ... (no padding: counts stay exact)."""
    from torch.utils.data import DataLoader

    dataset = ManifestDataset(manifest, "val", img_size, eval_crop_ratio=crop_ratio)
    indices = list(range(rank, len(dataset), world_size))
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=num_workers,
                      collate_fn=CollateBatch(hashes=False), persistent_workers=False)
