"""Pinned subsets and pre-decoded shards: what a short regression run trains on.

A short run of K steps x global batch reads a subset of the data chosen by seed and written as a
manifest of paths, labels and SHA-256 content hashes. DVC tracks that manifest, not the images; its
hash goes into the run record and the baseline's provenance, so a comparison against a baseline made
from other images is refused.

The shards are the pinned subset decoded once, resized to the training resolution and stored as
uint8 arrays (`<split>.npy`, N x H x W x 3, memory-mapped when read), so a run decodes no JPEG and
two machines that share the shards see identical pixels whatever their image libraries. An item is
the same (CHW float32 normalised, label) as `ManifestDataset`'s, bit for bit, because both go
through `cait.data.decode_rgb` and `cait.data.normalise`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from cait.data import Manifest, decode_rgb, normalise
from cait.errors import DataError
from cait.imagenet import inspect_file, parallel_map

SHARDS_VERSION = 1
SHARD_META = "meta.json"
_SPLIT_CODES = {"train": 0, "val": 1}


def _hash_and_check(path: str) -> tuple[str, str, str]:
    """(sha256, kind, detail) of one file, decoding it fully: a pinned file must be trainable."""
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        return "", "unreadable", exc.strerror or str(exc)
    kind, detail = inspect_file(path, decode=True)
    return digest, kind, detail


def pin_subset(manifest: Manifest, *, train_images: int, val_images: int, seed: int, exclude: tuple[str, ...] =
               ("truncated", "unreadable"), workers: int | None = None, progress: bool = True) -> Manifest:
    """Choose up to `train_images` / `val_images` files by seed, hash their bytes and list them in manifest order.

    Candidates come from a permutation keyed by (seed, split); one that fails to decode is quarantined
    and the next candidate taken, so the subset is as large as asked whenever the data allows (else it
    holds every readable file). Asking for at least the whole split keeps the split as it is.
    """
    splits: dict[str, list[tuple[str, int, str]]] = {}
    quarantined = list(manifest.quarantined)
    wanted = {"train": train_images, "val": val_images}
    for split, entries in manifest.splits.items():
        want = min(wanted.get(split, 0), len(entries))
        order = np.random.default_rng([seed, _SPLIT_CODES.get(split, 2)]).permutation(len(entries))
        chosen: list[int] = []
        hashes: dict[int, str] = {}
        cursor = 0
        while len(chosen) < want and cursor < len(order):
            batch = [int(i) for i in order[cursor:cursor + (want - len(chosen))]]
            cursor += len(batch)
            results = parallel_map(_hash_and_check, [str(manifest.root / entries[i][0]) for i in batch],
                                   workers=workers, desc=f"pin {split}", progress=progress)
            for i, (digest, kind, detail) in zip(batch, results):
                rel = entries[i][0]
                if manifest.content_hashes and digest and digest != entries[i][2]:
                    raise DataError(f"{manifest.root / rel}: content differs from the listing (sha256 {digest[:12]} "
                                    f"!= {entries[i][2][:12]}); the data changed since it was listed: rerun prepare "
                                    f"(dvc repro -f prepare)")
                if kind in exclude:
                    quarantined.append((rel, kind, detail, True))
                    continue
                chosen.append(i)
                hashes[i] = digest
        if want and not chosen:
            raise DataError(f"{manifest.root / split}: none of its {len(entries)} listed images is readable; "
                            f"restore them from the archive")
        splits[split] = [(entries[i][0], entries[i][1], hashes[i]) for i in sorted(chosen)]
    pinned = {"seed": seed, "train_images": len(splits.get("train", [])), "val_images": len(splits.get("val", [])),
              "from_hash": manifest.hash, "from_counts": {k: len(v) for k, v in manifest.splits.items()}}
    return Manifest(manifest.source, manifest.root, manifest.classes, splits, content_hashes=True,
                    quarantined=quarantined, pinned=pinned)


class _Decoder:
    """Picklable `path -> uint8 HWC at img_size` for the worker processes."""

    def __init__(self, img_size: int):
        self.img_size = img_size

    def __call__(self, path: str) -> np.ndarray:
        return decode_rgb(Path(path), self.img_size)


def _sha256_of(array: np.ndarray, rows: int = 1024) -> str:
    digest = hashlib.sha256()
    for start in range(0, len(array), rows):
        digest.update(np.ascontiguousarray(array[start:start + rows]).tobytes())
    return digest.hexdigest()


def build_shards(manifest: Manifest, out_dir: Path | str, img_size: int, *, workers: int | None = None,
                 progress: bool = True, chunk: int = 1024) -> dict:
    """Decode every file of the manifest once into `<split>.npy` (uint8 N x H x W x 3) and `<split>_labels.npy`.

    meta.json is written last: a folder without it is not a finished set of shards.
    """
    from PIL import __version__ as pillow_version

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SHARD_META).unlink(missing_ok=True)
    decoder = _Decoder(img_size)
    splits = {}
    for split, entries in manifest.splits.items():
        tmp = out_dir / f"{split}.partial.npy"
        pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(entries), img_size, img_size, 3))
        for start in range(0, len(entries), chunk):
            part = entries[start:start + chunk]
            decoded = parallel_map(decoder, [str(manifest.root / rel) for rel, _, _ in part], workers=workers,
                                   desc=f"shards {split}", progress=progress, chunksize=16)
            for offset, array in enumerate(decoded):
                pixels[start + offset] = array
        pixels.flush()
        pixel_hash = _sha256_of(pixels)
        del pixels
        os.replace(tmp, out_dir / f"{split}.npy")
        np.save(out_dir / f"{split}_labels.npy", np.array([label for _, label, _ in entries], dtype=np.int64))
        splits[split] = {"count": len(entries), "pixels_sha256": pixel_hash}
    meta = {"version": SHARDS_VERSION, "manifest_hash": manifest.hash, "img_size": img_size, "resize": "bicubic",
            "layout": "N x H x W x 3 uint8 RGB", "pillow": pillow_version, "splits": splits}
    tmp = out_dir / (SHARD_META + ".partial")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, out_dir / SHARD_META)
    return meta


def read_shard_meta(shards_dir: Path | str) -> dict:
    path = Path(shards_dir) / SHARD_META
    try:
        meta = json.loads(path.read_text())
        meta["splits"], meta["manifest_hash"], meta["img_size"]  # noqa: B018 - the fields readers rely on
    except FileNotFoundError:
        raise DataError(f"{path}: no finished shards; run the prepare stage with data.shards: true "
                        f"(dvc repro prepare)") from None
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{path}: corrupt shard metadata; rerun the prepare stage (dvc repro -f prepare)") from None
    return meta


class ShardDataset:
    """One split of the shards, as (CHW float32 tensor normalised, label) like ManifestDataset.

    `pixels(index)` gives the stored uint8 HWC image for transforms that start from pixels. The arrays
    are memory-mapped lazily in each process, so DataLoader workers share the page cache, not copies.
    """

    def __init__(self, shards_dir: Path | str, split: str, *, manifest: Manifest | None = None,
                 img_size: int | None = None):
        self.dir = Path(shards_dir)
        self.split = split
        self.meta = read_shard_meta(self.dir)
        if manifest is not None and self.meta["manifest_hash"] != manifest.hash:
            raise DataError(f"{self.dir}: shards were built from another manifest ({self.meta['manifest_hash'][:12]}, "
                            f"not {manifest.hash[:12]}); rerun the prepare stage (dvc repro -f prepare)")
        if img_size is not None and self.meta["img_size"] != img_size:
            raise DataError(f"{self.dir}: shards hold {self.meta['img_size']}px images but training uses {img_size}px; "
                            f"rerun the prepare stage (dvc repro -f prepare)")
        if split not in self.meta["splits"]:
            raise DataError(f"{self.dir}: no {split} shard; rerun the prepare stage (dvc repro -f prepare)")
        self.labels = np.load(self.dir / f"{split}_labels.npy")
        self._pixels = None
        if len(self.labels) != self.meta["splits"][split]["count"]:
            raise DataError(f"{self.dir}: {split} labels do not match meta.json; rerun prepare (dvc repro -f prepare)")

    def __getstate__(self):
        return {**self.__dict__, "_pixels": None}  # workers map the file themselves

    @property
    def array(self) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.load(self.dir / f"{self.split}.npy", mmap_mode="r")
        return self._pixels

    def __len__(self) -> int:
        return len(self.labels)

    def pixels(self, index: int) -> np.ndarray:
        return np.asarray(self.array[index])

    def __getitem__(self, index: int):
        import torch

        return torch.from_numpy(normalise(self.array[index])), int(self.labels[index])
