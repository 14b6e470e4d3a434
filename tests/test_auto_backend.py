"""--backend auto: chosen by parity and a measurement on this machine, cached beside the export."""

import json

import pytest

import reftok_deploy.deploy.backends as backends
from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.manifest import open_export
from reftok_deploy.base.spec import TOLERANCES, Tolerance


@pytest.fixture()
def export_copy(tmp_path, tiny_export, monkeypatch):
    """A copy of the session's FP32 export of the tiny checkpoint: auto writes its measurements beside it."""
    import shutil

    monkeypatch.setattr(backends, "PROBE_SIZE", 64)
    return open_export(shutil.copytree(tiny_export, tmp_path / "export"))


def test_auto_measures_once_then_reads_the_cache(export_copy, tiny_checkpoint, monkeypatch):
    said = []
    spec, export, why = backends.auto_backend(export_copy, tiny_checkpoint, "cpu", said.append)
    record = json.loads((export_copy.path / backends.AUTO_FILE).read_text())
    results = record["results"]
    assert {"torch", "onnxruntime:fp32"} <= set(results) and all(r["parity"] for r in results.values())
    fastest = min(results, key=lambda s: results[s]["total_ms"])
    assert spec == fastest and export is export_copy and "measured now" in why
    assert record["key"]["cpu"] == backends.cpu_name() and any("auto: checking" in line for line in said)

    def no_measuring(*_a, **_k):
        raise AssertionError("measured again although a valid measurement is cached")

    monkeypatch.setattr(backends, "measure_backends", no_measuring)
    again, _, why = backends.auto_backend(export_copy, tiny_checkpoint, "cpu")
    assert again == spec and "cached in" in why
    # another thread count is another measurement
    with pytest.raises(AssertionError, match="measured again"):
        backends.auto_backend(export_copy, tiny_checkpoint, "cpu", threads=1)


def test_auto_never_picks_a_backend_that_failed_parity(export_copy, tiny_checkpoint, monkeypatch):
    for precision in ("fp32", "bf16"):  # bf16: OpenVINO's bf16 run of the FP32 graphs, where the CPU has it
        monkeypatch.setitem(TOLERANCES, precision, Tolerance(min_token_agreement=1.01, max_abs_frames=0.0,
                                                             max_psnr_delta_db=0.0))
    spec, _, why = backends.auto_backend(export_copy, tiny_checkpoint, "cpu")
    results = json.loads((export_copy.path / backends.AUTO_FILE).read_text())["results"]
    assert spec == "torch" and results["onnxruntime:fp32"]["parity"] is False
    assert results["onnxruntime:fp32"]["total_ms"] is None and "failed parity: onnxruntime:fp32" in why


def test_choose_refuses_when_nothing_passed():
    with pytest.raises(ReftokError, match="no backend passed"):
        backends.choose({"onnxruntime:fp32": {"parity": False, "total_ms": None}})
    assert backends.choose({"a": {"parity": True, "total_ms": 5.0}, "b": {"parity": True, "total_ms": 3.0},
                            "c": {"parity": False, "total_ms": 1.0}}) == "b"


def test_a_backend_that_cannot_run_is_skipped_and_a_damaged_cache_is_remeasured(export_copy, tiny_checkpoint,
                                                                                monkeypatch):
    import reftok_deploy.runtimes.factory as factory

    real = factory.make_runner

    def broken_openvino(spec, *args, **kwargs):
        if spec.startswith("onnxruntime"):
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : simulated")
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(factory, "make_runner", broken_openvino)
    spec, _, why = backends.auto_backend(export_copy, tiny_checkpoint, "cpu")
    results = json.loads((export_copy.path / backends.AUTO_FILE).read_text())["results"]
    assert spec != "onnxruntime:fp32" and results["onnxruntime:fp32"]["parity"] is False
    assert "could not run here" in results["onnxruntime:fp32"]["failures"][0]
    monkeypatch.setattr(factory, "make_runner", real)
    record = json.loads((export_copy.path / backends.AUTO_FILE).read_text())
    record["results"]["torch"] = "fast"
    (export_copy.path / backends.AUTO_FILE).write_text(json.dumps(record))
    _, _, why = backends.auto_backend(export_copy, tiny_checkpoint, "cpu")
    assert "measured now" in why


def test_each_frame_size_is_measured_at_that_size_and_cached_apart(export_copy, tiny_checkpoint, monkeypatch):
    measured_at = []
    real = backends.measure_backends

    def recording(*args, **kwargs):
        measured_at.append(tuple(args[6] if len(args) > 6 else kwargs["timing_size"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(backends, "measure_backends", recording)
    backends.auto_backend(export_copy, tiny_checkpoint, "cpu")           # size unknown: PROBE_SIZE square
    backends.auto_backend(export_copy, tiny_checkpoint, "cpu", size=(45, 70))
    backends.auto_backend(export_copy, tiny_checkpoint, "cpu", size=(45, 70))  # cached
    assert measured_at == [(64, 64), (48, 72)]  # rounded up to whole tokens
    other = json.loads((export_copy.path / "auto-backend-72x48.json").read_text())
    assert other["key"]["probe"]["size"] == [48, 72]
    assert json.loads((export_copy.path / backends.AUTO_FILE).read_text())["key"]["probe"]["size"] == [64, 64]
    clips = backends.probe_clips((48, 72), 8)
    assert all(clip.shape[1:3] == (48, 72) for clip in clips.values())
    # large frames are measured at PROBE_MAX_PIXELS, same aspect ratio, whole tokens
    assert backends.probe_size((1080, 1920)) == backends.probe_size((720, 1280)) == (416, 744)
    assert backends.probe_size((480, 640)) == (480, 640)


def test_a_cached_choice_is_measured_again_where_other_backends_can_run(export_copy, tiny_checkpoint, monkeypatch):
    """A VM's CPU name ("Intel(R) Xeon(R) Processor") does not say whether it has bf16: a measurement made
    where openvino:bf16 could run is not reused where it cannot (it would choose a backend that refuses to load)."""
    pytest.importorskip("openvino")
    import reftok_deploy.runtimes.openvino_runner as openvino_runner

    monkeypatch.setattr(openvino_runner, "native_bf16", lambda device="CPU": True)
    backends.auto_backend(export_copy, tiny_checkpoint, "cpu")
    record = json.loads((export_copy.path / backends.AUTO_FILE).read_text())
    assert "openvino:bf16" in record["key"]["candidates"] and "openvino:bf16" in record["results"]

    def measuring(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(openvino_runner, "native_bf16", lambda device="CPU": False)
    monkeypatch.setattr(backends, "measure_backends", measuring)
    with pytest.raises(AssertionError, match="measured again"):
        backends.auto_backend(export_copy, tiny_checkpoint, "cpu")
