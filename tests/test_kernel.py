"""The first diverging op: the pure logic on made-up traces (alignment through casts, the bound, the first op
whose output leaves it while its inputs agree, how a call differs), and on the tiny profile the whole walk
from localize's module to the op and a repro that fails from a fresh shell; a legitimate kernel names none."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from pipelines.localize import Localization
from pipelines.oplocate import EPS32, OpCall, Trace, align, arg_differences, bound, first_diverging_op

RNG = np.random.default_rng(0)
X = RNG.normal(size=(4, 8))


def gelu(x, tanh=False):
    from math import erf, pi, sqrt, tanh as th

    f = (lambda v: 0.5 * v * (1 + th(sqrt(2 / pi) * (v + 0.044715 * v ** 3)))) if tanh else \
        (lambda v: 0.5 * v * (1 + erf(v / sqrt(2))))
    return np.vectorize(f)(x)


def trace(ops, tensors, dtypes=None, origin=None):
    """ops: (name, {arg: key or value}, [output keys]); tensors: {key: array}."""
    calls = [OpCall(name, "m", {a: ({"tensor": v} if isinstance(v, str) and v in tensors else {"value": v})
                                for a, v in args.items()}, outs) for name, args, outs in ops]
    return Trace(calls, {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()},
                 {k: (dtypes or {}).get(k, "float32") for k in tensors}, dict(origin or {}))


def rounded(x, bits=24):
    """x rounded to `bits` significant bits (24: float32, 8: bfloat16)."""
    m, e = np.frexp(x)
    return np.ldexp(np.round(m * 2.0 ** bits) / 2.0 ** bits, e)


def mlp(act, x=X, wrong_fc=False):
    """input -> mm (fc) -> act -> mm: the oracle in float64, the others as given."""
    h = x * (2.0 if wrong_fc else 1.0)
    a = act(h)
    return trace([("aten.mul.Tensor", {"self": "input:0", "other": 2.0 if wrong_fc else 1.0}, ["h"]),
                  ("aten.gelu.default", {"self": "h", "approximate": "tanh" if act is GELU_TANH else "none"}, ["a"]),
                  ("aten.neg.default", {"self": "a"}, ["o"])],
                 {"input:0": x, "h": h, "a": a, "o": -a})


GELU_TANH = lambda v: rounded(gelu(v, tanh=True))  # noqa: E731
GELU32 = lambda v: rounded(gelu(v))  # noqa: E731


def test_the_op_whose_output_leaves_its_bound_while_its_inputs_agree_is_named_with_its_arguments():
    oracle, fp32 = mlp(gelu), mlp(GELU32)
    found = first_diverging_op(mlp(GELU_TANH), oracle, fp32, module="blocks.0.mlp")
    assert (found.status, found.op, found.kind, found.index) == ("named", "aten.gelu.default", "tolerance", 1)
    assert found.arg_diffs == ["approximate: 'tanh' vs 'none'"]
    assert found.rel_l2 > 100 * found.bound and found.input_rel_l2 == 0.0
    # the neg after it parts as much, but its input already parts: it is not named
    assert first_diverging_op(mlp(GELU32), oracle, fp32, module="blocks.0.mlp").status == "none"


def test_the_bound_is_c_times_the_fp32_kernels_own_error_at_least_one_rounding():
    assert bound(0.0, c=16) == 16 * EPS32
    assert bound(1e-5, c=16) == pytest.approx(1.6e-4)
    assert bound(float("nan"), c=4) == 4 * EPS32
    # a candidate 10x further from the oracle than the fp32 CPU kernel is within C = 16, 20x is not
    oracle = mlp(gelu)
    fp32 = mlp(lambda v: gelu(v) * (1 + 1e-5))
    for factor, status in ((10, "none"), (20, "named")):
        cand = mlp(lambda v, f=factor: gelu(v) * (1 + f * 1e-5))
        assert first_diverging_op(cand, oracle, fp32, module="m", c=16).status == status


def test_casts_are_transparent_and_a_dtype_change_is_named_on_the_op_that_got_it():
    """softmax in bf16: x -> _to_copy(bf16) -> _softmax -> _to_copy(f32) against a float64 softmax alone; the
    softmax is named (its input, followed back through the cast, agrees) and the dtype is the difference."""
    def softmax(v):
        e = np.exp(v - v.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    xb = rounded(X, 8)
    cand = trace([("aten._to_copy.default", {"self": "input:0", "dtype": "torch.bfloat16"}, ["xb"]),
                  ("aten._softmax.default", {"self": "xb", "dim": -1, "half_to_float": False}, ["s"]),
                  ("aten._to_copy.default", {"self": "s", "dtype": "torch.float32"}, ["s32"]),
                  ("aten.neg.default", {"self": "s32"}, ["o"])],
                 {"input:0": X, "xb": xb, "s": rounded(softmax(xb), 8), "s32": rounded(softmax(xb), 8),
                  "o": -rounded(softmax(xb), 8)}, dtypes={"xb": "bfloat16", "s": "bfloat16"},
                 origin={"xb": "input:0", "s32": "s"})
    ops = [("aten._softmax.default", {"self": "input:0", "dim": -1, "half_to_float": False}, ["s"]),
           ("aten.neg.default", {"self": "s"}, ["o"])]
    oracle = trace(ops, {"input:0": X, "s": softmax(X), "o": -softmax(X)},
                   dtypes={"input:0": "float64", "s": "float64"})
    fp32 = trace(ops, {"input:0": X, "s": rounded(softmax(X)), "o": -rounded(softmax(X))})
    assert align(cand, oracle) == {1: 0, 3: 1}
    found = first_diverging_op(cand, oracle, fp32, module="attn")
    assert (found.op, found.index) == ("aten._softmax.default", 1)
    assert found.arg_diffs == ["self dtype: bfloat16 vs float32"]  # against the fp32 reference's call


def test_an_op_without_counterpart_that_makes_a_parting_input_is_named():
    """A fused or extra op on the candidate's side: the op after it gets inputs that part; the extra op is named."""
    oracle = trace([("aten.neg.default", {"self": "input:0"}, ["o"])], {"input:0": X, "o": -X})
    fp32 = trace([("aten.neg.default", {"self": "input:0"}, ["o"])], {"input:0": X, "o": -X})
    cand = trace([("aten.mul.Tensor", {"self": "input:0", "other": 0.5}, ["h"]),
                  ("aten.neg.default", {"self": "h"}, ["o"])], {"input:0": X, "h": X / 2, "o": -X / 2})
    found = first_diverging_op(cand, oracle, fp32, module="m")
    assert (found.status, found.op, found.kind) == ("named", "aten.mul.Tensor", "unmatched")


