"""Pinned subsets and pre-decoded shards: what a short regression run trains on.

A short run of K steps x global batch reads a subset of the data chosen by seed and written as a
manifest of paths, labels and SHA-256 content hashes. DVC tracks that manifest, not the images; its
hash goes into the run record and the baseline's provenance, so a comparison against a baseline made
from other images is refused.

The shards are the pinned subset decoded once, resized to the training resolution and stored as
uint8 arrays (`<split>.npy`, N x H x W x 3, memory-mapped when read), so a run decodes no JPEG and
two machines that share the shards see identical pixels whatever their image libraries. An item is
the same (CHW float32 normalised, label) as `ManifestDataset`'s, bit for bit, because both go
through `cait.pixels.decode_rgb` and `cait.pixels.normalise`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from cait.errors import DataError
from cait.files import atomic_output, atomic_write_text, ensure_folder
from cait.imagenet import inspect_file
from cait.manifest import REPREPARE, Manifest
from cait.parallel import parallel_map
from cait.pixels import decode_rgb, normalise

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
                                    f"!= {entries[i][2][:12]}); the data changed since it was listed: {REPREPARE}")
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

    out_dir = ensure_folder(out_dir)
    (out_dir / SHARD_META).unlink(missing_ok=True)
    decoder = _Decoder(img_size)
    splits = {}
    for split, entries in manifest.splits.items():
        with atomic_output(out_dir / f"{split}.npy") as tmp:
            pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                               shape=(len(entries), img_size, img_size, 3))
            for start in range(0, len(entries), chunk):
                part = entries[start:start + chunk]
                decoded = parallel_map(decoder, [str(manifest.root / rel) for rel, _, _ in part], workers=workers,
                                       desc=f"shards {split}", progress=progress, chunksize=16)
                for offset, array in enumerate(decoded):
                    pixels[start + offset] = array
            pixels.flush()
            pixel_hash = _sha256_of(pixels)
            del pixels
        with atomic_output(out_dir / f"{split}_labels.npy") as tmp:
            np.save(tmp, np.array([label for _, label, _ in entries], dtype=np.int64))
        splits[split] = {"count": len(entries), "pixels_sha256": pixel_hash}
    meta = {"version": SHARDS_VERSION, "manifest_hash": manifest.hash, "img_size": img_size, "resize": "bicubic",
            "layout": "N x H x W x 3 uint8 RGB", "pillow": pillow_version, "splits": splits}
    atomic_write_text(out_dir / SHARD_META, json.dumps(meta, indent=1) + "\n")
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
        raise DataError(f"{path}: corrupt shard metadata; {REPREPARE}") from None
    return meta


def _load_labels(path: Path) -> np.ndarray:
    try:
        return np.load(path)
    except FileNotFoundError:
        raise DataError(f"{path}: missing; {REPREPARE}") from None
    except (ValueError, OSError, EOFError) as exc:  # truncated or overwritten
        raise DataError(f"{path}: unreadable ({exc}); {REPREPARE}") from None


def check_shard_file(path: Path, shape: tuple[int, ...]) -> int:
    """Check a pixel shard's .npy header and size against the shape meta.json promises, before it is mapped;
    returns the offset of the pixels. A truncated file would otherwise fail deep inside np.load's mmap."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            found, fortran, dtype = header(f)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise DataError(f"{path}: missing; {REPREPARE}") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable shard ({exc}); {REPREPARE}") from None
    if tuple(found) != tuple(shape) or dtype != np.uint8 or fortran:
        raise DataError(f"{path}: holds {dtype} {list(found)}, meta.json says uint8 {list(shape)}; {REPREPARE}")
    expected = offset + int(np.prod(shape))
    if size != expected:
        kind = "truncated" if size < expected else "longer than its header says"
        raise DataError(f"{path}: {kind} ({size} bytes, {expected} expected); {REPREPARE}")
    return offset


def verify_shard(shards_dir: Path | str, split: str = "train") -> str:
    """Hash a shard's pixels and check them against meta.json; returns the verified SHA-256.

    Run once when training starts, so the record's pixel hash is what was read, not what meta.json claims.
    A whole-file hash rather than per-sample hashes: meta.json already holds it (no new shard format),
    and one sequential pass over the file is cheap next to training on it (the default profile's 32 MB
    train shard: 22-36 ms on a 2-core machine, under 0.1% of its ~40 s run; docs/architecture.md) and
    leaves it in the page cache the loader then reads from. The per-step batch hashes cannot serve: they are taken after augmentation.
    """
    folder = Path(shards_dir)
    meta = read_shard_meta(folder)
    if split not in meta["splits"]:
        raise DataError(f"{folder}: no {split} shard; {REPREPARE}")
    stored = meta["splits"][split]
    path = folder / f"{split}.npy"
    check_shard_file(path, (stored["count"], meta["img_size"], meta["img_size"], 3))
    digest = _sha256_of(np.load(path, mmap_mode="r"))
    if digest != stored["pixels_sha256"]:
        raise DataError(f"{path}: pixels changed since prepare wrote them (sha256 {digest[:12]}, meta.json "
                        f"{stored['pixels_sha256'][:12]}); {REPREPARE}")
    return digest


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
                            f"not {manifest.hash[:12]}); {REPREPARE}")
        if img_size is not None and self.meta["img_size"] != img_size:
            raise DataError(f"{self.dir}: shards hold {self.meta['img_size']}px images but training uses {img_size}px; "
                            f"{REPREPARE}")
        if split not in self.meta["splits"]:
            raise DataError(f"{self.dir}: no {split} shard; {REPREPARE}")
        count = self.meta["splits"][split]["count"]
        self.labels = _load_labels(self.dir / f"{split}_labels.npy")
        self._pixels = None
        if len(self.labels) != count:
            raise DataError(f"{self.dir}: {split} labels do not match meta.json; {REPREPARE}")
        check_shard_file(self.dir / f"{split}.npy", (count, self.meta["img_size"], self.meta["img_size"], 3))

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
