"""The sensitivity benchmark's perturbation (output x (1 + eps) of one module, cait/portbugs.py) and its smoke
run on the tiny profile (benchmarks/bench_sensitivity.py)."""

from __future__ import annotations

import json

import pytest
import torch

from cait.portbugs import RunPatch, lookup, parse_perturbation, perturbation_name


def _outputs(model, x) -> list[tuple[str, torch.Tensor]]:
    """Every module's tensor output, in the order the forward pass produced them."""
    seen: list = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=name: seen.append((n, o.detach().clone())))
               for name, m in model.named_modules() if name]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return [(n, t) for n, t in seen if isinstance(t, torch.Tensor)]


@pytest.fixture(scope="module")
def tiny_cait():
    """A 4 + 2 block CaiT at 32 px (the perturbation is the same hook on any model)."""
    from timm.models.cait import Cait

    torch.manual_seed(0)
    return Cait(img_size=32, patch_size=16, embed_dim=96, depth=4, num_heads=4, depth_token_only=2,
                num_classes=4).eval()


@pytest.mark.parametrize("site", ["blocks.2", "blocks_token_only.1"])
def test_perturbation_scales_exactly_the_named_module_and_nothing_upstream(site, tiny_cait):
    import copy

    eps = 1e-3
    reference, patched = tiny_cait, copy.deepcopy(tiny_cait)
    RunPatch(bug=perturbation_name(site, eps)).model(patched, 0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ref, out = _outputs(reference, x), _outputs(patched, x)
    assert [n for n, _ in ref] == [n for n, _ in out]
    at = [n for n, _ in ref].index(site)
    for (name, a), (_, b) in zip(ref[:at], out[:at]):  # everything that ran before it, its own submodules included
        assert torch.equal(a, b), name
    assert torch.equal(out[at][1], ref[at][1] * (1 + eps))  # bitwise: the same float32 product
    assert not torch.equal(out[at + 1][1], ref[at + 1][1])  # and the next module sees it


def test_perturbation_names_parse_and_bad_ones_are_refused(tiny_cait):
    from pydantic import ValidationError

    from cait.config import DeviceConfig

    assert perturbation_name("blocks.12", 1e-4) == "output_scale@blocks.12@1e-4"
    assert parse_perturbation("output_scale@blocks.12@1e-4") == ("blocks.12", 1e-4)
    assert parse_perturbation("gelu_tanh") is None and lookup("gelu_tanh").site == "blocks.0.mlp.act"
    entry = lookup("output_scale@blocks.12@0.0001")
    assert (entry.kind, entry.site, entry.name) == ("bug", "blocks.12", "output_scale@blocks.12@1e-4")
    assert DeviceConfig(port_bug="output_scale@blocks.0@2.5e-6").port_bug == "output_scale@blocks.0@2.5e-6"
    for bad, message in (("output_scale@blocks.0@big", "is not a number"), ("output_scale@@1e-4", "expected"),
                         ("output_scale@blocks.0@-1", "above -1"), ("softmax_fp8", "unknown port bug")):
        with pytest.raises(ValidationError, match=message):
            DeviceConfig(port_bug=bad)
    from cait.errors import ConfigError

    with pytest.raises(ConfigError, match="no module 'blocks.99'"):
        RunPatch(bug="output_scale@blocks.99@1e-4").model(tiny_cait, 0)


@pytest.mark.slow
@pytest.mark.timeout(600)  # 22 s on the idle 2-core machine (450 s under load 15): a tiny baseline, 6 tiny runs
def test_sensitivity_benchmark_smoke(tiny_project, tmp_path, monkeypatch):
    """One depth, two eps on the tiny profile: gate runs staged (judged after 3 steps, resumed to the end),
    every result in the JSON shape, localize names blocks.0 at eps 1e-2; a bug that fails the envelope at
    step 0 (layernorm_eps) stops after the first stage."""
    import subprocess
    import sys

    from conftest import stage_env

    from benchmarks import bench_sensitivity
    from pipelines.params import load_params

    env = {**stage_env(tiny_project), "OMP_NUM_THREADS": "1"}
    for args in (["pipelines.stages.prepare", "-q"],
                 ["pipelines.stages.baseline", "-q", "record", "--envelope", "--variants", "weights_ulp"]):
        done = subprocess.run([sys.executable, "-m", *args], cwd=tiny_project, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    monkeypatch.setattr(bench_sensitivity, "STAGES", (3,))
    torch.set_num_threads(1)
    baseline = str(tiny_project / "baselines/default/baseline.json")
    params = load_params(tiny_project / "params.yaml")
    result = bench_sensitivity.measure(params, baselines=[baseline], depths=["shallow"], eps=[1e-6, 1e-2],
                                       runs_dir=tmp_path / "runs", data_dir=tiny_project / "data/prepared",
                                       log=lambda line: None)
    row = result[baseline]["shallow"]
    assert row["module"] == "blocks.0" and set(row["grid"]) == {"1e-06", "0.01"}
    big = row["grid"]["0.01"]
    assert big["localize"]["found"] and row["localize_eps"] in (1e-6, 1e-2), big
    assert big["localize"]["named"]["module"] == "blocks.0" and big["localize"]["named"]["phase"] == "forward"
    small = row["grid"]["1e-06"]["gate"]  # the smallest eps is always run (ascending)
    assert small["status"] in ("pass", "fail") and row["gate_eps"] in (1e-6, 1e-2, None)
    if small["status"] == "pass":
        assert small["decided_on"] == "whole run" and small["steps"] == params.train.steps
        assert (row["gate_eps"] is None) == (big["gate"]["status"] == "pass")
    assert result["meta"]["sites"] == {"shallow": "blocks.0"} and result["meta"]["envelope_k"] == params.compare.rules.envelope.k
    assert "| shallow | blocks.0 |" in bench_sensitivity.table(result)
    json.dumps(result, default=str)
    # reused on a second call: nothing is trained again
    again = bench_sensitivity.measure(params, baselines=[baseline], depths=["shallow"], eps=[1e-6, 1e-2],
                                      runs_dir=tmp_path / "runs", data_dir=tiny_project / "data/prepared",
                                      log=lambda line: None)
    assert again[baseline]["shallow"]["gate_eps"] == row["gate_eps"]
    # a failing prefix ends the run: LayerNorm eps 1e-5 leaves the envelope at step 0
    from pipelines.baselines import load_baseline

    judged = bench_sensitivity.gate_run(params, "layernorm_eps", tmp_path / "runs", tiny_project / "data/prepared",
                                        {baseline: load_baseline(baseline)}, [baseline], log=lambda line: None)
    assert judged[baseline]["status"] == "fail" and judged[baseline]["decided_on"] == "first 3 steps", judged
    assert judged[baseline]["first_fail_step"] == 0
