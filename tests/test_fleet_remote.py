"""Baselines from a DVC remote (pipelines/remote.py): pushed from one checkout to a local remote, pulled by a
fresh runner that lacks them and used by the chain's compare stage there; a runner whose copy was edited is
refused, naming both hashes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import copy_project, fresh_runner, stage_env
from pipelines.provenance import file_sha256


def run(args, cwd, env, check=True):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and done.returncode:
        raise AssertionError(f"{args} exited {done.returncode}: {done.stdout[-800:]} {done.stderr[-1500:]}")
    return done


@pytest.mark.slow  # a dozen dvc and git commands: ~20-40 s
def test_a_fresh_runner_pulls_the_baseline_and_an_edited_one_is_refused(tmp_path):
    origin = copy_project(tmp_path / "origin")
    runner = fresh_runner(origin, tmp_path / "runner", tmp_path / "remote")
    env = stage_env(runner)
    py = [sys.executable, "-m"]
    for name in ("default/baseline.json", "default/fingerprints.npz"):
        assert file_sha256(runner / "baselines" / name) == file_sha256(origin / "baselines" / name)

    # its compare stage judges against the pulled baseline (compare.baseline); the whole chain runs on a fresh
    # runner in tests/test_pipeline_e2e.py
    data = json.loads((runner / "baselines/default/baseline.json").read_text())
    curve = runner / "candidate.csv"
    curve.write_text("step,loss\n" + "".join(f"{s},{v!r}\n" for s, v in zip(data["steps"], data["loss"])))
    run(py + ["pipelines.stages.compare", "--candidate", str(curve), "--out", str(runner / "v.json")], runner, env)
    verdict = json.loads((runner / "v.json").read_text())
    assert verdict["status"] == "pass"
    assert verdict["inputs"]["baseline"]["sha256"] == file_sha256(origin / "baselines/default/baseline.json")

    # an edited baseline: refused, both hashes named, nothing changed
    target = runner / "baselines/default/baseline.json"
    remote_sha = file_sha256(target)
    target.write_text(target.read_text() + "\n")
    edited_sha = file_sha256(target)
    for command in ("verify", "pull"):
        refused = run(py + ["pipelines.remote", command], runner, env, check=False)
        assert refused.returncode == 2, refused.stderr
        line = refused.stderr.strip()
        assert len(line.splitlines()) == 1 and edited_sha in line and remote_sha in line, line
        assert file_sha256(target) == edited_sha
