"""Fail fast and the preflight (issue 23): a run whose verdict is a certain fail stops and says so everywhere; a
run that could still pass never stops; a stopped run is never judged, nor reused by DVC, as a full one."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import yaml

from fake_runs import reference_loss, write_run
from pipelines import cli
from pipelines.baselines import load_baseline
from pipelines.failfast import FailFastWatch, plan
from pipelines.params import load_params
from pipelines.provenance import with_run_info, write_run_record
from pipelines.stages import compare, gate, report
from pipelines.verdict import envelope_rule, envelope_sides

STEPS = 60
BUG_AT = 30  # the fake port bug's first step


def bugged(base: np.ndarray) -> np.ndarray:
    """The baseline's curve until BUG_AT, 0.5% higher from there: far outside the fake envelope (<= 1e-4)."""
    return np.where(np.arange(len(base)) >= BUG_AT, base * 1.005, base)


def watch_for(project, confirm_steps=3) -> FailFastWatch:
    params = load_params(project / "params.yaml")
    baseline = load_baseline(project / params.compare.baseline)
    width, reference, _ = envelope_sides(baseline, baseline.precision)
    return FailFastWatch(baseline.steps, baseline.loss if reference is None else reference, width,
                         params.compare.rules.envelope.model_dump(), confirm_steps)


def test_the_watch_stops_confirm_steps_after_the_step_the_compare_rule_finds_first(project):
    base = reference_loss(STEPS)
    write_run(project, base, baseline_loss=base)
    candidate = bugged(base)
    watch = watch_for(project, confirm_steps=3)
    decisions = [watch.observe(step, loss, seconds=0.1 * step) for step, loss in enumerate(candidate)]
    stop = next(i for i, d in enumerate(decisions) if d)
    # the full curve, judged by the compare stage's rule, leaves the tolerance at the same first step
    rule = envelope_rule(candidate, watch.reference, watch.width, np.arange(STEPS),
                         **load_params(project / "params.yaml").compare.rules.envelope.model_dump())
    assert rule.numbers["first_outside_step"] == BUG_AT == decisions[stop]["failed_step"]
    assert stop == decisions[stop]["stopped_step"] == BUG_AT + 3
    assert decisions[stop]["seconds"] == pytest.approx(0.1 * stop) and decisions[stop]["failed_after_s"] == \
        pytest.approx(0.1 * BUG_AT)
    assert "step 30 is outside the envelope rule's tolerance" in decisions[stop]["reason"]
    # a candidate inside the envelope (half the legitimate variants' distance) never stops
    inside = watch_for(project)
    legit = base * (1 + 0.5e-4 * np.linspace(0, 1, STEPS) ** 2)
    assert not any(inside.observe(s, v, 0.0) for s, v in enumerate(legit)) and inside.failed is None


def test_fail_fast_stays_off_unless_the_verdict_is_certain(project):
    base = reference_loss(STEPS)
    write_run(project, base, baseline_loss=base)
    params = load_params(project / "params.yaml")
    record = json.loads((project / "reports/default/train.json").read_text())

    def with_compare(**update):
        fail_fast = params.compare.fail_fast.model_copy(update={"enabled": True})
        return params.model_copy(update={"compare": params.compare.model_copy(update={"fail_fast": fail_fast,
                                                                                       **update})})

    def envelope(**update):
        rules = params.compare.rules
        return {"rules": rules.model_copy(update={"envelope": rules.envelope.model_copy(update=update)})}

    precision = load_baseline(project / params.compare.baseline).precision
    watch, note = plan(params, precision=precision, record=record, total_steps=STEPS)
    assert (watch, note) == (None, "")  # off (the default)
    watch, note = plan(with_compare(), precision=precision, record=record, total_steps=STEPS)
    assert watch is not None and note.startswith("fail fast on")
    for update, why in (({"gate": ["modelzoo"], "inform": ["envelope"]}, "the envelope rule does not gate"),
                        (envelope(max_outside_fraction=0.01), "max_outside_fraction is 0.01"),
                        ({"min_steps": STEPS + 1}, "fewer than compare.min_steps"),
                        ({"baseline": "baselines/none.json"}, "no baseline to judge steps by")):
        watch, note = plan(with_compare(**update), precision=precision, record=record, total_steps=STEPS)
        assert watch is None and note.startswith("fail fast does not stop this run: ") and why in note, note
    other = {**record, "data_manifest_hash": "0" * 64}  # the baseline cannot judge it: inconclusive, never stopped
    watch, note = plan(with_compare(), precision=precision, record=other, total_steps=STEPS)
    assert watch is None and "other data" in note


