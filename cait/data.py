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
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cait.errors import DataError

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
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
    path = Path(folder) / name
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_json(root_text), indent=0) + "\n")
    os.replace(tmp, path)
    return path


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
        raise DataError(f"{path}: corrupt data manifest ({exc.__class__.__name__}: {exc}); "
                        f"rerun the prepare stage (dvc repro -f prepare)") from None
    if manifest.hash != data.get("hash"):
        raise DataError(f"{path}: manifest hash does not match its contents (edited or truncated); "
                        f"rerun the prepare stage (dvc repro -f prepare)")
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
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp_dir, out_dir)
    return manifest


def decode_rgb(path: Path, size: int) -> np.ndarray:
    """Decode to RGB uint8 HWC, resized (bicubic) to `size` x `size` if needed: the pixels a shard stores."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BICUBIC)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc}); remove or replace the file and rerun prepare") from None


def normalise(pixels: np.ndarray) -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW normalised with ImageNet statistics (the same arithmetic for JPEGs and shards)."""
    array = pixels.astype(np.float32) / 255.0
    return ((array - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


def decode_image(path: Path, size: int) -> np.ndarray:
    """Decode to RGB float32 CHW, resized (bicubic) to `size` if needed, normalised with ImageNet statistics."""
    return normalise(decode_rgb(path, size))


class ManifestDataset:
    """The images of one split of a manifest, as (CHW float32 tensor, label)."""

    def __init__(self, manifest: Manifest, split: str, img_size: int):
        self.root = manifest.root
        self.entries = manifest.splits[split]
        self.img_size = img_size

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        import torch

        rel, label, _ = self.entries[index]
        return torch.from_numpy(decode_image(self.root / rel, self.img_size)), label


class StepBatchSampler:
    """Batches of sample indices for steps 0..steps-1: a fresh permutation each epoch, drawn from a
    numpy generator keyed by (seed, epoch), so the order depends on nothing but those two numbers."""

    def __init__(self, num_samples: int, batch_size: int, steps: int, seed: int):
        if batch_size > num_samples:
            raise DataError(f"train.batch_size {batch_size} exceeds the {num_samples} training images; "
                            f"lower the batch size or prepare more data")
        self.num_samples, self.batch_size, self.steps, self.seed = num_samples, batch_size, steps, seed

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        per_epoch = self.num_samples // self.batch_size
        for step in range(self.steps):
            epoch, position = divmod(step, per_epoch)
            if position == 0:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            yield order[position * self.batch_size:(position + 1) * self.batch_size].tolist()


def open_dataset(manifest: Manifest, split: str, img_size: int, shards_dir: Path | None = None):
    """The split as a dataset of (CHW float32 tensor, label): from pre-decoded shards when given, else JPEGs."""
    if shards_dir is None:
        return ManifestDataset(manifest, split, img_size)
    from cait.shards import ShardDataset

    return ShardDataset(shards_dir, split, manifest=manifest, img_size=img_size)


def train_loader(manifest: Manifest, *, img_size: int, batch_size: int, steps: int, seed: int, num_workers: int,
                 shards_dir: Path | None = None):
    """A DataLoader yielding exactly `steps` batches of the training split, in a seed-fixed order."""
    from torch.utils.data import DataLoader

    dataset = open_dataset(manifest, "train", img_size, shards_dir)
    sampler = StepBatchSampler(len(dataset), batch_size, steps, seed)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, persistent_workers=False)
