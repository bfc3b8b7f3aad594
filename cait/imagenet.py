"""Real ImageNet (ILSVRC2012): layout checks, val reorganisation and the integrity scan.

Users arrive with the archive or a half-prepared folder. `scan_imagenet` takes them the rest of the
way and says exactly what is wrong when something is:

- `train/` must hold one folder per class (WordNet ids); `val/` either class folders too, or the flat
  archive (`ILSVRC2012_val_00000001.JPEG` ...) plus a ground-truth file: Kaggle's `LOC_val_solution.csv`
  or the devkit's `ILSVRC2012_validation_ground_truth.txt` with its synset mapping (`meta.mat`).
- A flat `val/` is reorganised into `val/<wnid>/` with links, never copies; interrupted, it resumes,
  and rerun, it does nothing. The flat files stay where they are.
- Every file is checked (fully decoded, or a configurable share of them; the rest by header) in
  parallel worker processes with a progress bar. Known oddities (CMYK JPEGs, PNGs named .JPEG,
  grayscale images) are reported; truncated and unreadable files are quarantined in the manifest
  instead of crashing a long run hours later.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from cait.config import ImageNetConfig
from cait.errors import DataError
from cait.files import atomic_write_text
from cait.manifest import Manifest
from cait.parallel import parallel_map

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
JPEG_SUFFIXES = {".jpeg", ".jpg"}
ORGANISED_MARKER = ".organised.json"  # written into val/ once every flat image is linked into its class folder
EXAMPLES = 5  # paths named per problem in messages and the summary


def _examples(items: Iterable[str]) -> str:
    items = sorted(items)
    more = f" (+{len(items) - EXAMPLES} more)" if len(items) > EXAMPLES else ""
    return ", ".join(items[:EXAMPLES]) + more


def _listing(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as exc:
        raise DataError(f"{folder}: cannot list it ({exc.strerror}); check its permissions") from None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in _listing(folder) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


# ---------------------------------------------------------------------------------------------
# Ground truth for a flat val/

def read_synsets(path: Path) -> list[str]:
    """WordNet ids in ILSVRC2012_ID order (entry i is id i+1): from the devkit's meta.mat or a text file
    with one wnid per line (first word of each line)."""
    if not path.is_file():
        raise DataError(f"data.imagenet.synsets {path}: not found; point it at the devkit's data/meta.mat")
    if path.suffix == ".mat":
        from scipy.io import loadmat

        try:
            synsets = loadmat(path, squeeze_me=True)["synsets"]
            pairs = sorted((int(s["ILSVRC2012_ID"]), str(s["WNID"])) for s in synsets)
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise DataError(f"data.imagenet.synsets {path}: not a devkit meta.mat ({exc}); "
                            f"use ILSVRC2012_devkit_t12/data/meta.mat") from None
        wnids = [wnid for ident, wnid in pairs if 1 <= ident <= 1000]
    else:
        wnids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not wnids:
        raise DataError(f"data.imagenet.synsets {path}: lists no synsets")
    return wnids


def read_val_labels(path: Path, synsets: Path | None) -> dict[str, str]:
    """Map each val image's stem (`ILSVRC2012_val_00000001`) to its WordNet id."""
    if not path.is_file():
        raise DataError(f"data.imagenet.val_labels {path}: not found; point it at LOC_val_solution.csv or the "
                        f"devkit's ILSVRC2012_validation_ground_truth.txt")
    labels: dict[str, str] = {}
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            if header[:2] != ["ImageId", "PredictionString"]:
                raise DataError(f"data.imagenet.val_labels {path}: expected the header ImageId,PredictionString "
                                f"(Kaggle's LOC_val_solution.csv), got {','.join(header[:2]) or 'nothing'}")
            for line, row in enumerate(reader, start=2):
                if len(row) < 2 or not row[1].split():
                    raise DataError(f"data.imagenet.val_labels {path}: line {line} has no label; "
                                    f"restore the file from the archive")
                labels[row[0]] = row[1].split()[0]
        return labels
    if synsets is None:
        raise DataError(f"data.imagenet.val_labels {path}: the devkit ground truth holds ILSVRC ids; set "
                        f"data.imagenet.synsets to the devkit's data/meta.mat to map them to WordNet ids")
    wnids = read_synsets(synsets)
    for number, line in enumerate(path.read_text().split(), start=1):
        try:
            ident = int(line)
            if not 1 <= ident <= len(wnids):
                raise ValueError
        except ValueError:
            raise DataError(f"data.imagenet.val_labels {path}: entry {number} ({line!r}) is not an ILSVRC id "
                            f"between 1 and {len(wnids)} of {synsets}; is it the matching devkit?") from None
        labels[f"ILSVRC2012_val_{number:08d}"] = wnids[ident - 1]
    return labels


