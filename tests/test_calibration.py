"""INT8: calibration feeds, Q/DQ structure for TensorRT, INT8 parity, and bad calibration input."""

import importlib.util
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from reftok_deploy.calibration.feeds import calibration_feeds
from reftok_deploy.cli.export import main as export_main
from reftok_deploy.cli.parity import main as parity_main
from reftok_deploy.base.errors import ReftokError
from tests.conftest import export_validation, invoke, one_line_error, perturbed_copy, validation_passed

# calib_dir (6 GOPs: a video and a still), int8_export / int8_export_run (the shipped checkpoint's FP32 + INT8
# export, once per session) come from conftest.py.


def test_feeds_are_seeded_real_gops(calib_dir):
    feeds = calibration_feeds([calib_dir], 5, size=64, progress=False)
    again = calibration_feeds([calib_dir], 5, size=64, progress=False)
    assert len(feeds) == 5
    for a, b in zip(feeds, again):
        assert a["reference"].shape == (1, 3, 64, 64) and a["frames"].shape == (1, 3, 8, 64, 64)
        assert np.array_equal(a["frames"], b["frames"])
        assert -1 <= a["frames"].min() and a["frames"].max() <= 1 and a["frames"].std() > 0.05
    other = calibration_feeds([calib_dir], 5, size=64, seed=1, progress=False)
    assert any(not np.array_equal(a["frames"], b["frames"]) for a, b in zip(feeds, other))


def test_feed_errors(tmp_path, calib_dir):
    with pytest.raises(ReftokError, match="no readable video or image"):
        calibration_feeds([tmp_path], 1, size=64)
    with pytest.raises(ReftokError, match="not found"):
        calibration_feeds([tmp_path / "missing"], 1, size=64)
    (tmp_path / "bad.avi").write_bytes(b"not a video at all" * 10)
    with pytest.raises(ReftokError, match="cannot open video|cannot decode"):
        calibration_feeds([tmp_path / "bad.avi"], 1, size=64)
    # 2 GOPs in the video + 4 camera paths over the still.
    with pytest.raises(ReftokError, match="larger than the 6 GOPs"):
        calibration_feeds([calib_dir], 7, size=64, progress=False)


def test_qdq_graph_follows_tensorrt_rules(int8_export):
    from reftok_deploy.calibration.qdq import float_nodes

    manifest = json.loads((int8_export / "manifest.json").read_text())
    assert manifest["preflight"]["encoder.int8"]["ok"] and manifest["preflight"]["decoder.int8"]["ok"]
    cal = manifest["calibration"]
    assert cal["method"] == "percentile" and cal["feeds"] == 6
    for graph in ("encoder", "decoder"):
        assert (int8_export / cal["caches"][graph]["file"]).is_file()
        model = onnx.load(str(int8_export / f"{graph}.int8.onnx"))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        producer = {o: n for n in model.graph.node for o in n.output}
        kept_float = set(float_nodes(onnx.load(str(int8_export / f"{graph}.fp32.onnx"))))
        convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in kept_float]
        assert convs
        for conv in (n for n in model.graph.node if n.op_type == "Conv" and n.name in kept_float):
            assert getattr(producer.get(conv.input[0]), "op_type", None) != "DequantizeLinear", conv.name
        for conv in convs:
            act, weight = producer[conv.input[0]], producer[conv.input[1]]
            assert act.op_type == "DequantizeLinear" and weight.op_type == "DequantizeLinear"
            scale, zero = inits[weight.input[1]], inits[weight.input[2]]
            assert scale.size == inits[weight.input[0]].shape[0]  # per output channel
            assert zero.dtype == np.int8 and not zero.any()  # symmetric int8
            assert inits[act.input[2]].dtype == np.int8 and not inits[act.input[2]].any()
        for node in model.graph.node:  # token arithmetic and the cost volume's products read float tensors
            if node.op_type in ("Tanh", "Round", "ReduceSum", "Floor", "MatMul", "Exp"):
                assert all(producer[i].op_type != "DequantizeLinear" for i in node.input if i in producer), node.name


