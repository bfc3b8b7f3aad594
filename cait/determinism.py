"""Deterministic numerics per device: the same inputs give the same bits on the same device.

On by default for regression runs (device.deterministic); full training may turn it off for speed.
`configure_numerics` returns what it set, so the run's MLflow record says which settings were in force.

The *precision policy* of a run (fp32, tf32, bf16, fp16) is read from what torch had switched on, never from
params alone (`precision_state`, `precision_policy`): TF32 or a bf16 autocast changes the arithmetic's
precision, which is a policy a baseline must have an envelope for, not numerics noise inside fp32's.
"""

from __future__ import annotations

import os

CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs for deterministic results (CUDA >= 10.2)


POLICIES = ("fp32", "tf32", "bf16", "fp16")


def configure_numerics(device_type: str, deterministic: bool, tf32: bool | None = None) -> dict[str, str]:
    """Set the deterministic-algorithm switches of torch, cuDNN/cuBLAS, timm and torch_sdaa.

    `tf32` switches TF32 matmuls (a precision policy, not a determinism setting); None follows
    `deterministic` (off for regression runs, on for fast full training), as before it was a setting.
    Call before the model is built (timm reads its fused-attention switch at construction) and
    before the first CUDA/SDAA kernel (cuBLAS reads CUBLAS_WORKSPACE_CONFIG at initialisation).
    """
    import torch
    from timm.layers import set_fused_attn

    settings: dict[str, str] = {"deterministic": str(deterministic)}
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic)
    settings["torch.use_deterministic_algorithms"] = str(torch.are_deterministic_algorithms_enabled())
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    settings["cudnn.benchmark"] = str(torch.backends.cudnn.benchmark)
    settings["cudnn.deterministic"] = str(torch.backends.cudnn.deterministic)
    # TF32 rounds fp32 matmuls to 10-bit mantissas on Ampere+: a precision policy of its own (device.tf32)
    tf32 = (not deterministic) if tf32 is None else tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    settings["tf32"] = str(torch.backends.cuda.matmul.allow_tf32)
    settings["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    # fused attention (flash / memory-efficient SDPA kernels) is not bitwise reproducible everywhere
    set_fused_attn(not deterministic)
    if hasattr(torch.backends.cuda, "enable_flash_sdp"):
        torch.backends.cuda.enable_flash_sdp(not deterministic)
        torch.backends.cuda.enable_mem_efficient_sdp(not deterministic)
        if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
            torch.backends.cuda.enable_cudnn_sdp(not deterministic)
    settings["fused_attn"] = str(not deterministic)
    settings["CUBLAS_WORKSPACE_CONFIG"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG", "")
    if device_type == "sdaa":
        settings.update(_configure_sdaa(deterministic, tf32))
    return settings


def _configure_sdaa(deterministic: bool, tf32: bool) -> dict[str, str]:
    """torch_sdaa's counterparts, where the installed plugin has them (names from its cuda-like API)."""
    import torch

    out: dict[str, str] = {}
    for holder_name in ("sdaa", "tecodnn"):
        holder = getattr(torch.backends, holder_name, None)
        if holder is None:
            continue
        for flag, value in (("benchmark", not deterministic), ("deterministic", deterministic),
                            ("allow_tf32", tf32)):
            if hasattr(holder, flag):
                setattr(holder, flag, value)
                out[f"{holder_name}.{flag}"] = str(value)
    if not out:
        out["sdaa.note"] = "torch_sdaa exposes no backend switches; only torch's global settings apply"
    return out


def precision_state(device_type: str) -> dict[str, str]:
    """What torch has switched on that changes the precision of fp32 arithmetic, read back from torch (and
    torch_sdaa where present), not from params: the run record's evidence for its precision policy."""
    import torch

    state = {"float32_matmul_precision": torch.get_float32_matmul_precision(),
             "tf32": str(bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32))}
    mkldnn = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    if mkldnn is not None and hasattr(mkldnn, "fp32_precision"):
        state["mkldnn.matmul.fp32_precision"] = str(mkldnn.fp32_precision)
    if device_type == "sdaa":
        for holder_name in ("sdaa", "tecodnn"):
            holder = getattr(torch.backends, holder_name, None)
            if holder is not None and hasattr(holder, "allow_tf32"):
                state[f"{holder_name}.allow_tf32"] = str(bool(holder.allow_tf32))
    return state


def precision_policy(numerics: dict, amp: str | None = None) -> str:
    """The precision policy a run trained under, from its recorded switches (`precision_state`, or the numerics
    dict of an older record): bf16/fp16 under autocast; tf32 when any TF32 switch was on or fp32 matmuls were
    allowed a lower internal precision ("high"); bf16 for "medium" (bf16 matmul internals); else fp32.

    Declared from what was switched on, whether or not the hardware honoured it: a policy is a claim about
    what the device was allowed to do, and the envelope it is judged against must allow the same."""
    if amp in ("bf16", "fp16"):
        return amp
    flags = {k: str(v) for k, v in (numerics or {}).items()}
    if flags.get("float32_matmul_precision") == "medium" or flags.get("mkldnn.matmul.fp32_precision") == "bf16":
        return "bf16"
    if flags.get("tf32") == "True" or flags.get("float32_matmul_precision") == "high" or \
            flags.get("mkldnn.matmul.fp32_precision") == "tf32" or \
            any(k.endswith(".allow_tf32") and v == "True" for k, v in flags.items()):
        return "tf32"
    return "fp32"
