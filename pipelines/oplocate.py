"""The first diverging op: pure logic over recorded op traces (numpy and dataclasses, no torch).

A trace is what one module computed, op by op, at the aten level (pipelines/kernel.py records it with a
TorchDispatchMode): each op's name, the module it was called in, its arguments (tensors by key, everything
else by value, every argument of the op's schema named, defaults filled in) and its outputs. Three traces
of one module on the same inputs are compared:

  candidate   the run's own module (its port bug or numerics variant) on the run's device and dtype
  oracle      the reference module (the model built without bug or variant) in float64 on the CPU
  fp32        the reference module in float32 on the CPU: what an fp32 kernel legitimately produces

Alignment: dtype casts (`_to_copy`, `to`, `detach`, `alias`) are transparent (a tensor made by one is
followed back to what was cast); the other ops are matched by name in order (the longest common
subsequence, so an extra cast, a fused call or an unfused sequence on one side leaves the rest matched).

The bound of a tensor is what an fp32 kernel may be off by: C x max(the fp32 reference's relative L2 error
against the oracle at that tensor, EPS32), where EPS32 (2^-23) is one float32 rounding of every element:
even an exact op must round its output. C (OP_C) is the factor another fp32 kernel (thread count, GEMM
orientation, fused attention) may add to the CPU's own error; it is measured in benchmarks/bench_kernel.py
(`needed_c` of the legitimate runs) and set well above what they need.

The first diverging op is the first matched op whose output's error against the oracle exceeds its bound
while every tensor input agrees within its own bound (Megatron's definition, msprobe's CPU high-precision
reference). When the first op beyond its bound has an input that does not agree, and that input was made
by a candidate op without a counterpart (a fused kernel, an extra scaling), that op is named instead.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field

import numpy as np

from pipelines.localize import _finite
from pipelines.localize import compare_arrays as compare

EPS32 = float(np.finfo(np.float32).eps)
# Measured (benchmarks/README.md, "The first diverging op"): held to the oracle at the zoo's op sites, the
# legitimate CPU kernels needed C <= 1.10 (threads_1 1.0, matmul_transposed 1.10; bench_kernel `needed_c`);
# 16 leaves a 14x margin for other devices' fp32 kernels (not yet measured on a GPU) while the zoo's op bugs
# are 100x and more beyond (gelu_tanh 710 x its fp32 error; bf16 is 2^-8 against fp32's ~1e-7).
OP_C = 16.0
# ops that only change a tensor's dtype, device or identity: followed through, never named, never aligned
TRANSPARENT = {"aten._to_copy.default", "aten.to.dtype", "aten.to.device", "aten.to.dtype_layout", "aten.to.other",
               "aten.detach.default", "aten.alias.default", "aten.lift_fresh.default", "aten._lazy_clone.default",
               "aten.lift_fresh_copy.default"}


@dataclass
class OpCall:
    """One op as recorded: `args` maps every schema argument to {"tensor": key} or {"value": repr-able value}."""

    name: str
    site: str  # the module it was called in ("(backward of M)" for autograd's ops)
    args: dict
    outputs: list[str]  # keys of its output tensors (in the op's output order)
    backward: bool = False

    def tensor_args(self) -> dict[str, str]:
        out = {}
        for arg, spec in self.args.items():
            if "tensor" in spec:
                out[arg] = spec["tensor"]
            elif "tensors" in spec:  # a list of tensors (cat, stack): each by position
                out.update({f"{arg}[{i}]": k for i, k in enumerate(spec["tensors"]) if k})
        return out


@dataclass
class Trace:
    """A module's recorded ops and the tensors they read and made: {key: float64 array}, {key: dtype name}."""

    ops: list[OpCall]
    tensors: dict[str, np.ndarray]
    dtypes: dict[str, str]
    origin: dict[str, str] = field(default_factory=dict)  # a cast's output key -> the key it was cast from

    def source(self, key: str) -> str:
        """The tensor a key was cast from, followed back through every transparent op."""
        seen = set()
        while key in self.origin and key not in seen:
            seen.add(key)
            key = self.origin[key]
        return key

    def producer(self) -> dict[str, int]:
        """{output key: index of the op that made it}."""
        out = {}
        for i, op in enumerate(self.ops):
            for key in op.outputs:
                out[key] = i
        return out