def test_openvino_reads_skip_connections_of_float_convs_unquantised(int8_export):
    """The INT8 file keeps TensorRT's placement (the skip connection's Add reads a Q/DQ pair); OpenVINO,
    which misread that pair, gets it removed at load time and nothing else."""
    from reftok_deploy.base.graph_regions import PART_JOINING_OPS
    from reftok_deploy.calibration.qdq import float_nodes
    from reftok_deploy.runtimes.openvino_graphs import ACTIVATIONS, float_skip_connections

    def skip_inputs(model: onnx.ModelProto, kept_float: set[str]) -> list[str]:
        """Producers of the inputs of quantised Adds (reading at least one Q/DQ pair) that come from a float conv
        (through its activation, maybe a Q/DQ); a float Add (the decoder's first conv on the token codes plus
        the reference's part) has nothing to misread."""
        producer = {o: n for n in model.graph.node for o in n.output}
        def float_part(join):
            for name in join.input:
                node = producer.get(name)
                if node is not None and node.op_type == "Conv" and node.name in kept_float:
                    return node
                if node is not None and node.op_type in PART_JOINING_OPS and float_part(node) is not None:
                    return float_part(node)
            return None

        found = []
        for add in (n for n in model.graph.node if n.op_type == "Add"):
            if not any(getattr(producer.get(name), "op_type", None) == "DequantizeLinear" for name in add.input):
                continue
            for name in add.input:
                node = producer.get(name)
                if node is not None and node.op_type == "DequantizeLinear":
                    node = producer.get(producer[node.input[0]].input[0])
                while node is not None and node.op_type in ACTIVATIONS:
                    node = producer.get(node.input[0])
                if node is not None and node.op_type in PART_JOINING_OPS and node.name in kept_float:
                    node = float_part(node)  # a conv computed in parts: one of its float parts
                if node is not None and node.op_type == "Conv" and node.name in kept_float:
                    found.append(producer[name].op_type)
        return found

    for graph in ("encoder", "decoder"):
        on_disk = onnx.load(str(int8_export / f"{graph}.int8.onnx"))
        kept_float = set(float_nodes(onnx.load(str(int8_export / f"{graph}.fp32.onnx"))))
        before = skip_inputs(on_disk, kept_float)
        assert all(op == "DequantizeLinear" for op in before), (graph, before)
        rewritten, removed = float_skip_connections(onnx.load(str(int8_export / f"{graph}.int8.onnx")))
        after = skip_inputs(rewritten, kept_float)
        assert removed == len(before) and len(after) == len(before), (graph, removed, before, after)
        assert "DequantizeLinear" not in after, (graph, after)
        assert len(rewritten.graph.node) == len(on_disk.graph.node) - 2 * removed
        onnx.checker.check_model(rewritten)
        if graph == "decoder":
            assert removed >= 1  # a residual block starts at the conv on the token codes


