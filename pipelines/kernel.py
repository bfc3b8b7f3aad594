"""From localize's module to the kernel: record the module op by op, name the first diverging op, write a repro.

For the entry localize names (a module at a step, in the forward or backward pass), the run is replayed up to
that step as the chain ran it (keyed randomness: the same batch; the candidate's port bug or numerics variant,
its device and dtype); at that step a forward pre-hook keeps the inputs of the module and of its ancestors, the
gradients of their outputs, and the weights before the step. Then the module is run again on those inputs
three times, each recorded at the aten level by a TorchDispatchMode (op name, the module that called it, every
schema argument, the tensors it read and made):

  candidate   the run's module (with its bug or variant) on the run's device, as the run called it
  oracle      the same module of the model built without bug or variant, on the CPU in float64
  fp32        that reference module on the CPU in float32: what an fp32 kernel legitimately produces

and pipelines/oplocate.py names the first op beyond its bound while its inputs agree. When every op of the
module is within its bound on the same inputs (the module localize names only received the divergence, e.g.
a Linear after a mis-scaled product of its parent), its parent is recorded, and so on up to the model.

`write_repro` writes reports/<profile>/repro/<op>.py and <op>.pt: the op as the candidate called it and the
oracle's call, torch only, runnable on any device (`--device`).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cait.errors import HarnessError
from pipelines.oplocate import OP_C, TRANSPARENT, OpCall, OpFinding, Trace, align, first_diverging_op

NO_OP_PHASES = {"weights": "the weights already differ before the step (their initialisation, or an earlier "
                           "update): no op of this step computes it",
                "update": "the optimizer's update parts while weights, forward and backward agree: look at the "
                          "optimizer and the lr schedule, not at a kernel"}


class OpSearchError(HarnessError):
    """The op search could not replay or record the module (named, with what to do)."""

    exit_code = 2


@dataclass
class Captured:
    """What the replay kept at the step: the live model (its weights restored to before the step), each wanted
    module's positional inputs and output gradient, as the run computed them."""

    root: object
    inputs: dict[str, tuple] = field(default_factory=dict)
    grads: dict[str, object] = field(default_factory=dict)
    num_classes: int = 0
    reference: object = None  # the reference model, built once (reference_model)


def ancestors(module: str) -> list[str]:
    """The module and every module above it, innermost first, ending with the model ("")."""
    parts = module.split(".") if module else []
    return [".".join(parts[:n]) for n in range(len(parts), -1, -1)]


# ---- the replay -------------------------------------------------------------------------------------------

