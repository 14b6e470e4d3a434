"""reftok-export and reftok-parity end to end on a tiny checkpoint, their checks and their bad-input answers."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from reftok_deploy.cli.export import main as export_main
from reftok_deploy.cli.parity import main as parity_main
from reftok_deploy.export.preflight import preflight
from reftok_deploy.model.reftok import MODEL_VERSION
from tests.conftest import (export_validation, invoke, moving_still, one_line_error, perturbed_copy, tree_listing,
                            validation_passed, write_video)


@pytest.fixture
def export_dir(fp16_export):
    """The session's FP32 + FP16 export of the shipped checkpoint (validated); tests that change it copy it
    (checked)."""
    before = tree_listing(fp16_export)
    yield fp16_export
    assert tree_listing(fp16_export) == before, "the test changed the session's export: copy it first"


def test_export_writes_graphs_manifest_and_metadata(export_dir):
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert set(manifest["artifacts"]) == {"encoder.fp32", "decoder.fp32", "encoder.fp16", "decoder.fp16"}
    assert manifest["versions"]["torch"] and manifest["versions"]["onnxruntime"] and "tensorrt" in manifest["versions"]
    assert manifest["tensorrt"]["status"] in ("not built", "built")
    encoder = onnx.load(str(export_dir / "encoder.fp32.onnx"))
    props = {p.key: p.value for p in encoder.metadata_props}
    assert props["reftok.model_version"] == str(MODEL_VERSION)
    assert json.loads(props["reftok.model_config"])["fsq_levels"] == [8, 5, 5, 5]
    assert json.loads(props["reftok.export"])["precision"] == "fp32"
    assert manifest["io"]["encoder"]["outputs"] == [
        {"name": "tokens", "dtype": "int32", "dims": ["batch", 2, "token_height", "token_width"]}]
    for graph in ("encoder", "decoder"):
        for precision in ("fp32", "fp16"):
            io = manifest["artifacts"][f"{graph}.{precision}"]
            dtypes = {t["name"]: t["dtype"] for t in io["inputs"] + io["outputs"]}
            assert dtypes == ({"reference": "float32", "frames": "float32", "tokens": "int32"} if graph == "encoder"
                              else {"reference": "float32", "tokens": "int32", "reconstruction": "float32"})
    fp32 = manifest["validation"]["reports"]["fp32"]
    assert fp32["ok"] and fp32["token_agreement"] >= 0.999 and fp32["decoder_max_abs"] <= 1e-3
    assert all(r["ok"] for r in manifest["preflight"].values())
    assert not list(export_dir.glob(".staging-*")) and not list(export_dir.glob("*.tmp"))


def test_the_fp16_export_passed_its_validation_within_the_fp16_tolerance(export_dir, video_file):
    report = validation_passed(export_dir, "fp16", video_file)
    assert report["candidate"] == "onnxruntime-fp16" and report["baseline"].startswith("torch"), report


@pytest.mark.parametrize("file,initializer,change,failure", [
    # 10 % more weight in the conv that draws the decoder's pixels: one pixel moves past the max abs limit
    ("decoder.fp16.onnx", "model.decoder.to_pixels.0.weight", lambda w: w * 1.1, "max abs error"),
    # the encoder's latents shifted by 0.1 (an FSQ step is 0.25-0.5): about half the tokens change
    ("encoder.fp16.onnx", "model.encoder.to_latent.bias", lambda b: b + 0.1, "token agreement"),
])
def test_the_fp16_tolerance_trips_on_a_perturbed_weight(export_dir, shipped_checkpoint, video_file, tmp_path, file,
                                                        initializer, change, failure):
    """The validation reftok-export ran passes on the export as written and fails once one weight of one FP16
    graph is changed: the FP16 tolerance is tight enough to catch a wrong graph."""
    assert export_validation(export_dir, "fp16", video_file, shipped_checkpoint)["ok"]
    planted = perturbed_copy(export_dir, tmp_path / "planted", file, initializer, change)
    verdict = export_validation(planted, "fp16", video_file, shipped_checkpoint)
    assert not verdict["ok"] and not verdict["reports"]["fp16"]["ok"], verdict
    assert any(failure in f for f in verdict["failures"]), verdict["failures"]


def test_fp16_graph_keeps_token_arithmetic_in_fp32(export_dir):
    model = onnx.load(str(export_dir / "encoder.fp16.onnx"))
    types = {i.name: i.data_type for i in model.graph.initializer}
    conv_weights = [n.input[1] for n in model.graph.node if n.op_type == "Conv"]
    assert conv_weights and all(types.get(w) == TensorProto.FLOAT16 for w in conv_weights if w in types)
    inferred = onnx.shape_inference.infer_shapes(model)
    elem = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    rounds = [n for n in model.graph.node if n.op_type == "Round"]
    assert rounds and all(elem[n.output[0]] == TensorProto.FLOAT for n in rounds)


def test_parity_cli_torch_vs_onnxruntime(export_dir):
    result = invoke(parity_main, [export_dir, "--size", "64", "--max-gops", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["token_agreement"] >= 0.999 and report["feeds"] == 3


def test_parity_cli_on_a_video(export_dir, tmp_path):
    video = write_video(tmp_path / "v.avi", moving_still("chelsea", 10, 64))
    result = invoke(parity_main, [export_dir, "--b", "ort:fp32", "--video", video, "--size", "64"])
    assert result.exit_code == 0, result.output
    assert "tokens equal" in result.stdout and "ok" in result.stdout


def test_preflight_passes_exported_graphs_and_fails_planted_patterns(export_dir, tmp_path):
    model = onnx.load(str(export_dir / "decoder.fp32.onnx"))
    assert preflight(model).ok
    planted = onnx.load(str(export_dir / "decoder.fp32.onnx"))
    out = planted.graph.output[0].name
    planted.graph.node.append(helper.make_node("NonZero", [out], ["nz"], name="planted_nonzero"))
    planted.graph.output.append(helper.make_tensor_value_info("nz", TensorProto.INT64, None))
    report = preflight(planted)
    assert not report.ok
    assert any("NonZero" in e for e in report.errors) and any("int64" in e for e in report.errors)
    # A float Range with computed bounds fails (the motion warp builds its grid from integer Ranges).
    float_range = onnx.load(str(export_dir / "decoder.fp32.onnx"))
    shape_out = float_range.graph.output[0].name
    float_range.graph.node.extend([
        helper.make_node("Shape", [shape_out], ["planted_shape"], start=-1),
        helper.make_node("Squeeze", ["planted_shape"], ["planted_w"]),
        helper.make_node("Cast", ["planted_w"], ["planted_wf"], to=TensorProto.FLOAT),
        helper.make_node("Constant", [], ["planted_zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
        helper.make_node("Constant", [], ["planted_one"], value=helper.make_tensor("o", TensorProto.FLOAT, [], [1.0])),
        helper.make_node("Range", ["planted_zero", "planted_wf", "planted_one"], ["planted_range"], name="planted_range"),
    ])
    float_range.graph.output.append(helper.make_tensor_value_info("planted_range", TensorProto.FLOAT, None))
    assert any("planted_range" in e and "Range" in e for e in preflight(float_range).errors)


def test_missing_and_corrupt_checkpoint(tmp_path, tiny_checkpoint):
    one_line_error(invoke(export_main, ["--checkpoint", tmp_path / "nope", "-o", tmp_path / "o"]), "checkpoint not found")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    one_line_error(invoke(export_main, ["--checkpoint", corrupt, "-o", tmp_path / "o"]), "sha256")


def test_output_folder_not_writable(tmp_path, tiny_checkpoint, export_fast):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    one_line_error(invoke(export_main, ["--checkpoint", tiny_checkpoint, "-o", blocker / "out", *export_fast]),
                   "is a file, not a folder")


def test_interrupted_export_leaves_nothing(tmp_path, tiny_checkpoint, monkeypatch, export_fast):
    import reftok_deploy.export.job as pipeline

    real = pipeline.export_graph
    calls = []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "export_graph", interrupt_second)
    out = tmp_path / "out"
    result = invoke(export_main, ["--checkpoint", tiny_checkpoint, "-o", out, *export_fast])
    assert result.exit_code == 130
    assert not out.exists()  # the folder the export created is gone with it


def test_parity_refuses_other_model_version_and_modified_files(export_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(export_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"]["model_version"] = 0
    (copy / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(invoke(parity_main, [copy, "--size", "64"]), "model version 0")

    # An ONNX from another model version whose manifest entry was updated to match it.
    from reftok_deploy.base.files import sha256_file

    shutil.rmtree(copy)
    shutil.copytree(export_dir, copy)
    model = onnx.load(str(copy / "encoder.fp32.onnx"))
    for prop in model.metadata_props:
        if prop.key == "reftok.model_version":
            prop.value = "7"
    onnx.save(model, str(copy / "encoder.fp32.onnx"))
    one_line_error(invoke(parity_main, [copy, "--size", "64"]), "does not match its sha256")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["artifacts"]["encoder.fp32"]["sha256"] = sha256_file(copy / "encoder.fp32.onnx")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(invoke(parity_main, [copy, "--size", "64"]), "model version 7")


def test_parity_bad_backend_and_missing_precision(export_dir, tmp_path):
    one_line_error(invoke(parity_main, [export_dir, "--b", "onnxruntime:fp8"]), "unknown backend")
    one_line_error(invoke(parity_main, [export_dir, "--b", "onnxruntime:int8"]), "no int8")
    one_line_error(invoke(parity_main, [tmp_path]), "no manifest.json")


def test_no_tensorrt_here_is_one_line_with_the_finish_command(export_dir):
    from reftok_deploy.base.engines import gpu_name, tensorrt_version

    if tensorrt_version() and gpu_name():
        pytest.skip("TensorRT and a GPU are present")
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert manifest["tensorrt"]["status"] == "not built"
    assert "reftok-export --fp16" in manifest["tensorrt"]["finish_command"]


def test_profile_parsing():
    from reftok_deploy.base.errors import ReftokError
    from reftok_deploy.base.engines import ShapeProfile

    assert ShapeProfile.parse("1x64x64:2x256x256:4x512x512").max == (4, 512, 512)
    for bad in ("1x64x64", "1x64x63:1x64x64:1x64x64", "2x64x64:1x64x64:4x64x64", "axbxc:1:2"):
        with pytest.raises(ReftokError):
            ShapeProfile.parse(bad)


def test_engine_cache_key_detects_stale_engines(tmp_path):
    from reftok_deploy.base.engines import ShapeProfile, check_engine, engine_key, engine_path

    key = engine_key("abc", "fp16", ShapeProfile(), "10.9.0", "H100 sm90")
    path = engine_path(tmp_path, "encoder", key)
    assert check_engine(path, key) == "no engine built yet"
    path.write_bytes(b"engine")
    path.with_suffix(".json").write_text(json.dumps(key))
    assert check_engine(path, key) is None
    assert "gpu" in check_engine(path, dict(key, gpu="Orin sm87"))
    assert "onnx_sha256" in check_engine(path, dict(key, onnx_sha256="def"))
    assert engine_path(tmp_path, "encoder", dict(key, tensorrt="11.0")) != path


@pytest.mark.gpu
def test_tensorrt_fp16_parity_on_target(tmp_path, shipped_checkpoint, export_fast, video_file):
    from reftok_deploy.base.engines import gpu_name, tensorrt_version

    if not (tensorrt_version() and gpu_name()):
        pytest.skip("needs TensorRT and a CUDA GPU")
    out = tmp_path / "trt"
    result = invoke(export_main, ["--checkpoint", shipped_checkpoint, "-o", out, "--fp16", "--tensorrt", "require",
                                  "--profile", "1x64x64:1x64x64:2x128x128", *export_fast])
    assert result.exit_code == 0, result.output
    validation_passed(out, "fp16", video_file)
    parity = invoke(parity_main, [out, "--b", "tensorrt:fp16", "--size", "64", "--json"])
    report = json.loads(parity.stdout)
    assert report["token_agreement"] >= 0.98, report
    again = invoke(export_main, ["--checkpoint", shipped_checkpoint, "-o", out, "--fp16", "--tensorrt", "require",
                                 "--profile", "1x64x64:1x64x64:2x128x128", *export_fast])
    assert "reusing cached engine" in again.stderr


@pytest.mark.parametrize("dynamo", [True, False])
def test_motion_compensated_decoder_exports_and_matches_pytorch(tiny_model, exported, dynamo):
    import onnxruntime as ort
    import torch

    from reftok_deploy.export.precision import to_mixed_fp16
    from reftok_deploy.base.graph_regions import sampling_head_convs

    torch.manual_seed(3)
    reference, frames = torch.rand(1, 3, 48, 64) * 2 - 1, torch.rand(1, 3, 8, 48, 64) * 2 - 1
    with torch.no_grad():
        tokens = tiny_model.encode(reference, frames)
        want = tiny_model.decode(reference, tokens).numpy()
    path = exported("dynamo" if dynamo else "torchscript")["decoder"]  # export_graph, once per session
    model = onnx.load(str(path))
    assert any(n.op_type == "GridSample" for n in model.graph.node) and len(sampling_head_convs(model)) == 1
    # no exporter debug records: they held this machine's paths and per-process function addresses,
    # so the same checkpoint exported twice differed (and so did its calibration-cache digest)
    assert not any(n.metadata_props or n.doc_string for n in model.graph.node)
    assert str(Path(__file__).resolve().parents[1]).encode() not in path.read_bytes()
    assert preflight(model).ok, preflight(model).errors
    feed = {"reference": reference.numpy(), "tokens": tokens.numpy()}
    got = ort.InferenceSession(str(path)).run(None, feed)[0]
    assert np.abs(got - want).max() < 1e-4
    mixed = to_mixed_fp16(model)
    del mixed.graph.value_info[:]  # stale after the precision rewrite (the export pipeline re-infers too)
    assert preflight(mixed).ok, preflight(mixed).errors
    kept = {n.op_type for n in mixed.graph.node if n.op_type in ("GridSample", "Range")}
    assert kept == {"GridSample", "Range"}
    # FP32 nodes in a row talk in FP32: no value goes FP32 -> FP16 -> FP32 (that rounded the sampling grid)
    casts = {n.output[0]: n for n in mixed.graph.node if n.op_type == "Cast"}
    to = {name: next(a.i for a in n.attribute if a.name == "to") for name, n in casts.items()}
    round_trips = [n.name for n in casts.values()
                   if to[n.output[0]] == onnx.TensorProto.FLOAT and to.get(n.input[0]) == onnx.TensorProto.FLOAT16]
    assert not round_trips, round_trips
    grid = next(n for n in mixed.graph.node if n.op_type == "GridSample").input[1]
    assert grid not in casts or to[grid] == onnx.TensorProto.FLOAT
    half = ort.InferenceSession(mixed.SerializeToString()).run(None, feed)[0]
    assert np.abs(half - want).max() < 0.05


def codes_for_every_id(graph: onnx.ModelProto, folder, name: str, openvino_hint: str | None = None) -> np.ndarray:
    """Run every id 0..999 through the part of an exported decoder that unpacks ids -> codes ``[1000, 4]``
    (cut out of the graph from ``tokens`` to the one Gather on the constant codebook table), with
    onnxruntime, or with OpenVINO at ``openvino_hint`` ("f32", "bf16")."""
    import onnxruntime as ort
    from onnx import numpy_helper

    tables = {i.name for i in graph.graph.initializer if list(i.dims) == [1000, 4]}
    tables |= {n.output[0] for n in graph.graph.node if n.op_type == "Constant" and n.attribute
               and list(numpy_helper.to_array(n.attribute[0].t).shape) == [1000, 4]}
    for node in graph.graph.node:  # a table a precision pass wrapped in a Cast (or Q/DQ) is still the table
        if node.op_type in ("Cast", "DequantizeLinear") and node.input[0] in tables:
            tables.add(node.output[0])
    lookups = [n for n in graph.graph.node if n.op_type == "Gather" and n.input[0] in tables]
    assert len(lookups) == 1, "the decoder unpacks ids with one Gather on the codebook table"
    del graph.graph.value_info[:]
    file, sub = folder / f"{name}.onnx", folder / f"{name}.codes.onnx"
    onnx.save(graph, str(file))
    onnx.utils.extract_model(str(file), str(sub), ["tokens"], [lookups[0].output[0]])
    ids = np.arange(1000, dtype=np.int32).reshape(1, 2, 20, 25)
    if openvino_hint is None:
        got = ort.InferenceSession(str(sub)).run(None, {"tokens": ids})[0]
    else:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(sub)), "CPU", {"INFERENCE_PRECISION_HINT": openvino_hint})
        got = np.asarray(compiled({"tokens": ids})[compiled.outputs[0]])
    assert got.dtype == np.float32, (name, got.dtype)
    return got.reshape(-1, 4)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_every_codebook_id_decodes_exactly_in_fp32_and_fp16_graphs(exported, tiny_model, exporter, tmp_path):
    """Ids become codes by a lookup in a constant table: exact in every precision of the graph."""
    from reftok_deploy.export.precision import to_mixed_fp16

    path = exported(exporter)["decoder"]
    fp32 = onnx.load(str(path))
    assert not [n for n in fp32.graph.node if n.op_type == "Floor"], "no float id arithmetic left"
    want = tiny_model.fsq.codebook.numpy()
    for name, graph in (("fp32", fp32), ("fp16", to_mixed_fp16(onnx.load(str(path))))):
        assert np.array_equal(codes_for_every_id(graph, tmp_path, name), want), name
    # the runtimes that pick their own precision: OpenVINO at f32 and, where the CPU has it, bf16 (openvino:bf16)
    if importlib.util.find_spec("openvino") is not None:
        from reftok_deploy.runtimes.openvino_runner import native_bf16

        for hint in ("f32", "bf16") if native_bf16() else ("f32",):
            assert np.array_equal(codes_for_every_id(fp32, tmp_path, f"fp32-{hint}", openvino_hint=hint), want), hint


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_the_cost_volume_matmuls_read_no_weights_and_stay_in_the_cost_volume_region(exported, exporter):
    """The encoder's only MatMuls are the correlation's (one per row offset: 7 at 1/4, 9 at 1/8). They multiply
    two activations, so graph_regions does not count them as learned layers: they must read no weight, and
    FP16/INT8 keep them in float with the rest of the cost volume."""
    from reftok_deploy.base.graph_regions import cost_volume_nodes

    model = onnx.load(str(exported(exporter)["encoder"]))
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 7 + 9, [n.name for n in matmuls]
    assert not [n.name for n in matmuls if constants & set(n.input)]
    assert {n.name for n in matmuls} <= set(cost_volume_nodes(model))
    decoder = onnx.load(str(exported(exporter)["decoder"]))
    assert not [n for n in decoder.graph.node if n.op_type in ("MatMul", "Gemm")]


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_input_reading_convs_are_the_convs_on_pixels_and_token_codes(exported, exporter):
    """The convs INT8 keeps in float: encoder: the reference's first conv, the motion features' first conv
    (frames and reference) and the encoder's first conv, on the frames and (its frames - reference part,
    once per clip) on the reference; decoder: the reference's first conv, the convs on the codes (trunk and
    motion head) and the one on the warped reference. Each pixel conv reads its input directly (6x6 or 12x12
    kernels, stride 2 or 4: the unshuffle is folded into the weights). Reached through data edges only: a
    Shape read of an input reaches no conv."""
    from reftok_deploy.base.graph_regions import input_reading_convs

    for graph, channels_in in (("encoder", [3, 3, 3, 3, 12]), ("decoder", [3, 12, 14, 110])):
        model = onnx.load(str(exported(exporter)[graph]))
        shapes = {i.name: list(i.dims) for i in model.graph.initializer}
        convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
        found = input_reading_convs(model)
        assert len(found) == len(channels_in) and len(convs) > 2 * len(found), (graph, found)
        first = [n.name for n in model.graph.node if n.op_type == "Conv"][0]
        assert first in found  # the reference encoder's first conv
        assert sorted(shapes[convs[c].input[1]][1] for c in found) == channels_in, found
