"""Baselines: one versioned schema for single- and multi-run baselines, refusal of another model,
profile, params or data, and every malformed file a clear error."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from cait.errors import BaselineError
from pipelines.baselines import (SCHEMA_VERSION, Baseline, baseline_from_runs, curve_hash, environment_differences,
                                 load_baseline, refusals, save_baseline)
from pipelines.curves import Curve, write_curve_csv
from pipelines.params import Params
from pipelines.provenance import file_sha256, write_record

STEPS = np.arange(0, 60)


def record_for(seed: int = 0, device_name: str = "Intel Xeon", **train) -> dict:
    params = Params.model_validate({"train": {"seed": seed, **train}})
    return {"environment": {"device": "cpu", "device_name": device_name, "driver": "", "torch": "2.4.0",
                            "timm": "1.0.9", "plugin": "", "cuda": "", "python": "3.11.7", "host": "h"},
            "params_hash": params.curve_hash(), "curve_params": params.curve_defining(),
            "data_manifest_hash": "d" * 64, "git_commit": "abc", "mlflow_run_id": f"run{seed}",
            "mean_samples_per_s": 100.0, "stopped": None}


def curve_for(seed: int) -> Curve:
    rng = np.random.default_rng(seed)
    return Curve(STEPS, 2.3 * np.exp(-STEPS / 30) + 1 + rng.normal(0, 0.02, len(STEPS)) + 1e-17 * seed)


def multi(seeds=(0, 1, 2)) -> Baseline:
    return baseline_from_runs([(curve_for(s), record_for(s), f"run {s}") for s in seeds], "default")


def test_single_run_round_trip_keeps_full_precision(tmp_path):
    curve = curve_for(0)
    baseline = baseline_from_runs([(curve, record_for(0), "c.csv")], "default")
    save_baseline(tmp_path / "b.json", baseline)
    back = load_baseline(tmp_path / "b.json")
    assert back.kind == "single-run" and back.schema_version == SCHEMA_VERSION
    assert back.loss.tolist() == curve.loss.tolist()
    assert back.stats() is None and back.band(3.0) is None
    assert back.seeds == [0] and back.seed_in_hash


def test_multi_run_round_trip_with_per_step_stats(tmp_path):
    baseline = multi()
    save_baseline(tmp_path / "b.json", baseline)
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["kind"] == "multi-run" and data["stats"]["runs"] == 3
    assert data["provenance"]["seeds"] == [0, 1, 2] and data["provenance"]["seed_in_hash"] is False
    back = load_baseline(tmp_path / "b.json")
    runs = np.stack([curve_for(s).loss for s in (0, 1, 2)])
    assert [r.loss.tolist() for r in back.runs] == runs.tolist()
    assert back.loss.tolist() == runs[0].tolist()  # the reference run is the first seed
    stats = back.stats()
    assert np.array_equal(stats["mean"], runs.mean(axis=0)) and np.array_equal(stats["std"], runs.std(axis=0, ddof=1))
    lower, upper = back.band(2.0)
    assert np.allclose(upper - lower, 4 * stats["std"])


def test_band_of_repeats_of_one_seed_has_zero_spread_and_a_floor():
    baseline = baseline_from_runs([(curve_for(0), record_for(0), f"repeat {i}") for i in range(3)], "default")
    assert baseline.seed_in_hash  # repeats of one seed keep the seed in the hash
    assert np.all(baseline.stats()["std"] == 0)
    lower, upper = baseline.band(3.0, min_halfwidth_relative=0.001)
    assert np.allclose(upper - lower, 0.002 * np.abs(baseline.stats()["mean"]))


def test_reference_for_pairs_a_candidate_with_the_run_of_its_seed():
    baseline = multi()
    curve, note = baseline.reference_for(2)
    assert curve.loss.tolist() == curve_for(2).loss.tolist() and "seed 2" in note
    curve, note = baseline.reference_for(7)
    assert curve.loss.tolist() == curve_for(0).loss.tolist() and "no run of seed 7" in note
    curve, note = baseline.reference_for(0)
    assert curve.loss.tolist() == curve_for(0).loss.tolist() and note == ""


def test_runs_of_one_baseline_must_share_params_data_device_and_steps():
    with pytest.raises(BaselineError, match="train.lr"):
        baseline_from_runs([(curve_for(0), record_for(0), "a"), (curve_for(1), record_for(1, lr=0.01), "b")], "d")
    other_data = record_for(1)
    other_data["data_manifest_hash"] = "e" * 64
    with pytest.raises(BaselineError, match="other data"):
        baseline_from_runs([(curve_for(0), record_for(0), "a"), (curve_for(1), other_data, "b")], "d")
    with pytest.raises(BaselineError, match="one device"):
        baseline_from_runs([(curve_for(0), record_for(0), "a"), (curve_for(1), record_for(1, "A100"), "b")], "d")
    short = Curve(STEPS[:-1], curve_for(1).loss[:-1])
    with pytest.raises(BaselineError, match="other step numbers"):
        baseline_from_runs([(curve_for(0), record_for(0), "a"), (short, record_for(1), "b")], "d")
    nan = Curve(STEPS, np.where(STEPS == 5, np.nan, 1.0))
    with pytest.raises(BaselineError, match="non-finite"):
        baseline_from_runs([(nan, record_for(0), "a")], "d")


def test_refusals_list_the_keys_that_differ():
    single = baseline_from_runs([(curve_for(0), record_for(0), "a")], "default")
    assert refusals(single, "default", record_for(0)) == []
    reasons = refusals(single, "nightly", record_for(0, lr=0.01, steps=200))
    assert any("this run is 'nightly'" in r for r in reasons)
    assert any("train.lr" in r and "train.steps" in r for r in reasons)
    # a single-run baseline keeps the seed in its hash: another seed is another curve
    assert any("train.seed" in r for r in refusals(single, "default", record_for(1)))
    other_model = record_for(0)
    other_model["curve_params"]["model"]["name"] = "cait_S24_224"
    assert any("model 'cait_XXS24_224'" in r and "cait_S24_224" in r for r in refusals(single, "default", other_model))
    other_data = record_for(0)
    other_data["data_manifest_hash"] = "0" * 64
    assert any("other data" in r for r in refusals(single, "default", other_data))


def test_multi_seed_baseline_judges_any_seed_but_nothing_else():
    baseline = multi()
    assert baseline.provenance["params_hash"] == curve_hash(record_for(5)["curve_params"], with_seed=False)
    assert refusals(baseline, "default", record_for(5)) == []
    reasons = refusals(baseline, "default", record_for(5, batch_size=16))
    assert reasons and "train.batch_size" in reasons[0] and "train.seed" not in reasons[0]


def test_version_and_device_differences_are_shown_not_refused():
    baseline = multi()
    record = record_for(0, "NVIDIA A100")
    record["environment"].update(device="cuda", torch="2.5.1")
    assert refusals(baseline, "default", record) == []
    diffs = environment_differences(baseline, record)
    assert any(d.startswith("device differs: baseline cpu, candidate cuda") for d in diffs)
    assert any("torch differs" in d and "2.5.1" in d for d in diffs)
    assert any("device name differs" in d for d in diffs)


def test_schema_1_files_still_load(tmp_path):
    data = multi().to_json()
    for key in ("runs", "stats", "kind"):
        data.pop(key)
    data["schema_version"] = 1
    (tmp_path / "v1.json").write_text(json.dumps(data))
    back = load_baseline(tmp_path / "v1.json")
    assert back.kind == "single-run" and back.seeds == [0]


def _mutations():
    def drop(key):
        return lambda d: d.pop(key)

    def set_(path, value):
        def apply(d):
            *parents, last = path
            for p in parents:
                d = d[p]
            d[last] = value
        return apply

    return [
        (drop("loss"), "malformed field 'loss'"),
        (drop("schema_version"), "schema_version"),
        (set_(["schema_version"], SCHEMA_VERSION + 1), "newer than this harness understands"),
        (set_(["schema_version"], 0), "not a known version"),
        (set_(["loss"], []), "no steps"),
        (set_(["loss", 3], "1.5"), "non-numeric"),
        (set_(["steps", 3], 2), "increase strictly"),
        (set_(["steps", 3], 3.5), "whole numbers"),
        (set_(["steps"], list(range(10))), "'steps' has 10 entries"),
        (lambda d: d["provenance"].pop("data_manifest_hash"), "provenance lacks data_manifest_hash"),
        (set_(["runs"], []), "at least 2 entries"),
        (set_(["runs", 1, "loss"], [1.0]), r"runs\[1\].loss has 1 entries"),
        (set_(["runs", 1, "loss", 0], None), r"runs\[1\].loss must be a list of numbers"),
        (drop("stats"), "needs 'stats'"),
        (set_(["stats", "mean", 0], 99.0), "stats.mean does not match the runs"),
        (lambda d: [d.update(kind="ensemble"), d.pop("runs"), d.pop("stats")], "unknown kind 'ensemble'"),
    ]


@pytest.mark.parametrize("mutate,message", _mutations())
def test_malformed_baselines_are_clear_errors(tmp_path, mutate, message):
    data = copy.deepcopy(multi().to_json())
    mutate(data)
    path = tmp_path / "b.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match=message) as info:
        load_baseline(path)
    assert str(path) in str(info.value)


def test_truncated_and_missing_files(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps(multi().to_json())[:500])
    with pytest.raises(BaselineError, match="not valid JSON.*truncated"):
        load_baseline(path)
    with pytest.raises(BaselineError, match="baseline not found"):
        load_baseline(tmp_path / "none.json")
    with pytest.raises(BaselineError, match="is a folder"):
        load_baseline(tmp_path)


def test_promote_several_run_folders_makes_a_multi_run_baseline(project, capsys):
    from pipelines.stages import baseline as stage

    folders = []
    for seed in (0, 1, 2):
        folder = project / f"runs/seed{seed}"
        curve = curve_for(seed)
        write_curve_csv(folder / "curve.csv", [{"step": s, "loss": v, "lr": 0.1, "samples_per_s": 1.0, "elapsed_s": 0.0}
                                               for s, v in zip(curve.steps, curve.loss)])
        write_record(folder / "train.json", {**record_for(seed), "steps_done": len(curve),
                                             "curve_sha256": file_sha256(folder / "curve.csv")})
        folders += ["--run-dir", str(folder)]
    assert stage.main(["promote", *folders, "--out", "b/multi.json"]) == 0
    assert "multi-run" in capsys.readouterr().out
    back = load_baseline(project / "b/multi.json")
    assert back.seeds == [0, 1, 2] and back.runs[2].loss.tolist() == curve_for(2).loss.tolist()
    assert stage.main(["promote", "--curve", "runs/seed1/curve.csv", "--out", "b/one.json"]) == 0
    assert load_baseline(project / "b/one.json").seeds == [1]


def test_promote_refuses_one_run_twice_and_a_file_its_record_does_not_name(project, capsys):
    """issue 30: one run given twice made a band of zero width; a fingerprints.npz the run's train.json does not
    name was copied beside the baseline. Both are one line, exit 2, and nothing is written."""
    import shutil

    from pipelines import cli
    from pipelines.stages import baseline as stage

    from cait.fingerprints import Fingerprints, PhasePrints, save

    folder = project / "runs/seed0"
    curve = curve_for(0)
    write_curve_csv(folder / "curve.csv", [{"step": s, "loss": v, "lr": 0.1, "samples_per_s": 1.0, "elapsed_s": 0.0}
                                           for s, v in zip(curve.steps, curve.loss)])
    prints = Fingerprints({"schema": 2, "model": "m", "sketch_dim": 4},
                          {0: {"forward": PhasePrints(["a"], [[4]], np.zeros((1, 10)), np.ones((1, 4)))}})
    save(folder / "fingerprints.npz", prints)
    write_record(folder / "train.json", {**record_for(0), "steps_done": len(curve), "date": "2026-12-01T00:00:00",
                                         "wall_s": 12.5, "curve_sha256": file_sha256(folder / "curve.csv"),
                                         "fingerprints_sha256": file_sha256(folder / "fingerprints.npz")})
    shutil.copytree(folder, project / "runs/copy")  # the same run again, in another folder
    for args, said in ((["--run-dir", "runs/seed0", "--run-dir", "runs/seed0"], "(the same file:"),
                       (["--run-dir", "runs/seed0", "--run-dir", "runs/./seed0/"], "(the same file:"),
                       (["--run-dir", "runs/seed0", "--run-dir", "runs/copy"], "(MLflow run: run0)")):
        capsys.readouterr()
        assert cli.run(stage.main, ["promote", *args, "--out", "b/twice.json"]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line]
        assert len(err) == 1 and "the same run as runs/seed0/curve.csv " + said in err[0], err
    record = json.loads((project / "runs/copy/train.json").read_text())
    (project / "runs/copy/train.json").write_text(json.dumps({**record, "mlflow_run_id": ""}))  # untracked: no MLflow id
    assert cli.run(stage.main, ["promote", "--run-dir", "runs/seed0", "--run-dir", "runs/copy", "--out", "b/x.json"]) == 2
    assert "trained at the same date and wall time (run.json)" in capsys.readouterr().err
    assert not (project / "b").exists()
    # the record names another fingerprints file than the one beside the curve: refused before any file is written
    save(folder / "fingerprints.npz", Fingerprints(prints.meta, {1: prints.steps[0]}))
    assert cli.run(stage.main, ["promote", "--run-dir", "runs/seed0", "--out", "b/one.json"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(err) == 1 and "runs/seed0/fingerprints.npz: SHA-256" in err[0] and "fingerprints_sha256" in err[0]
    assert not (project / "b").exists()


def test_record_refuses_a_seed_params_yaml_would_refuse(project, capsys):
    """`record --seeds -1` ended in a traceback, exit 4: it is a usage error, exit 2, before any training."""
    from pipelines import cli
    from pipelines.stages import baseline as stage

    for seeds, said in (("-1", "--seeds -1: train.seed: input should be greater than or equal to 0 (got -1)"),
                        ("0,x", "--seeds '0,x': give whole numbers"), (",", "--seeds ',': give at least one seed")):
        capsys.readouterr()
        assert cli.run(stage.main, ["-q", "record", "--seeds", seeds]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line]
        assert len(err) == 1 and said in err[0], err


def test_the_stored_default_baseline_has_several_runs():
    """baselines/default/baseline.json is the committed multi-run baseline the default chain compares against."""
    from pathlib import Path

    baseline = load_baseline(Path(__file__).resolve().parents[1] / "baselines/default/baseline.json")
    assert baseline.kind == "multi-run" and len(baseline.runs) >= 3
    assert len(set(baseline.seeds)) == len(baseline.seeds)  # several seeds: the band is the seed spread
    assert not baseline.seed_in_hash
    assert np.all(baseline.stats()["std"] > 0)
    assert baseline.provenance["seed"] == 0


@pytest.mark.slow
def test_record_trains_k_runs_and_compare_uses_their_band(tiny_project, capsys):
    """The real train stage, twice (seeds 0 and 1), then the chain's compare against that baseline."""
    from conftest import write_params
    from pipelines.stages import baseline as stage
    from pipelines.stages import compare, prepare, train

    write_params(tiny_project, {"tracking": {"enabled": False}, "device": {"threads": 1}})
    assert prepare.main([]) == 0
    assert stage.main(["record", "--runs", "2", "--envelope", "--variants", "weights_ulp"]) == 0
    baseline = load_baseline(tiny_project / "baselines/default/baseline.json")
    assert baseline.kind == "multi-run" and baseline.seeds == [0, 1]
    assert [r.variant for r in baseline.envelope_runs] == ["weights_ulp"]
    assert train.main([]) == 0
    assert compare.main([]) == 0
    verdict = json.loads((tiny_project / "reports/default/verdict.json").read_text())
    assert verdict["status"] == "pass", verdict["reasons"]
    assert verdict["baseline_runs"] == 2 and verdict["rules"]["band"]["passed"]
    assert verdict["rules"]["envelope"]["passed"] and verdict["rules"]["envelope"]["gating"]
    assert verdict["rules"]["strict"]["numbers"]["mean_abs_error"] == 0.0  # seed 0 paired with the seed-0 run