def test_openvino_int8_computes_its_float_ops_in_bf16_only_where_native(int8_export, shipped_checkpoint, monkeypatch):
    tiny_checkpoint = shipped_checkpoint  # the checkpoint the session's INT8 export was made from
    pytest.importorskip("openvino")
    import reftok_deploy.runtimes.openvino_runner as openvino_runner
    from reftok_deploy.base.manifest import open_export
    from reftok_deploy.runtimes.factory import backend_label, make_runner

    export = open_export(int8_export)
    for native, hint, name in ((True, "bf16", "openvino-int8-bf16"), (False, "f32", "openvino-int8")):
        monkeypatch.setattr(openvino_runner, "native_bf16", lambda device="CPU", native=native: native)
        runner = make_runner("openvino:int8", export, tiny_checkpoint)
        assert (runner.hint, runner.name) == (hint, name)
        # .rtok headers and auto's cache key tell the two apart
        assert backend_label("openvino:int8") == ("openvino:int8+bf16" if native else "openvino:int8")
        assert runner.files == {g: export.artifact(g, "int8") for g in ("encoder", "decoder")}
        assert make_runner("openvino:fp32", export, tiny_checkpoint).hint == "f32"  # the graph holds its precision
    # loading rewrites the INT8 graphs (and only those) for OpenVINO
    import reftok_deploy.runtimes.openvino_graphs as openvino_graphs

    rewritten = []
    original = openvino_graphs.float_skip_connections
    monkeypatch.setattr(openvino_graphs, "float_skip_connections", lambda m: rewritten.append(m.graph.name) or original(m))
    with make_runner("openvino:int8", export, tiny_checkpoint) as runner, \
            make_runner("openvino:fp32", export, tiny_checkpoint) as fp32_runner:
        runner.load()
        fp32_runner.load()
    assert len(rewritten) == 2


def test_onnxruntime_runs_every_int8_conv_as_an_int8_kernel(int8_export, tmp_path):
    """Tensors read twice (residual inputs, reference features) used to leave their convs in float."""
    from reftok_deploy.base.graph_regions import conv_parts, input_reading_convs, sampling_head_convs
    from reftok_deploy.runtimes.onnxruntime_runner import OnnxRuntimeRunner

    for graph in ("encoder", "decoder"):
        runner = OnnxRuntimeRunner({graph: int8_export / f"{graph}.int8.onnx"}, threads=1)
        optimized = tmp_path / f"{graph}.optimized.onnx"
        runner.optimized_model_path = optimized
        runner.load()
        ops = [n.op_type for n in onnx.load(str(optimized)).graph.node]
        float_convs = [n.name for n in onnx.load(str(optimized)).graph.node if n.op_type in ("Conv", "FusedConv")]
        # By design only these stay float: the convs on the pixels and the token codes, the motion head (it
        # feeds the FP32 sampling grid) and the last conv of each motion-feature branch (its output is
        # L2-normalised for the cost volume, not quantised).
        fp32 = onnx.load(str(int8_export / f"{graph}.fp32.onnx"))
        by_design = set(sampling_head_convs(fp32)) | set(input_reading_convs(fp32))
        by_design |= set(conv_parts(fp32, input_reading_convs(fp32))[1])  # their other parts (conv_over_groups)
        # (ONNX Runtime may rename a conv it fuses with the following Mul, so convs are checked by count.)
        assert "QLinearConv" in ops, graph
        if graph == "encoder":
            # The 4 beyond design are motion-feature convs (fused names keep the module path).
            assert len(float_convs) == 4 + len(by_design), (float_convs, sorted(by_design))
            in_motion = sum("/motion_features" in c for c in float_convs)  # module paths: motion_features, _1
            assert in_motion == 4 + sum("/motion_features" in c for c in by_design), float_convs
        else:
            assert len(float_convs) == len(by_design), (graph, float_convs)


def test_the_int8_export_passed_its_validation_and_parity_agrees(int8_export, video_file):
    report = validation_passed(int8_export, "int8", video_file)
    assert report["candidate"] == "onnxruntime-int8" and 0 < report["token_agreement"] <= 1
    result = invoke(parity_main, [int8_export, "--a", "onnxruntime:fp32", "--b", "onnxruntime:int8", "--video",
                                  video_file, "--size", "64", "--max-gops", "2", "--json"])
    assert result.exit_code == 0, result.output
    parity = json.loads(result.stdout)
    assert parity["ok"] and parity["baseline"] == "onnxruntime-fp32" and parity["candidate"] == "onnxruntime-int8"
    assert parity["tolerance"]["max_psnr_delta_db"] == 0.5


