"""Layer fingerprints and localize: the pure comparison on made-up fingerprints, the file's integrity,
and the whole path on the tiny profile (a port bug injected, the gate fails, localize names the module;
runs in other processes with other thread counts compare clean)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from cait.fingerprints import (SCHEMA, STATS, FingerprintError, Fingerprints, PhasePrints, load, load_reference, save,
                               to_bytes)
from pipelines.localize import check_compatible, localize, with_spread

META = {"schema": SCHEMA, "model": "cait_XXS24_224", "profile": "default", "params_hash": "h", "world_size": 1,
        "global_batch": 32, "sketch_dim": 8, "curve_params": {"train": {"lr": 0.001}}}


def phase(names, sketch, nonfinite=None):
    sketch = np.array(sketch, dtype=float)  # a copy: tests edit it
    stats = np.zeros((len(names), len(STATS)))
    if nonfinite is not None:
        stats[:, -1] = nonfinite
    return PhasePrints(list(names), [[8]] * len(names), stats, sketch)


def prints(forward, update=None, meta=None, names=("a", "b", "c")):
    phases = {"forward": phase(names, forward)}
    if update is not None:
        phases["update"] = phase(["a.weight", "b.weight"], update)
    return Fingerprints(dict(meta or META), {0: phases})


RNG = np.random.default_rng(0)
REF_F = RNG.normal(size=(3, 8))
REF_U = RNG.normal(size=(2, 8))


def test_identical_fingerprints_are_clean():
    base = with_spread(prints(REF_F, REF_U), {})
    result = localize(prints(REF_F, REF_U), base, k=4, floor=1e-6)
    assert result.status == "clean" and result.first is None
    assert "agree" in result.message


def test_first_module_beyond_tolerance_is_named_in_execution_order():
    cand = REF_F.copy()
    cand[1] *= 1.001  # module b off by 1e-3; c downstream off too
    cand[2] *= 1.01
    result = localize(prints(cand, REF_U), with_spread(prints(REF_F, REF_U), {}), k=4, floor=1e-6)
    assert result.status == "diverged"
    assert (result.first.phase, result.first.entry, result.first.kind) == ("forward", "b", "tolerance")
    assert result.first.rel_l2 == pytest.approx(1e-3, rel=1e-6)
    assert "module b" in result.message


def test_the_envelope_spread_sets_each_entry_tolerance():
    """A variant that moves module b by 1e-3 makes 1e-3 legitimate there (k x spread), not elsewhere."""
    variant = REF_F.copy()
    variant[1] *= 1.001
    base = with_spread(prints(REF_F, REF_U), {"v": prints(variant, REF_U)})
    cand = REF_F.copy()
    cand[1] *= 1.003  # inside 4 x 1e-3
    assert localize(prints(cand, REF_U), base, k=4, floor=1e-6).status == "clean"
    cand[0] *= 1.0001  # module a had no spread: the floor alone
    assert localize(prints(cand, REF_U), base, k=4, floor=1e-6).first.entry == "a"
    # held out: judged without its own variant, the same candidate leaves the tolerance at b
    assert localize(prints(variant, REF_U), base, k=4, floor=1e-6, exclude="v").first.entry == "b"


def test_an_update_only_difference_points_at_the_optimizer():
    cand_u = REF_U.copy()
    cand_u[0] *= 0.5
    result = localize(prints(REF_F, cand_u), with_spread(prints(REF_F, REF_U), {}), k=4, floor=1e-6)
    assert (result.first.phase, result.first.entry, result.first.module) == ("update", "a.weight", "a")
    assert "optimizer" in result.message


def test_structure_and_nonfinite_differences_count():
    base = with_spread(prints(REF_F, REF_U), {})
    missing = prints(REF_F[[0, 2]], REF_U, names=("a", "c"))
    assert localize(missing, base, k=4, floor=1e-6).first.kind == "missing"
    with_nan = prints(REF_F, REF_U)
    with_nan.steps[0]["forward"].stats[2, -1] = 5
    assert localize(with_nan, base, k=4, floor=1e-6).first.kind == "nonfinite"


def test_other_model_or_params_are_refused_naming_what_differs():
    base = prints(REF_F, REF_U)
    with pytest.raises(FingerprintError, match="model 'cait_S24_224'"):
        check_compatible(prints(REF_F, meta={**META, "model": "cait_S24_224"}), base, "cand.npz", "base.npz")
    other = {**META, "params_hash": "x", "curve_params": {"train": {"lr": 0.002}}}
    with pytest.raises(FingerprintError, match=r"cand\.npz: made with other params .*train\.lr"):
        check_compatible(prints(REF_F, meta=other), base, "cand.npz", "base.npz")
    with pytest.raises(FingerprintError, match="profile 'tiny'"):
        check_compatible(prints(REF_F, meta={**META, "profile": "tiny"}), base, "cand.npz", "base.npz")


def test_file_round_trip_is_byte_stable_and_corruption_is_refused(tmp_path):
    original = with_spread(prints(REF_F, REF_U), {"v": prints(REF_F * 1.001, REF_U)})
    path = save(tmp_path / "fp.npz", original)
    assert to_bytes(original) == path.read_bytes()  # fixed zip dates: the same run gives the same bytes
    back = load(path)
    assert np.array_equal(back.steps[0]["forward"].sketch, REF_F)
    assert back.variants == ["v"] and back.spread[0]["forward"].shape == (1, 3)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    with pytest.raises(FingerprintError, match=r"bad\.npz"):
        load(tmp_path / "bad.npz")
    with pytest.raises(FingerprintError, match=r"missing\.npz: not found"):
        load(tmp_path / "missing.npz")


# ---- files that lie are refused, never localized (issue 30) --------------------------------------------------

def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def reference(spread_value=1e-3):
    """A baseline's reference file: the reference run with one envelope variant's spread."""
    return with_spread(prints(REF_F, REF_U), {"v": prints(REF_F * (1 + spread_value), REF_U * (1 + spread_value))})


@pytest.mark.parametrize("edit,field", [
    (lambda r: r.steps[0]["forward"].sketch.__setitem__((1, 0), np.nan), r"step 0 forward b: sketch bucket 0 is nan"),
    (lambda r: r.steps[0]["update"].stats.__setitem__((0, 2), np.inf), r"step 0 update a.weight: stats max_abs is inf"),
    (lambda r: r.spread[0]["forward"].__setitem__((0, 2), np.inf), r"step 0 forward c spread \(v\): inf is not a"),
    (lambda r: r.spread[0]["forward"].__setitem__((0, 0), -16.0), r"step 0 forward a spread \(v\): -16.0 is not a"),
    (lambda r: r.meta.pop("envelope_variants") and r.spread.clear(), r"a run's fingerprints, not a reference"),
])
def test_a_reference_that_lies_is_refused_naming_the_entry(tmp_path, edit, field):
    """NaN in the reference's sketch blamed a good module (relative error nan); an inf spread let a port bug pass
    as clean; a negative one blamed a good run; a run's own file gave a floor-only tolerance without a word."""
    ref = reference()
    edit(ref)
    path = save(tmp_path / "reference.npz", ref)  # written (and signed) as the baseline command would
    with pytest.raises(FingerprintError, match=field) as info:
        load_reference(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_a_file_whose_numbers_changed_after_it_was_written_is_refused(tmp_path):
    path = save(tmp_path / "fp.npz", reference())
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for key, value in (("s0.forward.sketch", 0.5), ("s0.forward.spread", 0.0), ("s0.update.stats", 1.0)):
        changed = {**arrays, key: arrays[key].copy()}
        changed[key].flat[0] = value
        np.savez(tmp_path / "edited.npz", **changed)
        with pytest.raises(FingerprintError, match=r"edited\.npz: meta.digest does not match"):
            load(tmp_path / "edited.npz")
    odd = dict(arrays)
    odd["s0.forward.stats"] = arrays["s0.forward.stats"][:2]  # re-signed: the layout still names 3 entries
    meta = json.loads(bytes(arrays["meta"]).decode())
    from cait.fingerprints import digest

    meta["digest"] = digest(meta, {k: v for k, v in odd.items() if k != "meta"})
    odd["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "shape.npz", **odd)
    with pytest.raises(FingerprintError, match=r"shape\.npz: step 0 forward: stats float64\[2, 10\]"):
        load(tmp_path / "shape.npz")


def test_a_phase_s_stats_are_each_tensor_s_own():
    """The recorder takes a phase's quantiles in one batched call and max_abs and the non-finite count by
    faster kernels: every number must be what the plain per-tensor computation gives, non-finite ones included."""
    import torch

    from cait.fingerprints import QUANTILE_SAMPLE, QUANTILES, _PhaseBuffer, _Sketcher

    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(n, generator=g) for n in (1, 7, 7, 64, 1000, QUANTILE_SAMPLE + 5, 3 * QUANTILE_SAMPLE)]
    tensors[2][3] = float("nan")
    tensors[4][[5, 9]] = torch.tensor([float("inf"), -float("inf")])
    tensors.append(torch.empty(0))
    sketcher, buffer = _Sketcher(16), _PhaseBuffer()
    for i, t in enumerate(tensors):
        buffer.add(f"t{i}", t, sketcher, whole=False)
    done = buffer.done(whole=False)
    stats = done.stats
    for t, row, sketch in zip(tensors, stats, done.sketch):
        if t.numel() == 0:
            assert not row.any() and not sketch.any()
            continue
        order, sign = sketcher.plan(t.numel(), t.device)
        width = -(-t.numel() // 16)
        plain = torch.cat([t[order] * sign, torch.zeros(width * 16 - t.numel())]).view(16, width).sum(1)
        np.testing.assert_array_equal(sketch, plain.double().numpy())
        q = torch.quantile(t[order[:QUANTILE_SAMPLE]], torch.tensor(QUANTILES))
        plain = torch.cat([torch.stack([t.mean(), t.std(unbiased=False) if t.numel() > 1 else t.new_zeros(()),
                                        t.abs().max(), t.norm()]), q, (~torch.isfinite(t)).sum().float().view(1)])
        np.testing.assert_array_equal(row, plain.double().numpy())
    assert stats[:, STATS.index("nonfinite")].tolist() == [0, 0, 1, 0, 2, 0, 0, 0]


def with_precision(fp, shares, shape=(8, 8)):
    """fp with its forward entries of `shape` and their precision shares (bf16, fp16) set: one row per entry."""
    pp = fp.steps[0]["forward"]
    pp.shapes = [list(shape)] * len(pp.names)
    pp.precision = np.array(shares, dtype=float)
    return fp


def test_a_tensor_dropped_to_the_low_format_is_a_precision_loss_and_a_gain_is_not():
    from pipelines.localize import precision_changes
    from pipelines.verdict import precision_rule

    fp32, bf16 = [0.0, 0.0002], [1.0, 1.0]
    reference = with_precision(prints(REF_F), [fp32, bf16, fp32])
    same = precision_changes(with_precision(prints(REF_F), [fp32, bf16, fp32]), reference, "bf16")
    assert same.status == "clean" and same.entries == 3 and not same.lost and not same.gained
    assert precision_rule(same.to_json()).passed
    # "a" went through bf16 where the reference keeps float32: lost; "b" kept in float32 where it is bf16: gained
    changed = precision_changes(with_precision(prints(REF_F), [bf16, fp32, [np.nan, np.nan]]), reference, "bf16")
    assert changed.status == "lost" and [c.entry for c in changed.lost] == ["a"]
    assert [c.entry for c in changed.gained] == ["b"] and changed.entries == 2  # NaN: no nonzero element
    assert "step 0 forward a (100% of its elements fit, reference 0%)" in changed.message
    rule = precision_rule(changed.to_json())
    assert not rule.passed and rule.numbers == {"tensors_judged": 2, "tensors_lost": 1, "tensors_gained": 1}
    # under fp32 the low format is fp16, whose 10 mantissa bits hold every bf16 value
    half = precision_changes(with_precision(prints(REF_F), [[0.0, 1.0], bf16, fp32]), reference, "fp32")
    assert half.format == "fp16" and [c.entry for c in half.lost] == ["a"]
    # the update is a difference of two float32 tensors: its few significant bits say its size, not its format
    small_update, reference_update = prints(REF_F, REF_U), prints(REF_F, REF_U)
    for fp, share in ((small_update, 1.0), (reference_update, 0.0)):
        with_precision(fp, [fp32] * 3)
        fp.steps[0]["update"].shapes = [[8, 8]] * 2
        fp.steps[0]["update"].precision = np.full((2, 2), share)
    assert precision_changes(small_update, reference_update, "bf16").status == "clean"
    # tiny tensors (per-head biases: their gradients can be rounding residue) are not judged
    assert precision_changes(with_precision(prints(REF_F), [bf16] * 3, shape=(4,)), reference, "bf16").entries == 0


def test_an_entry_the_reference_computes_in_bf16_has_that_format_s_resolution():
    """A bf16 tensor moves by a whole bf16 ulp wherever anything before it differs: its tolerance is at least
    k x 2^-7 (+ floor) however small the envelope's spread there; so is the update of a parameter whose gradient
    is bf16 (AdamW's step has relative condition <= 1 in its gradient); float32 entries keep the envelope's."""
    from pipelines.localize import tolerance

    ref = prints(REF_F, REF_U)
    ref.steps[0]["forward"].precision = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # fp32, bf16, fp16
    ref.steps[0]["param_grad"] = phase(["a.weight", "b.weight"], REF_U)
    ref.steps[0]["param_grad"].precision = np.array([[1.0, 1.0], [0.0, 0.0]])
    ref.steps[0]["update"].stats[:, STATS.index("l2")] = 1.0  # the update's float32 resolution: ~2 EPS32
    base = with_spread(ref, {})
    tol, spread = tolerance(base, 0, "forward", k=4, floor=1e-6)
    assert spread.tolist() == [0.0, 2.0 ** -7, 2.0 ** -10] and tol[1] == 4 * 2.0 ** -7 + 1e-6
    _, spread = tolerance(base, 0, "update", k=4, floor=1e-6)
    assert spread[0] == 2.0 ** -7 and spread[1] < 1e-6
    near = prints(REF_F * np.array([[1.0], [1 + 2.0 ** -8], [1.0]]), REF_U)  # "b" moved by half a bf16 ulp
    assert localize(near, base, k=4, floor=1e-6).status == "clean"
    old = with_spread(prints(REF_F, REF_U), {})  # no precision shares: the envelope's spread alone
    assert localize(near, old, k=4, floor=1e-6).first.entry == "b"


def test_fingerprints_without_precision_shares_judge_nothing_and_gating_is_inconclusive(tmp_path):
    from pipelines.localize import precision_changes
    from pipelines.verdict import decide, precision_rule

    old = prints(REF_F)  # precision None: a file recorded before the shares existed
    check = precision_changes(old, with_precision(prints(REF_F), [[0.0, 0.0]] * 3), "bf16")
    assert check.status == "unavailable" and "candidate's fingerprints have no precision shares" in check.message
    assert not precision_rule(check.to_json()).applicable
    loss = np.linspace(2.3, 1.0, 60)
    steps = np.arange(60)
    settings = dict(min_steps=10, modelzoo={"max_mean_relative_error": 0.05, "max_mean_absolute_error": 2e-4},
                    strict={}, band={}, trend={}, divergence={"max_relative_error": 0.02, "max_abs_error": 0.0,
                                                               "consecutive_steps": 3},
                    envelope={}, throughput={})
    verdict = decide(steps, loss, steps, loss, gate=["modelzoo", "precision"], precision_check=check.to_json(),
                     **settings)
    assert verdict.status == "inconclusive" and any("the precision rule gates but cannot run" in r for r in verdict.reasons)
    # the file keeps the shares; one out of [0, 1] is refused naming the entry
    fp = with_precision(prints(REF_F), [[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]])
    assert np.array_equal(load(save(tmp_path / "p.npz", fp)).steps[0]["forward"].precision, fp.steps[0]["forward"].precision)
    fp.steps[0]["forward"].precision[1, 0] = 1.5
    with pytest.raises(FingerprintError, match=r"p2\.npz: step 0 forward b: precision bf16 share 1\.5"):
        load(save(tmp_path / "p2.npz", fp))


def fake_run_with_fingerprints(project, loss, forward):
    """A train-stage run folder (fake_runs) with its fingerprints.npz named by its train.json, the baseline it is
    judged against and that baseline's reference fingerprints (tied to it by its reference loss)."""
    from fake_runs import reference_loss, write_run

    from pipelines.baselines import load_baseline
    from pipelines.localize import loss_digest
    from pipelines.provenance import file_sha256

    out = write_run(project, loss, baseline_loss=reference_loss(60))
    save(out / "fingerprints.npz", prints(forward, REF_U))
    record = json.loads((out / "train.json").read_text())
    record["fingerprints_sha256"] = file_sha256(out / "fingerprints.npz")
    (out / "train.json").write_text(json.dumps(record))
    ref = reference()
    ref.meta["baseline_loss_sha256"] = loss_digest(load_baseline(project / "baselines/default/baseline.json").loss)
    save(project / "baselines/default/fingerprints.npz", ref)
    return out


def test_fingerprints_not_named_by_their_run_record_are_refused_in_the_chain(project, capsys):
    """A port-bug run's file dropped into a passing run's folder blamed a module of a passing run, and the
    reverse made a failing gate print "fingerprints agree": train.json names the file's SHA-256."""
    from conftest import write_params
    from fake_runs import reference_loss

    from pipelines import cli
    from pipelines.stages import localize as stage

    write_params(project, {"tracking": {"enabled": False}})
    out = fake_run_with_fingerprints(project, reference_loss(60), REF_F)
    capsys.readouterr()
    assert cli.run(stage.main, ["-q"]) == 0
    assert json.loads((out / "localize.json").read_text())["status"] == "clean"
    good = (out / "localize.json").read_bytes()
    bug = REF_F.copy()
    bug[1] *= 1.01
    for dropped in (bug, REF_F * 1.0):  # another run's file (a bug's), then a clean file of another run
        save(out / "fingerprints.npz", prints(dropped, REF_U * (1 + 1e-9)))
        capsys.readouterr()
        assert cli.run(stage.main, ["-q"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "reports/default/fingerprints.npz: SHA-256" in line and "fingerprints_sha256" in line
        assert (out / "localize.json").read_bytes() == good  # nothing good overwritten
        # given by hand, a run's file beside its record is checked the same way
        assert cli.run(stage.main, ["--candidate", str(out / "fingerprints.npz")]) == 2
        assert "fingerprints_sha256" in one_error_line(capsys.readouterr().err)


def test_a_run_file_as_baseline_and_a_reference_with_nan_are_exit_2(project, capsys):
    from conftest import write_params
    from fake_runs import reference_loss

    from pipelines import cli
    from pipelines.stages import localize as stage

    write_params(project, {"tracking": {"enabled": False}})
    out = fake_run_with_fingerprints(project, reference_loss(60), REF_F)
    capsys.readouterr()
    run_file = str(out / "fingerprints.npz")
    assert cli.run(stage.main, ["--candidate", run_file, "--baseline", run_file]) == 2
    assert "a run's fingerprints, not a reference" in one_error_line(capsys.readouterr().err)
    ref = load(project / "baselines/default/fingerprints.npz")
    ref.steps[0]["forward"].sketch[0, 3] = np.nan
    save(project / "baselines/default/fingerprints.npz", ref)
    assert cli.run(stage.main, ["-q"]) == 2  # in the chain too: a corrupt reference is no "diverged"
    line = one_error_line(capsys.readouterr().err)
    assert "baselines/default/fingerprints.npz: step 0 forward a: sketch bucket 3 is nan" in line
    assert not (out / "localize.json").exists()


def test_a_reference_with_no_envelope_runs_says_its_tolerance_is_the_floor():
    result = localize(prints(REF_F, REF_U), with_spread(prints(REF_F, REF_U), {}), k=4, floor=1e-6)
    assert result.status == "clean" and "the reference has no envelope runs" in result.message


def test_replay_refuses_a_step_the_run_never_reaches_before_training(project, capsys):
    """An 8-step run (train.steps null: 1 epoch of 64 images in batches of 8): --step 1000 trained the whole run,
    exited 0 and claimed fingerprints at step 1000."""
    from conftest import write_params

    from cait.manifest import Manifest, write_manifest
    from pipelines import cli
    from pipelines.stages import localize as stage

    write_params(project, {"tracking": {"enabled": False}, "train": {"steps": None, "epochs": 1, "batch_size": 8,
                                                                     "warmup_steps": 2}})
    images = [(f"train/c0/{i}.png", 0, "0" * 64) for i in range(64)]
    write_manifest(Manifest("synthetic", project / "data/prepared", ["c0"], {"train": images, "val": []}, True),
                   project / "data/prepared", ".")
    capsys.readouterr()
    assert cli.run(stage.main, ["-q", "replay", "--step", "1000"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--step 1000: outside the run's steps 0..7" in line
    assert not (project / "reports/default/replay-1000").exists()


def test_a_replay_that_stopped_before_its_step_is_refused(tmp_path):
    from pipelines.provenance import file_sha256
    from pipelines.stages.localize import replayed

    run = Fingerprints(dict(META), {0: {"forward": phase(["a"], REF_F[:1])}})
    save(tmp_path / "fingerprints.npz", run)
    (tmp_path / "train.json").write_text(json.dumps({"environment": {}, "params_hash": "h", "curve_params": {},
                                                     "data_manifest_hash": "d",
                                                     "fingerprints_sha256": file_sha256(tmp_path / "fingerprints.npz")}))
    assert sorted(replayed(tmp_path, 0).steps) == [0]
    with pytest.raises(FingerprintError, match=r"holds no fingerprints at step 5 \(steps \[0\]"):
        replayed(tmp_path, 5)


# ---- the whole path on the tiny profile -------------------------------------------------------------------

def _run(args, project, check=True, **env):
    from conftest import stage_env

    done = subprocess.run([sys.executable, "-m", *args], cwd=project, capture_output=True, text=True,
                          env={**stage_env(project), **env})
    if check and done.returncode != 0:
        raise AssertionError(f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def _params_with(project, name, tracking=False, **device):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["device"].update(device)
    params["tracking"]["enabled"] = tracking
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path.name


@pytest.fixture(scope="module")
def tiny_with_baseline(tmp_path_factory):
    """A tiny project with a baseline (one seed, envelope of weights_ulp and fused_attention) and its fingerprints."""
    from conftest import TINY, copy_project, merge, write_params

    project = copy_project(tmp_path_factory.mktemp("localize") / "project")
    write_params(project, merge(TINY, {"tracking": {"enabled": False}}))
    _run(["pipelines.stages.prepare", "-q"], project)
    _run(["pipelines.stages.baseline", "-q", "record", "--runs", "1", "--envelope", "--variants",
          "weights_ulp,fused_attention"], project)
    assert (project / "baselines/default/fingerprints.npz").exists()
    return project


@pytest.mark.slow
def test_injected_bug_fails_the_gate_and_localize_names_the_module(tiny_with_baseline):
    project = tiny_with_baseline
    params = _params_with(project, "bug", tracking=True, port_bug="softmax_bf16")
    night = {"CAIT_EXECUTION_ID": "nightly-7"}  # an execution: its parent run shows the worst device's columns
    _run(["pipelines.stages.train", "-q", "--params", params], project, **night)
    _run(["pipelines.stages.compare", "-q", "--params", params], project, **night)
    _run(["pipelines.stages.localize", "-q", "--params", params], project, **night)
    _run(["pipelines.stages.report", "-q", "--params", params], project)
    gate = _run(["pipelines.stages.gate", "--params", params], project, check=False)
    assert gate.returncode == 1, gate.stdout + gate.stderr
    found = json.loads((project / "reports/default/localize.json").read_text())
    assert found["status"] == "diverged"
    assert (found["first"]["step"], found["first"]["phase"]) == (0, "forward")
    assert found["first"]["module"].startswith("blocks.0.attn"), found["message"]  # softmax_bf16: every attention
    page = (project / "reports/default/report.html").read_text()
    assert "Where it parts" in page and found["first"]["entry"] in page
    assert page.index("Where it parts") < page.index("<h2>Why</h2>")  # at the top of a failing report
    assert (project / "reports/default/localize.png").exists()
    # MLflow: the fingerprints are an artifact of the train run, the localisation its tags
    from mlflow.tracking import MlflowClient

    record = json.loads((project / "reports/default/run.json").read_text())  # the MLflow ids (not in train.json)
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(record["mlflow_run_id"])
    assert run.data.tags["localize.status"] == "diverged"
    assert run.data.tags["localize.module"] == found["first"]["module"]
    assert run.data.tags["localize.phase"] == "forward"
    parent = client.get_run(record["mlflow_parent_run_id"])  # the row the runs list's verdict view shows
    assert parent.data.tags["localize.module"] == found["first"]["module"] and parent.data.tags["verdict"] == "fail"
    assert parent.data.tags["verdict.default.cpu"] == "fail" and parent.data.tags["cait.execution"] == "nightly-7"
    assert "fingerprints.npz" in [a.path for a in client.list_artifacts(run.info.run_id)]


@pytest.mark.slow
def test_runs_with_other_thread_counts_in_other_processes_compare_clean(tiny_with_baseline):
    project = tiny_with_baseline
    for threads in (1, 2):
        params = _params_with(project, f"threads{threads}", threads=threads)
        _run(["pipelines.stages.train", "-q", "--params", params, "--out-dir", f"runs/t{threads}"], project)
    for threads in (1, 2):
        done = _run(["pipelines.stages.localize", "--candidate", f"runs/t{threads}/fingerprints.npz",
                     "--out", f"runs/t{threads}/localize.json"], project)
        found = json.loads((project / f"runs/t{threads}/localize.json").read_text())
        assert found["status"] == "clean", done.stdout
    # and the two runs against each other, with the baseline's tolerance: the same steps, the same entries
    one, two = load(project / "runs/t1/fingerprints.npz"), load(project / "runs/t2/fingerprints.npz")
    base = load(project / "baselines/default/fingerprints.npz")
    two_as_reference = Fingerprints(two.meta, two.steps, base.spread)
    two_as_reference.meta["envelope_variants"] = base.variants
    assert localize(one, two_as_reference, k=4, floor=1e-6).status == "clean"


@pytest.mark.slow
def test_a_file_of_another_profile_is_refused(tiny_with_baseline):
    project = tiny_with_baseline
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["profile"] = "other"
    params["train"]["lr"] = 0.002
    (project / "other.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["pipelines.stages.train", "-q", "--params", "other.yaml"], project)
    done = _run(["pipelines.stages.localize", "--candidate", "reports/other/fingerprints.npz"], project, check=False)
    assert done.returncode == 2
    assert "profile 'other'" in done.stderr and "fingerprints.npz" in done.stderr


@pytest.mark.slow
def test_replay_and_fingerprints_for_a_stored_baseline(tiny_with_baseline):
    """`localize replay --step S` stops after S with fingerprints there; `baseline fingerprints` accepts a rerun
    of the reference run (bitwise its curve) and refuses a run whose curve is not the stored one."""
    project = tiny_with_baseline
    _run(["pipelines.stages.localize", "-q", "replay", "--step", "3"], project)
    replay = load(project / "reports/default/replay-3/fingerprints.npz")
    assert sorted(replay.steps) == [3] and replay.meta["step_info"]["3"]["lr"] > 0
    refused = _run(["pipelines.stages.baseline", "-q", "fingerprints", "--run-dir", "reports/default/replay-3"], project,
                   check=False)
    assert refused.returncode == 2 and "is not the one" in refused.stderr
    copy = project / "baselines/copy"  # the module's other tests keep the original
    copy.mkdir(exist_ok=True)
    (copy / "baseline.json").write_bytes((project / "baselines/default/baseline.json").read_bytes())
    params = _params_with(project, "reference")
    _run(["pipelines.stages.train", "-q", "--params", params, "--out-dir", "runs/reference"], project)
    _run(["pipelines.stages.baseline", "-q", "fingerprints", "--run-dir", "runs/reference", "--baseline",
          "baselines/copy/baseline.json"], project)
    after = load(copy / "fingerprints.npz")
    assert after.variants == [] and sorted(after.steps) == [0, 5]  # no envelope runs given: none in it


@pytest.mark.slow
def test_localize_benchmark_smoke(tiny_with_baseline, tmp_path):
    """benchmarks/bench_localize.py on the tiny profile: two bugs named at their site, a legit run clean."""
    from benchmarks import bench_localize
    from pipelines.params import load_params

    project = tiny_with_baseline
    params = load_params(project / "params.yaml")
    params = params.model_copy(update={"localize": params.localize.model_copy(
        update={"baseline_fingerprints": str(project / "baselines/default/fingerprints.npz")})})
    result = bench_localize.measure(params, entries=["gelu_tanh", "lr_one_step_late", "weights_ulp_other"],
                                    runs_dir=tmp_path, data_dir=project / "data/prepared", log=lambda line: None)
    assert {n: r["found"] for n, r in result["bugs"].items()} == {"gelu_tanh": True, "lr_one_step_late": True}
    assert result["legit"]["weights_ulp_other"]["named"] is None
    assert "| bug | `gelu_tanh` | blocks.0.mlp.act |" in bench_localize.table(result)


def test_an_update_is_judged_by_its_bulk_so_a_few_sign_flips_are_not_a_bug_and_a_dense_change_is():
    """AdamW's first step is ~lr x sign(g): a gradient element near zero that takes the other sign moves its update
    by 2 lr (a relative L2 error of 0.7 in 8 elements) in a legitimate run; weight decay where there was none moves
    every element a little. The update is judged by the bulk of its elements; the forward still by its L2 error."""
    from pipelines.localize import bulk_error, occupied_buckets

    signs = np.where(RNG.normal(size=(2, 8)) > 0, 1.0, -1.0)
    base = with_spread(prints(REF_F, signs), {})
    flipped = signs.copy()
    flipped[0, 3] *= -1
    result = localize(prints(REF_F, flipped), base, k=4, floor=1e-6)
    assert result.status == "clean"
    decayed = signs - 0.05 * np.abs(signs)  # every element moved by 5% of it
    result = localize(prints(REF_F, decayed), base, k=4, floor=1e-6)
    assert (result.first.phase, result.first.entry) == ("update", "a.weight")
    assert result.first.bulk_error == pytest.approx(1.4826 * 0.05) and "bulk relative error" in result.message
    forward = REF_F.copy()
    forward[1, 3] *= -1  # one element of a module's output: the forward is judged by its L2 error
    assert localize(prints(forward, signs), base, k=4, floor=1e-6).first.entry == "b"
    assert bulk_error(np.ones(4), np.ones(4)) == 0.0 and bulk_error(np.array([np.inf]), np.ones(1)) == np.inf
    # the sketch's buckets that hold elements: equal groups of ceil(n / dim), the rest zero padding
    assert [occupied_buckets(s, 64) for s in ([4], [192], [100], [8, 8], [0])] == [4, 64, 50, 64, 0]


def test_the_layers_rule_gates_on_step_0_and_is_inconclusive_without_fingerprints():
    from pipelines.verdict import decide, layers_rule

    base = with_spread(prints(REF_F, REF_U), {})
    clean = localize(prints(REF_F, REF_U), base, k=4, floor=1e-6, only_steps=[0]).to_json()
    bad_f = REF_F.copy()
    bad_f[1] *= 1.01
    diverged = localize(prints(bad_f, REF_U), base, k=4, floor=1e-6, only_steps=[0]).to_json()
    rule = layers_rule(diverged)
    assert rule.applicable and not rule.passed and rule.thresholds == {"k": 4, "floor": 1e-6}
    assert rule.numbers["entries_judged"] == 5 and rule.numbers["entries_outside"] == 1  # module b of 3 + 2 updates
    assert rule.numbers["worst_matched_ratio"] == pytest.approx(0.01 / 1e-6, rel=1e-3)  # no spread: the floor
    assert layers_rule(clean).passed
    loss, steps = np.linspace(2.3, 1.0, 60), np.arange(60)
    settings = dict(min_steps=10, modelzoo={"max_mean_relative_error": 0.05, "max_mean_absolute_error": 2e-4},
                    strict={}, band={}, trend={}, divergence={"max_relative_error": 0.02, "max_abs_error": 0.0,
                                                               "consecutive_steps": 3},
                    envelope={}, throughput={})
    failed = decide(steps, loss, steps, loss, gate=["modelzoo", "layers"], layers_check=diverged, **settings)
    assert failed.status == "fail" and any(r.startswith("layers: step 0, forward") for r in failed.reasons)
    assert decide(steps, loss, steps, loss, gate=["modelzoo", "layers"], layers_check=clean, **settings).status == "pass"
    none = {"status": "unavailable", "message": "reports/x/fingerprints.npz: the run recorded no layer fingerprints"}
    gated = decide(steps, loss, steps, loss, gate=["modelzoo", "layers"], layers_check=none, **settings)
    assert gated.status == "inconclusive" and any("the layers rule gates but cannot run: reports/x" in r
                                                  for r in gated.reasons)
    informed = decide(steps, loss, steps, loss, gate=["modelzoo"], inform=["layers"], layers_check=diverged, **settings)
    assert informed.status == "pass" and "layers" in informed.rules and not informed.rules["layers"].gating
