"""dvc.yaml and dvc.lock tell the truth about the code.

A stage whose code changed must rerun: every project module a stage's command imports (directly or
through other project modules, at the top or inside a function) must be a declared dependency of
that stage, or lie in a declared folder. And the committed dvc.lock must describe the committed code
and params: in a fresh copy, `dvc status` may only report outputs that are not there yet, never a
changed code file or param (a stale lock makes a fresh clone's first `dvc repro` rewrite it).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO, stage_env
from import_graph import import_closure

def stage_module(cmd: str) -> str:
    words = cmd.split()
    assert words[:2] == ["python", "-m"], f"stage command {cmd!r} is not `python -m <module>`"
    return words[2]


def stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_imported_module_is_a_declared_dependency(name):
    stage = stages()[name]
    deps = [REPO / d for d in stage.get("deps", []) if "${" not in d]
    code = import_closure(stage_module(stage["cmd"]))
    undeclared = sorted(str(p.relative_to(REPO)) for p in code
                        if p.name != "__init__.py" or p.stat().st_size > 0
                        if not any(p == d or d in p.parents for d in deps))
    assert not undeclared, (f"dvc.yaml stage {name!r} runs code it does not depend on: {', '.join(undeclared)}; "
                            f"add them to its deps (python tests/import_graph.py rewrites them)")


def test_declared_code_dependencies_exist():
    for name, stage in stages().items():
        for dep in stage.get("deps", []):
            if dep.endswith(".py") and "${" not in dep:
                assert (REPO / dep).is_file(), f"dvc.yaml stage {name!r} depends on {dep}, which does not exist"


@pytest.mark.slow
def test_committed_lock_is_current_for_the_committed_code(project):
    """In a fresh copy nothing has run: outputs are missing, but no code file or param may have changed."""
    result = subprocess.run(["dvc", "status", "--json"], cwd=project, env=stage_env(project),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    stale = []
    for stage, changes in json.loads(result.stdout or "{}").items():
        for change in changes:
            if not isinstance(change, dict):  # "changed command", "always changed"
                stale.append(f"{stage}: {change}")
                continue
            for path, state in change.get("changed deps", {}).items():
                if (project / path).is_file() and state != "deleted":  # code/baseline present and different
                    stale.append(f"{stage}: {path} {state}")
            for path, state in change.get("changed params", {}).items():
                stale.append(f"{stage}: params {path} {state}")
    assert not stale, ("dvc.lock is not current for the committed code; run `dvc repro` and commit dvc.lock: "
                       + "; ".join(stale))
