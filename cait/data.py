"""Data for training: the synthetic ImageNet-layout dataset, the manifest that pins it or a real
ImageNet folder (checked by cait/imagenet.py), and the loader that reads either through the same
code path (JPEG folders, or the pre-decoded shards of cait/shards.py).

Layout (as ImageNet): `train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG`. The manifest lists every file
with its label and its SHA-256 (or, for a full ImageNet listing, its size); its hash identifies the
data a curve was trained on, and goes into every run record and baseline.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cait.errors import DataError
from cait.files import atomic_write_text, replace_folder

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
REPREPARE = "rerun the prepare stage (dvc repro prepare -f)"  # the fix for stale or damaged prepared data
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def synthetic_wnid(class_index: int) -> str:
    """WordNet-shaped ids that cannot clash with real ImageNet classes (those start n0/n1)."""
    return f"n9{class_index:07d}"


@dataclass
class Manifest:
    source: str
    root: Path  # folder holding train/ and val/
    classes: list[str]
    splits: dict[str, list[tuple[str, int, str]]]  # split -> [(relative path, label, sha256 or size)]
    content_hashes: bool
    # files left out of `splits` or worth knowing about: [(relative path, kind, detail, excluded)];
    # not part of the hash, which covers only what is trained on
    quarantined: list[tuple[str, str, str, bool]] = field(default_factory=list)
    pinned: dict | None = None  # how a pinned subset was chosen (seed, sizes, the full listing's hash)

    @property
    def hash(self) -> str:
        body = {"classes": self.classes, "splits": self.splits, "content_hashes": self.content_hashes}
        return hashlib.sha256(json.dumps(body, separators=(",", ":")).encode()).hexdigest()

    def to_json(self, root_text: str) -> dict:
        return {"version": MANIFEST_VERSION, "source": self.source, "root": root_text, "classes": self.classes,
                "content_hashes": self.content_hashes, "hash": self.hash,
                "counts": {k: len(v) for k, v in self.splits.items()},
                "pinned": self.pinned, "quarantined": [list(q) for q in self.quarantined],
                "splits": {k: [list(e) for e in v] for k, v in self.splits.items()}}


def write_manifest(manifest: Manifest, folder: Path, root_text: str, name: str = MANIFEST_NAME) -> Path:
    return atomic_write_text(Path(folder) / name, json.dumps(manifest.to_json(root_text), indent=0) + "\n")


def read_manifest(folder: Path | str, name: str = MANIFEST_NAME) -> Manifest:
    """Read the prepare stage's manifest; `root` is relative to the manifest's folder unless absolute."""
    path = Path(folder) / name
    try:
        data = json.loads(path.read_text())
        splits = {k: [(p, int(lbl), h) for p, lbl, h in v] for k, v in data["splits"].items()}
        manifest = Manifest(data["source"], (path.parent / data["root"]).resolve(), list(data["classes"]), splits,
                            bool(data["content_hashes"]),
                            [(p, kind, detail, bool(ex)) for p, kind, detail, ex in data.get("quarantined", [])],
                            data.get("pinned"))
    except FileNotFoundError:
        raise DataError(f"{path}: no data manifest; run the prepare stage first (dvc repro prepare)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: corrupt data manifest ({exc.__class__.__name__}: {exc}); {REPREPARE}") from None
    if manifest.hash != data.get("hash"):
        raise DataError(f"{path}: manifest hash does not match its contents (edited or truncated); {REPREPARE}")
    return manifest


def write_synthetic(out_dir: Path | str, spec, *, seed: int, train_per_class: int, val_per_class: int,
                    jpeg_quality: int, on_image=None) -> Manifest:
    """Write the synthetic dataset as JPEGs in the ImageNet layout, byte-identical for the same seed.

    `on_image()` is called after each image is written (progress reporting).

    Written into a temporary sibling folder and renamed into place at the end, so an interrupted
    run never leaves a folder that looks complete.
    """
    from PIL import Image

    from cait.synthetic import render_image

    out_dir = Path(out_dir)
    tmp_dir = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    classes = [synthetic_wnid(c) for c in range(spec.num_classes)]
    splits: dict[str, list[tuple[str, int, str]]] = {}
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        entries = []
        for label, wnid in enumerate(classes):
            (tmp_dir / split / wnid).mkdir(parents=True)
            for i in range(per_class):
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{label * per_class + i + 1:08d}.JPEG"
                rel = f"{split}/{wnid}/{name}"
                buf = io.BytesIO()
                Image.fromarray(render_image(spec, seed, split, label, i)).save(buf, "JPEG", quality=jpeg_quality)
                payload = buf.getvalue()
                (tmp_dir / rel).write_bytes(payload)
                entries.append((rel, label, hashlib.sha256(payload).hexdigest()))
                if on_image is not None:
                    on_image()
        splits[split] = entries
    manifest = Manifest("synthetic", out_dir.resolve(), classes, splits, content_hashes=True)
    write_manifest(manifest, tmp_dir, ".")
    replace_folder(tmp_dir, out_dir)
    return manifest


def open_rgb(path: Path):
    """Decode an image file to an RGB PIL image; an unreadable file is a DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc}); remove or replace the file and rerun prepare") from None