def capture(params, step: int, modules: list[str], *, want_grads: bool, data_dir: Path | None = None,
            quiet: bool = True) -> Captured:
    """Replay the run up to `step` (untracked, no fingerprints) and keep what the op search needs at that step."""
    import tempfile

    import torch
    from torch.nn.modules import module as nn_module

    from pipelines.training import train_once

    wanted = set(modules)
    state = {"depth": 0, "root": None, "calls": 0, "active": False, "names": {}}
    kept = Captured(root=None)

    def clone(x):
        return x.detach().clone() if isinstance(x, torch.Tensor) else x

    def pre(module, args):
        if state["depth"] == 0:
            if state["root"] is None:
                state["root"] = module
            if module is state["root"] and module.training:
                state["active"] = state["calls"] == step
                state["calls"] += 1
                if state["active"]:  # the weights before this step's forward: what the module computes with
                    state["names"] = {id(m): n for n, m in module.named_modules()}
                    state["weights"] = {k: v.detach().clone() for k, v in module.state_dict().items()}
        state["depth"] += 1
        if state["active"]:
            name = state["names"].get(id(module))
            if name in wanted and name not in kept.inputs:
                kept.inputs[name] = tuple(clone(a) for a in args)

    def post(module, args, output):
        state["depth"] -= 1
        if not state["active"]:
            return
        name = state["names"].get(id(module))
        if want_grads and name in wanted and name not in kept.grads and isinstance(output, torch.Tensor) \
                and output.requires_grad:
            kept.grads[name] = None
            output.register_hook(lambda g, name=name: kept.grads.__setitem__(name, g.detach().clone()))

    fingerprints = params.train.fingerprints.model_copy(update={"steps": []})
    run_params = params.model_copy(update={
        "train": params.train.model_copy(update={"fingerprints": fingerprints, "checkpoint_every": 0}),
        "tracking": params.tracking.model_copy(update={"enabled": False})})
    handles = [nn_module.register_module_forward_pre_hook(pre), nn_module.register_module_forward_hook(post)]
    try:
        with tempfile.TemporaryDirectory(prefix="op-search-") as tmp:
            train_once(run_params, f"op search replay to step {step}", data_dir=data_dir, quiet=quiet,
                       out_dir=Path(tmp), stop_after=step)
    finally:
        for handle in handles:
            handle.remove()
    root = state["root"]
    if root is None or "weights" not in state:
        raise OpSearchError(f"op search: the replay never reached step {step}; see the train stage's output")
    if type(root).__name__ == "DistributedDataParallel":
        raise OpSearchError("op search: replays one process; run it without torchrun")
    root.load_state_dict(state["weights"])  # back to the weights of the step's forward
    if modules and not any(m in kept.inputs for m in modules):  # one that ran only in the reference: its parent
        raise OpSearchError(f"op search: neither module {modules[0] or '(model)'} nor any above it ran at step {step}; "
                            f"name a module of model.named_modules()")
    kept.root = root
    kept.num_classes = int(getattr(root, "num_classes", 0))
    return kept


def reference_model(params, captured: Captured):
    """The model built without port bug or numerics variant (the baseline's code path), with the candidate's
    weights at the step; attention unfused (the math), whatever process-wide switch a variant left on."""
    import torch

    if captured.reference is not None:
        return captured.reference
    from cait.models import build_model

    torch.manual_seed(params.train.seed)
    model = build_model(params.model.name, img_size=params.model.resolved_img_size, patch_size=params.model.patch_size,
                        num_classes=captured.num_classes, drop_path=params.model.drop_path)
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    weights = {k: v.detach().to("cpu") for k, v in captured.root.state_dict().items()}
    model.load_state_dict(weights)
    captured.reference = model.train()
    return captured.reference


# ---- recording ---------------------------------------------------------------------------------------------

class _Key:
    """A tensor's place in a recorded call (the repro writes it back as the saved tensor of this key)."""

    def __init__(self, key: str):
        self.key = key

    def __repr__(self):
        return f"T({self.key!r})"


def _plain(value):
    """A non-tensor argument as JSON-able data (dtypes, devices, layouts as their repr)."""
    import torch

    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return str(value)
    return repr(value)


