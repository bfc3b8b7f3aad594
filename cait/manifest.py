"""The data manifest: every file a run may read, with its label and content hash.

Layout (as ImageNet): `train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG`. The manifest lists every file
with its label and its SHA-256 (or, for a full ImageNet listing, its size); its hash identifies the
data a curve was trained on, and goes into every run record and baseline.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from cait.errors import DataError
from cait.files import atomic_write_text

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
REPREPARE = "rerun the prepare stage (dvc repro prepare -f)"  # the fix for stale or damaged prepared data


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