def stopped_run(project, loss, *, failed_step, stopped_step, steps=STEPS):
    """A train-stage run that fail fast stopped after `stopped_step` (loss holds its steps), as the stage writes it."""
    out = write_run(project, loss)
    record = with_run_info(json.loads((out / "train.json").read_text()), json.loads((out / "run.json").read_text()))
    record.update(stopped="fail fast: ...", total_steps=steps, stopped_early_seconds=4.2, failed_after_seconds=3.9,
                  stopped_early={"failed_step": failed_step, "stopped_step": stopped_step, "confirm_steps": 3,
                                 "rule": "envelope", "reason": f"fail fast: step {failed_step} is outside"})
    write_run_record(out / "train.json", record)
    return out


def test_a_stopped_run_fails_and_its_verdict_report_and_gate_say_it_stopped_early(project, capsys):
    base = reference_loss(STEPS)
    write_run(project, base, baseline_loss=base)
    cut = BUG_AT + 4
    out = stopped_run(project, bugged(base)[:cut], failed_step=BUG_AT, stopped_step=cut - 1)
    assert cli.run(compare.main, ["-q"]) == 0
    verdict = json.loads((out / "verdict.json").read_text())
    # 34 points < compare.min_steps 50: the envelope rule judged them all, min_steps does not make it inconclusive
    assert verdict["status"] == "fail", verdict["reasons"]
    assert verdict["reasons"][0].startswith(f"stopped early at step {cut - 1} (fail fast)")
    assert verdict["stopped_early"]["failed_step"] == BUG_AT and "seconds" not in verdict["stopped_early"]
    assert verdict["first_divergence_step"] == BUG_AT
    assert any("the run stopped early" in n for n in verdict["notes"])  # modelzoo: too few points, a note
    assert cli.run(report.main, ["-q"]) == 0
    page = (out / "report.html").read_text()
    assert f"Stopped early at step {cut - 1}</b>" in page and page.index("stopped-early") < page.index("<h2>Why")
    capsys.readouterr()
    assert cli.run(gate.main, []) == 1
    # the seconds are in run.json (they differ in every run), joined back by the record's reader
    from pipelines.provenance import read_run

    assert read_run(out / "curve.csv", out / "train.json")[1]["stopped_early"]["seconds"] == 4.2
    # a verdict edited to pass is refused by the gate: a stopped run never passes
    edited = {**verdict, "status": "pass"}
    (out / "verdict.json").write_text(json.dumps(edited))
    assert cli.run(gate.main, []) == 2


def test_a_truncated_curve_is_never_judged_as_a_full_one(project, capsys):
    base = reference_loss(STEPS)
    write_run(project, base, baseline_loss=base)
    # the record says the run stopped early, but its curve stays inside the envelope: not confirmed, inconclusive
    out = stopped_run(project, base[:40], failed_step=36, stopped_step=39)
    assert cli.run(compare.main, ["-q"]) == 0
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["status"] == "inconclusive" and "a truncated curve is not judged as a full one" in \
        " ".join(verdict["reasons"])
    # a curve shorter than its run whose record does not say it stopped (an edited record): inconclusive
    record = with_run_info(json.loads((out / "train.json").read_text()), json.loads((out / "run.json").read_text()))
    record.update(stopped="", stopped_early=None)
    write_run_record(out / "train.json", record)
    assert cli.run(compare.main, ["-q"]) == 0
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["status"] == "inconclusive" and any("40 of the run's 60 steps" in r for r in verdict["reasons"])
    # a stopped run's curve cut further than its record says: refused before judging (exit 2), as any cut curve
    stopped_run(project, bugged(base)[:BUG_AT + 4], failed_step=BUG_AT, stopped_step=BUG_AT + 3)
    lines = (out / "curve.csv").read_text().splitlines()
    (out / "curve.csv").write_text("\n".join(lines[:-2]) + "\n")
    capsys.readouterr()
    assert cli.run(compare.main, ["-q"]) == 2
    assert "a cut or foreign curve" in capsys.readouterr().err


