"""Train-stage outputs (curve.csv, train.json, run.json, timing.csv) and a baseline written straight to disk,
without torch.

The compare, report, gate and summary stages only read files, so their tests feed them runs with
chosen loss curves: a port that matches, one that drifts away, one that blows up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.baselines import baseline_from_runs, save_baseline
from pipelines.curves import Curve
from pipelines.curves import write_curve_csv
from pipelines.params import load_params
from pipelines.provenance import file_sha256, write_run_record


def environment(device: str, device_name: str, torch_version: str = "2.14.1") -> dict:
    return {"device": device, "device_index": 0, "device_name": device_name, "torch": torch_version,
            "timm": "1.0.20", "python": "3.11.7", "host": f"{device}-runner", "platform": "Linux",
            "cpu": "Test CPU", "threads": 2, "plugin": "torch_sdaa 2.0" if device == "sdaa" else "",
            "driver": "", "cuda": ""}


def reference_loss(steps: int = 60) -> np.ndarray:
    """A decaying loss with step-to-step noise, like a short CaiT run."""
    rng = np.random.default_rng(0)
    x = np.arange(steps)
    return 2.3 * np.exp(-x / 25) + 0.9 + rng.normal(0, 0.01, steps)


def envelope_runs(curve, record: dict) -> list[tuple]:
    """Two numerics variants of the baseline run whose distance grows from 0 to 1e-4 relative over the run,
    the shape (not the measured size) of a real envelope: tiny at first, growing step by step."""
    growth = 1e-4 * np.linspace(0.0, 1.0, len(curve.loss)) ** 2
    return [(Curve(curve.steps, curve.loss * (1 + sign * growth)), {**record, "numerics_variant": name},
             f"test envelope run {name}") for sign, name in ((1, "threads_1"), (-1, "weights_ulp"))]


def write_run(project: Path, loss, *, profile: str = "default", device: str = "sdaa",
              device_name: str = "Tecorigin T100", samples_per_s: float = 210.0, run_id: str = "",
              baseline_loss=None) -> Path:
    """Write reports/<profile>/curve.csv, train.json, run.json and timing.csv with `loss` (as the train stage
    does), and (given baseline_loss) the profile's baseline recorded on a CUDA device from the same params.
    Returns the run folder."""
    params = load_params(project / "params.yaml")
    out = project / "reports" / profile
    loss = np.asarray(loss, dtype=float)
    rows = [{"step": i, "loss": float(v), "lr": 1e-3, "samples_per_s": samples_per_s, "elapsed_s": 0.1 * (i + 1)}
            for i, v in enumerate(loss)]
    write_curve_csv(out / "curve.csv", rows)
    record = {"profile": profile, "mlflow_run_id": run_id, "mlflow_parent_run_id": "", "tracking_uri": "",
              "environment": environment(device, device_name), "git_commit": "abc123",
              "date": "2026-11-27T02:00:00+00:00", "params_hash": params.curve_hash(),
              "curve_params": params.curve_defining(), "data_manifest_hash": "f" * 64, "data_source": "synthetic",
              "steps_done": len(loss), "curve_sha256": file_sha256(out / "curve.csv"), "stopped": "", "wall_s": 0.1 * len(loss), "mean_samples_per_s": samples_per_s}
    write_run_record(out / "train.json", record, rows)
    if baseline_loss is not None:
        base_rows = [{**r, "loss": float(v), "samples_per_s": 400.0} for r, v in zip(rows, baseline_loss)]
        base_dir = project / "reports" / f".baseline-{profile}"
        write_curve_csv(base_dir / "curve.csv", base_rows)
        base_record = {**record, "environment": environment("cuda", "NVIDIA A100-SXM4-40GB", "2.4.0"),
                       "mean_samples_per_s": 400.0, "mlflow_run_id": "baseline-run"}
        from pipelines.curves import read_curve_csv

        base_curve = read_curve_csv(base_dir / "curve.csv")
        baseline = baseline_from_runs([(base_curve, base_record, "test baseline")], profile,
                                      envelope_runs=envelope_runs(base_curve, base_record))
        save_baseline(project / params.compare.baseline, baseline)
    return out