# ---------------------------------------------------------------------------------------------
# Reorganising a flat val/ with links

def _link(source: Path, target: Path, kind: str) -> None:
    """Make `target` a link to `source` atomically: a half-made link never carries the final name."""
    tmp = target.with_name(f".{target.name}.partial")
    try:
        target.parent.mkdir(exist_ok=True)
        tmp.unlink(missing_ok=True)
        if kind == "hard":
            os.link(source, tmp)
        else:
            tmp.symlink_to(os.path.relpath(source, target.parent))
        os.replace(tmp, target)
    except OSError as exc:
        other = "symbolic" if kind == "hard" else "hard"
        raise DataError(f"{target}: cannot make a {kind} link to {source} ({exc.strerror}); make {source.parent} "
                        f"writable, or try data.imagenet.link: {other}") from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def organise_val(val_dir: Path, labels: dict[str, str], classes: list[str], *, link: str = "hard",
                 source: str = "ground truth") -> int:
    """Link every flat image of `val_dir` into `val_dir/<wnid>/`; returns the number of links made.

    Checks first that the ground truth matches the images (every image labelled, every label an
    image, every wnid a train class), so that a wrong file changes nothing. Resumable (existing
    links are kept) and idempotent (a finished folder carries a marker and is left alone).
    """
    digest = hashlib.sha256(json.dumps(sorted(labels.items())).encode()).hexdigest()
    marker = val_dir / ORGANISED_MARKER
    if marker.is_file():
        try:
            done = json.loads(marker.read_text())
        except ValueError:
            done = {}
        if done.get("ground_truth_sha256") == digest:
            return 0
    flat = {p.stem: p for p in _images_in(val_dir)}
    unlabelled = sorted(set(flat) - set(labels))
    missing = sorted(set(labels) - set(flat))
    # a resumed run may find labelled images that are only in their class folder already (flat file deleted)
    missing = [stem for stem in missing if not any((val_dir / labels[stem]).glob(f"{stem}.*"))]
    if unlabelled or missing:
        parts = []
        if unlabelled:
            parts.append(f"{len(unlabelled)} image(s) in {val_dir} have no label (e.g. {_examples(unlabelled)})")
        if missing:
            parts.append(f"{len(missing)} label(s) have no image (e.g. {_examples(missing)})")
        raise DataError(f"{source} does not match the images: {'; '.join(parts)}; "
                        f"use the ground truth that came with this archive")
    unknown = sorted({wnid for wnid in labels.values()} - set(classes))
    if unknown:
        raise DataError(f"{source} names class(es) {_examples(unknown)} that train/ does not have; "
                        f"check data.imagenet.synsets and train/")
    made = 0
    for stem, path in sorted(flat.items()):
        target = val_dir / labels[stem] / path.name
        if target.exists() or target.is_symlink():
            if _same_file(target, path):
                continue
            raise DataError(f"{target}: exists and is not a link to {path}; remove it and rerun prepare")
        _link(path, target, link)
        made += 1
    atomic_write_text(marker, json.dumps({"ground_truth": source, "ground_truth_sha256": digest,
                                          "images": len(labels), "link": link}) + "\n")
    return made


