"""The stored GPU reference (issue 17): baselines/default-cuda/ was recorded on an NVIDIA H200 by
benchmarks/gpu_reference.sh with full provenance, the device's envelope and layer fingerprints, for the same
profile, params and data as the CPU reference, so compare.baseline can point to it and it judges a run
through the compare stage's own rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from cait.fingerprints import load
from pipelines.baselines import load_baseline
from pipelines.localize import localize, loss_digest
from pipelines.params import load_params
from pipelines.stages.compare import judge
from pipelines.upgrade import carry_check, probe_growth

ROOT = Path(__file__).resolve().parents[1]
CUDA = ROOT / "baselines" / "default-cuda" / "baseline.json"
CPU = ROOT / "baselines" / "default" / "baseline.json"


def test_recorded_on_an_nvidia_gpu_with_full_provenance():
    prov = load_baseline(CUDA).provenance
    assert prov["device"] == "cuda"
    assert "NVIDIA" in prov["device_name"]
    assert prov["driver"]  # nvidia-smi's (or NVML's) driver version
    versions = prov["versions"]
    assert versions["cuda"] and versions["torch"] and versions["timm"]
    assert "+cu" in versions["torch"]  # a CUDA build of torch


def test_three_seeds_and_the_cuda_envelope_per_precision_policy():
    """Issue 22: the TF32 runs are the tf32 policy's envelope, never the fp32 one's; the fp32 envelope borrows the
    CPU's ulp-probe growth, which carries: the H200's own probe grows within a factor of 3 of the CPU's (same key)."""
    baseline = load_baseline(CUDA)
    assert baseline.kind == "multi-run" and baseline.seeds == [0, 1, 2]
    assert baseline.schema_version == 5 and baseline.precision == "fp32"
    assert [r.variant for r in baseline.envelope_runs] == ["threads_1", "threads_2", "fused_attention", "weights_ulp"]
    assert all(r.numerics["tf32"] == "False" for r in baseline.envelope_runs)
    tf32 = baseline.policies["tf32"]
    assert tf32.numerics["tf32"] == "True" and [r.variant for r in tf32.runs] == ["nondeterministic"]
    growth = baseline.probe_growth
    assert growth is not None and growth.device == "cpu (AMD EPYC)"
    assert growth.variants == ["weights_ulp", "weights_ulp_2", "weights_ulp_3"]
    # the growth is the CPU file's probes', recomputed from its curves; the carry check, recomputed from both files'
    # own probes of the same key, is the one stored and says the growth carries within a factor of 3
    cpu = load_baseline(CPU)
    assert np.array_equal(growth.relative, probe_growth(cpu))
    carry = carry_check(baseline, cpu)
    assert carry == growth.carry and set(carry) == {"weights_ulp"}
    assert 1 / 3 <= carry["weights_ulp"]["ratio_min"] and carry["weights_ulp"]["ratio_max"] <= 3, carry
    width = baseline.envelope()
    assert width is not None and np.all(np.isfinite(width)) and np.all(np.diff(width) >= 0)
    # fp32's tolerance is two orders of magnitude narrower than the folded one was (3.1e-2 of the loss at 119)
    assert width[-1] / baseline.loss[-1] < 1e-4 < baseline.policy_envelope("tf32")[1][-1] / baseline.loss[-1]


def test_same_profile_params_and_data_as_the_cpu_reference():
    cuda, cpu = load_baseline(CUDA), load_baseline(CPU)
    assert cuda.profile == cpu.profile == "default" and cuda.model == cpu.model
    for key in ("params_hash", "data_manifest_hash", "data_pixels_hash"):
        assert cuda.provenance[key] == cpu.provenance[key], key
    assert np.array_equal(cuda.steps, cpu.steps)


def test_compare_baseline_can_point_to_it(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["compare"]["baseline"] = str(CUDA.relative_to(ROOT))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_params(path).compare
    baseline = load_baseline(ROOT / cfg.baseline)
    reference, _ = baseline.reference_for(0)
    verdict = judge(cfg, reference, reference, baseline, gate=cfg.gate, inform=[])
    assert verdict.status == "pass"  # its own reference run is inside its envelope, by every gating rule


def test_the_cpu_reference_is_inside_the_gpu_envelope_and_fingerprints():
    """The first cross-device measurement, kept: the CPU reference curve judged against the GPU baseline passes,
    and the CPU reference's layer fingerprints are clean against the GPU's (k and floor of params.yaml)."""
    params = load_params(ROOT / "params.yaml")
    cuda, cpu = load_baseline(CUDA), load_baseline(CPU)
    verdict = judge(params.compare, cpu.curve, cuda.curve, cuda, gate=["envelope", "modelzoo"], inform=[])
    assert verdict.status == "pass", verdict.reasons
    gpu_prints = load(CUDA.with_name("fingerprints.npz"))
    assert gpu_prints.meta["baseline_loss_sha256"] == loss_digest(cuda.loss)
    assert gpu_prints.meta["device"] == "cuda" and "H200" in gpu_prints.meta["device_name"]
    cpu_prints = load(CPU.with_name("fingerprints.npz"))
    found = localize(cpu_prints, gpu_prints, k=params.localize.k, floor=params.localize.floor)
    assert found.status == "clean", found.message
