"""Devices the harness trains on: `cpu`, `cuda` and Tecorigin `sdaa`.

`torch_sdaa` exists only on SDAA machines, so it is imported here and only when `sdaa` is asked for.
"""

from __future__ import annotations

import os
import platform
import socket
import sys

from cait.errors import DeviceError

DEVICE_TYPES = ("cpu", "cuda", "sdaa")


def load_sdaa_plugin():
    """Import torch_sdaa (which registers the `sdaa` device with torch) or explain how to get it."""
    try:
        import torch_sdaa  # noqa: F401  (registers torch.sdaa)
    except ImportError as exc:
        raise DeviceError(
            f"device 'sdaa' needs the Tecorigin torch_sdaa plugin, which {sys.executable} cannot import "
            f"({exc}); run inside the vendor environment that ships it (e.g. `PYTHON=/path/to/conda/env/bin/python "
            f"make repro`), or set device.type to cpu or cuda"
        ) from None
    return torch_sdaa


def resolve_device(device_type: str, index: int = 0):
    """Return a usable torch.device, or raise DeviceError saying what is missing and what to use instead."""
    import torch

    if device_type == "cpu":
        return torch.device("cpu")
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device 'cuda' requested but torch {torch.__version__} sees no CUDA GPU "
                f"(built for CUDA {torch.version.cuda}); set device.type: cpu, or run on a GPU machine"
            )
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"device.index {index} requested but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        return torch.device("cuda", index)
    if device_type == "sdaa":
        load_sdaa_plugin()
        sdaa = getattr(torch, "sdaa", None)
        if sdaa is None or not sdaa.is_available():
            raise DeviceError(
                "torch_sdaa is installed but no SDAA card is available (torch.sdaa.is_available() is False); "
                "check the driver and SDAA_VISIBLE_DEVICES, or set device.type: cpu"
            )
        if index >= sdaa.device_count():
            raise DeviceError(
                f"device.index {index} requested but only {sdaa.device_count()} SDAA card(s) are visible"
            )
        sdaa.set_device(index)
        return torch.device("sdaa", index)
    raise DeviceError(f"unknown device type {device_type!r}; use one of {', '.join(DEVICE_TYPES)}")


def synchronize(device) -> None:
    """Wait for queued work on `device` (timing needs it on asynchronous accelerators)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "sdaa":
        torch.sdaa.synchronize(device)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str:
    """The NVIDIA driver's version (one per machine): nvidia-smi's, else NVML's (nvidia-ml-py); empty when
    neither answers."""
    import subprocess

    try:
        first = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=10).stdout.split("\n")[0].strip()
        if first:
            return first
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # no NVML library or no permission: the record says "" rather than failing the run
        return ""


def describe_device(device) -> dict:
    """Device name and every version that can change the numbers, recorded with each run."""
    import timm
    import torch

    info = {
        "device": device.type,
        "device_index": device.index if device.index is not None else 0,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "threads": torch.get_num_threads(),
        "plugin": "",
        "driver": "",
        "cuda": torch.version.cuda or "",
    }
    if device.type == "cpu":
        info["device_name"] = info["cpu"]
    elif device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cudnn"] = str(torch.backends.cudnn.version() or "")
        info["device_capability"] = f"sm_{props.major}{props.minor}"
        info["device_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["device_sms"] = props.multi_processor_count
        info["driver"] = _nvidia_driver()
    elif device.type == "sdaa":
        import torch_sdaa

        info["plugin"] = f"torch_sdaa {getattr(torch_sdaa, '__version__', 'unknown')}"
        get_name = getattr(torch.sdaa, "get_device_name", None)
        info["device_name"] = get_name(device) if get_name else "SDAA"
        info["sdaa_autoload"] = os.environ.get("TORCH_SDAA_AUTOLOAD", "")
    return info