# ---------------------------------------------------------------------------------------------
# Checking one file (runs in worker processes)

def inspect_file(path: str, decode: bool) -> tuple[str, str]:
    """(kind, detail) for one image file. kind: ok, cmyk, png_as_jpeg, grayscale, truncated, unreadable.

    `decode` decodes every pixel (catches truncation); otherwise only the header is read.
    """
    from PIL import Image, ImageFile, UnidentifiedImageError

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    suffix = os.path.splitext(path)[1].lower()
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "unreadable", "empty file"
        with open(path, "rb") as handle:
            head = handle.read(8)
        if not decode:
            if head.startswith(b"\x89PNG"):
                return ("png_as_jpeg", "PNG data in a .JPEG file") if suffix in JPEG_SUFFIXES else ("ok", "")
            if head.startswith(b"\xff\xd8\xff"):
                return "ok", "header only"
            return "unreadable", "neither JPEG nor PNG data"
        with Image.open(path) as img:
            fmt, mode = img.format, img.mode
            img.load()
    except UnidentifiedImageError:
        return "unreadable", "not an image PIL can identify"
    except (OSError, SyntaxError, ValueError) as exc:
        message = str(exc)
        return ("truncated" if "truncated" in message else "unreadable"), message
    if fmt == "PNG" and suffix in JPEG_SUFFIXES:
        return "png_as_jpeg", "PNG data in a .JPEG file"
    if mode == "CMYK":
        return "cmyk", "CMYK JPEG (converted to RGB when decoded)"
    if mode in ("L", "LA", "1", "I", "I;16", "F"):
        return "grayscale", f"{mode} image (converted to RGB when decoded)"
    return "ok", ""


def _inspect_task(task: tuple[str, bool]) -> tuple[str, str]:
    return inspect_file(*task)


def _decode_this(rel: str, fraction: float) -> bool:
    """A fixed share of the files, chosen by path (the same files every time, whatever the worker count)."""
    if fraction >= 1.0:
        return True
    return int(hashlib.sha1(rel.encode()).hexdigest()[:8], 16) < fraction * 2 ** 32


# ---------------------------------------------------------------------------------------------
# The scan

class ScanCache:
    """What earlier scans found, per file, so that a rerun (or a resumed scan) checks only new or changed files.

    Keyed by the ImageNet root; an entry counts while the file's size and mtime are unchanged and it was
    checked at least as thoroughly as now asked (decoded, or header only). Saved after every chunk.
    """

    VERSION = 1

    def __init__(self, folder: Path | None, root: Path):
        from PIL import __version__ as pillow_version

        self.path = None if folder is None else Path(folder) / (
            hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16] + ".json")
        self.key = {"version": self.VERSION, "root": str(root.resolve()), "pillow": pillow_version}
        self.entries: dict[str, list] = {}
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("key") == self.key:
                    self.entries = data["entries"]
            except (ValueError, KeyError, TypeError):
                self.entries = {}  # a damaged cache is only a slower scan

    def get(self, rel: str, stat: os.stat_result, decode: bool) -> tuple[str, str] | None:
        hit = self.entries.get(rel)
        if hit and hit[0] == stat.st_size and hit[1] == stat.st_mtime_ns and (hit[2] or not decode):
            return hit[3], hit[4]
        return None

    def put(self, rel: str, stat: os.stat_result, decoded: bool, kind: str, detail: str) -> None:
        self.entries[rel] = [stat.st_size, stat.st_mtime_ns, decoded, kind, detail]

    def save(self) -> None:
        if self.path is None:
            return
        atomic_write_text(self.path, json.dumps({"key": self.key, "entries": self.entries}, separators=(",", ":")))


