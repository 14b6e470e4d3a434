"""An export into a folder that already holds another precision of the same model keeps it, and only then."""

import copy

from reftok_deploy.export.job import merge_previous
from reftok_deploy.base.files import sha256_file


def folder_with_fp16(tmp_path):
    """A folder holding an earlier export's fp16 graphs and a TensorRT engine, and that export's manifest."""
    artifacts, engines = {}, {}
    for graph in ("encoder", "decoder"):
        onnx_file = tmp_path / f"{graph}.fp16.onnx"
        onnx_file.write_bytes(f"{graph} fp16 graph".encode())
        artifacts[f"{graph}.fp16"] = {"file": onnx_file.name, "sha256": sha256_file(onnx_file)}
        engine = tmp_path / f"{graph}.fp16.engine"
        engine.write_bytes(f"{graph} engine".encode())
        engines[f"{graph}.fp16"] = {"file": engine.name, "sha256": sha256_file(engine)}
    previous = {"checkpoint": {"weights_sha256": "ab"}, "model": {"channels": [8, 8, 8]}, "exporter": "dynamo",
                "opset": 18, "precisions": ["fp32", "fp16"], "artifacts": artifacts, "preflight": {},
                "tensorrt": {"engines": engines}}
    return previous


def new_manifest(**changes):
    manifest = {"checkpoint": {"weights_sha256": "ab"}, "model": {"channels": [8, 8, 8], "group_context": False},
                "exporter": "dynamo", "opset": 18, "precisions": ["fp32", "int8"], "artifacts": {},
                "preflight": {}, "tensorrt": {}}
    manifest.update(changes)
    return manifest


def test_the_same_model_exporter_and_opset_keep_the_earlier_precision_and_its_engines(tmp_path):
    previous = folder_with_fp16(tmp_path)
    manifest = new_manifest()  # a manifest written before group_context existed still matches
    assert merge_previous(manifest, previous, tmp_path) == ["fp16"]
    assert manifest["precisions"] == ["fp32", "fp16", "int8"] and set(manifest["tensorrt"]["engines"]) == {
        "encoder.fp16", "decoder.fp16"}


def test_another_exporter_or_opset_keeps_nothing_and_a_changed_engine_is_dropped(tmp_path):
    previous = folder_with_fp16(tmp_path)
    for changes in ({"exporter": "torchscript"}, {"opset": 17}, {"checkpoint": {"weights_sha256": "cd"}}):
        manifest = new_manifest(**changes)
        assert merge_previous(manifest, copy.deepcopy(previous), tmp_path) == [] and "fp16" not in manifest["precisions"]
    (tmp_path / "decoder.fp16.engine").write_bytes(b"rebuilt elsewhere")
    manifest = new_manifest()
    assert merge_previous(manifest, previous, tmp_path) == ["fp16"]
    assert set(manifest["tensorrt"]["engines"]) == {"encoder.fp16"}
