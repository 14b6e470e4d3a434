"""A Triton model repository from an export folder (export/triton_repo.py): layout, configs parsed with
tritonclient's protobuf and held to the graphs, the graphs run as Triton's backends would, refusals.

No Triton server runs here: the configs are checked against ``inference.ModelConfig`` and the ONNX graphs,
and the copied graphs run in onnxruntime (batch 2) and in OpenVINO the way its Triton backend prepares them.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.manifest import MANIFEST, open_export
from reftok_deploy.base.spec import GRAPH_NAMES
from reftok_deploy.export.triton_repo import MARKER, check_triton_repository, write_triton_repository
from tests.conftest import tree_listing

BACKENDS = ("onnxruntime", "openvino")
MAX_BATCH = 2
ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT32: "TYPE_INT32"}


@pytest.fixture(scope="module")
def export_folder(tmp_path_factory, tiny_checkpoint) -> Path:
    """FP32 + FP16 graphs of the tiny checkpoint (as cheap as the FP32-only tiny_export: ~4 s)."""
    from reftok_deploy.export.job import ExportOptions, run_export

    folder = tmp_path_factory.mktemp("triton-export") / "export"
    run_export(tiny_checkpoint, folder, ExportOptions(precisions=("fp32", "fp16"), dynamo=False, tensorrt="skip"))
    return folder


@pytest.fixture(scope="module")
def repo(tmp_path_factory, export_folder) -> Path:
    repo = tmp_path_factory.mktemp("triton") / "models"
    written = write_triton_repository(export_folder, repo, backends=BACKENDS, max_batch_size=MAX_BATCH,
                                      queue_delay_us=500)
    assert written == sorted(repo / name for name in expected_models())
    return repo


def expected_models() -> set[str]:
    return {f"reftok_{g}_{p}_{b}" for g in GRAPH_NAMES for p in ("fp32", "fp16") for b in BACKENDS}


def parse(path: Path):
    pytest.importorskip("tritonclient.grpc")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_repository_layout_and_readme(repo, export_folder):
    folders = {p.name for p in repo.iterdir() if p.is_dir()}
    assert folders == expected_models()
    for name in folders:
        files = sorted(str(p.relative_to(repo / name)) for p in (repo / name).rglob("*"))
        assert files == ["1", "1/model.onnx", "config.pbtxt"], files
        model_file = repo / name / "1" / "model.onnx"
        assert not model_file.is_symlink() and model_file.stat().st_nlink == 1  # a copy: the repository travels
        graph, precision = name.split("_")[1:3]
        assert model_file.read_bytes() == (export_folder / f"{graph}.{precision}.onnx").read_bytes()
    readme = (repo / "README.md").read_text()
    assert f"tritonserver --model-repository {repo.resolve()}" in readme
    assert "stateless" in readme and "implicit state" in readme and "tritonclient.http" in readme
    assert "reftok_encoder_fp32_onnxruntime" in readme
    assert json.loads((repo / MARKER).read_text())["format"] == "reftok-triton-repo"
    assert not list(export_folder.glob("*triton*")) and not list(repo.parent.glob(".models.*"))  # nothing left


def test_every_config_parses_and_matches_its_graph(repo):
    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    for folder in sorted(p for p in repo.iterdir() if p.is_dir()):
        config = parse(folder / "config.pbtxt")
        backend = folder.name.rsplit("_", 1)[1]
        assert config.name == folder.name
        if backend == "onnxruntime":
            assert config.platform == "onnxruntime_onnx" and not config.backend
            assert [g.kind for g in config.instance_group] == [pb2.ModelInstanceGroup.KIND_GPU]
        else:
            assert config.backend == "openvino" and not config.platform
            assert [g.kind for g in config.instance_group] == [pb2.ModelInstanceGroup.KIND_CPU]
            assert config.parameters["ENABLE_BATCH_PADDING"].string_value == "YES"
        assert config.default_model_filename == "model.onnx"
        assert config.max_batch_size == MAX_BATCH and config.dynamic_batching.max_queue_delay_microseconds == 500
        graph = onnx.load(str(folder / "1" / "model.onnx"), load_external_data=False).graph
        for declared, values in ((config.input, graph.input), (config.output, graph.output)):
            actual = {v.name: v.type.tensor_type for v in values}
            assert [t.name for t in declared] == list(actual)
            for tensor in declared:
                onnx_type = actual[tensor.name]
                assert pb2.DataType.Name(tensor.data_type) == ONNX_TO_TRITON[onnx_type.elem_type]
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in onnx_type.shape.dim]
                assert dims[0] == -1 and len(tensor.dims) == len(dims) - 1  # batch dim variable, left out
                assert all(want in (-1, have) for have, want in zip(tensor.dims, dims[1:])), (tensor, dims)
        if folder.name == "reftok_encoder_fp32_onnxruntime":
            assert [list(t.dims) for t in config.input] == [[3, -1, -1], [3, 8, -1, -1]]
            assert [list(t.dims) for t in config.output] == [[2, -1, -1]]
    assert check_triton_repository(repo) == []


def test_onnxruntime_runs_a_batch_of_two_from_the_repository(repo):
    """What Triton's ONNX Runtime backend does with model.onnx: one session, a dynamic batch of 2."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    reference = rng.uniform(-1, 1, (2, 3, 32, 48)).astype(np.float32)
    frames = rng.uniform(-1, 1, (2, 3, 8, 32, 48)).astype(np.float32)
    session = ort.InferenceSession(str(repo / "reftok_encoder_fp32_onnxruntime/1/model.onnx"),
                                   providers=["CPUExecutionProvider"])
    (tokens,) = session.run(["tokens"], {"reference": reference, "frames": frames})
    assert tokens.shape == (2, 2, 4, 6) and tokens.dtype == np.int32
    session = ort.InferenceSession(str(repo / "reftok_decoder_fp32_onnxruntime/1/model.onnx"),
                                   providers=["CPUExecutionProvider"])
    (recon,) = session.run(["reconstruction"], {"reference": reference, "tokens": tokens})
    assert recon.shape == (2, 3, 8, 32, 48) and recon.dtype == np.float32 and np.isfinite(recon).all()


