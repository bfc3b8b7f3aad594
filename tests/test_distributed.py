"""Several processes, one job: the model card's command line with --ngpus 2 (two gloo processes on CPU).

- Same global batch, 1 process (batch 8) vs 2 processes (batch 4 each): the per-step batch hashes are
  equal (the same images, augmentations and drop-path masks went into both) and the losses agree to
  LOSS_TOLERANCE. They are not bitwise equal because the arithmetic is split differently: each rank
  reduces its 4 samples and DDP then averages two gradients where one process reduces all 8 at once,
  and the matrix products run on other shapes. Those float32 rounding differences (about 1e-7
  relative) pass through AdamW, whose update divides by sqrt(v) and so magnifies them for parameters
  with tiny gradients. Measured: equal at steps 0-1, 1.2e-7 (one float32 ulp) at steps 2-3. The
  tolerance leaves room for other CPUs and thread counts, while a real error (other data, other
  masks, a wrong mean) moves the loss by 1e-2 or more.
- A rank that dies (SIGKILL) makes the whole job fail fast with one line naming the rank.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

LOSS_TOLERANCE = 1e-4  # absolute, per step; see the module docstring

TEST_RECIPE = {
    "model": {"drop_path": 0.1, "img_size": 32},
    "train": {"steps": 4, "warmup_steps": 1, "lr": 0.001, "lr_batch_scaling": False,
              "augment": {"random_resized_crop": True, "hflip": 0.5, "rand_augment": "rand-m9-mstd0.5-inc1",
                          "reprob": 0.25},
              # Mixup pairs images within each process's batch (as DeiT does), and repeated augmentation
              # exists only with several processes: both would make the two runs see other data
              "mixup": {"mixup_alpha": 0.0, "cutmix_alpha": 0.0}, "repeated_aug": 1,
              "ema": True, "eval_every_epoch": True, "num_workers": 0},
    "device": {"type": "cpu", "deterministic": True, "threads": 1},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_curve(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture
def modelcard(tiny_project):
    """Prepared tiny synthetic data and a recipe file for the model card's command line."""
    subprocess.run([sys.executable, "-m", "pipelines.stages.prepare"], check=True, capture_output=True)
    recipe = yaml.safe_load(Path("recipes/cait_deit.yaml").read_text())
    for section, values in TEST_RECIPE.items():
        recipe[section].update(values)
    (tiny_project / "test_recipe.yaml").write_text(yaml.safe_dump(recipe))

    def command(out_dir: str, ngpus: int, batch_size: int, steps: int = 4) -> list[str]:
        return [sys.executable, "-m", "pipelines.modelcard", "--model", "cait_XXS24_224", "--data-path", "data/prepared",
                "--device", "cpu", "--epochs", "1", "--steps", str(steps), "--batch-size", str(batch_size),
                "--ngpus", str(ngpus), "--nodes", "1", "--master-port", str(free_port()),
                "--recipe", "test_recipe.yaml", "--output-dir", out_dir]

    return command


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(modelcard, tiny_project):
    one = subprocess.run(modelcard("one", ngpus=1, batch_size=8), capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(modelcard("two", ngpus=2, batch_size=4), capture_output=True, text=True)
    assert two.returncode == 0, two.stderr

    curve_one, curve_two = read_curve(tiny_project / "one/curve.csv"), read_curve(tiny_project / "two/curve.csv")
    assert len(curve_one) == len(curve_two) == 4
    assert [r["batch_hash"] for r in curve_two] == [r["batch_hash"] for r in curve_one]
    assert [r["lr"] for r in curve_two] == [r["lr"] for r in curve_one]
    diffs = [abs(float(a["loss"]) - float(b["loss"])) for a, b in zip(curve_one, curve_two)]
    assert max(diffs) <= LOSS_TOLERANCE, diffs
    assert diffs[0] <= 1e-5  # step 0: same weights, same data; only the reduction order differs

    # rank 0 alone wrote the run's files: curve, record, checkpoints, one MLflow run with epoch metrics
    record = yaml.safe_load((tiny_project / "two/train.json").read_text())
    assert record["world_size"] == 2 and record["global_batch"] == 8
    assert record["epochs"] and 0 <= record["epochs"][0]["top1"] <= 100
    assert record["epochs"][0]["val_images"] == 16  # the two ranks' val shards add up to the whole split
    assert {p.name for p in (tiny_project / "two/checkpoints").iterdir()} == {"last.pt", "best.pt"}
    assert two.stdout.count("TCAPPDLL") == 4  # one line per step, from rank 0 only

    from mlflow.tracking import MlflowClient

    run = MlflowClient().get_run(json.loads((tiny_project / "two/run.json").read_text())["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["world_size"] == "2" and run.data.tags["dist_backend"] == "gloo"
    assert run.data.tags["numerics.deterministic"] == "True"
    assert {"loss", "top1", "top5", "val_loss"} <= set(run.data.metrics)


def descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found += children
        frontier += children
    return found


def rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(v.split(b"=", 1)[1]) for v in env if v.startswith(b"RANK=")]
    return ranks[0] if ranks else None


@pytest.mark.slow
def test_a_dying_rank_fails_the_job_fast(modelcard, tiny_project):
    proc = subprocess.Popen(modelcard("dies", ngpus=2, batch_size=4, steps=200), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "Iteration: 1 " in line:
            break
    else:
        pytest.fail(f"the job ended before step 1: {proc.communicate()[1]}")
    victims = [p for p in descendants(proc.pid) if rank_of(p) == 1]
    assert victims, "no rank-1 process found"
    os.kill(victims[0], signal.SIGKILL)
    killed_at = time.monotonic()
    _, stderr = proc.communicate(timeout=120)
    took = time.monotonic() - killed_at
    assert proc.returncode == 4, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: rank 1 (pid ") and "died with signal SIGKILL" in last, last
    assert took < 60, f"the job took {took:.0f} s to stop after rank 1 died"
    assert not [p for p in descendants(proc.pid) if Path(f"/proc/{p}").exists()]


@pytest.mark.slow
def test_cait_run_trains_the_same_without_the_harness(modelcard, tiny_project):
    """`python -m cait.run` is the model card command without pipelines: the same session, the same losses,
    checkpoints and fingerprints, but no curve, record or MLflow run."""
    tracked = subprocess.run(modelcard("tracked", ngpus=1, batch_size=8), capture_output=True, text=True)
    assert tracked.returncode == 0, tracked.stderr
    command = modelcard("plain", ngpus=1, batch_size=8)
    command[command.index("pipelines.modelcard")] = "cait.run"
    plain = subprocess.run(command, capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr
    losses = [line.split()[3] for line in plain.stdout.splitlines() if line.startswith("step ")]
    assert losses == [f"{float(r['loss']):.4f}" for r in read_curve(tiny_project / "tracked/curve.csv")]
    assert {p.name for p in (tiny_project / "plain").iterdir()} == {"checkpoints", "fingerprints.npz"}
    assert {p.name for p in (tiny_project / "plain/checkpoints").iterdir()} == {"last.pt", "best.pt"}