def test_arguments_differ_by_value_dtype_and_shape():
    a = trace([("aten.native_layer_norm.default", {"input": "x", "normalized_shape": [8], "eps": 1e-5}, ["y"])],
              {"x": X, "y": X}, dtypes={"x": "bfloat16"})
    b = trace([("aten.native_layer_norm.default", {"input": "x", "normalized_shape": [8], "eps": 1e-6}, ["y"])],
              {"x": X, "y": X})
    assert arg_differences(a, 0, b, 0) == ["input dtype: bfloat16 vs float32", "eps: 1e-05 vs 1e-06"]


def test_a_weights_or_update_finding_names_no_op_and_a_clean_localization_searches_nothing(tmp_path):
    from pipelines.kernel import search
    from pipelines.stages.localize import find_op

    for phase in ("update", "weights"):
        found, repro = search(None, 0, phase, "blocks.0.attn.qkv")  # nothing replayed: no params needed
        assert found.status == "not_applicable" and repro is None and found.op == ""
    repro = tmp_path / "repro"
    repro.mkdir()
    for suffix in (".py", ".pt"):  # an earlier run's repro: never left beside a run that names nothing
        (repro / f"aten.gelu.default{suffix}").write_text("")
    assert find_op(None, Localization("clean", "agree"), repro_dir=repro) is None
    assert list(repro.iterdir()) == []


# ---- on the tiny profile ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_prepared(tmp_path_factory):
    from conftest import TINY, copy_project, merge, stage_env, write_params

    project = copy_project(tmp_path_factory.mktemp("kernel") / "project")
    write_params(project, merge(TINY, {"tracking": {"enabled": False}}))
    subprocess.run([sys.executable, "-m", "pipelines.stages.prepare", "-q"], cwd=project, check=True,
                   env=stage_env(project), capture_output=True)
    return project


def op_search(project, name, step, module, **device):
    from conftest import stage_env

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["device"].update(device)
    (project / f"{name}.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = project / f"{name}.json"
    done = subprocess.run([sys.executable, "-m", "pipelines.stages.localize", "-q", "--params", f"{name}.yaml", "op",
                           "--step", str(step), "--module", module, "--out", str(out)], cwd=project,
                          capture_output=True, text=True, env=stage_env(project))
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text())