def test_the_int8_tolerance_trips_on_a_perturbed_weight(int8_export, shipped_checkpoint, video_file, tmp_path):
    """The validation reftok-export ran passes on the INT8 export as written and fails once the per-channel weight
    scales of the encoder's last conv are 20 % too large (latents 20 % too far out, as a wrong calibration would
    leave them): the INT8 tolerance (end-to-end PSNR within 0.5 dB) is tight enough to catch it."""
    assert export_validation(int8_export, "int8", video_file, shipped_checkpoint)["ok"]
    planted = perturbed_copy(int8_export, tmp_path / "planted", "encoder.int8.onnx",
                             "model.encoder.to_latent.weight_scale", lambda scale: scale * 1.2)
    verdict = export_validation(planted, "int8", video_file, shipped_checkpoint)
    assert not verdict["ok"] and not verdict["reports"]["int8"]["ok"], verdict
    assert any("end-to-end PSNR differs" in f for f in verdict["failures"]), verdict["failures"]


def test_bad_calibration_input_leaves_no_files(tmp_path, tiny_checkpoint, calib_dir, export_fast):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    fast = [*export_fast, "--calib-size", "4"]
    one_line_error(invoke(export_main, ["--checkpoint", tiny_checkpoint, "-o", out, "--int8", *fast]), "--calib-data")
    one_line_error(invoke(export_main, ["--checkpoint", tiny_checkpoint, "-o", out, "--int8", "--calib-data", empty,
                                        *fast]), "no readable video or image")
    one_line_error(invoke(export_main, ["--checkpoint", tiny_checkpoint, "-o", out, "--int8", "--calib-data",
                                        tmp_path / "nope", *fast]), "not found")
    one_line_error(invoke(export_main, ["--checkpoint", tiny_checkpoint, "-o", out, "--fp16", "stray.avi", *fast]),
                   "unexpected extra argument (stray.avi)")
    # a word that does not follow --calib-data's values is not calibration data
    one_line_error(invoke(export_main, ["--checkpoint", tiny_checkpoint, "--int8", "--calib-data", calib_dir, "-o",
                                        out, "stray.avi", *fast]), "unexpected extra argument (stray.avi)")
    assert not out.exists() or list(out.iterdir()) == []


def test_corrupt_cache_is_refused_cleanly(tmp_path, int8_export, shipped_checkpoint, calib_dir, export_fast):
    out = tmp_path / "out"
    shutil.copytree(int8_export, out)
    manifest = json.loads((out / "manifest.json").read_text())
    cache = out / manifest["calibration"]["caches"]["encoder"]["file"]
    cache.write_text("{ truncated")
    before = sorted(p.name for p in out.iterdir())
    # the command that made the export again: it reads the calibration cache, and finds it corrupt
    one_line_error(invoke(export_main, ["--checkpoint", shipped_checkpoint, "-o", out, "--int8", "--calib-data",
                                        calib_dir / "a.avi", calib_dir / "still.png", "--calib-size", "32",
                                        *export_fast]), "is corrupt")
    assert sorted(p.name for p in out.iterdir()) == before


def test_calibration_methods_give_different_ranges(tmp_path, int8_export, calib_dir, monkeypatch):
    """onnxruntime's quantize_static alone made "entropy" byte-identical to "minmax" (one candidate threshold).

    With a 512-bin histogram instead of TensorRT's 2048: onnxruntime's threshold search is quadratic
    in the bins (195 s of this suite's time at 2048); the histogram sizes still have to reach it."""
    import reftok_deploy.calibration.qdq as qdq
    from reftok_deploy.calibration.qdq import quantize_qdq

    monkeypatch.setattr(qdq, "ENTROPY_BINS", 512)

    fp32 = onnx.load(str(int8_export / "encoder.fp32.onnx"))
    feeds = calibration_feeds([calib_dir], 3, size=64, progress=False)

    def activation_scales(method: str) -> list[float]:
        model = quantize_qdq(fp32, feeds, method, tmp_path / f"{method}.json")
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        return [float(inits[n.input[1]]) for n in model.graph.node
                if n.op_type == "QuantizeLinear" and inits[n.input[1]].size == 1 and n.input[0] not in inits]

    minmax, entropy = activation_scales("minmax"), activation_scales("entropy")
    assert len(minmax) == len(entropy) and minmax != entropy
    assert sum(e < m - 1e-9 for e, m in zip(entropy, minmax)) > len(minmax) // 4  # entropy clips ranges