def decode_rgb(path: Path, size: int) -> np.ndarray:
    """Decode to RGB uint8 HWC, resized (bicubic) to `size` x `size` if needed: the pixels a shard stores."""
    from PIL import Image

    img = open_rgb(path)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def normalise(pixels) -> np.ndarray:
    """uint8 HWC RGB (array or PIL image) -> float32 CHW normalised with ImageNet statistics: the same
    arithmetic for JPEGs, shards and augmented views."""
    array = np.asarray(pixels, dtype=np.float32) / 255.0
    return ((array - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


def decode_image(path: Path, size: int) -> np.ndarray:
    """Decode to RGB float32 CHW, resized (bicubic) to `size` if needed, normalised with ImageNet statistics."""
    return normalise(decode_rgb(path, size))


def decode_eval_image(path: Path, size: int, crop_ratio: float) -> np.ndarray:
    """Evaluation view as timm builds it: shorter side to size/crop_ratio (bicubic), centre crop `size`."""
    from PIL import Image

    img = open_rgb(path)
    if crop_ratio == 1.0 and img.size == (size, size):
        return normalise(img)
    scale = int(math.floor(size / crop_ratio))
    w, h = img.size
    new_w, new_h = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    img = img.resize((new_w, new_h), Image.BICUBIC)
    left, top = int(round((new_w - size) / 2)), int(round((new_h - size) / 2))
    return normalise(img.crop((left, top, left + size, top + size)))


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
            from cait.shards import ShardDataset

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
    sample_hashes: object  # int64 tensor: each sample's content hash (image and target)

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader (pin_memory=True) so that copies to the device can overlap compute."""
        return Batch(self.images.pin_memory(), self.targets.pin_memory(), self.step, self.positions,
                     self.sample_hashes)

    @property
    def hash(self) -> str:
        """This batch's hash; with one process it is the global batch's (see cait.augment.batch_hash)."""
        from cait.augment import batch_hash

        return batch_hash(self.positions.numpy(), self.sample_hashes.numpy())


class CollateBatch:
    """Stack the samples of one step, apply Mixup/CutMix (keyed by the step) and hash each sample.

    Runs in the loader worker, so hashing and mixing cost the training loop nothing.
    """

    def __init__(self, *, mixup=None, num_classes: int = 0, smoothing: float = 0.0, seed: int = 0):
        self.mixup, self.num_classes, self.smoothing, self.seed = mixup, num_classes, smoothing, seed

    def __call__(self, samples) -> Batch:
        import torch

        from cait.augment import mix_batch, sample_hash

        images = torch.stack([s[0] for s in samples])
        targets = torch.tensor([s[1] for s in samples], dtype=torch.int64)
        step = samples[0][2]
        positions = torch.tensor([s[3] for s in samples], dtype=torch.int64)
        if self.mixup is not None and self.mixup.enabled:
            images, targets = mix_batch(images, targets, self.mixup, num_classes=self.num_classes,
                                        smoothing=self.smoothing, seed=self.seed, step=step)
        hashes = torch.tensor([sample_hash(images[i], targets[i]) for i in range(len(samples))], dtype=torch.int64)
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
                      collate_fn=CollateBatch(), persistent_workers=False)
