"""The precision policy (issue 22): a run records the policy torch had switched on, a baseline keeps an envelope
per policy, a candidate is judged against its own policy's envelope or is inconclusive naming both, and a baseline
that cannot say its policy (schema < 5) is read but never judges with the envelope rule until it is upgraded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cait.determinism import configure_numerics, precision_policy, precision_state
from cait.errors import BaselineError
from pipelines.baselines import (SCHEMA_VERSION, baseline_from_runs, load_baseline, record_precision,
                                 save_baseline)
from pipelines.curves import Curve
from pipelines.params import load_params
from pipelines.stages.compare import judge
from pipelines.upgrade import upgrade_files
from test_baselines import STEPS, curve_for, record_for

FP32 = {"tf32": "False", "float32_matmul_precision": "highest"}
TF32 = {"tf32": "True", "float32_matmul_precision": "high"}


def test_the_policy_is_what_the_switches_amount_to():
    assert precision_policy(FP32) == "fp32"
    assert precision_policy(TF32) == "tf32"
    assert precision_policy({"tf32": "False", "float32_matmul_precision": "high"}) == "tf32"  # allowed, not asked
    assert precision_policy({"float32_matmul_precision": "medium"}) == "bf16"
    assert precision_policy({**FP32, "sdaa.allow_tf32": "True"}) == "tf32"
    assert precision_policy(FP32, amp="bf16") == "bf16" and precision_policy(TF32, amp="fp16") == "fp16"
    assert precision_policy({}) == "fp32"  # a record of an older harness: nothing was switched on


def test_the_policy_is_read_back_from_torch():
    try:
        configure_numerics("cpu", True)
        assert precision_policy(precision_state("cpu")) == "fp32"
        configure_numerics("cpu", True, tf32=True)  # asked for: a policy, whether or not this CPU honours it
        assert precision_policy(precision_state("cpu")) == "tf32"
        configure_numerics("cpu", False, tf32=False)  # nondeterministic, TF32 kept off: still fp32
        assert precision_policy(precision_state("cpu")) == "fp32"
    finally:
        configure_numerics("cpu", True)


def test_no_fp32_envelope_variant_switches_a_precision_policy_on():
    import torch

    from cait.portbugs import ENVELOPE_VARIANTS, VARIANTS

    try:
        for name in ENVELOPE_VARIANTS:
            configure_numerics("cpu", True)
            torch.backends.cuda.matmul.allow_tf32 = False
            if VARIANTS[name].configure:
                VARIANTS[name].configure("cuda")  # as on a GPU: nondeterministic used to switch TF32 on there
            assert precision_policy(precision_state("cuda")) == "fp32", name
    finally:
        configure_numerics("cpu", True)
        torch.set_num_threads(torch.get_num_threads())


def run(seed: int = 0, variant: str | None = None, numerics: dict = FP32, scale: float = 0.0) -> tuple:
    curve = curve_for(seed)
    loss = curve.loss * (1 + scale * np.linspace(0, 1, len(STEPS)))
    record = {**record_for(seed), "numerics": numerics, "numerics_variant": variant}
    return Curve(STEPS, loss), record, f"{variant or 'plain'} {numerics['tf32']}"


def two_policies():
    """fp32 seeds 0, 1 with two variants; tf32: its reference (2e-3 away, as TF32 is) and one variant."""
    envelope = [run(0, "threads_1", scale=1e-5), run(0, "weights_ulp", scale=-2e-5),
                run(0, None, TF32, scale=2e-3), run(0, "weights_ulp", TF32, scale=2.003e-3)]
    return baseline_from_runs([run(0), run(1)], "default", envelope)


def test_a_baseline_keeps_an_envelope_per_policy(tmp_path):
    save_baseline(tmp_path / "b.json", two_policies())
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 5 and data["precision"] == "fp32"
    assert [v["variant"] for v in data["envelope"]["variants"]] == ["threads_1", "weights_ulp"]
    assert [v["variant"] for v in data["policies"]["tf32"]["variants"]] == ["weights_ulp"]
    back = load_baseline(tmp_path / "b.json")
    assert back.envelope_policies == ["fp32", "tf32"]
    reference, width = back.policy_envelope("tf32")
    assert reference[-1] == pytest.approx(curve_for(0).loss[-1] * (1 + 2e-3))
    assert 2e-6 * reference.min() < width[-1] < 4e-6 * reference.max()  # tf32's own spread (3e-6), not 2e-3
    data["policies"]["tf32"]["width"][-1] *= 2
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(BaselineError, match="policies.tf32.width does not match"):
        load_baseline(tmp_path / "c.json")


def test_a_candidate_is_judged_against_its_own_policy():
    params = load_params("params.yaml")
    baseline = two_policies()
    tf32_candidate = Curve(STEPS, baseline.policy_envelope("tf32")[0] * (1 + 1e-6))
    verdict = judge(params.compare, tf32_candidate, baseline.curve, baseline, gate=["envelope"], inform=[],
                    precision="tf32")
    assert verdict.status == "pass", verdict.reasons  # 2e-3 from the fp32 reference, inside the tf32 envelope
    as_fp32 = judge(params.compare, tf32_candidate, baseline.curve, baseline, gate=["envelope"], inform=[],
                    precision="fp32")
    assert as_fp32.status == "fail"  # the same curve claimed as fp32 is far outside fp32's tolerance
    fp32_only = baseline_from_runs([run(0), run(1)], "default", [run(0, "threads_1", scale=1e-5)])
    verdict = judge(params.compare, tf32_candidate, fp32_only.curve, fp32_only, gate=["envelope"], inform=[],
                    precision="tf32")
    assert verdict.status == "inconclusive"
    why = " ".join(verdict.reasons)
    assert "tf32 precision policy" in why and "envelopes for fp32 only" in why and "--policies fp32,tf32" in why


def test_an_older_record_says_its_policy_through_its_switches():
    assert record_precision({"numerics": TF32, "curve_params": {"train": {"amp": None}}}) == "tf32"
    assert record_precision({"numerics": FP32, "curve_params": {"train": {"amp": "bf16"}}}) == "bf16"
    assert record_precision({"precision": "fp32", "numerics": TF32}) == "fp32"  # the field, when there, decides


def old_schema(tmp_path, version: int = 3):
    """A schema-3 baseline as the harness wrote before policies: a TF32 run folded into the envelope."""
    baseline = baseline_from_runs([run(0), run(1)], "default",
                                  [run(0, "threads_1", scale=1e-5), run(0, "weights_ulp", scale=-2e-5)])
    data = baseline.to_json()
    tf32_runs = [run(0, "tf32", TF32, scale=2e-3)[0], run(0, "nondeterministic", TF32, scale=-2.5e-3)[0]]
    for name, curve in zip(("tf32", "nondeterministic"), tf32_runs):
        data["envelope"]["variants"].append({"variant": name, "numerics": TF32, "loss": curve.loss.tolist()})
    from pipelines.envelope import envelope_width

    data["envelope"]["width"] = envelope_width(baseline.loss, [np.array(v["loss"]) for v in
                                                               data["envelope"]["variants"]]).tolist()
    for key in ("precision", "checksum"):
        data.pop(key)
    data["envelope"].pop("policy")
    data["schema_version"] = version
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(data))
    return path


def test_an_older_baseline_is_read_but_its_envelope_never_judges(tmp_path):
    params = load_params("params.yaml")
    path = old_schema(tmp_path)
    old = load_baseline(path)
    assert old.precision == "" and old.stats() is not None  # read: the band and ModelZoo rules still work
    candidate = Curve(STEPS, old.loss * (1 + 1e-3))  # inside the folded TF32 latitude, far outside fp32's
    verdict = judge(params.compare, candidate, old.curve, old, gate=["envelope", "modelzoo"], inform=[],
                    precision="fp32")
    assert verdict.status == "inconclusive"
    assert f"python -m pipelines.stages.baseline upgrade --baseline {path}" in " ".join(verdict.reasons)


def test_upgrade_partitions_by_policy_and_signs(tmp_path):
    params = load_params("params.yaml")
    path = old_schema(tmp_path)
    lines = upgrade_files(path, path)
    assert any("tf32 policy" in line and "nondeterministic" in line for line in lines), lines
    new = load_baseline(path)
    assert new.schema_version == 5 and new.precision == "fp32"
    assert [r.variant for r in new.envelope_runs] == ["threads_1", "weights_ulp"]
    assert [r.variant for r in new.policies["tf32"].runs] == ["nondeterministic"]
    assert new.provenance["upgraded"]["from_schema"] == 3
    candidate = Curve(STEPS, new.loss * (1 + 1e-3))
    verdict = judge(params.compare, candidate, new.curve, new, gate=["envelope"], inform=[], precision="fp32")
    assert verdict.status == "fail"  # TF32's latitude no longer folded into fp32's tolerance
    # a schema-5 file relabelled as an older schema, its envelope widened: refused for the envelope rule
    data = json.loads(path.read_text())
    data["schema_version"] = 3
    data["envelope"]["variants"][0]["loss"] = (np.array(data["envelope"]["variants"][0]["loss"]) * 1.01).tolist()
    from pipelines.envelope import envelope_width

    data["envelope"]["width"] = envelope_width(new.loss, [np.array(v["loss"]) for v in
                                                          data["envelope"]["variants"]]).tolist()
    data.pop("checksum")
    path.write_text(json.dumps(data))
    relabelled = load_baseline(path)
    verdict = judge(params.compare, candidate, relabelled.curve, relabelled, gate=["envelope"], inform=[],
                    precision="fp32")
    assert verdict.status == "inconclusive" and "upgrade" in " ".join(verdict.reasons)


@pytest.mark.parametrize("folder", ["default", "default-cuda", "amp"])
def test_the_shipped_baselines_are_signed_and_refuse_an_edit(tmp_path, folder):
    """Issue 30: the shipped baselines carry the current schema and its checksum; one number edited is refused on
    load, and the same file relabelled as an older schema (which has no checksum) never judges with the envelope
    rule."""
    from pathlib import Path

    from pipelines.envelope import envelope_width

    path = Path(__file__).resolve().parents[1] / "baselines" / folder / "baseline.json"
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION and len(data["checksum"]) == 64
    load_baseline(path)
    variant = data["envelope"]["variants"][-1]
    variant["loss"][60] *= 1.5  # and the width made to match, as a careful hand would
    reference = np.array(data["loss"])
    data["envelope"]["width"] = envelope_width(reference, [np.array(v["loss"]) for v in data["envelope"]["variants"]]
                                               + ([reference + np.array(data["envelope"]["probe_growth"]
                                                                         ["relative"]) * np.abs(reference)]
                                                  if "probe_growth" in data["envelope"] else [])).tolist()
    (tmp_path / "baseline.json").write_text(json.dumps(data))
    with pytest.raises(BaselineError, match="checksum does not match"):
        load_baseline(tmp_path / "baseline.json")
    data["schema_version"] = 3
    (tmp_path / "baseline.json").write_text(json.dumps(data))
    if "probe_growth" in data["envelope"]:  # schema 3 does not read the borrowed growth: the width no longer adds up
        with pytest.raises(BaselineError, match="envelope.width does not match"):
            load_baseline(tmp_path / "baseline.json")
        return
    relabelled = load_baseline(tmp_path / "baseline.json")
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    verdict = judge(params.compare, relabelled.curve, relabelled.curve, relabelled, gate=["envelope"], inform=[],
                    precision="fp32")
    assert verdict.status == "inconclusive" and "upgrade" in " ".join(verdict.reasons)


def test_new_variants_join_a_stored_baseline_only_as_its_reference_seed_under_its_policy(tmp_path):
    from pipelines.upgrade import add_variants

    path = tmp_path / "baseline.json"
    save_baseline(path, baseline_from_runs([run(0), run(1)], "default", [run(0, "threads_1", scale=1e-5)]))
    for bad, why in ((run(1, "weights_ulp_2", scale=3e-5), "seed 1"),
                     (run(0, "weights_ulp_2", TF32, scale=3e-5), "ran under tf32"),
                     (run(0, "threads_1", scale=3e-5), "already has the variant"),
                     ((run(0)[0], {**run(0)[1], "numerics_variant": "weights_ulp_2", "port_bug": "gelu_tanh"}, "x"),
                      "port bug")):
        with pytest.raises(BaselineError, match=why):
            add_variants(path, [bad])
    assert [r.variant for r in load_baseline(path).envelope_runs] == ["threads_1"]  # nothing written on a refusal
    lines = add_variants(path, [run(0, "weights_ulp_2", scale=-3e-5)])
    back = load_baseline(path)
    assert [r.variant for r in back.envelope_runs] == ["threads_1", "weights_ulp_2"] and "joins" in lines[0]
    assert back.envelope()[-1] == pytest.approx(3 * back.envelope(exclude="weights_ulp_2")[-1], rel=1e-6)
    assert back.provenance["added_variants"][0]["variant"] == "weights_ulp_2"
