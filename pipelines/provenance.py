"""Where a run's numbers came from: git commit and the train stage's run record (train.json)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cait.errors import BaselineError
from cait.files import atomic_write_text


def git_commit() -> str:
    """HEAD's commit, suffixed `-dirty` when tracked files differ from it; empty outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if sha.returncode:
            return ""
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def write_record(path: Path | str, record: dict) -> None:
    """Write a JSON record (train.json, verdict.json) atomically."""
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


RECORD_FIELDS = ("environment", "params_hash", "curve_params", "data_manifest_hash")


def read_record(path: Path | str) -> dict:
    """Read a train stage record, checking the fields later stages rely on."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise BaselineError(f"{path}: run record not found; run the train stage first (dvc repro train)") from None
    except json.JSONDecodeError:
        raise BaselineError(f"{path}: run record is not valid JSON; rerun the train stage (dvc repro -f train)") from None
    missing = [f for f in RECORD_FIELDS if f not in record]
    if missing:
        raise BaselineError(f"{path}: run record lacks {', '.join(missing)}; rerun the train stage (dvc repro -f train)")
    return record


def file_id(path: Path | str) -> str:
    """Names one version of a file (a baseline, dvc.lock): its path and the first 12 hex digits of its SHA-256."""
    import hashlib

    return f"{path}@{hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]}"
