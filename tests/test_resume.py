"""Checkpoint and resume: a run killed mid-way and resumed gives the uninterrupted run's curve, bit for bit.

The curve's loss, lr and batch_hash columns are compared as text (the file stores repr() of each
float), and the whole file byte for byte: the wall-clock measurements (samples_per_s, elapsed_s) are in
timing.csv beside it, not in the curve.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cait.checkpoint import LAST, CheckpointError, load_checkpoint, save_checkpoint
from conftest import write_params

COMPARED = ("step", "loss", "lr", "batch_hash")
RESUMABLE = {
    "model": {"drop_path": 0.1},
    "train": {"steps": 6, "checkpoint_every": 2, "label_smoothing": 0.1,
              "augment": {"hflip": 0.5, "rand_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25},
              "mixup": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0}},
    "device": {"threads": 1},
    "tracking": {"enabled": False},
}


def curve_columns(path: Path) -> list[tuple[str, ...]]:
    with path.open() as f:
        return [tuple(row[c] for c in COMPARED) for row in csv.DictReader(f)]


def train_cmd(out_dir: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.stages.train", "--out-dir", out_dir, *extra]


def wait_for(condition, timeout: float, what: str, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_and_sigterm_then_resume_reproduce_the_curve(tiny_project):
    write_params(tiny_project, RESUMABLE)
    subprocess.run([sys.executable, "-m", "pipelines.stages.prepare"], check=True, capture_output=True)
    subprocess.run(train_cmd("ref"), check=True, capture_output=True)
    reference = curve_columns(tiny_project / "ref" / "curve.csv")
    assert len(reference) == 6

    # SIGKILL right after the first periodic checkpoint (after step 1), then resume
    checkpoint = tiny_project / "killed" / "checkpoints" / LAST
    proc = subprocess.Popen(train_cmd("killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(checkpoint.exists, 300, "the first checkpoint", proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    resumed = subprocess.run(train_cmd("killed", "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert curve_columns(tiny_project / "killed" / "curve.csv") == reference
    assert (tiny_project / "killed" / "curve.csv").read_bytes() == (tiny_project / "ref" / "curve.csv").read_bytes()
    record = (tiny_project / "killed" / "train.json").read_text()
    assert '"resumed_from_step": 2' in record or '"resumed_from_step": 4' in record

    # SIGTERM mid-run writes a checkpoint at the step it was in and exits with status 4
    proc = subprocess.Popen(train_cmd("termed"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "Iteration: 2 " in line:
            proc.send_signal(signal.SIGTERM)
            break
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 4, stderr
    assert "stopped by SIGTERM after step" in stderr and "--resume" in stderr
    stopped_at = int(stderr.split("stopped by SIGTERM after step ")[1].split(";")[0])
    assert load_checkpoint(tiny_project / "termed" / "checkpoints" / LAST)["step"] == stopped_at + 1
    # the steps trained so far are kept beside the DVC output, never as curve.csv (only finished runs are)
    partial = tiny_project / "termed" / "curve.partial.csv"
    assert curve_columns(partial) == reference[:stopped_at + 1]
    assert not (tiny_project / "termed" / "curve.csv").exists()
    resumed = subprocess.run(train_cmd("termed", "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert curve_columns(tiny_project / "termed" / "curve.csv") == reference
    assert not partial.exists()

    # a checkpoint from other params is refused, not silently used or replaced by a fresh start
    write_params(tiny_project, {"train": {"lr": 0.002}})
    refused = subprocess.run(train_cmd("termed", "--resume"), capture_output=True, text=True)
    assert refused.returncode == 2
    assert "other curve-defining params" in refused.stderr and str(LAST) in refused.stderr


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign"])
def test_corrupt_or_foreign_checkpoint_is_a_clear_error(tmp_path, damage):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 3, "params_hash": "abc", "model": {"w": torch.ones(1000)}, "optimizer": {},
                           "rows": []})
    if damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    else:
        torch.save({"state_dict": {"w": torch.ones(3)}}, path)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_checkpoint_with_other_params_or_code_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 3, "params_hash": "abc", "model": {}, "optimizer": {}, "rows": []})
    assert load_checkpoint(path, "abc")["step"] == 3
    with pytest.raises(CheckpointError, match="other curve-defining params"):
        load_checkpoint(path, "def")
    # weights_only loading: a checkpoint that needs arbitrary code is rejected, never executed
    torch.save({"format": "cait-harness-checkpoint", "version": 1, "payload": Path("x")}, path)
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_checkpoint(path)


def test_model_mismatch_names_the_checkpoint(tmp_path):
    from cait.checkpoint import load_model_state

    model = torch.nn.Linear(4, 2)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_model_state(model, {"weight": torch.zeros(3, 4), "bias": torch.zeros(3)}, tmp_path / "last.pt")