def test_the_fail_fast_key_train_waits_on_holds_the_settings_and_baseline_only_when_on(project):
    """preflight.json's train_fail_fast (the train stage depends on preflight.json): null with fail fast off, so a new
    baseline retrains nothing; with it on, the baseline's SHA-256 and the settings, so any change retrains."""
    from pipelines.preflight import fail_fast_key

    base = reference_loss(STEPS)
    write_run(project, base, baseline_loss=base)
    params = load_params(project / "params.yaml")
    assert fail_fast_key(params) is None
    on = params.model_copy(update={"compare": params.compare.model_copy(update={
        "fail_fast": params.compare.fail_fast.model_copy(update={"enabled": True})})})
    key = fail_fast_key(on)
    assert key["fail_fast"] == {"enabled": True, "confirm_steps": 3} and key["envelope"]["max_outside_fraction"] == 0
    baseline = project / on.compare.baseline
    baseline.write_text(baseline.read_text().replace('"seeds"', '"seeds" ', 1))  # another baseline file
    assert fail_fast_key(on)["baseline_sha256"] != key["baseline_sha256"] and fail_fast_key(params) is None


@pytest.mark.slow
def test_dvc_reruns_a_stopped_train_stage_when_fail_fast_or_the_baseline_changes(project):
    """The train stage waits on preflight.json, whose stage holds the fail-fast settings and the baseline: after a
    stopped run, turning fail fast off (or another baseline) makes `dvc repro` rerun the preflight, whose key then
    differs, and train after it: the truncated curve is never handed back as a full one."""
    from conftest import stage_env

    from pipelines.preflight import fail_fast_key

    base = reference_loss(STEPS)
    write_run(project, base, baseline_loss=base)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["compare"]["fail_fast"]["enabled"] = True
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stopped_run(project, bugged(base)[:BUG_AT + 4], failed_step=BUG_AT, stopped_step=BUG_AT + 3)
    (project / "reports/default/fingerprints.npz").write_bytes(b"stand-in")
    key = fail_fast_key(load_params(project / "params.yaml"))
    (project / "reports/default/preflight.json").write_text(json.dumps({"train_fail_fast": key}) + "\n")
    (project / "data/prepared").mkdir(parents=True, exist_ok=True)
    (project / "data/prepared/manifest.json").write_text("{}\n")
    env = stage_env(project)

    def dvc(*args):
        done = subprocess.run(["dvc", *args], cwd=project, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    dvc("commit", "-f", "preflight", "train")  # the stopped run, as `dvc repro` records it
    assert json.loads(dvc("status", "--json", "preflight", "train") or "{}") == {}

    def changed() -> str:
        return json.dumps(json.loads(dvc("status", "--json", "preflight") or "{}"))

    params["compare"]["fail_fast"]["enabled"] = False
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "compare.fail_fast" in changed()  # fail fast off: the preflight reruns, its key becomes null
    params["compare"]["fail_fast"]["enabled"] = True
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert changed() == "{}"
    baseline = project / "baselines/default/baseline.json"
    baseline.write_text(baseline.read_text().replace('"seeds"', '"seeds" ', 1))  # another baseline file
    assert "baselines/default/baseline.json" in changed()
    # and the preflight's new key differs, so train (which depends on preflight.json) reruns after it
    assert fail_fast_key(load_params(project / "params.yaml")) != key
    (project / "reports/default/preflight.json").write_text(
        json.dumps({"train_fail_fast": fail_fast_key(load_params(project / "params.yaml"))}) + "\n")
    assert "reports/default/preflight.json" in json.dumps(json.loads(dvc("status", "--json", "train") or "{}"))


@pytest.mark.slow
def test_a_port_bug_stops_early_and_preflight_names_it_while_a_legit_variant_trains_on(project, capsys):
    """On the tiny profile against a baseline made as `make baseline` makes one: AdamW without bias correction
    stops a step after its first step outside the envelope (and says so in train.json, the verdict, the report and
    MLflow); the preflight names GELU's tanh approximation at its module in step 0's forward and the optimizer bug at
    step 0's update; a legitimate numerics variant (one thread) is never stopped."""
    from conftest import TINY, merge, write_params

    from pipelines.preflight import run_preflight
    from pipelines.stages import baseline as baseline_stage
    from pipelines.stages import prepare
    from pipelines.training import run_training

    write_params(project, merge(TINY, {"tracking": {"enabled": False, "system_metrics_every_s": 0},
                                       "compare": {"fail_fast": {"enabled": True, "confirm_steps": 1}}}))
    assert cli.run(prepare.main, ["-q"]) == 0
    assert cli.run(baseline_stage.main, ["-q", "record", "--runs", "1", "--envelope", "--variants",
                                         "weights_ulp,fused_attention"]) == 0
    params = load_params("params.yaml")

    def on(device=None, tracking=False):
        return params.model_copy(update={"device": params.device.model_copy(update=device or {}),
                                         "tracking": params.tracking.model_copy(update={"enabled": tracking})})

    found = run_preflight(on({"port_bug": "gelu_tanh"}), out_dir=project / "runs/preflight-gelu")
    assert (found.status, found.step, found.phase, found.entry) == ("diverged", 0, "forward", "blocks.0.mlp.act")
    assert found.seconds > 0
    found = run_preflight(on({"port_bug": "adamw_no_bias_correction"}), out_dir=project / "runs/preflight-adamw")
    assert (found.status, found.phase) == ("diverged", "update"), found.message

    legit = project / "runs/threads_1"
    run_training(on({"numerics_variant": "threads_1"}), legit, quiet=True, fail_fast=True)
    record = json.loads((legit / "train.json").read_text())
    assert record["stopped_early"] is None and record["steps_done"] == record["total_steps"] == 6
    info = json.loads((legit / "run.json").read_text())  # a full run's seconds, from the same start as a stop's
    assert info["run_seconds"] >= info["wall_s"] > 0 and info["stopped_early_seconds"] is None

    run_training(on({"port_bug": "adamw_no_bias_correction"}, tracking=True), project / "reports/default", quiet=True,
                 fail_fast=True)
    out = project / "reports/default"
    record = json.loads((out / "train.json").read_text())
    stop = record["stopped_early"]
    assert stop["stopped_step"] == stop["failed_step"] + 1 < 5 and record["steps_done"] == stop["stopped_step"] + 1
    assert len((out / "curve.csv").read_text().splitlines()) == record["steps_done"] + 1
    info = json.loads((out / "run.json").read_text())
    assert info["run_seconds"] >= info["stopped_early_seconds"] > 0
    assert cli.run(compare.main, ["-q"]) == 0
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["status"] == "fail" and verdict["reasons"][0].startswith(f"stopped early at step {stop['stopped_step']}")
    assert cli.run(report.main, ["-q"]) == 0
    assert f"Stopped early at step {stop['stopped_step']}" in (out / "report.html").read_text()
    from mlflow.tracking import MlflowClient

    run_id = json.loads((out / "run.json").read_text())["mlflow_run_id"]
    tags = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}").get_run(run_id).data.tags
    assert tags["stopped_early.step"] == str(stop["stopped_step"]) and tags["fail_fast"] == "stopped"


@pytest.mark.parametrize("value, said", [({"enabled": 1}, "compare.fail_fast.enabled: input should be a valid boolean"),
                                         ({"confirm_steps": -1}, "compare.fail_fast.confirm_steps: input should be "
                                                                 "greater than or equal to 0"),
                                         ({"steps": 3}, "compare.fail_fast.steps")])
def test_fail_fast_settings_are_validated_naming_the_key(value, said):
    from cait.errors import ConfigError
    from pipelines.params import parse_params

    with pytest.raises(ConfigError, match=said.replace(".", r"\.")):
        parse_params({"compare": {"fail_fast": value}})