@dataclass
class ScanReport:
    """What the scan found and where: counts per split against the expected totals, and every oddity."""

    root: str
    classes: int
    splits: dict[str, dict] = field(default_factory=dict)  # split -> found, expected, per_class_min/max, decoded
    findings: dict[str, dict] = field(default_factory=dict)  # kind -> count, excluded, paths
    val_links_made: int = 0
    workers: int = 1
    seconds: float = 0.0

    @property
    def images(self) -> int:
        return sum(s["found"] for s in self.splits.values())

    def to_json(self) -> dict:
        return {"root": self.root, "classes": self.classes, "splits": self.splits, "findings": self.findings,
                "val_links_made": self.val_links_made, "workers": self.workers, "seconds": round(self.seconds, 3),
                "images_per_s": round(self.images / self.seconds, 1) if self.seconds else None}

    def summary(self) -> str:
        lines = [f"scan: {self.root}: {self.classes} classes, {self.images} images in {self.seconds:.1f} s "
                 f"({self.workers} worker(s))"]
        for split, s in self.splits.items():
            expected = f" of {s['expected']} expected" if s["expected"] else ""
            cached = f" ({s['from_cache']} unchanged since the last scan)" if s.get("from_cache") else ""
            lines.append(f"  {split}: {s['found']} images{expected}, {s['per_class_min']}-{s['per_class_max']} "
                         f"per class, {s['decoded']} fully decoded{cached}")
        if self.val_links_made:
            lines.append(f"  val: {self.val_links_made} flat image(s) linked into class folders")
        for kind, f in sorted(self.findings.items()):
            action = "quarantined (left out of training)" if f["excluded"] else "kept"
            lines.append(f"  {kind}: {f['count']} file(s), {action}: {_examples(f['paths'])}")
        if not self.findings:
            lines.append("  no damaged or unusual files")
        return "\n".join(lines)


def _under_root(root: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in _listing(folder) if p.is_dir() and not p.name.startswith("."))