@dataclass
class OpFinding:
    status: str  # "named" | "none" (every op within its bound) | "not_applicable" | "unavailable"
    message: str
    op: str = ""  # e.g. aten.gelu.default
    site: str = ""  # the module it was called in
    module: str = ""  # the module whose trace named it (localize's entry, or the ancestor that holds the op)
    index: int = -1  # its position in the candidate's trace
    backward: bool = False
    kind: str = ""  # "tolerance" (output beyond its bound, inputs within) | "unmatched" (no counterpart)
    arg_diffs: list[str] = field(default_factory=list)  # "approximate: 'tanh' vs 'none'"
    output: int = 0  # which of its outputs parts
    rel_l2: float = float("nan")
    max_abs_error: float = float("nan")
    max_rel_error: float = float("nan")
    cosine: float = float("nan")
    bound: float = float("nan")
    fp32_error: float = float("nan")  # the fp32 reference's error at that output (the bound is C x this or EPS32)
    input_rel_l2: float = float("nan")  # the worst input's error against the oracle
    c: float = OP_C
    walked: list[str] = field(default_factory=list)  # the modules recorded, innermost first
    repro: str = ""
    seconds: float = float("nan")

    def to_json(self) -> dict:
        return _finite(asdict(self))


# ---- metrics and the bound ------------------------------------------------------------------------------

def bound(fp32_error: float, c: float = OP_C) -> float:
    """What an fp32 kernel may be off by at a tensor: c x max(the fp32 reference's error there, EPS32)."""
    return c * max(float(fp32_error) if np.isfinite(fp32_error) else 0.0, EPS32)


def rel_l2(trace_a: Trace, key_a: str, trace_b: Trace, key_b: str) -> float:
    a, b = trace_a.tensors.get(key_a), trace_b.tensors.get(key_b)
    if a is None or b is None or a.shape != b.shape:
        return float("nan")
    return compare(a, b)["rel_l2"]


# ---- alignment ------------------------------------------------------------------------------------------

def compute_ops(trace: Trace) -> list[int]:
    """Indices of the ops that are not transparent casts."""
    return [i for i, op in enumerate(trace.ops) if op.name not in TRANSPARENT]


def align(a: Trace, b: Trace) -> dict[int, int]:
    """{op index in a: op index in b}: non-transparent ops matched by name in order (longest common
    subsequence, forward and backward kept apart)."""
    ia, ib = compute_ops(a), compute_ops(b)
    names_a = [(a.ops[i].backward, a.ops[i].name) for i in ia]
    names_b = [(b.ops[i].backward, b.ops[i].name) for i in ib]
    matcher = difflib.SequenceMatcher(None, names_a, names_b, autojunk=False)
    out = {}
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            out[ia[block.a + k]] = ib[block.b + k]
    return out


def _show(value) -> str:
    return repr(value)


def arg_differences(cand: Trace, i: int, ref: Trace, j: int) -> list[str]:
    """How the candidate's call differs from the reference's: non-tensor arguments by value, tensor arguments
    by dtype and shape (e.g. "approximate: 'tanh' vs 'none'", "input dtype: bfloat16 vs float32")."""
    a, b = cand.ops[i].args, ref.ops[j].args
    out = []
    for name in list(a) + [n for n in b if n not in a]:
        x, y = a.get(name, {"value": None}), b.get(name, {"value": None})
        if "tensor" in x and "tensor" in y:
            ka, kb = x["tensor"], y["tensor"]
            da, db = cand.dtypes.get(ka, "?"), ref.dtypes.get(kb, "?")
            if da != db:
                out.append(f"{name} dtype: {da} vs {db}")
            sa, sb = cand.tensors.get(ka), ref.tensors.get(kb)
            if sa is not None and sb is not None and sa.shape != sb.shape:
                out.append(f"{name} shape: {list(sa.shape)} vs {list(sb.shape)}")
        elif "value" in x and "value" in y:
            if not _same_value(x["value"], y["value"]):
                out.append(f"{name}: {_show(x['value'])} vs {_show(y['value'])}")
        elif x != y:
            out.append(f"{name}: {'tensor' if 'tensor' in x else _show(x.get('value'))} vs "
                       f"{'tensor' if 'tensor' in y else _show(y.get('value'))}")
    return out


def _same_value(x, y) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        return x == y or (np.isnan(x) and np.isnan(y))
    return x == y


# ---- the first diverging op --------------------------------------------------------------------------------

def _output_errors(cand: Trace, i: int, oracle: Trace, j: int, fp32: Trace, k: int | None, c: float):
    """Per comparable output: (index, metrics, fp32 error, bound)."""
    out = []
    ref32_outputs = fp32.ops[k].outputs if k is not None else []
    for n, (ka, kb) in enumerate(zip(cand.ops[i].outputs, oracle.ops[j].outputs)):
        a, b = cand.tensors.get(ka), oracle.tensors.get(kb)
        if a is None or b is None or a.shape != b.shape:
            continue
        e32 = rel_l2(fp32, ref32_outputs[n], oracle, kb) if n < len(ref32_outputs) else float("nan")
        out.append((n, compare(a, b), e32, bound(e32, c)))
    return out


