"""Where a run's numbers came from: git commit and the train stage's run record (train.json, run.json).

A train run's record is two files. train.json (a DVC output) holds only what the same params give bit for bit
on the same machine: environment, numerics, params and data hashes, steps done and the curve's SHA-256. What
differs between two runs of the same curve (MLflow ids, tracking URI, date, wall time, throughput, git
commit, host name and OS release) goes to run.json beside it, with the steps' timings in timing.csv: neither
is a DVC output (git-ignored), so a fresh clone's `dvc repro` leaves dvc.lock as committed. `read_run` joins
the two again (run.json only when it names the same curve), so readers see one record, as before.
"""

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
# what differs between two runs that train the same curve: run.json, not train.json
RUN_INFO_FIELDS = ("mlflow_run_id", "mlflow_parent_run_id", "mlflow_experiment_id", "tracking_uri", "git_commit",
                   "date", "wall_s", "run_seconds", "mean_samples_per_s", "stopped_early_seconds",
                   "failed_after_seconds")
RUN_INFO_ENVIRONMENT = ("host", "platform")  # environment fields that name the machine, not the numerics


def split_record(record: dict) -> tuple[dict, dict]:
    """(train.json, run.json) of a whole run record: the volatile fields (RUN_INFO_FIELDS, and the host
    and platform of its environment) move to run.json, which names the curve's SHA-256 to say whose it is."""
    stable = {k: v for k, v in record.items() if k not in RUN_INFO_FIELDS}
    environment = dict(record.get("environment") or {})
    info = {k: record[k] for k in RUN_INFO_FIELDS if k in record}
    info["environment"] = {k: environment.pop(k) for k in RUN_INFO_ENVIRONMENT if k in environment}
    info["curve_sha256"] = record.get("curve_sha256")
    stable["environment"] = environment
    return stable, info


def write_run_record(record_path: Path | str, record: dict, rows: list[dict] | None = None) -> list[Path]:
    """Write a finished run's timing.csv (given its rows) and run.json, then train.json last (each atomically),
    beside each other; returns the two volatile files written."""
    from pipelines.curves import write_timing_csv
    from pipelines.layout import RUN_INFO, TIMING

    record_path = Path(record_path)
    stable, info = split_record(record)
    written = []
    if rows is not None:
        write_timing_csv(record_path.parent / TIMING, rows)
        written.append(record_path.parent / TIMING)
    write_record(record_path.parent / RUN_INFO, info)
    written.append(record_path.parent / RUN_INFO)
    write_record(record_path, stable)
    return written


def read_run_info(path: Path | str, curve_sha256: str | None) -> tuple[dict, str]:
    """run.json's fields and a note. A missing, unreadable or foreign run.json (naming another curve) is no
    error: its facts are unknown (throughput not judged, no MLflow link), and the note says why."""
    path = Path(path)
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return {}, f"{path}: not found (a run of an older harness, or deleted); its throughput and MLflow run are unknown"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}, f"{path}: not valid JSON; its throughput and MLflow run are unknown (rerun the train stage)"
    if not isinstance(info, dict):
        return {}, f"{path}: not a JSON object; its throughput and MLflow run are unknown (rerun the train stage)"
    if curve_sha256 and info.get("curve_sha256") != curve_sha256:
        return {}, (f"{path}: belongs to another curve (a stopped or foreign run); its throughput and MLflow run "
                    f"are unknown (rerun the train stage)")
    return info, ""


def with_run_info(record: dict, info: dict) -> dict:
    """train.json's record joined with its run.json: one dict, as train.json held before the split."""
    merged = {**record, **{k: info[k] for k in RUN_INFO_FIELDS if k in info}}
    if isinstance(record.get("stopped_early"), dict):  # fail fast's seconds, where run.json has them
        merged["stopped_early"] = {**record["stopped_early"], "seconds": info.get("stopped_early_seconds"),
                                   "failed_after_s": info.get("failed_after_seconds")}
    environment = info.get("environment")
    if isinstance(environment, dict):
        merged["environment"] = {**record.get("environment", {}), **environment}
    return merged


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
    Returns (Curve, record), the record joined with the run.json beside it (`with_run_info`); when run.json
    is missing or names another curve, record["run_info_note"] says so and its fields are absent."""
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
    from pipelines.layout import RUN_INFO

    info, note = read_run_info(Path(record_path).parent / RUN_INFO, expected)
    if note and "mean_samples_per_s" in record:  # a record of an older harness holds these facts itself
        note = ""
    return curve, {**with_run_info(record, info), "run_info_note": note}
