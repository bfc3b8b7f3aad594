"""The power benchmark's smoke version: on the tiny profile, a baseline with an envelope, then two port
bugs and one legitimate variant trained and judged by every rule (`python -m benchmarks --smoke --only power`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import stage_env


def run(project, *args, timeout=600):
    env = {**stage_env(project), "OMP_NUM_THREADS": "1"}  # on a loaded machine two threads spin against each other
    done = subprocess.run([sys.executable, *args], cwd=project, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow
@pytest.mark.timeout(1200)  # ~40 s alone on 2 cores: 5 tiny runs
def test_power_smoke_catches_two_bugs_and_passes_a_legit_variant(tiny_project, tmp_path):
    run(tiny_project, "-m", "pipelines.stages.prepare", "-q")
    recorded = run(tiny_project, "-m", "pipelines.stages.baseline", "-q", "record", "--envelope",
                   "--variants", "weights_ulp,fused_attention")
    assert "envelope of 2 variants (weights_ulp, fused_attention)" in recorded.stdout
    out = tmp_path / "power.json"
    done = run(tiny_project, "-m", "benchmarks", "--smoke", "--only", "power", "--json", str(out))
    result = json.loads(out.read_text())
    assert set(result["bugs"]) == {"lr_one_step_late", "adamw_no_bias_correction"}
    assert set(result["legit"]) == {"weights_ulp_other"}
    for verdicts in [*result["bugs"].values(), *result["legit"].values()]:
        assert set(verdicts) == {"modelzoo", "strict", "band", "envelope"}
        assert set(verdicts.values()) <= {"pass", "fail", "inconclusive"}
    assert all(v["envelope"] == "fail" for v in result["bugs"].values()), result["bugs"]
    assert result["legit"]["weights_ulp_other"]["envelope"] == "pass", result["raw"]["power"]["detail"]
    assert result["legit"]["weights_ulp_other"]["band"] == "inconclusive"  # a single-seed baseline has no band
    assert "| bug | `lr_one_step_late` |" in done.stdout and "envelope rule: bugs failed" in done.stdout