def _input_errors(cand: Trace, i: int, oracle: Trace, j: int, fp32: Trace, k: int | None, c: float):
    """Per tensor input present on both sides: (name, candidate source key, error, bound), each followed back
    through casts (the value before a cast is what the op was given; the cast shows as a dtype difference)."""
    ta, tb = cand.ops[i].tensor_args(), oracle.ops[j].tensor_args()
    t32 = fp32.ops[k].tensor_args() if k is not None else {}
    out = []
    for name, ka in ta.items():
        if name not in tb:
            continue
        sa, sb = cand.source(ka), oracle.source(tb[name])
        err = rel_l2(cand, sa, oracle, sb)
        e32 = rel_l2(fp32, fp32.source(t32[name]), oracle, sb) if name in t32 else float("nan")
        out.append((name, sa, err, bound(e32, c)))
    return out


def first_diverging_op(cand: Trace, oracle: Trace, fp32: Trace, *, module: str, c: float = OP_C) -> OpFinding:
    """The first candidate op whose output leaves its bound while its inputs agree (see the module doc)."""
    to_oracle = align(cand, oracle)
    to_fp32 = align(fp32, oracle)
    oracle_to_fp32 = {j: k for k, j in to_fp32.items()}
    made_by = cand.producer()
    for i in compute_ops(cand):
        j = to_oracle.get(i)
        if j is None:
            continue
        k = oracle_to_fp32.get(j)
        outputs = _output_errors(cand, i, oracle, j, fp32, k, c)
        beyond = [o for o in outputs if not o[1]["rel_l2"] <= o[3]]
        if not beyond:
            continue
        n, metrics, e32, limit = max(beyond, key=lambda o: o[1]["rel_l2"] / o[3])
        inputs = _input_errors(cand, i, oracle, j, fp32, k, c)
        off = [x for x in inputs if not x[2] <= x[3]]
        worst_in = max((x[2] for x in inputs if np.isfinite(x[2])), default=0.0)
        if not off:
            return OpFinding("named", "", op=cand.ops[i].name, site=cand.ops[i].site, module=module, index=i,
                             backward=cand.ops[i].backward, kind="tolerance",
                             arg_diffs=arg_differences(cand, i, fp32 if k is not None else oracle,
                                                       k if k is not None else j),
                             output=n, bound=limit, fp32_error=e32, input_rel_l2=worst_in, c=c, **metrics)
        # an input already parts: if a candidate op without counterpart made it, that op is where it starts
        for name, key, err, limit_in in off:
            p = made_by.get(key)
            if p is not None and p not in to_oracle and cand.ops[p].name not in TRANSPARENT:
                return OpFinding("named", "", op=cand.ops[p].name, site=cand.ops[p].site, module=module, index=p,
                                 backward=cand.ops[p].backward, kind="unmatched",
                                 arg_diffs=["no counterpart in the reference's ops"], c=c, input_rel_l2=0.0,
                                 rel_l2=err, bound=limit_in)
        return OpFinding("none", f"{cand.ops[i].name} in {cand.ops[i].site} leaves its bound, but its inputs "
                         f"already part from the oracle's (worst relative L2 error {worst_in:.3g}) and no op of "
                         f"this module made them", module=module, c=c)
    return OpFinding("none", f"every op of {module or '(model)'} is within its bound on the same inputs",
                     module=module, c=c)


def describe(finding: OpFinding) -> str:
    """One line for localize.json's message, the report and the MLflow tag's neighbours."""
    if finding.status != "named":
        return finding.message
    how = (f"relative L2 error {finding.rel_l2:.3g} against the float64 oracle, bound {finding.bound:.3g} "
           f"(C {finding.c:g} x fp32 error {finding.fp32_error:.3g}, at least EPS32), inputs within theirs "
           f"(worst {finding.input_rel_l2:.3g})") if finding.kind == "tolerance" else \
        f"no counterpart in the reference; its output feeds an op whose inputs part ({finding.rel_l2:.3g})"
    args = f"; differs from the reference's call: {', '.join(finding.arg_diffs)}" if finding.arg_diffs else ""
    phase = "backward" if finding.backward else "forward"
    return f"first diverging op {finding.op} ({phase}, called in {finding.site}): {how}{args}"


def needed_c(cand: Trace, oracle: Trace, fp32: Trace) -> tuple[float, str]:
    """The smallest C at which no matched op of the candidate leaves its bound, whatever its inputs: the largest
    output error / max(fp32 error, EPS32) over matched ops, and the op it comes from. For a legitimate kernel
    this is the factor OP_C must stay above; for a bug's named op, the C up to which it is still named."""
    to_oracle = align(cand, oracle)
    oracle_to_fp32 = {j: k for k, j in align(fp32, oracle).items()}
    worst, where = 0.0, ""
    for i, j in to_oracle.items():
        for _, metrics, e32, _ in _output_errors(cand, i, oracle, j, fp32, oracle_to_fp32.get(j), 1.0):
            ratio = metrics["rel_l2"] / max(e32 if np.isfinite(e32) else 0.0, EPS32)
            if ratio > worst:
                worst, where = ratio, f"{cand.ops[i].name} in {cand.ops[i].site}"
    return worst, where
