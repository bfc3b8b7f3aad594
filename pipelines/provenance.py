"""Where a run's numbers came from: git commit and the train stage's run record (train.json)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from cait.errors import RecordError
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
        raise RecordError(f"{path}: run record not found; run the train stage first (dvc repro train)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RecordError(f"{path}: run record is not valid JSON; rerun the train stage (dvc repro -f train)") from None
    if not isinstance(record, dict):
        raise RecordError(f"{path}: run record is not a JSON object; rerun the train stage (dvc repro -f train)")
    missing = [f for f in RECORD_FIELDS if f not in record]
    if missing:
        raise RecordError(f"{path}: run record lacks {', '.join(missing)}; rerun the train stage (dvc repro -f train)")
    return record


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a file's exact bytes: what a record or verdict names a file version by."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_id(path: Path | str) -> str:
    """Names one version of a file (a baseline, dvc.lock): its path and the first 12 hex digits of its SHA-256."""
    return f"{path}@{file_sha256(path)[:12]}"


def read_run(curve_path: Path | str, record_path: Path | str):
    """A train stage's curve and record, checked to belong together: the record names the curve's SHA-256
    and the steps done, so a curve cut, edited or left from another run is refused, never judged.
    Returns (Curve, record)."""
    from pipelines.curves import read_curve_csv

    record = read_record(record_path)
    curve = read_curve_csv(curve_path)
    expected, steps_done = record.get("curve_sha256"), record.get("steps_done")
    if not isinstance(expected, str) or not isinstance(steps_done, int) or isinstance(steps_done, bool):
        raise RecordError(f"{record_path}: run record lacks curve_sha256 or steps_done (written by an older harness); "
                          f"rerun the train stage (dvc repro -f train)")
    if len(curve) != steps_done:
        raise RecordError(f"{curve_path}: {len(curve)} step(s), but {record_path} says {steps_done} were done (a cut "
                          f"or foreign curve); rerun the train stage (dvc repro -f train)")
    actual = file_sha256(curve_path)
    if actual != expected:
        raise RecordError(f"{curve_path}: SHA-256 {actual[:12]}, but {record_path} names {expected[:12]} (edited, "
                          f"corrupt or from another run); rerun the train stage (dvc repro -f train)")
    return curve, record
