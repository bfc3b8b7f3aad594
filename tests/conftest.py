"""Shared fixtures: a throw-away copy of the project to run stages in, and a tiny profile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [p for p in out.split("\0") if p]


def copy_project(dest: Path) -> Path:
    """Copy the committed-or-staged files of the project (no data, no runs, no MLflow store) and make it a git repo."""
    for rel in tracked_files():
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    # uncommitted edits of tracked files are copied too: tests check the working tree
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], cwd=dest, check=True)
    return dest


def fresh_runner(origin: Path, dest: Path, remote: Path) -> Path:
    """A nightly runner as docs/nightly.md sets one up: `origin` exports its baselines to the DVC remote at `remote`
    (`python -m pipelines.remote push`, the .dvc file committed), `dest` is a clone of it without baselines/ that
    points the remote at the same place (`dvc remote modify --local`) and pulls them (`pipelines.remote pull`)."""
    def run(args, cwd, env):
        done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{args} exited {done.returncode}: {done.stdout[-800:]} {done.stderr[-1500:]}"
        return done

    env = stage_env(origin)
    run(["dvc", "remote", "modify", "--local", "baselines", "url", str(remote)], origin, env)
    pushed = run([sys.executable, "-m", "pipelines.remote", "push"], origin, env)
    assert "pushed .dvc-export/baselines" in pushed.stdout and any(remote.rglob("*")), pushed.stdout
    run(["git", "add", ".dvc-export"], origin, env)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "baselines in the remote"], origin, env)
    run(["git", "clone", "-q", str(origin), str(dest)], dest.parent, env)
    shutil.rmtree(dest / "baselines")
    env = stage_env(dest)
    run(["dvc", "remote", "modify", "--local", "baselines", "url", str(remote)], dest, env)
    pulled = run([sys.executable, "-m", "pipelines.remote", "pull"], dest, env)
    assert "installed" in pulled.stdout and "match the DVC remote" in pulled.stdout, pulled.stdout
    return dest


def stage_env(project: Path) -> dict:
    """Environment for running the project's commands in a copy: the venv first on PATH, its own MLflow store."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    env["PYTHONPATH"] = str(project)
    env.pop("MLFLOW_RUN_ID", None)
    return env


TINY = {
    "data": {"synthetic": {"train_per_class": 16, "val_per_class": 4,
                           "pattern": {"num_classes": 4, "image_size": 32}}},
    "model": {"img_size": 32},
    "train": {"steps": 6, "batch_size": 8, "warmup_steps": 2},
    "compare": {"min_steps": 3},
}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def write_params(project: Path, overrides: dict) -> Path:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(merge(params, overrides), sort_keys=False))
    return path


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A copy of the project as the current directory, with its own MLflow store."""
    dest = copy_project(tmp_path / "project")
    monkeypatch.chdir(dest)
    for key, value in stage_env(dest).items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    return dest


@pytest.fixture
def tiny_project(project) -> Path:
    """The project copy with a tiny profile (4 classes of 32x32 images, 6 steps of batch 8)."""
    write_params(project, TINY)
    return project
