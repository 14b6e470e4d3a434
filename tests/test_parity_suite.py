"""PyTorch vs ONNX Runtime FP32 on frames of real photographs, per exporter, resolution and batch size;
and proof that the suite catches a planted numerical change in the exported graph."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from reftok_deploy.base.spec import TOLERANCES
from reftok_deploy.deploy.parity_check import compare
from reftok_deploy.runtimes.onnxruntime_runner import OnnxRuntimeRunner
from reftok_deploy.runtimes.torch_runner import TorchRunner
from tests.conftest import moving_still


def feeds(batch: int, height: int, width: int):
    """GOP feeds ``reference [B,3,H,W]``, ``frames [B,3,8,H,W]`` from different real stills per batch item."""
    stills = ["astronaut", "coffee", "text", "chelsea"]
    clips = [moving_still(stills[i], 9, max(height, width), seed=i)[:, :height, :width] for i in range(batch)]
    x = np.stack(clips).astype(np.float32) / 127.5 - 1  # [B,9,H,W,3]
    x = np.ascontiguousarray(np.moveaxis(x, -1, 1))  # [B,3,9,H,W]
    return [("real", {"reference": np.ascontiguousarray(x[:, :, 0]), "frames": np.ascontiguousarray(x[:, :, 1:])})]


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("height,width", [(64, 64), (48, 80)])
@pytest.mark.parametrize("batch", [1, 2])
def test_onnxruntime_fp32_matches_pytorch(exported, tiny_checkpoint, exporter, height, width, batch):
    files = exported(exporter)
    with TorchRunner(tiny_checkpoint) as torch_runner, OnnxRuntimeRunner(files) as ort_runner:
        report = compare(torch_runner, ort_runner, feeds(batch, height, width), TOLERANCES["fp32"])
        tokens = ort_runner.encode(**{k: v for k, v in feeds(batch, height, width)[0][1].items()})
    assert report.ok, report.failures
    assert tokens.dtype == np.int32 and tokens.shape == (batch, 2, height // 8, width // 8)
    assert report.token_agreement >= 0.999 and report.max_abs_frames <= 1e-3
    assert abs(report.psnr_delta_db) <= 0.05


def plant(path, out, initializer_suffix, change):
    """Copy an ONNX file with one weight changed."""
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name.endswith(initializer_suffix):
            init.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(init)), init.name))
            break
    else:
        raise AssertionError(f"no initializer ending in {initializer_suffix}")
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize("graph,suffix,change", [
    ("decoder", "to_pixels.0.bias", lambda w: w + 0.01),
    ("encoder", "to_latent.bias", lambda w: w + 0.3),
])
def test_planted_numerical_change_fails_the_suite(exported, tiny_checkpoint, tmp_path, graph, suffix, change):
    files = dict(exported("torchscript"))
    files[graph] = plant(files[graph], tmp_path / f"{graph}.onnx", suffix, change)
    with TorchRunner(tiny_checkpoint) as torch_runner, OnnxRuntimeRunner(files) as ort_runner:
        report = compare(torch_runner, ort_runner, feeds(1, 64, 64), TOLERANCES["fp32"])
    assert not report.ok
    expected = "max abs" if graph == "decoder" else "token agreement"
    assert any(expected in f for f in report.failures), report.failures
