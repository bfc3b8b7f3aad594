"""Devices: sdaa imports torch_sdaa only when asked for, and a missing device is a clear error."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cait.devices import describe_device, resolve_device
from cait.errors import EXIT_INFRA, DeviceError

from conftest import stage_env


def test_cpu_is_described_with_versions():
    info = describe_device(resolve_device("cpu"))
    assert info["device"] == "cpu" and info["device_name"]
    assert info["torch"] == torch.__version__
    import timm

    assert info["timm"] == timm.__version__
    assert info["plugin"] == ""


def test_sdaa_without_plugin_says_how_to_get_it():
    if "torch_sdaa" in sys.modules:
        pytest.skip("torch_sdaa is importable here: this machine has an SDAA plugin")
    with pytest.raises(DeviceError) as err:
        resolve_device("sdaa")
    message = str(err.value)
    assert "torch_sdaa" in message and "device.type" in message and "PYTHON=" in message


def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    with pytest.raises(DeviceError, match="sees no CUDA GPU"):
        resolve_device("cuda")


def test_torch_sdaa_is_not_imported_for_cpu():
    code = "import sys; from cait.devices import resolve_device; resolve_device('cpu'); print('torch_sdaa' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_train_stage_on_absent_device_exits_4(tiny_project):
    params = tiny_project / "params.yaml"
    params.write_text(params.read_text().replace("type: cpu", "type: sdaa"))
    result = subprocess.run([sys.executable, "-m", "pipelines.stages.train"], cwd=tiny_project,
                            env=stage_env(tiny_project), capture_output=True, text=True)
    assert result.returncode == EXIT_INFRA
    assert result.stderr.startswith("error: device 'sdaa' needs the Tecorigin torch_sdaa plugin")
    assert len(result.stderr.strip().splitlines()) == 1