def record(module, inputs: tuple, *, grad_output=None, prefix: str = ""):
    """(Trace, raw calls) of `module(*inputs)` (and, with grad_output, its backward into inputs and parameters)
    on the tensors' own device and dtype. Raw calls are each op's (args, kwargs) with tensors as _Key."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten, tree_map

    leaf = {id(p): f"param:{n}" for n, p in module.named_parameters()}
    leaf.update({id(b): f"buffer:{n}" for n, b in module.named_buffers()})
    trace = Trace([], {}, {})
    raw: list = []
    keys: dict[int, str] = {}
    alive: list = []
    site = [prefix]
    phase = {"backward": False}

    def store(key: str, t) -> None:
        trace.tensors[key] = t.detach().to("cpu").to(torch.float64).numpy() if not t.is_complex() else \
            np.zeros(0)
        trace.dtypes[key] = str(t.dtype).removeprefix("torch.")

    def key_of(t) -> str:
        key = keys.get(id(t))
        if key is None:
            key = leaf.get(id(t)) or f"t{len(keys)}"
            keys[id(t)] = key
            alive.append(t)
            store(key, t)
        return key

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            name = str(func)  # aten.gelu.default
            spec = {}
            for n, a in enumerate(func._schema.arguments):
                if not a.kwarg_only and n < len(args):
                    v = args[n]
                elif a.name in kwargs:
                    v = kwargs[a.name]
                elif a.has_default_value():
                    v = a.default_value
                else:
                    v = None
                if isinstance(v, torch.Tensor):
                    spec[a.name] = {"tensor": key_of(v)}
                elif isinstance(v, (list, tuple)) and v and any(isinstance(x, torch.Tensor) for x in v):
                    spec[a.name] = {"tensors": [key_of(x) if isinstance(x, torch.Tensor) else None for x in v]}
                else:
                    spec[a.name] = {"value": _plain(v)}
            raw.append((tree_map(lambda x: _Key(key_of(x)) if isinstance(x, torch.Tensor) else x, tuple(args)),
                        tree_map(lambda x: _Key(key_of(x)) if isinstance(x, torch.Tensor) else x, dict(kwargs))))
            outputs = []
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    key = f"t{len(keys)}"
                    keys[id(t)] = key
                    alive.append(t)
                    store(key, t)
                    outputs.append(key)
            if name in TRANSPARENT and outputs:
                first = next((s["tensor"] for s in spec.values() if "tensor" in s), None)
                if first is not None:
                    trace.origin[outputs[0]] = first
            where = f"(backward of {prefix or '(model)'})" if phase["backward"] else site[-1]
            trace.ops.append(OpCall(name, where, spec, outputs, phase["backward"]))
            return out

    names = {id(m): (f"{prefix}.{n}" if prefix and n else (n or prefix)) for n, m in module.named_modules()}
    hooks = []
    for m in module.modules():
        hooks.append(m.register_forward_pre_hook(lambda mod, args: site.append(names[id(mod)])))
        hooks.append(m.register_forward_hook(lambda mod, args, out: site.pop() and None))  # None: output kept
    inputs = tuple(x.detach().clone().requires_grad_(grad_output is not None and x.is_floating_point())
                   if isinstance(x, torch.Tensor) else x for x in inputs)
    for n, x in enumerate(inputs):
        if isinstance(x, torch.Tensor):
            keys[id(x)] = f"input:{n}"
            alive.append(x)
            store(f"input:{n}", x)
    try:
        with torch.enable_grad(), Recorder():
            output = module(*inputs)
            if grad_output is not None and isinstance(output, torch.Tensor) and output.requires_grad:
                phase["backward"] = True
                keys[id(grad_output)] = "grad_output"
                alive.append(grad_output)
                store("grad_output", grad_output)
                wrt = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
                wrt += [p for p in module.parameters() if p.requires_grad]
                torch.autograd.grad(output, wrt, grad_output, allow_unused=True)
    finally:
        for h in hooks:
            h.remove()
    return trace, raw


def _to(x, device, dtype=None):
    import torch

    if not isinstance(x, torch.Tensor):
        return x
    x = x.detach().to(device)
    return x.to(dtype) if dtype is not None and x.is_floating_point() else x


@contextlib.contextmanager
def run_numerics(params, device_type: str):
    """The run's process-wide numerics again (its thread count, its variant's switches), which the replay's
    train_once restored when it returned: the candidate's module is recorded as the run computed it."""
    import torch

    from cait.portbugs import RunPatch

    threads = torch.get_num_threads()
    try:
        if params.device.threads:
            torch.set_num_threads(params.device.threads)
        RunPatch(params.device.numerics_variant, params.device.port_bug).configure(device_type)
        yield
    finally:
        torch.set_num_threads(threads)