def test_openvino_reads_the_onnx_as_its_triton_backend_does(repo):
    """The OpenVINO backend's steps: read_model(1/model.onnx), layout "N..." on the inputs, set_batch to
    max_batch_size, compile on the CPU; a padded batch of max_batch_size runs."""
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    model = core.read_model(str(repo / "reftok_encoder_fp32_openvino/1/model.onnx"))
    ppp = ov.preprocess.PrePostProcessor(model)
    for name in ("reference", "frames"):
        ppp.input(name).tensor().set_element_type(ov.Type.f32).set_layout(ov.Layout("N..."))
    model = ppp.build()
    ov.set_batch(model, MAX_BATCH)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    feed = {"reference": np.zeros((MAX_BATCH, 3, 32, 32), np.float32),
            "frames": np.zeros((MAX_BATCH, 3, 8, 32, 32), np.float32)}
    (tokens,) = compiled(feed).values()
    assert tokens.shape == (MAX_BATCH, 2, 4, 4)


def test_a_tampered_config_is_caught(repo, tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(repo, copy)
    dims = copy / "reftok_encoder_fp32_onnxruntime" / "config.pbtxt"
    dims.write_text(dims.read_text().replace("dims: [ 3, -1, -1 ]", "dims: [ 4, -1, -1 ]", 1))
    renamed = copy / "reftok_decoder_fp16_openvino" / "config.pbtxt"
    renamed.write_text(renamed.read_text().replace('name: "reconstruction"', 'name: "frames_out"'))
    broken = copy / "reftok_decoder_fp32_openvino" / "config.pbtxt"
    broken.write_text(broken.read_text().replace("dynamic_batching {", "dynamic_batching {{"))
    problems = check_triton_repository(copy)
    assert any(p.startswith("reftok_encoder_fp32_onnxruntime: input reference has dims [4, -1, -1]") for p in problems)
    assert any(p.startswith("reftok_decoder_fp16_openvino: outputs ['frames_out']") for p in problems)
    assert any(p.startswith("reftok_decoder_fp32_openvino: config.pbtxt does not parse") for p in problems)
    assert len({p.split(":")[0] for p in problems}) == 3, problems  # the untouched models pass


def test_check_needs_tritonclient_and_writing_does_not(repo, export_folder, tmp_path, monkeypatch):
    for module in ("tritonclient.grpc", "tritonclient.grpc.model_config_pb2"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ReftokError, match=r"pip install 'tritonclient\[grpc\]'"):
        check_triton_repository(repo)
    written = write_triton_repository(export_folder, tmp_path / "models", backends=("onnxruntime",),
                                      precisions=("fp32",))
    assert [p.name for p in written] == ["reftok_decoder_fp32_onnxruntime", "reftok_encoder_fp32_onnxruntime"]
    assert check_triton_repository(tmp_path / "models", require_tritonclient=False) == []


def test_refusals_leave_folders_as_they_were(export_folder, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    before = tree_listing(tmp_path)
    for target, fragment in ((foreign, "non-empty folder not written by reftok"),
                             (export_folder / "triton", "inside the export folder"),
                             (export_folder.parent, "holds the export folder")):
        with pytest.raises(ReftokError, match=fragment) as caught:
            write_triton_repository(export_folder, target)
        assert "\n" not in str(caught.value)
    assert tree_listing(tmp_path) == before and not (export_folder / "triton").exists()
    with pytest.raises(ReftokError, match="unknown Triton backend 'triton'"):
        write_triton_repository(export_folder, tmp_path / "x", backends=("triton",))


def test_a_repository_of_ours_is_rewritten_whole(export_folder, tmp_path):
    repo = tmp_path / "models"
    write_triton_repository(export_folder, repo, backends=("openvino",), precisions=("fp16",))
    write_triton_repository(export_folder, repo, backends=("onnxruntime",), precisions=("fp32",), max_batch_size=8)
    assert {p.name for p in repo.iterdir() if p.is_dir()} == {"reftok_encoder_fp32_onnxruntime",
                                                               "reftok_decoder_fp32_onnxruntime"}
    assert "max_batch_size: 8\n" in (repo / "reftok_encoder_fp32_onnxruntime/config.pbtxt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # no staging or old copy left


def test_tensorrt_models_only_where_the_manifest_lists_an_engine(export_folder, tmp_path):
    """No engine can be built here: a dummy file listed in the manifest stands in for encoder.fp32's."""
    from reftok_deploy.base.files import sha256_file

    folder = tmp_path / "export"
    shutil.copytree(export_folder, folder)
    engine = folder / "encoder.fp32.0123456789abcdef.engine"
    engine.write_bytes(b"not really a TensorRT plan")
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["tensorrt"] = {"status": "built", "engines": {"encoder.fp32": {
        "file": engine.name, "sha256": sha256_file(engine),
        "key": {"precision": "fp32", "profile": {"min": [1, 64, 64], "opt": [1, 256, 256], "max": [3, 1088, 1920]},
                "tensorrt": "10.13.0", "gpu": "NVIDIA H200 sm90"}}}}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    written = write_triton_repository(open_export(folder), tmp_path / "models", max_batch_size=4)
    trt = tmp_path / "models" / "reftok_encoder_fp32_tensorrt"
    assert trt in written and not (tmp_path / "models" / "reftok_decoder_fp32_tensorrt").exists()
    assert (trt / "1" / "model.plan").read_bytes() == engine.read_bytes()
    text = (trt / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in text and "max_batch_size: 3\n" in text  # capped to the profile
    assert "kind: KIND_GPU" in text and 'default_model_filename: "model.plan"' in text
    assert "10.13.0" in (tmp_path / "models" / "README.md").read_text()
    assert check_triton_repository(tmp_path / "models") == []
    engine.write_bytes(b"changed")
    with pytest.raises(ReftokError, match="does not match its sha256"):
        write_triton_repository(folder, tmp_path / "models2")


def test_reftok_export_writes_the_repository_or_refuses_before_any_work(tmp_path, tiny_checkpoint, export_fast):
    from tests.conftest import invoke, one_error_line

    from reftok_deploy.cli.export import main as export_main

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    refused = invoke(export_main, ["--checkpoint", tiny_checkpoint, "-o", tmp_path / "exp0", "--triton", busy,
                                   *export_fast])
    assert "not written by reftok" in one_error_line(refused)
    assert not (tmp_path / "exp0").exists() and (busy / "notes.txt").read_text() == "mine"
    result = invoke(export_main, ["--checkpoint", tiny_checkpoint, "-o", tmp_path / "exp", "--triton", tmp_path / "repo",
                                  *export_fast])
    assert result.exit_code == 0, result.output
    assert check_triton_repository(tmp_path / "repo") == []
    assert sorted(p.name for p in (tmp_path / "repo").iterdir() if p.is_dir()) == [
        "reftok_decoder_fp32_onnxruntime", "reftok_decoder_fp32_openvino", "reftok_encoder_fp32_onnxruntime",
        "reftok_encoder_fp32_openvino"]