@pytest.mark.slow
def test_gelu_tanh_names_aten_gelu_and_its_repro_fails_alone_in_a_fresh_shell(tiny_prepared, tmp_path):
    found = op_search(tiny_prepared, "gelu", 0, "blocks.0.mlp.act", port_bug="gelu_tanh")
    assert (found["status"], found["op"], found["site"]) == ("named", "aten.gelu.default", "blocks.0.mlp.act")
    assert found["arg_diffs"] == ["approximate: 'tanh' vs 'none'"]
    script = tiny_prepared / found["repro"]
    assert script.name == "aten.gelu.default.py" and script.with_suffix(".pt").is_file()
    assert "import cait" not in script.read_text() and "pipelines" not in script.read_text().split('"""')[2]
    # alone, from elsewhere, with nothing of the project's environment
    done = subprocess.run(["python", str(script), "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stdout and "bound" in done.stdout


@pytest.mark.slow
def test_a_module_that_only_received_the_divergence_walks_up_to_its_parent(tiny_prepared):
    """attention_scale: localize names the first Linear after the mis-scaled product (proj_l), which computes
    correctly on its inputs; its parent's mul by the scale is the op."""
    found = op_search(tiny_prepared, "scale", 0, "blocks.0.attn.proj_l", port_bug="attention_scale")
    assert (found["op"], found["site"], found["walked"]) == ("aten.mul.Tensor", "blocks.0.attn",
                                                             ["blocks.0.attn.proj_l", "blocks.0.attn"])
    assert found["arg_diffs"][0].startswith("other: ")


@pytest.mark.slow
def test_a_legitimate_kernel_names_no_op(tiny_prepared):
    """Every linear layer as (W x^T)^T + b (another GEMM, mm + add instead of addmm): within the bound at every op,
    up through the block."""
    found = op_search(tiny_prepared, "legit", 0, "blocks.0.attn.proj_l", numerics_variant="matmul_transposed")
    assert found["status"] == "none" and found["op"] == "", found["message"]
    assert found["walked"] == ["blocks.0.attn.proj_l", "blocks.0.attn", "blocks.0"]


def test_where_it_parts_shows_the_op_its_call_and_the_repro():
    from pipelines.oplocate import OpFinding
    from pipelines.report import localization_html

    op = OpFinding("named", "first diverging op aten.gelu.default", op="aten.gelu.default", site="blocks.0.mlp.act",
                   module="blocks.0.mlp.act", index=1, kind="tolerance", arg_diffs=["approximate: 'tanh' vs 'none'"],
                   rel_l2=8.5e-5, max_abs_error=2.3e-4, max_rel_error=2e-4, cosine=0.999999997, bound=1.9e-6,
                   fp32_error=3.9e-8, input_rel_l2=0.0, repro="reports/default/repro/aten.gelu.default.py")
    page = localization_html({"message": "step 0 ...", "first": None, "op": op.to_json()}, None)
    assert 'id="localize-op"' in page and "aten.gelu.default" in page and "approximate: &#x27;tanh&#x27;" in page
    assert "python reports/default/repro/aten.gelu.default.py --device" in page
    update = OpFinding("not_applicable", "the optimizer's update parts ...").to_json()
    assert "update parts" in localization_html({"message": "", "first": None, "op": update}, None)
    assert "localize-op" not in localization_html({"message": "", "first": None, "op": None}, None)


def test_the_kernel_benchmark_summarises_in_the_issues_shape():
    from benchmarks.bench_kernel import by_entry, summary, table

    row = {"named_module": "forward m", "op_site": "m", "op_status": "named", "full_run_seconds": 100.0,
           "repro_exit": 1}
    result = {"bugs": {"gelu_tanh": {**row, "named_op": "aten.gelu.default", "expected_op": "aten.gelu.default",
                                     "seconds_to_op": 10.0, "seconds_to_fail": 5.0, "ok": True},
                       "lr_one_step_late": {**row, "named_op": None, "expected_op": None, "op_status": "not_applicable",
                                            "seconds_to_op": 30.0, "seconds_to_fail": 15.0, "ok": True}},
              "legit": {"threads_1": {**row, "named_module": None, "named_op": None, "expected_op": None,
                                      "seconds_to_op": 5.0, "seconds_to_fail": None, "ok": True,
                                      "needed_c": {"m": {"needed_c": 1.1, "worst": "x"}}}}}
    s = summary(result)
    assert (s["median_op_fraction"], s["median_fail_fraction"]) == (0.2, 0.1)  # medians of 10 %, 30 % and 5 %, 15 %
    assert (s["op_bugs_named"], s["op_bugs"], s["legit_ok"], s["legit_needed_c"]) == (1, 1, 1, 1.1)
    assert by_entry(result)["gelu_tanh"] == {"expected_op": "aten.gelu.default", "named_op": "aten.gelu.default",
                                             "seconds_to_fail": 5.0, "seconds_to_op": 10.0, "full_run_seconds": 100.0}
    result["summary"] = s
    assert "| bug | `gelu_tanh` | forward m | aten.gelu.default | `aten.gelu.default` (m) | 1 |" in table(result)