def search_module(params, captured: Captured, module: str, *, backward: bool, c: float = OP_C):
    """(finding, candidate trace, candidate raw calls, oracle trace, oracle raw calls, fp32 trace) of one module."""
    import torch

    cand_module = captured.root.get_submodule(module) if module else captured.root
    device = next(cand_module.parameters()).device if any(True for _ in cand_module.parameters()) else "cpu"
    inputs = captured.inputs[module]
    grad = captured.grads.get(module) if backward else None
    with run_numerics(params, torch.device(device).type):
        cand, cand_raw = record(cand_module, tuple(_to(x, device) for x in inputs),
                                grad_output=_to(grad, device) if grad is not None else None, prefix=module)
    reference = reference_model(params, captured)
    ref_module = reference.get_submodule(module) if module else reference
    traces = {}
    for dtype in (torch.float64, torch.float32):
        m = copy.deepcopy(ref_module).to("cpu", dtype)
        traces[dtype] = record(m, tuple(_to(x, "cpu", dtype) for x in inputs),
                               grad_output=_to(grad, "cpu", dtype) if grad is not None else None, prefix=module)
    (oracle, oracle_raw), (fp32, _) = traces[torch.float64], traces[torch.float32]
    finding = first_diverging_op(cand, oracle, fp32, module=module, c=c)
    return finding, cand, cand_raw, oracle, oracle_raw, fp32


def search(params, step: int, phase: str, module: str, *, data_dir: Path | None = None, c: float = OP_C,
           quiet: bool = True) -> tuple[OpFinding, dict | None]:
    """The first diverging op for localize's entry (a module at a step and phase), walking up to its parents
    while the module computes correctly on its own inputs. (finding, what write_repro needs or None)."""
    from pipelines.oplocate import describe

    started = time.perf_counter()
    if phase in NO_OP_PHASES:
        return OpFinding("not_applicable", NO_OP_PHASES[phase]), None
    if params.train.amp:
        return OpFinding("unavailable", f"the op search bounds fp32 kernels; under train.amp {params.train.amp} the "
                                        f"run's ops are legitimately in {params.train.amp}: not searched"), None
    backward = phase in ("backward", "param_grad")
    chain = [m for m in ancestors(module) if m]  # the model as a whole is not recorded: every tensor of it
    if not chain:
        return OpFinding("none", "the entry belongs to the model itself (e.g. cls_token): no module to record"), None
    captured = capture(params, step, chain, want_grads=backward, data_dir=data_dir, quiet=quiet)
    walked = []
    for path in chain:
        if path not in captured.inputs and not walked:
            continue  # localize's module ran in the reference only (skipped by the port): from its parent
        if path not in captured.inputs or type(captured.root.get_submodule(path)).__name__ in (
                "Sequential", "ModuleList", "ModuleDict"):
            break  # a container of blocks: recording it would keep every tensor of the model
        finding, cand, cand_raw, oracle, oracle_raw, _ = search_module(params, captured, path, backward=backward, c=c)
        walked.append(path)
        if finding.status == "named":
            finding.walked, finding.seconds = walked, time.perf_counter() - started
            finding.message = describe(finding)
            j = align(cand, oracle).get(finding.index)
            return finding, {"cand": cand, "cand_raw": cand_raw, "oracle": oracle, "oracle_raw": oracle_raw,
                             "oracle_index": j, "step": step, "profile": params.profile,
                             "device": params.device.type}
    last = OpFinding("none", f"no op parts on the same inputs in {module or '(model)'} or any module above it "
                             f"(walked {', '.join(w or '(model)' for w in walked)}): the divergence is not in an op "
                             f"of this step", walked=walked, c=c, seconds=time.perf_counter() - started)
    return last, None


# ---- the repro -----------------------------------------------------------------------------------------------

