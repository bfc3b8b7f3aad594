"""Data for training: the synthetic ImageNet-layout dataset, real ImageNet folders, the manifest
that pins both, and the loader that reads either through the same code path.

Layout (as ImageNet): `train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG`. The manifest lists every file
with its label (and, for synthetic data, its SHA-256); its hash identifies the data a curve was
trained on, and goes into every run record and baseline.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cait.errors import DataError

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
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

    @property
    def hash(self) -> str:
        body = {"classes": self.classes, "splits": self.splits, "content_hashes": self.content_hashes}
        return hashlib.sha256(json.dumps(body, separators=(",", ":")).encode()).hexdigest()

    def to_json(self, root_text: str) -> dict:
        return {"version": MANIFEST_VERSION, "source": self.source, "root": root_text, "classes": self.classes,
                "content_hashes": self.content_hashes, "hash": self.hash,
                "counts": {k: len(v) for k, v in self.splits.items()},
                "splits": {k: [list(e) for e in v] for k, v in self.splits.items()}}


def write_manifest(manifest: Manifest, folder: Path, root_text: str) -> Path:
    path = Path(folder) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_json(root_text), indent=0) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(folder: Path | str) -> Manifest:
    """Read the prepare stage's manifest; `root` is relative to the manifest's folder unless absolute."""
    path = Path(folder) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
        splits = {k: [(p, int(lbl), h) for p, lbl, h in v] for k, v in data["splits"].items()}
        manifest = Manifest(data["source"], (path.parent / data["root"]).resolve(), list(data["classes"]), splits,
                            bool(data["content_hashes"]))
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


def scan_imagenet(root: Path | str) -> Manifest:
    """Check an ImageNet-layout folder and list its files (by size: hashing 1.3M JPEGs is its own job).

    Errors name the path and the fix: a missing folder, a split without class folders, an empty class,
    val classes that train does not have.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path {root}: not a folder; point data.path at the ImageNet root holding train/ and val/")
    classes: list[str] = []
    splits: dict[str, list[tuple[str, int, str]]] = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise DataError(f"{folder}: missing; an ImageNet root needs train/ and val/ folders")
        class_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
        if not class_dirs:
            raise DataError(f"{folder}: no class folders; reorganise it into {split}/<wnid>/*.JPEG (see README)")
        names = [p.name for p in class_dirs]
        if split == "train":
            classes = names
        elif set(names) - set(classes):
            extra = sorted(set(names) - set(classes))
            raise DataError(f"{folder}: class folder(s) {', '.join(extra[:5])} do not exist in train/; "
                            f"the two splits must use the same WordNet ids")
        index = {name: i for i, name in enumerate(classes)}
        entries = []
        for class_dir in class_dirs:
            files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise DataError(f"{class_dir}: empty class folder; restore its images or remove the folder")
            entries += [(f"{split}/{class_dir.name}/{p.name}", index[class_dir.name], str(p.stat().st_size))
                        for p in files]
        splits[split] = entries
    return Manifest("imagenet", root.resolve(), classes, splits, content_hashes=False)


def decode_image(path: Path, size: int) -> np.ndarray:
    """Decode to RGB float32 CHW, resized (bicubic) to `size` if needed, normalised with ImageNet statistics."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BICUBIC)
            array = np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc}); remove or replace the file and rerun prepare") from None
    return ((array - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


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


def train_loader(manifest: Manifest, *, img_size: int, batch_size: int, steps: int, seed: int, num_workers: int):
    """A DataLoader yielding exactly `steps` batches of the training split, in a seed-fixed order."""
    from torch.utils.data import DataLoader

    dataset = ManifestDataset(manifest, "train", img_size)
    sampler = StepBatchSampler(len(dataset), batch_size, steps, seed)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, persistent_workers=False)
