"""The resolver the commands share (reftok_deploy.deploy.deployment) and reftok-bench's honest speed-ups."""

from __future__ import annotations

import json

import pytest

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.manifest import artifact_key, split_artifact_key
from reftok_deploy.deploy.benchmark import bench_lines, parity_verdict
from reftok_deploy.deploy.deployment import Deployment
from tests.conftest import invoke, moving_still, write_video


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, tiny_checkpoint):
    from reftok_deploy.export.job import ExportOptions, run_export

    out = tmp_path_factory.mktemp("deployment") / "export"
    run_export(tiny_checkpoint, out, ExportOptions(dynamo=False, tensorrt="skip"))
    return out


def test_artifact_key_is_built_in_one_place():
    assert artifact_key("encoder", "fp32") == "encoder.fp32"
    assert split_artifact_key("decoder.int8") == ("decoder", "int8")


def test_parity_verdict_and_table_print_ratios_only_for_backends_that_pass():
    base = {"psnr_db": 30.0}
    assert parity_verdict({"psnr_db": 29.97}, base, "fp32") == "ok"  # within fp32's 0.05 dB
    assert parity_verdict({"psnr_db": 30.5}, base, "int8") == "ok"  # better than the baseline is never a failure
    assert parity_verdict({"psnr_db": 29.4}, base, "int8") == "fails parity: -0.6 dB"
    assert parity_verdict({"psnr_db": 25.4}, base, "fp32") == "fails parity: -4.6 dB"
    row = {"encode_ms": 1.0, "decode_ms": 1.0, "fps_encode_decode": 9.0, "gflop_per_s": 1.0, "of_matmul_peak": 0.1,
           "psnr_db": 30.0, "speedup_total": 1.0, "parity": "ok"}
    report = {"cpu": "cpu", "threads": 1, "matmul_peak_gflops": 10.0, "baseline": "torch-cpu",
              "skipped": {"openvino:int8": "refused on this CPU"},
              "sizes": {"64x64": {"gops": 1, "frames_per_gop": 9, "gflop_per_gop": 1.0, "backends": {
                  "torch-cpu": row, "onnxruntime-int8": dict(row, psnr_db=25.4, speedup_total=3.21,
                                                               parity="fails parity: -4.6 dB")}}}}
    text = "\n".join(bench_lines(report, 1))
    assert "fails parity: -4.6 dB" in text and "3.21" not in text
    assert "openvino:int8" in text and "skipped: refused on this CPU" in text


def test_bench_skips_a_backend_that_cannot_open_with_its_reason(export_dir, tiny_checkpoint):
    from reftok_deploy.cli.bench import main as bench_main

    result = invoke(bench_main, [export_dir, "--checkpoint", tiny_checkpoint, "--backends", "torch,onnxruntime:int8",
                                 "--size", "64", "--max-gops", "1", "--repeats", "1", "--model-only", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "no int8" in report["skipped"]["onnxruntime:int8"]
    assert set(report["sizes"]["64x64"]["backends"]) == {"torch-cpu"}
    assert report["sizes"]["64x64"]["backends"]["torch-cpu"]["parity"] == "ok"


def test_a_baseline_that_cannot_open_is_the_commands_error(export_dir, tiny_checkpoint):
    from reftok_deploy.cli.bench import main as bench_main

    result = invoke(bench_main, [export_dir, "--checkpoint", tiny_checkpoint, "--backends", "onnxruntime:int8,torch",
                                 "--size", "64", "--max-gops", "1", "--repeats", "1", "--model-only"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "no int8" in result.stderr


def test_an_onnx_backend_without_export_uses_the_cached_export(tmp_path, tiny_checkpoint, monkeypatch):
    """--backend onnxruntime:fp32 (or openvino:...) without --export: the checkpoint's export in the user cache,
    made once, as --backend auto uses; TensorRT still needs --export."""
    from reftok_deploy.cli.run import main as run_main

    monkeypatch.setenv("REFTOK_CACHE", str(tmp_path / "cache"))
    video = write_video(tmp_path / "clip.avi", moving_still("chelsea", 9, 32, seed=1))
    result = invoke(run_main, ["--video", video, "--checkpoint", tiny_checkpoint, "--backend", "onnxruntime:fp32",
                               "--json", "--no-display"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["backend"] == "onnxruntime-fp32"
    assert list((tmp_path / "cache" / "exports").glob("*/manifest.json"))
    deployment = Deployment(str(tiny_checkpoint), backend="tensorrt:fp16")
    deployment.choose_backend()
    with pytest.raises(ReftokError, match="needs an export folder"):
        deployment.runner()


def test_the_recorded_checkpoint_is_checked_against_the_export(export_dir, tiny_checkpoint):
    deployment = Deployment(export_folder=str(export_dir)).with_recorded_checkpoint(verify=True)
    assert deployment.checkpoint == str(tiny_checkpoint.resolve())
    assert deployment.opened_export() is deployment.opened_export()  # opened once


def test_tensorrt_require_fails_before_any_work(tmp_path):
    import time

    from reftok_deploy.cli.export import main as export_main
    from reftok_deploy.export.tensorrt_check import tensorrt_missing

    if tensorrt_missing() is None:
        pytest.skip("TensorRT and a GPU are present")
    started = time.perf_counter()
    result = invoke(export_main, ["--tensorrt", "require", "-o", tmp_path / "out"])
    assert result.exit_code == 2 and "--tensorrt require:" in result.stderr and "not found" in result.stderr
    assert time.perf_counter() - started < 20 and not (tmp_path / "out").exists()  # the export took 57 s


def test_the_int8_finish_hint_names_the_calibration_data(tmp_path):
    from reftok_deploy.export.job import ExportOptions, _tensorrt_step
    from reftok_deploy.export.tensorrt_check import tensorrt_missing

    if tensorrt_missing() is None:
        pytest.skip("TensorRT and a GPU are present")
    step = _tensorrt_step(tmp_path, tmp_path, {}, None, ExportOptions(precisions=("fp32", "int8")), {}, print)
    assert step["finish_command"] == "reftok-export --int8 --calib-data PATH... on the target (TensorRT + GPU)"
    step = _tensorrt_step(tmp_path, tmp_path, {}, None, ExportOptions(precisions=("fp32",)), {}, print)
    assert step["finish_command"] == "reftok-export on the target (TensorRT + GPU)"