REPRO_TEMPLATE = '''#!/usr/bin/env python3
"""Repro: {op} as the candidate called it against float64 on the CPU (torch only; no project import).

Found by the op search (pipelines/kernel.py) of profile {profile}, step {step}, called in {site} on {device}.
  python {script} [--device cpu|cuda|sdaa]
The candidate's call (its arguments, dtypes and inputs, as recorded) runs on --device; the reference's call
runs in float64 on the CPU on the same inputs. Exit 1 when the relative L2 error leaves the bound (what an
fp32 kernel may be off by: C x the fp32 CPU kernel's own error, at least C x 2^-23), 0 within it.
Differs from the reference's call: {diffs}
"""

import argparse
import sys
from pathlib import Path

import torch

OP = {op!r}
ORACLE_OP = {oracle_op!r}
OUTPUT = {output}  # which output of the op parts
BOUND = {bound!r}  # C x max(fp32 error, 2^-23)
C = {c!r}
FP32_ERROR = {fp32_error!r}  # the reference call in float32 on the CPU, against float64
DEVICE = "cpu"


def T(key):
    return ("tensor", key)


CANDIDATE = ({cand_args}, {cand_kwargs})
ORACLE = ({oracle_args}, {oracle_kwargs})


def build(spec, tensors, device):
    if isinstance(spec, tuple) and len(spec) == 2 and spec[0] == "tensor":
        return tensors[spec[1]].to(device)
    if isinstance(spec, torch.device) or spec == "@device":
        return torch.device(device)
    if isinstance(spec, (list, tuple)):
        return type(spec)(build(x, tensors, device) for x in spec)
    if isinstance(spec, dict):
        return {{k: build(v, tensors, device) for k, v in spec.items()}}
    return spec


def op(name):
    namespace, fn, overload = name.split(".")
    return getattr(getattr(getattr(torch.ops, namespace), fn), overload)


def pick(out):
    if isinstance(out, (tuple, list)):
        out = [x for x in out if isinstance(x, torch.Tensor)][OUTPUT]
    return out.detach().to("cpu", torch.float64).flatten()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="where the candidate's call runs (cpu, cuda, cuda:1, sdaa, ...)")
    device = p.parse_args().device
    if device.startswith("sdaa"):
        import torch_sdaa  # noqa: F401
    tensors = torch.load(Path(__file__).with_suffix(".pt"), weights_only=True)
    args, kwargs = build(CANDIDATE, tensors, device)
    got = pick(op(OP)(*args, **kwargs))
    args, kwargs = build(ORACLE, tensors, "cpu")
    want = pick(op(ORACLE_OP)(*args, **kwargs))
    if got.shape != want.shape:
        print(f"{{OP}} on {{device}}: output of {{got.numel()}} elements, the oracle's {{want.numel()}}")
        return 1
    diff = got - want
    norm = float(want.norm())
    rel = float(diff.norm()) / max(norm, 1e-12) if torch.isfinite(got).all() else float("inf")
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    max_rel = max_abs / max(float(want.abs().max()) if want.numel() else 0.0, 1e-12)
    cosine = float(got @ want) / max(float(got.norm()) * norm, 1e-300)
    print(f"{{OP}} on {{device}} against float64 on the CPU: max abs {{max_abs:.3g}}, max rel {{max_rel:.3g}}, "
          f"relative L2 {{rel:.3g}}, cosine {{cosine:.9f}}; bound {{BOUND:.3g}} (C {{C:g}} x fp32 error "
          f"{{FP32_ERROR:.3g}}, at least C x 2^-23)")
    exceeded = not rel <= BOUND
    print("FAIL: the op leaves the bound" if exceeded else "ok: within the bound")
    return 1 if exceeded else 0


if __name__ == "__main__":
    sys.exit(main())
'''


def _literal(value, rename: dict) -> str:
    """Python source for a recorded argument: tensors as T(key) (renamed), dtypes and layouts as torch.X."""
    import torch

    if isinstance(value, _Key):
        return f"T({rename[value.key]!r})"
    if isinstance(value, torch.device):
        return '"@device"'
    if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
        return str(value)
    if isinstance(value, float):
        return repr(value) if np.isfinite(value) else f"float({str(value)!r})"
    if isinstance(value, (bool, int, str)) or value is None:
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v, rename) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + "".join(_literal(v, rename) + ", " for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_literal(v, rename)}" for k, v in value.items()) + "}"
    raise OpSearchError(f"repro: cannot write the argument {value!r} ({type(value).__name__}) as source")


