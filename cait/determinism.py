"""Deterministic numerics per device: the same inputs give the same bits on the same device.

On by default for regression runs (device.deterministic); full training may turn it off for speed.
`configure_numerics` returns what it set, so the run's MLflow record says which settings were in force.
"""

from __future__ import annotations

import os

CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs for deterministic results (CUDA >= 10.2)


def configure_numerics(device_type: str, deterministic: bool) -> dict[str, str]:
    """Set the deterministic-algorithm switches of torch, cuDNN/cuBLAS, timm and torch_sdaa.

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
    # TF32 rounds fp32 matmuls to 10-bit mantissas on Ampere+: off whenever we compare numbers
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic
    torch.set_float32_matmul_precision("highest" if deterministic else "high")
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
        settings.update(_configure_sdaa(deterministic))
    return settings


def _configure_sdaa(deterministic: bool) -> dict[str, str]:
    """torch_sdaa's counterparts, where the installed plugin has them (names from its cuda-like API)."""
    import torch

    out: dict[str, str] = {}
    for holder_name in ("sdaa", "tecodnn"):
        holder = getattr(torch.backends, holder_name, None)
        if holder is None:
            continue
        for flag, value in (("benchmark", not deterministic), ("deterministic", deterministic),
                            ("allow_tf32", not deterministic)):
            if hasattr(holder, flag):
                setattr(holder, flag, value)
                out[f"{holder_name}.{flag}"] = str(value)
    if not out:
        out["sdaa.note"] = "torch_sdaa exposes no backend switches; only torch's global settings apply"
    return out
