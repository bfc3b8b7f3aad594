"""Legitimate numeric variants and a zoo of realistic port bugs, injectable into one training run.

A *numerics variant* changes only how the arithmetic is done, at the same precision, the way two
accelerators differ: thread count (reduction order), fused vs unfused attention, deterministic algorithms
off, every linear layer's matmul in the transposed orientation (another GEMM kernel and blocking), the
initial weights nudged by one ulp with several keys (how fast training amplifies a rounding difference), an
AdamW written out by hand (another optimizer kernel). The baseline command records the reference run and
runs of these variants on the same device; their spread per step is the tolerance of the `envelope`
rule (pipelines/envelope.py). No variant changes the precision policy (TF32, autocast): that is
`device.tf32` / `train.amp`, a policy a baseline keeps its own envelope for (cait/determinism.py).

A *port bug* changes what is computed, the way a faulty port does: softmax or LayerNorm in bf16, a
LayerNorm eps or a LayerScale init of another value, GELU's tanh approximation, the talking-heads
projections skipped, the attention scaled by the wrong dimension, AdamW without bias correction or with
eps inside the square root, weight decay on norms/biases/gammas, the lr schedule one step late, one
module's gradient halved (a broken all-reduce average). Every bug here acts on the default profile
(drop path, label smoothing and Mixup are off there, so bugs in those would be no-ops and are left out).
The bugs exist to measure the gate's power (benchmarks/bench_power.py); a run with a port bug is
marked as such in its record and can never become a baseline.

Mixed precision (train.amp, the `amp` profile) has entries of its own, each naming the precision policies it
means something under (`policies`): legitimate variants where two accelerators' autocast and bf16 kernels differ
(softmax in fp32, bf16 GEMMs accumulating in another order, a fused GEMM + GELU epilogue) and port bugs that lose
precision where mixed-precision training keeps fp32 (master weights, AdamW's moments, the loss, the gradient
reduction, the residual stream), a block left out of autocast, and the loss scaler's slips (fp16 only).

Both are named in params.yaml (`device.numerics_variant`, `device.port_bug`; the device section is not
part of the curve's params hash, so such a run is judged against the ordinary baseline) and applied
through one seam, a `RunPatch`: `configure` before the model is built, `model` after it is built and
before the optimizer is, `optimizer` after, `lr` on every step's learning rate, and for mixed precision `loss`
(the loss function) and `scaler` (the fp16 loss scaler).
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "variant" (legitimate numerics) | "bug"
    description: str
    configure: Callable[[str], dict] | None = None  # (device type) -> numerics settings it changed
    model: Callable[[object, int], None] | None = None  # (model, seed): patch in place
    optimizer: Callable[[object, object], object] | None = None  # (optimizer, model) -> optimizer
    lr: Callable[[int, Callable[[int], float]], float] | None = None  # (step, schedule) -> lr
    devices: tuple[str, ...] = ("cpu", "cuda", "sdaa")  # where the variant means something
    site: str = ""  # a bug's injection site: the first module it changes in execution order, or "update"
                    # (optimizer and schedule bugs); what `localize` must name (benchmarks/bench_localize.py)
    policies: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16")  # the precision policies it means something under
    loss: Callable[[Callable], Callable] | None = None  # (loss function) -> the loss function the run uses
    scaler: Callable[[object], object] | None = None  # (GradScaler) -> the scaler the run uses (fp16 only)


class RunPatch:
    """What one run changes: at most one numerics variant and one port bug, applied in that order."""

    def __init__(self, variant: str | None = None, bug: str | None = None):
        bug_entry = lookup(bug) if bug else None  # a named bug or a perturbation (output_scale@module@eps)
        self.entries = [e for e in (VARIANTS.get(variant) if variant else None, bug_entry) if e is not None]
        if variant and variant not in VARIANTS:
            raise KeyError(f"unknown numerics variant {variant!r}")
        if bug and bug_entry is None:
            raise KeyError(f"unknown port bug {bug!r}")

    def configure(self, device_type: str) -> dict:
        changed: dict = {}
        for e in self.entries:
            if e.configure:
                changed.update(e.configure(device_type))
        return changed

    def model(self, model, seed: int) -> None:
        for e in self.entries:
            if e.model:
                e.model(model, seed)

    def optimizer(self, optimizer, model):
        for e in self.entries:
            if e.optimizer:
                optimizer = e.optimizer(optimizer, model)
        return optimizer

    def lr(self, step: int, schedule: Callable[[int], float]) -> float:
        for e in self.entries:
            if e.lr:
                return e.lr(step, schedule)
        return schedule(step)

    def loss(self, loss_fn: Callable) -> Callable:
        for e in self.entries:
            if e.loss:
                loss_fn = e.loss(loss_fn)
        return loss_fn

    def scaler(self, scaler):
        for e in self.entries:
            if e.scaler and scaler is not None:
                scaler = e.scaler(scaler)
        return scaler


# ---- model surgery helpers ----------------------------------------------------------------------------

def _modules(model, class_name: str):
    return [m for m in model.modules() if type(m).__name__ == class_name]


def _talking_head_forward(self, x, softmax=None, talk=True):
    """timm's TalkingHeadAttn.forward, with the softmax and the talking-heads projections replaceable."""
    B, N, C = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
    attn = q @ k.transpose(-2, -1)
    if talk:
        attn = self.proj_l(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    attn = softmax(attn) if softmax else attn.softmax(dim=-1)
    if talk:
        attn = self.proj_w(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    attn = self.attn_drop(attn)
    x = (attn @ v).transpose(1, 2).reshape(B, N, C)
    return self.proj_drop(self.proj(x))


def _class_attn_forward(self, x, softmax=None):
    """timm's ClassAttn.forward (unfused path), with the softmax replaceable."""
    B, N, C = x.shape
    h = self.num_heads
    q = self.q(x[:, 0]).unsqueeze(1).reshape(B, 1, h, C // h).permute(0, 2, 1, 3)
    k = self.k(x).reshape(B, N, h, C // h).permute(0, 2, 1, 3)
    v = self.v(x).reshape(B, N, h, C // h).permute(0, 2, 1, 3)
    attn = (q * self.scale) @ k.transpose(-2, -1)
    attn = softmax(attn) if softmax else attn.softmax(dim=-1)
    x_cls = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(B, 1, C)
    return self.proj_drop(self.proj(x_cls))


def _bf16_softmax(attn):
    import torch

    return attn.to(torch.bfloat16).softmax(dim=-1).to(attn.dtype)


def _softmax_bf16(model, seed):
    for m in _modules(model, "TalkingHeadAttn"):
        m.forward = types.MethodType(lambda self, x: _talking_head_forward(self, x, softmax=_bf16_softmax), m)
    for m in _modules(model, "ClassAttn"):
        m.forward = types.MethodType(lambda self, x: _class_attn_forward(self, x, softmax=_bf16_softmax), m)


def _talking_heads_skipped(model, seed):
    for m in _modules(model, "TalkingHeadAttn"):
        m.forward = types.MethodType(lambda self, x: _talking_head_forward(self, x, talk=False), m)


def _attention_scale_embed_dim(model, seed):
    """scale = dim^-0.5 instead of head_dim^-0.5 (a classic port slip); forces the unfused path that reads it."""
    for m in _modules(model, "TalkingHeadAttn") + _modules(model, "ClassAttn"):
        dim = m.proj.in_features
        m.scale = dim ** -0.5
        if hasattr(m, "fused_attn"):
            m.fused_attn = False


def _layernorm_bf16(model, seed):
    import torch
    import torch.nn.functional as F

    def forward(self, x):
        w = self.weight.to(torch.bfloat16) if self.weight is not None else None
        b = self.bias.to(torch.bfloat16) if self.bias is not None else None
        return F.layer_norm(x.to(torch.bfloat16), self.normalized_shape, w, b, self.eps).to(x.dtype)

    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.forward = types.MethodType(forward, m)


def _layernorm_eps(model, seed):
    """eps 1e-6 (CaiT's) -> 1e-5 (torch's default): the port built LayerNorm without the model's eps."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = 1e-5 if m.eps != 1e-5 else 1e-6


def _gelu_tanh(model, seed):
    import torch

    for m in _modules(model, "Mlp"):
        m.act = torch.nn.GELU(approximate="tanh")


def _layerscale_init(model, seed):
    """LayerScale gammas initialised to 1e-6 (the deeper CaiTs' value) instead of the variant's 1e-5."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gamma_1") or name.endswith(".gamma_2"):
                p.mul_(0.1)


def _grad_half_class_blocks(model, seed):
    """The class-attention blocks' gradients halved: an all-reduce that sums over 2 ranks and divides by 4."""
    for p in model.blocks_token_only.parameters():
        p.register_hook(lambda g: g * 0.5)


def _ulp_nudge(model, seed: int, key: int = 0):
    """Every initial weight moved by one ulp, up or down by a keyed coin: the smallest possible change."""
    import torch

    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            if not p.dtype.is_floating_point:
                continue
            coin = np.random.default_rng([seed, 4, key, i]).integers(0, 2, size=tuple(p.shape))
            toward = torch.where(torch.from_numpy(coin).bool(), torch.tensor(math.inf), torch.tensor(-math.inf))
            p.copy_(torch.nextafter(p, toward.to(p.dtype)))


# ---- optimizers --------------------------------------------------------------------------------------

def _adamw_class():
    import torch

    class HandAdamW(torch.optim.Optimizer):
        """AdamW written out step by step (decoupled weight decay, as torch's), with three classic slips
        switchable: no bias correction, eps inside the square root, the moments kept in bf16."""

        def __init__(self, groups, lr, betas=(0.9, 0.999), eps=1e-8, bias_correction=True, eps_inside_sqrt=False,
                     state_bf16=False):
            super().__init__(groups, dict(lr=lr, betas=betas, eps=eps, weight_decay=0.0))
            self.bias_correction, self.eps_inside_sqrt = bias_correction, eps_inside_sqrt
            self.state_bf16 = state_bf16  # the moments stored in bf16 (rounded after every update of them)

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                beta1, beta2 = group["betas"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if not state:
                        state["step"] = 0
                        state["exp_avg"] = torch.zeros_like(p)
                        state["exp_avg_sq"] = torch.zeros_like(p)
                    state["step"] += 1
                    t = state["step"]
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    m, v = state["exp_avg"], state["exp_avg_sq"]
                    m.lerp_(p.grad, 1 - beta1)
                    v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                    if self.state_bf16:
                        m.copy_(m.to(torch.bfloat16))
                        v.copy_(v.to(torch.bfloat16))
                    bc1 = 1 - beta1 ** t if self.bias_correction else 1.0
                    bc2 = 1 - beta2 ** t if self.bias_correction else 1.0
                    if self.eps_inside_sqrt:
                        denom = (v / bc2).add_(group["eps"]).sqrt_()
                    else:
                        denom = (v.sqrt() / math.sqrt(bc2)).add_(group["eps"])
                    p.addcdiv_(m, denom, value=-group["lr"] / bc1)

    return HandAdamW


def _hand_adamw(**slips):
    def replace(optimizer, model):
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in optimizer.param_groups]
        first = optimizer.param_groups[0]
        return _adamw_class()(groups, lr=first["lr"], betas=first["betas"], eps=first["eps"], **slips)
    return replace


def _weight_decay_everywhere(optimizer, model):
    decay = max(g["weight_decay"] for g in optimizer.param_groups)
    for group in optimizer.param_groups:
        group["weight_decay"] = decay
    return optimizer


# ---- global switches ---------------------------------------------------------------------------------

def _threads(n: int):
    def configure(device_type):
        import torch

        torch.set_num_threads(n)
        return {"threads": str(n)}
    return configure


def _fused_attention(device_type):
    import torch
    from timm.layers import set_fused_attn

    set_fused_attn(True)
    if hasattr(torch.backends.cuda, "enable_flash_sdp"):
        torch.backends.cuda.enable_flash_sdp(True)
        torch.backends.cuda.enable_mem_efficient_sdp(True)
    return {"fused_attn": "True"}


def _nondeterministic(device_type):
    """Deterministic algorithms off, autotuning and fused attention on, at the run's precision: TF32 stays as
    the policy set it (off for fp32), since a variant of a policy's envelope never changes its precision."""
    import torch

    from cait.determinism import configure_numerics

    tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
    return configure_numerics(device_type, False, tf32=tf32)


def _matmul_transposed(model, seed):
    """Every nn.Linear computed as (W @ x^T)^T + b: the same sums in another GEMM orientation, so another kernel,
    blocking and reduction split (what cuBLAS vs cuBLASLt, or another BLAS, does to the same layer)."""
    import torch

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        out = (self.weight @ flat.transpose(0, 1)).transpose(0, 1)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.forward = types.MethodType(forward, m)


# ---- mixed precision (train.amp: bf16 / fp16) ----------------------------------------------------------
# Legitimate variants: where two accelerators' autocast and kernels differ and both are accepted practice.
# CPU autocast keeps softmax in bf16, CUDA's computes it in fp32; a bf16 GEMM accumulates in fp32 in an order of
# its kernel's choosing; a fused GEMM + GELU epilogue applies GELU to the fp32 accumulator and rounds once.
# Port bugs: precision lost where mixed-precision training keeps fp32 (master weights, optimizer moments, the
# loss, the gradient reduction, the residual stream), a block left out of autocast, and the loss scaler's
# classic slips (fp16 only: bf16 trains without one).

def _autocast_dtype(device_type: str):
    """The autocast dtype in force on this device type, or None outside autocast."""
    import torch

    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def _linear_fp32_accumulate(x, weight, bias, dtype, round_output=True):
    """A low-precision linear layer as another kernel computes it: operands rounded to `dtype`, products and sums
    in fp32 (bf16 x bf16 products are exact in fp32) in this kernel's order, the result rounded to `dtype` once."""
    import torch
    import torch.nn.functional as F

    with torch.autocast(x.device.type, enabled=False):
        out = F.linear(x.to(dtype).float(), weight.to(dtype).float(),
                       bias.to(dtype).float() if bias is not None else None)
    return out.to(dtype) if round_output else out


def _matmul_fp32_accumulate(model, seed):
    import torch
    import torch.nn.functional as F

    def forward(self, x):
        dtype = _autocast_dtype(x.device.type)
        if dtype is None:
            return F.linear(x, self.weight, self.bias)
        return _linear_fp32_accumulate(x, self.weight, self.bias, dtype)

    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.forward = types.MethodType(forward, m)


def _fp32_softmax(attn):
    return attn.float().softmax(dim=-1)


def _softmax_fp32(model, seed):
    """The attention softmax in fp32 as CUDA's autocast computes it (CPU autocast keeps it in bf16)."""
    for m in _modules(model, "TalkingHeadAttn"):
        m.forward = types.MethodType(lambda self, x: _talking_head_forward(self, x, softmax=_fp32_softmax), m)
    for m in _modules(model, "ClassAttn"):
        m.forward = types.MethodType(lambda self, x: _class_attn_forward(self, x, softmax=_fp32_softmax), m)


def _gelu_epilogue(model, seed):
    """fc1 + GELU as one fused kernel: GELU applied to fc1's fp32 accumulator, the result rounded to bf16 once.
    fc1 and act stay the modules that run (their outputs are fingerprinted as before): fc1 returns its fp32
    accumulator, act rounds its fp32 GELU to the autocast dtype."""
    import torch.nn.functional as F

    def fc1_forward(self, x):
        dtype = _autocast_dtype(x.device.type)
        if dtype is None:
            return F.linear(x, self.weight, self.bias)
        return _linear_fp32_accumulate(x, self.weight, self.bias, dtype, round_output=False)

    def act_forward(self, x, inner):
        dtype = _autocast_dtype(x.device.type)
        return inner(x) if dtype is None else inner(x).to(dtype)

    for m in _modules(model, "Mlp"):
        m.fc1.forward = types.MethodType(fc1_forward, m.fc1)
        m.act.forward = types.MethodType(lambda self, x, inner=m.act.forward: act_forward(self, x, inner), m.act)


def _round_params_bf16(model, seed):
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.dtype.is_floating_point:
                p.copy_(p.to(torch.bfloat16))


def _round_after_update(optimizer, model):
    """A step post-hook registered before any other (the fingerprints' update phase sees the rounded change)."""
    def hook(opt, args, kwargs):
        _round_params_bf16(model, 0)
    optimizer.register_step_post_hook(hook)
    return optimizer


def _grads_bf16(model, seed):
    """Every parameter's gradient rounded to bf16, as an all-reduce in bf16 leaves it."""
    import torch

    for p in model.parameters():
        if p.requires_grad:
            p.register_hook(lambda g: g.to(torch.bfloat16).to(g.dtype))


def _loss_low_precision(loss_fn):
    """Cross-entropy on the low-precision logits with autocast off: the loss in bf16/fp16 where autocast keeps fp32."""
    def low(logits, targets, label_smoothing):
        import torch

        dtype = logits.dtype if logits.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        with torch.autocast(logits.device.type, enabled=False):
            return loss_fn(logits.to(dtype), targets, label_smoothing)
    return low


def _block_outside_autocast(model, seed):
    """blocks.0 runs with autocast off (in fp32): a block the port forgot to wrap (or wrapped in its own context)."""
    import torch

    block = model.blocks[0]
    inner = block.forward

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return inner(x.float())
    block.forward = types.MethodType(forward, block)


def _residual_bf16(model, seed):
    """The residual stream rounded to bf16 after every block (the blocks run as bf16 modules, e.g. a sharding
    wrapper's param/activation dtype), where autocast keeps the residual adds in fp32."""
    import torch

    for block in list(model.blocks) + list(model.blocks_token_only):
        block.register_forward_hook(lambda mod, inputs, output: output.to(torch.bfloat16))


class _ScalerSlip:
    """A GradScaler with one classic slip; everything else (scale, state_dict, ...) is the scaler's own."""

    def __init__(self, inner, slip: str):
        self._inner, self._slip = inner, slip

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def unscale_(self, optimizer):
        if self._slip == "unscale_after_clip":
            return  # the clip then sees scaled gradients; step() unscales them after it
        self._inner.unscale_(optimizer)

    def _unscaled(self, optimizer) -> bool:
        from torch.amp.grad_scaler import OptState

        return self._inner._per_optimizer_states[id(optimizer)]["stage"] is OptState.UNSCALED

    def step(self, optimizer):
        if self._slip == "not_unscaled":
            return optimizer.step()  # the scaled gradients applied, no overflow check
        if self._slip == "step_on_nonfinite":
            if not self._unscaled(optimizer):
                self._inner.unscale_(optimizer)
            return optimizer.step()  # also when the unscale found inf/NaN: the step is never skipped
        return self._inner.step(optimizer)

    def update(self, new_scale=None):
        if self._slip in ("never_updated", "not_unscaled"):
            return  # the scale stays at its initial value (not_unscaled: the port never calls the scaler again)
        self._inner.update(new_scale)


def _scaler_slip(slip: str):
    return lambda scaler: _ScalerSlip(scaler, slip)


MP = ("bf16", "fp16")


VARIANTS: dict[str, Entry] = {e.name: e for e in [
    Entry("threads_1", "variant", "one CPU thread (other reduction splits)", configure=_threads(1)),
    Entry("threads_2", "variant", "two CPU threads", configure=_threads(2)),
    Entry("fused_attention", "variant", "fused scaled-dot-product attention where timm has it (class attention)",
          configure=_fused_attention),
    Entry("nondeterministic", "variant", "deterministic algorithms off, fused attention and autotuning on where "
          "the device has them, TF32 as the precision policy says (off in fp32)", configure=_nondeterministic),
    Entry("matmul_transposed", "variant", "every linear layer as (W x^T)^T + b (another GEMM orientation and kernel)",
          model=_matmul_transposed),
    Entry("weights_ulp", "variant", "every initial weight moved one ulp up or down (keyed coin)",
          model=lambda model, seed: _ulp_nudge(model, seed, key=0)),
    Entry("weights_ulp_2", "variant", "as weights_ulp with a third set of coins",
          model=lambda model, seed: _ulp_nudge(model, seed, key=2)),
    Entry("weights_ulp_3", "variant", "as weights_ulp with a fourth set of coins",
          model=lambda model, seed: _ulp_nudge(model, seed, key=3)),
    Entry("weights_ulp_other", "variant", "as weights_ulp with other coins (a probe outside the envelope)",
          model=lambda model, seed: _ulp_nudge(model, seed, key=1)),
    Entry("adamw_by_hand", "variant", "AdamW written out step by step (another optimizer kernel, same math)",
          optimizer=_hand_adamw()),
    Entry("softmax_fp32", "variant", "attention softmax in fp32, as CUDA's autocast does (CPU's keeps it in bf16)",
          model=_softmax_fp32, policies=MP),
    Entry("matmul_fp32_accumulate", "variant", "every linear layer from bf16-rounded operands with fp32 products and "
          "sums in another order, rounded once (another bf16 GEMM kernel)", model=_matmul_fp32_accumulate, policies=MP),
    Entry("gelu_epilogue", "variant", "fc1 + GELU fused: GELU on the fp32 accumulator, rounded to bf16 once",
          model=_gelu_epilogue, policies=MP),
]}

# The variants the baseline command records beside the reference run, per device type (those whose
# `devices` include it), under each precision policy it records. weights_ulp_other and adamw_by_hand are kept
# out: the power benchmark uses them as legitimate runs the envelope never saw. Three ulp probes, not one: the
# largest of several keys is a steadier estimate of how far training carries a rounding (benchmarks/README.md).
ENVELOPE_VARIANTS = ("threads_1", "threads_2", "fused_attention", "nondeterministic", "matmul_transposed",
                     "weights_ulp", "weights_ulp_2", "weights_ulp_3", "softmax_fp32", "matmul_fp32_accumulate",
                     "gelu_epilogue")
# (the last three only under a mixed-precision policy)
# the ulp probes: their growth is the model's and recipe's, not the device's (pipelines/envelope.py probe_growth)
PROBE_VARIANTS = ("weights_ulp", "weights_ulp_2", "weights_ulp_3")

BUGS: dict[str, Entry] = {e.name: e for e in [
    Entry("softmax_bf16", "bug", "attention softmax computed in bf16", model=_softmax_bf16,
          site="blocks.0.attn"),
    Entry("layernorm_bf16", "bug", "every LayerNorm computed in bf16", model=_layernorm_bf16,
          site="blocks.0.norm1"),
    Entry("layernorm_eps", "bug", "LayerNorm eps 1e-5 instead of CaiT's 1e-6", model=_layernorm_eps,
          site="blocks.0.norm1"),
    Entry("gelu_tanh", "bug", "GELU with the tanh approximation", model=_gelu_tanh,
          site="blocks.0.mlp.act"),
    Entry("talking_heads_skipped", "bug", "talking-heads projections (proj_l, proj_w) skipped",
          model=_talking_heads_skipped, site="blocks.0.attn"),
    Entry("attention_scale", "bug", "attention scaled by dim^-0.5 instead of head_dim^-0.5",
          model=_attention_scale_embed_dim, site="blocks.0.attn"),
    Entry("layerscale_init", "bug", "LayerScale gammas initialised to 1e-6 instead of 1e-5", model=_layerscale_init,
          site="blocks.0"),
    Entry("adamw_no_bias_correction", "bug", "AdamW without bias correction",
          optimizer=_hand_adamw(bias_correction=False), site="update"),
    Entry("adamw_eps_in_sqrt", "bug", "AdamW with eps inside the square root",
          optimizer=_hand_adamw(eps_inside_sqrt=True), site="update"),
    Entry("weight_decay_on_norms", "bug", "weight decay also on norms, biases, pos_embed, cls_token, gammas",
          optimizer=_weight_decay_everywhere, site="update"),
    Entry("lr_one_step_late", "bug", "the lr schedule one step late", lr=lambda step, schedule: schedule(step - 1),
          site="update"),
    Entry("grad_half_class_blocks", "bug", "class-attention blocks' gradients halved (broken all-reduce average)",
          model=_grad_half_class_blocks, site="blocks_token_only"),
    # mixed precision: what breaks a bf16/fp16 port (train.amp)
    Entry("master_weights_bf16", "bug", "no fp32 master weights: parameters kept in bf16 (rounded at init and after "
          "every update)", model=_round_params_bf16, optimizer=_round_after_update, site="weights", policies=MP),
    Entry("optimizer_state_bf16", "bug", "AdamW's moments kept in bf16", optimizer=_hand_adamw(state_bf16=True),
          site="update", policies=MP),
    Entry("loss_low_precision", "bug", "cross-entropy on the bf16/fp16 logits where autocast computes it in fp32",
          loss=_loss_low_precision, site="head", policies=MP),
    Entry("grads_bf16", "bug", "gradients reduced in bf16 (every parameter's gradient rounded to bf16)",
          model=_grads_bf16, site="param_grad", policies=MP),
    Entry("block_outside_autocast", "bug", "blocks.0 left out of autocast (computed in fp32)",
          model=_block_outside_autocast, site="blocks.0", policies=MP),
    Entry("residual_bf16", "bug", "the residual stream rounded to bf16 after every block (autocast keeps it fp32)",
          model=_residual_bf16, site="blocks.0", policies=MP),
    Entry("scaler_not_unscaled", "bug", "loss scaler: gradients never unscaled (the scaled ones applied, no overflow "
          "skip, the scale never updated)", scaler=_scaler_slip("not_unscaled"), site="update", policies=("fp16",)),
    Entry("scaler_unscale_after_clip", "bug", "loss scaler: gradients clipped while still scaled, unscaled after "
          "(needs train.clip_grad)", scaler=_scaler_slip("unscale_after_clip"), site="update", policies=("fp16",)),
    Entry("scaler_never_updated", "bug", "loss scaler: the scale never updated (an overflow is skipped forever)",
          scaler=_scaler_slip("never_updated"), site="update", policies=("fp16",)),
    Entry("scaler_step_on_nonfinite", "bug", "loss scaler: the optimizer steps on overflowed (inf/NaN) gradients",
          scaler=_scaler_slip("step_on_nonfinite"), site="update", policies=("fp16",)),
]}


def envelope_variants(device_type: str, policy: str = "fp32") -> list[str]:
    """The numerics variants the baseline command records on this kind of device under this precision policy."""
    return [n for n in ENVELOPE_VARIANTS if device_type in VARIANTS[n].devices and policy in VARIANTS[n].policies]


def describe(name: str) -> str:
    try:
        entry = VARIANTS.get(name) or lookup(name)
    except ValueError:
        return ""
    return entry.description if entry else ""


# ---- a parametric perturbation: one module's output scaled by (1 + eps) ------------------------------
# Not part of the zoo (BUGS): the sensitivity benchmark (benchmarks/bench_sensitivity.py) names it as a
# port bug `output_scale@<module path>@<eps>`, e.g. `output_scale@blocks.0@1e-4`, to find the smallest
# change of one module the gate and localize see. Forward only: a forward hook returns output * (1 + eps)
# (the factor is rounded to the output's dtype: in float32, eps below ~6e-8 is no change at all); the
# backward pass goes through that product, as it would through a module computing it.

PERTURBATION = "output_scale"


def perturbation_name(module: str, eps: float) -> str:
    """`output_scale@<module>@<eps>`, eps written shortest (1e-4, 2.5e-6)."""
    mantissa, exponent = f"{eps:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{PERTURBATION}@{module}@{mantissa}e{int(exponent)}"


def parse_perturbation(name: str) -> tuple[str, float] | None:
    """(module path, eps) of a perturbation name; None for any other name; ValueError for a malformed one."""
    if not name.startswith(PERTURBATION + "@"):
        return None
    parts = name.split("@")
    form = f"{PERTURBATION}@<module path>@<eps>, e.g. {PERTURBATION}@blocks.0@1e-4"
    if len(parts) != 3 or not parts[1] or any(not p.isidentifier() and not p.isdigit() for p in parts[1].split(".")):
        raise ValueError(f"perturbation {name!r}: expected {form}")
    try:
        eps = float(parts[2])
    except ValueError:
        raise ValueError(f"perturbation {name!r}: eps {parts[2]!r} is not a number; expected {form}") from None
    if not math.isfinite(eps) or eps <= -1 or eps == 0:
        raise ValueError(f"perturbation {name!r}: eps must be finite, non-zero and above -1")
    return parts[1], eps


def _scale_output(module_path: str, eps: float):
    def patch(model, seed):
        import torch

        from cait.errors import ConfigError

        try:
            module = model.get_submodule(module_path)
        except AttributeError:
            raise ConfigError(f"device.port_bug {perturbation_name(module_path, eps)!r}: the model has no module "
                              f"{module_path!r}; name one of model.named_modules(), e.g. blocks.0") from None

        def hook(mod, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"perturbation: {module_path} returns {type(output).__name__}, not a tensor")
            return output * (1 + eps)

        module.register_forward_hook(hook)
    return patch


def lookup(name: str) -> Entry | None:
    """The port bug of this name: one of BUGS, or a perturbation built on the fly; None if neither."""
    if name in BUGS:
        return BUGS[name]
    parsed = parse_perturbation(name)
    if parsed is None:
        return None
    module, eps = parsed
    return Entry(perturbation_name(module, eps), "bug", f"the output of {module} multiplied by (1 + {eps:g})",
                 model=_scale_output(module, eps), site=module)