def test_calibration_caches_get_the_mode_of_every_other_artefact(int8_export):
    """ONNX Runtime writes its cache with mkstemp (0600); the export's files all follow the umask."""
    import os
    import stat

    umask = os.umask(0o022)
    os.umask(umask)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in int8_export.iterdir() if p.is_file()}
    assert len([n for n in modes if n.endswith(".calib.json")]) == 2, modes
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_int8_as_the_readme_shows_it_then_fp16_into_the_same_folder_keeps_all_three(tmp_path, int8_export_run,
                                                                                    shipped_checkpoint, export_fast,
                                                                                    video_file):
    from reftok_deploy.base.manifest import open_export

    made, first = int8_export_run
    # several paths after one --calib-data, and more GOPs asked for than the data holds (2 + 4): clamped, one warning
    warnings = [line for line in first.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "--calib-size 32 is larger than the 6 GOPs" in warnings[0], first.stderr
    manifest = json.loads((made / "manifest.json").read_text())
    assert manifest["precisions"] == ["fp32", "int8"] and manifest["calibration"]["feeds"] == 6
    assert "limit -0.5 dB" in first.stdout and "mean abs" in first.stdout  # says what was checked
    out = shutil.copytree(made, tmp_path / "export")
    second = invoke(export_main, ["--checkpoint", shipped_checkpoint, "--out", out, "--fp16", *export_fast])  # old spelling
    assert second.exit_code == 0, second.output
    assert "kept the int8 artefacts" in second.stderr
    export = open_export(out)  # every listed file hashed against the merged manifest
    assert export.precisions == ["fp32", "fp16", "int8"]
    assert set(export.manifest["validation"]["reports"]) == {"fp32", "fp16", "int8"}
    assert export.manifest["calibration"]["feeds"] == 6
    for precision in ("fp16", "int8"):
        validation_passed(out, precision, video_file)
    for precision in export.precisions:
        result = invoke(parity_main, [out, "--b", f"onnxruntime:{precision}", "--video", video_file, "--size", "64",
                                      "--max-gops", "2", "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["candidate"] == f"onnxruntime-{precision}" and report["ok"], report
    # another checkpoint into the same folder: nothing stale is kept
    from reftok_deploy.model.checkpoint import save_checkpoint
    from reftok_deploy.model.reftok import PRESETS, RefTok

    other = save_checkpoint(RefTok(PRESETS["tiny"]).eval(), tmp_path / "other")
    third = invoke(export_main, ["--checkpoint", other, "-o", out, *export_fast])
    assert third.exit_code == 0, third.output
    assert open_export(out).precisions == ["fp32"]


def test_every_codebook_id_decodes_exactly_in_the_int8_graph(int8_export, tiny_model, tmp_path):
    from tests.test_export import codes_for_every_id

    graph = onnx.load(str(int8_export / "decoder.int8.onnx"))
    want = tiny_model.fsq.codebook.numpy()
    assert np.array_equal(codes_for_every_id(graph, tmp_path, "int8"), want)
    if importlib.util.find_spec("openvino") is not None:  # at the precision openvino:int8 gives its float ops here
        from reftok_deploy.runtimes.openvino_runner import int8_float_hint

        hint = int8_float_hint()
        assert np.array_equal(codes_for_every_id(graph, tmp_path, f"int8-{hint}", openvino_hint=hint), want), hint
