"""Stored reference curves with their provenance: one versioned JSON file per baseline.

A baseline says where its curve came from (device and its name, versions, the params that define
the curve and their hash, the data manifest hash, git commit, date), so that a comparison against a
baseline made under other conditions can be refused instead of silently passing or failing.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cait.errors import BaselineError
from pipelines.curves import Curve

SCHEMA_VERSION = 1
PROVENANCE_FIELDS = ("device", "device_name", "versions", "params_hash", "params", "data_manifest_hash",
                     "git_commit", "date", "seed")


@dataclass
class Baseline:
    profile: str
    model: str
    steps: np.ndarray
    loss: np.ndarray
    provenance: dict
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def curve(self) -> Curve:
        return Curve(self.steps, self.loss)

    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "profile": self.profile,
            "model": self.model,
            "kind": "single-run",
            "provenance": self.provenance,
            # full precision: json writes floats with repr(), which round-trips float64 exactly
            "steps": [int(s) for s in self.steps],
            "loss": [float(v) for v in self.loss],
            **self.extra,
        }


def _fail(path, what: str) -> BaselineError:
    return BaselineError(f"{path}: {what}; record a new one with `python -m pipelines.stages.baseline record`")


def load_baseline(path: Path | str) -> Baseline:
    """Read and check a baseline file; every structural problem is an error naming the file and field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BaselineError(
            f"{path}: baseline not found; set compare.baseline in params.yaml or record one with "
            f"`python -m pipelines.stages.baseline record`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(path, f"not valid JSON ({exc.__class__.__name__} at {getattr(exc, 'pos', '?')}; truncated?)") from None
    if not isinstance(data, dict):
        raise _fail(path, "expected a JSON object at the top level")
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise _fail(path, "missing or non-integer 'schema_version'")
    if version > SCHEMA_VERSION:
        raise BaselineError(f"{path}: schema_version {version} is newer than this harness understands "
                            f"({SCHEMA_VERSION}); update the harness (git pull) to read it")
    for key, kind in (("profile", str), ("model", str), ("provenance", dict), ("steps", list), ("loss", list)):
        if not isinstance(data.get(key), kind):
            raise _fail(path, f"missing or malformed field {key!r} (expected {kind.__name__})")
    missing = [f for f in PROVENANCE_FIELDS if f not in data["provenance"]]
    if missing:
        raise _fail(path, f"provenance lacks {', '.join(missing)}")
    steps, loss = data["steps"], data["loss"]
    if not loss:
        raise _fail(path, "the curve has no steps")
    if len(steps) != len(loss):
        raise _fail(path, f"'steps' has {len(steps)} entries but 'loss' has {len(loss)}")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in steps):
        raise _fail(path, "'steps' must be whole numbers")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in loss):
        raise _fail(path, "'loss' holds a non-numeric value")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise _fail(path, "'steps' must increase strictly")
    known = {"schema_version", "profile", "model", "kind", "provenance", "steps", "loss"}
    return Baseline(profile=data["profile"], model=data["model"], steps=np.array(steps, dtype=np.int64),
                    loss=np.array(loss, dtype=np.float64), provenance=data["provenance"],
                    schema_version=version, extra={k: v for k, v in data.items() if k not in known})


def save_baseline(path: Path | str, baseline: Baseline) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(baseline.to_json(), indent=1) + "\n")
    os.replace(tmp, path)


def baseline_from_run(curve: Curve, record: dict, profile: str, source: str) -> Baseline:
    """Turn a train stage's curve and record (train.json) into a baseline with full provenance."""
    if not np.all(np.isfinite(curve.loss)):
        raise BaselineError(f"{source}: the curve holds non-finite losses; it cannot become a baseline")
    env = record["environment"]
    provenance = {
        "device": env["device"],
        "device_name": env["device_name"],
        "driver": env.get("driver", ""),
        "versions": {k: env.get(k, "") for k in ("torch", "timm", "plugin", "cuda", "python")},
        "host": env.get("host", ""),
        "params_hash": record["params_hash"],
        "params": record["curve_params"],
        "data_manifest_hash": record["data_manifest_hash"],
        "data_pixels_hash": record.get("data_pixels_hash", ""),  # the train shard's pixels (data.shards)
        "git_commit": record.get("git_commit", ""),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": record["curve_params"]["train"]["seed"],
        "source": source,
        "mlflow_run_id": record.get("mlflow_run_id") or "",
        "mean_samples_per_s": record.get("mean_samples_per_s"),
    }
    return Baseline(profile=profile, model=record["curve_params"]["model"]["name"], steps=curve.steps,
                    loss=curve.loss, provenance=provenance)


def _diff_keys(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    same = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    return [] if same else [prefix.rstrip(".")]


def refusals(baseline: Baseline, profile: str, record: dict) -> list[str]:
    """Reasons the baseline cannot judge this run: another profile, model, params or data."""
    out = []
    if baseline.profile != profile:
        out.append(f"baseline is for profile {baseline.profile!r}, this run is {profile!r}")
    prov = baseline.provenance
    if prov["params_hash"] != record["params_hash"]:
        keys = _diff_keys(prov.get("params", {}), record["curve_params"])
        out.append("baseline was made with other params: " + (", ".join(keys) if keys else "params hash differs"))
    if prov["data_manifest_hash"] != record["data_manifest_hash"]:
        out.append("baseline was made from other data (data manifest hash differs)")
    elif prov.get("data_pixels_hash") and record.get("data_pixels_hash") and \
            prov["data_pixels_hash"] != record["data_pixels_hash"]:
        out.append("baseline saw other pixels from the same files (shard pixel hash differs: another image "
                   "decoder); share data/prepared/shards between the machines (dvc push / dvc pull)")
    return out


def environment_table(baseline: Baseline, record: dict) -> list[tuple[str, str, str]]:
    """(field, baseline, candidate) rows for the report; device and version differences are shown, not hidden."""
    prov, env = baseline.provenance, record["environment"]
    rows = [("device", prov["device"], env["device"]), ("device name", prov["device_name"], env["device_name"]),
            ("driver", prov.get("driver", ""), env.get("driver", ""))]
    rows += [(k, prov["versions"].get(k, ""), env.get(k, "")) for k in ("torch", "timm", "plugin", "cuda", "python")]
    rows += [("host", prov.get("host", ""), env.get("host", "")),
             ("git commit", prov["git_commit"], record.get("git_commit", "")),
             ("params hash", prov["params_hash"][:12], record["params_hash"][:12]),
             ("data manifest hash", prov["data_manifest_hash"][:12], record["data_manifest_hash"][:12]),
             ("date", prov["date"], record.get("date", ""))]
    return [(name, str(a), str(b)) for name, a, b in rows]