def check_layout(root: Path | str, cfg: ImageNetConfig) -> tuple[Path, list[str], int]:
    """Check train/ and val/ (reorganising a flat val/ with links); returns (root, classes, links made)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path {root}: not a folder; point data.path at the ImageNet root holding train/ and val/")
    train, val = root / "train", root / "val"
    for folder in (train, val):
        if not folder.is_dir():
            raise DataError(f"{folder}: missing; an ImageNet root needs train/ and val/ folders "
                            f"(extract ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar there)")
    classes = [p.name for p in _class_folders(train)]
    if not classes:
        loose = len(_images_in(train))
        hint = (f" ({loose} loose images: extract each class's tar into train/<wnid>/)" if loose
                else " (extract ILSVRC2012_img_train.tar and the per-class tars inside it)")
        raise DataError(f"{train}: no class folders{hint}")
    expected = cfg.expected.classes
    if expected is not None and len(classes) != expected:
        raise DataError(f"{train}: {len(classes)} class folders, expected {expected}; restore the missing classes "
                        f"or set data.imagenet.expected.classes to {len(classes)} for a deliberate subset")
    links = 0
    flat = _images_in(val)
    labels_path = _under_root(root, cfg.val_labels)
    if flat and not (val / ORGANISED_MARKER).is_file() and labels_path is None:
        raise DataError(f"{val}: {len(flat)} images lie flat, not in class folders; set data.imagenet.val_labels to "
                        f"LOC_val_solution.csv, or to the devkit's ILSVRC2012_validation_ground_truth.txt together "
                        f"with data.imagenet.synsets (meta.mat), and prepare links them into val/<wnid>/")
    if flat and labels_path is not None:
        labels = read_val_labels(labels_path, _under_root(root, cfg.synsets))
        links = organise_val(val, labels, classes, link=cfg.link, source=f"data.imagenet.val_labels {labels_path}")
    val_classes = [p.name for p in _class_folders(val)]
    if not val_classes:
        raise DataError(f"{val}: no class folders and no images; extract ILSVRC2012_img_val.tar into it")
    extra = sorted(set(val_classes) - set(classes))
    if extra:
        raise DataError(f"{val}: class folder(s) {_examples(extra)} do not exist in train/; "
                        f"the two splits must use the same WordNet ids")
    return root, classes, links


def scan_imagenet(root: Path | str, cfg: ImageNetConfig, *, workers: int | None = None, progress: bool = True,
                  cache_dir: Path | None = None, chunk: int = 20_000) -> tuple[Manifest, ScanReport]:
    """Check an ImageNet folder and list its files by size, leaving quarantined ones out.

    Errors name the path and the fix: a missing folder, a split without class folders, an empty
    class, the wrong number of classes or images, val classes that train does not have, a ground
    truth that does not match the images. With `cache_dir`, files unchanged since an earlier
    (possibly interrupted) scan are not checked again.
    """
    start = time.perf_counter()
    root, classes, links = check_layout(root, cfg)
    index = {name: i for i, name in enumerate(classes)}
    listing: dict[str, list[tuple[str, int, os.stat_result]]] = {}
    report = ScanReport(str(root.resolve()), len(classes), val_links_made=links, workers=workers or os.cpu_count() or 1)
    for split in ("train", "val"):
        entries, empty, per_class = [], [], []
        for class_dir in _class_folders(root / split):
            files = _images_in(class_dir)
            if not files:
                empty.append(str(class_dir))
            per_class.append(len(files))
            entries += [(f"{split}/{class_dir.name}/{p.name}", index[class_dir.name], p.stat()) for p in files]
        if empty:
            raise DataError(f"empty class folder(s): {_examples(empty)}; restore their images or remove the folders")
        expected = getattr(cfg.expected, split)
        if expected is not None and len(entries) != expected:
            raise DataError(f"{root / split}: {len(entries)} images, expected {expected}; restore the missing "
                            f"files (or set data.imagenet.expected.{split} to {len(entries)} for a deliberate subset)")
        listing[split] = entries
        report.splits[split] = {"found": len(entries), "expected": expected, "per_class_min": min(per_class),
                                "per_class_max": max(per_class), "decoded": 0, "from_cache": 0}

    splits: dict[str, list[tuple[str, int, str]]] = {}
    quarantined: list[tuple[str, str, str, bool]] = []
    findings: dict[str, dict] = {}
    cache = ScanCache(cache_dir, root)
    for split, entries in listing.items():
        decode = [_decode_this(rel, cfg.decode_fraction) for rel, _, _ in entries]
        results = [cache.get(rel, st, d) for (rel, _, st), d in zip(entries, decode)]
        todo = [i for i, r in enumerate(results) if r is None]
        report.splits[split]["decoded"] = sum(decode)
        report.splits[split]["from_cache"] = len(entries) - len(todo)
        for first in range(0, len(todo), chunk):
            part = todo[first:first + chunk]
            found = parallel_map(_inspect_task, [(str(root / entries[i][0]), decode[i]) for i in part],
                                 workers=workers, desc=f"scan {split} {first // chunk + 1}/{-(-len(todo) // chunk)}",
                                 progress=progress)
            for i, (kind, detail) in zip(part, found):
                results[i] = (kind, detail)
                cache.put(entries[i][0], entries[i][2], decode[i], kind, detail)
            cache.save()
        kept = []
        for (rel, label, st), (kind, detail) in zip(entries, results):
            excluded = kind in cfg.exclude
            if kind != "ok":
                quarantined.append((rel, kind, detail, excluded))
                f = findings.setdefault(kind, {"count": 0, "excluded": excluded, "paths": []})
                f["count"] += 1
                f["paths"].append(rel)
            if not excluded:
                kept.append((rel, label, str(st.st_size)))
        left = Counter(label for _, label, _ in kept)
        gone = [f"{split}/{classes[i]}" for i in sorted({label for _, label, _ in entries}) if not left[i]]
        if gone:
            raise DataError(f"class folder(s) {_examples(gone)} under {root}: every image is damaged "
                            f"(see the quarantine list); restore them from the archive")
        splits[split] = kept
    report.findings = findings
    report.seconds = time.perf_counter() - start
    return Manifest("imagenet", root.resolve(), classes, splits, content_hashes=False,
                    quarantined=quarantined), report