def _keys_in(value) -> list[str]:
    if isinstance(value, _Key):
        return [value.key]
    if isinstance(value, (list, tuple)):
        return [k for v in value for k in _keys_in(v)]
    if isinstance(value, dict):
        return [k for v in value.values() for k in _keys_in(v)]
    return []


def repro_name(op: str) -> str:
    return op.replace("/", "_")


def write_repro(folder: Path, finding: OpFinding, found: dict) -> Path:
    """reports/<profile>/repro/<op>.py and <op>.pt: the candidate's call as recorded (its tensors in their own
    dtype) and the oracle's (the candidate's inputs, followed back through casts, in float64)."""
    import io

    import torch

    from cait.files import atomic_write_bytes, atomic_write_text

    cand, oracle = found["cand"], found["oracle"]
    i, j = finding.index, found["oracle_index"]
    cand_args, cand_kwargs = found["cand_raw"][i]
    tensors, rename = {}, {}
    for key in _keys_in((cand_args, cand_kwargs)):
        name = rename.setdefault(key, f"candidate.{len(rename)}")
        tensors[name] = torch.from_numpy(cand.tensors[key]).to(getattr(torch, cand.dtypes[key]))
    if j is None:  # no counterpart: the oracle's call is the candidate's, in float64
        oracle_args, oracle_kwargs, oracle_op = cand_args, cand_kwargs, finding.op
        source = {k: cand.source(k) for k in _keys_in((cand_args, cand_kwargs))}
        values = {k: cand.tensors[source[k]] for k in source}
    else:
        oracle_args, oracle_kwargs = found["oracle_raw"][j]
        oracle_op = oracle.ops[j].name
        by_arg = {arg: cand.source(key) for arg, key in cand.ops[i].tensor_args().items()}
        values = {}
        for arg, key in oracle.ops[j].tensor_args().items():
            # the candidate's own input where the call has one, the oracle's elsewhere
            theirs = by_arg.get(arg)
            mine = cand.tensors.get(theirs) if theirs is not None else None
            values[key] = mine if mine is not None and mine.shape == oracle.tensors[key].shape else oracle.tensors[key]
        for key in _keys_in((oracle_args, oracle_kwargs)):
            values.setdefault(key, oracle.tensors[key])
    oracle_rename = {}
    for key in _keys_in((oracle_args, oracle_kwargs)):
        name = oracle_rename.setdefault(key, f"oracle.{len(oracle_rename)}")
        array = values[key]
        dtype = oracle.dtypes.get(key, "float64") if j is not None else cand.dtypes[key]
        tensor = torch.from_numpy(np.asarray(array, dtype=np.float64))
        tensors[name] = tensor if torch.empty(0, dtype=getattr(torch, dtype)).is_floating_point() else \
            tensor.to(getattr(torch, dtype))
    name = repro_name(finding.op)
    script = folder / f"{name}.py"
    text = REPRO_TEMPLATE.format(
        op=finding.op, oracle_op=oracle_op, output=finding.output, bound=float(finding.bound), c=float(finding.c),
        fp32_error=float(finding.fp32_error) if np.isfinite(finding.fp32_error) else 0.0,
        profile=found["profile"], step=found["step"], site=finding.site, device=found["device"],
        script=script.as_posix(), diffs="; ".join(finding.arg_diffs) or "nothing but the kernel",
        cand_args=_literal(tuple(cand_args), rename), cand_kwargs=_literal(dict(cand_kwargs), rename),
        oracle_args=_literal(tuple(oracle_args), oracle_rename), oracle_kwargs=_literal(dict(oracle_kwargs),
                                                                                       oracle_rename))
    buffer = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in tensors.items()}, buffer)
    atomic_write_bytes(folder / f"{name}.pt", buffer.getvalue())
    atomic_write_text(script, text)
    return script
