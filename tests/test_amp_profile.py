"""The mixed-precision profile (issue 27): profiles/amp.yaml over params.yaml, its committed baseline, the policies
kept apart (a bf16 candidate against the fp32 baseline, or the reverse, is inconclusive naming both), and the
profile's chain end to end on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cait.errors import ConfigError
from pipelines import cli, profiles
from pipelines.baselines import load_baseline
from pipelines.curves import Curve
from pipelines.params import load_params
from pipelines.stages.compare import judge

REPO = Path(__file__).resolve().parents[1]


def test_the_amp_profile_is_params_yaml_with_eight_keys_changed():
    default, amp = load_params(REPO / "params.yaml"), profiles.load("amp", REPO / "params.yaml")
    assert amp.profile == "amp" and amp.train.amp == "bf16"
    assert amp.compare.baseline == "baselines/amp/baseline.json"
    assert amp.localize.baseline_fingerprints == "baselines/amp/fingerprints.npz"
    changed = {k for k, v in profiles.flatten(amp.model_dump(mode="json")).items()
               if profiles.flatten(default.model_dump(mode="json")).get(k) != v}
    assert changed == {"profile", "train.amp", "compare.baseline", "compare.gate", "compare.inform",
                       "compare.rules.envelope.k", "localize.baseline_fingerprints", "localize.k"}
    assert amp.compare.gate == ["envelope", "modelzoo", "precision", "layers"]
    assert {"precision", "layers"} <= set(default.compare.inform)
    assert profiles.dvc_sets("amp", REPO) == ["-S", "profile=amp", "-S", "train.amp=bf16",
                                              "-S", "compare.baseline=baselines/amp/baseline.json",
                                              "-S", "compare.gate=[envelope,modelzoo,precision,layers]",
                                              "-S", "compare.inform=[strict,band,trend,throughput]",
                                              "-S", "compare.rules.envelope.k=10.0",
                                              "-S", "localize.baseline_fingerprints=baselines/amp/fingerprints.npz",
                                              "-S", "localize.k=40.0"]
    assert profiles.load(None, REPO / "params.yaml") == default


def test_a_profile_naming_a_key_params_yaml_lacks_is_refused(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles/odd.yaml").write_text("profile: odd\ntrain:\n  ampp: bf16\n")
    with pytest.raises(ConfigError, match=r"profiles/odd.yaml: train.ampp is not a key"):
        profiles.load("odd", tmp_path / "params.yaml")
    assert cli.run(profiles.main, ["--params", str(tmp_path / "params.yaml"), "sets", "nope"]) == 2
    assert "no such profile; known: default (params.yaml), odd" in capsys.readouterr().err
    (tmp_path / "profiles/bad.yaml").write_text("profile: bad\ntrain:\n  amp: fp8\n")
    with pytest.raises(ConfigError, match="train.amp"):  # validated as params.yaml is
        profiles.load("bad", tmp_path / "params.yaml")


def test_the_committed_amp_baseline_is_bf16_with_its_own_envelope():
    amp = load_baseline(REPO / "baselines/amp/baseline.json")
    assert amp.precision == "bf16" and amp.envelope_policies == ["bf16"] and amp.profile == "amp"
    assert len(amp.runs) == 3
    assert {"softmax_fp32", "matmul_fp32_accumulate", "gelu_epilogue"} <= {r.variant for r in amp.envelope_runs}
    assert amp.provenance["params"]["train"]["amp"] == "bf16"
    from cait.fingerprints import load_reference

    prints = load_reference(REPO / "baselines/amp/fingerprints.npz")  # with the precision shares the rule judges
    assert all(pp.precision is not None for pp in prints.steps[0].values())
    assert prints.meta["precision_source"]["steps"] == [0]


@pytest.mark.parametrize("candidate_of, against", [("amp", "default"), ("default", "amp")])
def test_a_candidate_of_the_other_policy_is_inconclusive_naming_both(candidate_of, against):
    """bf16 against the fp32 baseline (or the reverse): the stored reference curves of both baselines, judged by the
    chain's own rules; never a fail blamed on the port."""
    params = profiles.load(None if against == "default" else "amp", REPO / "params.yaml")
    baseline = load_baseline(REPO / f"baselines/{against}/baseline.json")
    cand = load_baseline(REPO / f"baselines/{candidate_of}/baseline.json")
    verdict = judge(params.compare, Curve(cand.steps, cand.loss), baseline.curve, baseline,
                    gate=params.compare.gate, inform=[], precision=cand.precision)
    assert verdict.status == "inconclusive", verdict.reasons
    why = " ".join(verdict.reasons)
    assert f"the candidate ran under the {cand.precision} precision policy" in why
    assert f"envelopes for {baseline.precision} only" in why