def test_promote_an_mlflow_run(project, capsys):
    """A tracked train run (its loss history and train.json artifact) promoted by id; a run without the
    artifact is refused with a clear message."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from pipelines.params import load_params
    from pipelines.stages import baseline as stage
    from pipelines.tracking import tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri(load_params().tracking))
    experiment = client.create_experiment("promote")
    curve = curve_for(4)
    run = client.create_run(experiment).info.run_id
    client.log_batch(run, metrics=[Metric("loss", float(v), 0, int(s)) for s, v in zip(curve.steps, curve.loss)])
    write_record(project / "train.json", record_for(4))
    client.log_artifact(run, str(project / "train.json"))
    assert stage.main(["promote", "--mlflow-run", run, "--out", "b/from_mlflow.json"]) == 0
    back = load_baseline(project / "b/from_mlflow.json")
    assert back.loss.tolist() == curve.loss.tolist() and back.seeds == [4]
    assert back.provenance["source"] == f"MLflow run {run}"
    bare = client.create_run(experiment).info.run_id
    client.log_batch(bare, metrics=[Metric("loss", 1.0, 0, 0)])
    with pytest.raises(BaselineError, match="has no train.json artifact"):
        stage.main(["promote", "--mlflow-run", bare, "--out", "b/x.json"])