@pytest.mark.slow
@pytest.mark.timeout(600)  # ~25 s alone on 2 cores: 5 tiny runs
def test_the_amp_chain_on_the_tiny_model(tiny_project):
    """prepare, `make baseline` for the amp profile (1 seed + the two bf16 envelope variants), train, compare,
    localize, report, gate: a pass under bf16 (the precision and layers rules gating too); fingerprints without
    precision shares cannot judge it (inconclusive) until `baseline precision` adds them; weight decay on the norms
    (and the other parameters AdamW leaves undecayed) fails on the layers rule, at step 0's update; a run whose
    gradients go through bf16 fails on the precision rule; then an fp32 run judged against the amp baseline:
    inconclusive."""

    from conftest import write_params

    from pipelines.stages import baseline, compare, gate, localize, prepare, report, train

    write_params(tiny_project, {"tracking": {"enabled": False}})
    assert cli.run(profiles.main, ["write", "amp", "amp.yaml"]) == 0
    amp = ["-q", "--params", "amp.yaml"]
    assert cli.run(prepare.main, amp) == 0
    assert cli.run(baseline.main, [*amp, "record", "--runs", "1", "--envelope",
                                   "--variants", "softmax_fp32,matmul_fp32_accumulate"]) == 0
    stored = json.loads(Path("baselines/amp/baseline.json").read_text())
    assert stored["precision"] == "bf16" and stored["profile"] == "amp"
    for stage in (train, compare, localize, report):
        assert cli.run(stage.main, amp) == 0, stage.__name__
    assert cli.run(gate.main, ["--params", "amp.yaml"]) == 0
    verdict = json.loads(Path("reports/amp/verdict.json").read_text())
    assert verdict["status"] == "pass" and verdict["profile"] == "amp"
    assert verdict["rules"]["precision"]["gating"] and verdict["rules"]["precision"]["passed"]
    assert verdict["rules"]["precision"]["numbers"]["tensors_judged"] > 100
    assert set(verdict["inputs"]) >= {"fingerprints", "baseline_fingerprints"}
    assert verdict["rules"]["layers"]["gating"] and verdict["rules"]["layers"]["passed"]
    assert verdict["rules"]["layers"]["numbers"]["entries_judged"] > 100
    assert json.loads(Path("reports/amp/localize.json").read_text())["status"] == "clean"

    from cait.fingerprints import load, save

    reference = Path("baselines/amp/fingerprints.npz")
    older = load(reference)
    for phases in older.steps.values():
        for pp in phases.values():
            pp.precision = None
    save(reference, older)
    for stage in (compare, report):  # the plain run, judged against the older reference
        assert cli.run(stage.main, amp) == 0
    assert cli.run(gate.main, ["--params", "amp.yaml"]) == 3
    verdict = json.loads(Path("reports/amp/verdict.json").read_text())
    assert any("the precision rule gates but cannot run" in r and "reference's fingerprints have no precision shares" in r
               for r in verdict["reasons"])
    assert cli.run(baseline.main, [*amp, "precision", "--run-dir", "reports/amp"]) == 0
    assert load(reference).meta["precision_source"]["steps"] == sorted(older.steps)
    for stage in (compare, report):
        assert cli.run(stage.main, amp) == 0
    assert cli.run(gate.main, ["--params", "amp.yaml"]) == 0

    decay = yaml.safe_load(Path("amp.yaml").read_text())  # an optimizer bug: the layers rule names its update
    decay["device"]["port_bug"] = "weight_decay_on_norms"
    Path("decay.yaml").write_text(yaml.safe_dump(decay))
    for stage in (train, compare, report):
        assert cli.run(stage.main, ["-q", "--params", "decay.yaml"]) == 0
    assert cli.run(gate.main, ["--params", "decay.yaml"]) == 1
    verdict = json.loads(Path("reports/amp/verdict.json").read_text())
    assert verdict["rules"]["layers"]["passed"] is False and verdict["rules"]["precision"]["passed"]
    assert any(r.startswith("layers: step 0, optimizer update") for r in verdict["reasons"])

    grads = yaml.safe_load(Path("amp.yaml").read_text())
    grads["device"]["port_bug"] = "grads_bf16"
    Path("grads.yaml").write_text(yaml.safe_dump(grads))
    assert cli.run(train.main, ["-q", "--params", "grads.yaml"]) == 0
    for stage in (compare, report):
        assert cli.run(stage.main, ["-q", "--params", "grads.yaml"]) == 0
    assert cli.run(gate.main, ["--params", "grads.yaml"]) == 1
    verdict = json.loads(Path("reports/amp/verdict.json").read_text())
    assert verdict["status"] == "fail" and verdict["rules"]["precision"]["passed"] is False
    assert any(r.startswith("precision: ") and "param_grad" in r for r in verdict["reasons"])

    fp32 = yaml.safe_load(Path("amp.yaml").read_text())
    fp32["train"]["amp"] = None
    Path("fp32.yaml").write_text(yaml.safe_dump(fp32))
    assert cli.run(train.main, ["-q", "--params", "fp32.yaml"]) == 0
    assert cli.run(compare.main, ["-q", "--params", "fp32.yaml"]) == 0
    assert cli.run(gate.main, ["--params", "fp32.yaml"]) == 3
    verdict = json.loads(Path("reports/amp/verdict.json").read_text())
    why = " ".join(verdict["reasons"])
    assert verdict["status"] == "inconclusive" and "fp32 precision policy" in why and "bf16 only" in why
