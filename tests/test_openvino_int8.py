"""openvino:int8 on CPUs where OpenVINO's int8 convs go wrong (issue 30): the load-time self-test against exact
integer arithmetic, the rewrites it chooses, and openvino:int8 through reftok-parity (passing, or refused with
one line where the self-test finds no rewrite that helps).

Measured on an AMD EPYC (Zen 4, AVX512-VNNI, no AMX) with OpenVINO 2026.4: the self-test says "rewrite"; the
session's INT8 export (shipped checkpoint, 64x64 clip) misses parity as exported (-0.9 dB) and passes rewritten.
"""

import numpy as np
import onnx
import pytest

from reftok_deploy.cli.parity import main as parity_main
from tests.conftest import invoke, one_error_line

GRAPHS = ("encoder", "decoder")


def onnxruntime_outputs(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})[0]


def real_feeds(export, video_file, gops: int = 2) -> list[dict]:
    from reftok_deploy.base.video import read_video
    from reftok_deploy.deploy.parity_check import gop_feeds

    clips = {"clip": read_video(video_file, size=64)}
    return [feed for _, feed in gop_feeds(clips, export.geometry.block_frames, gops)]


def test_rewrites_and_probes_mean_what_onnxruntime_computes(int8_export, video_file):
    """No OpenVINO needed: the probes' exact answers are onnxruntime's; quantising before a Concat changes no
    number onnxruntime computes on the real graphs; dropping the pairs no int8 op reads keeps every int8 conv."""
    from reftok_deploy.base.manifest import open_export
    from reftok_deploy.runtimes.openvino_graphs import (PROBE_KINDS, float_reads_of_float_tensors, int8_conv_probe,
                                                        quantise_concat_inputs)
    from reftok_deploy.runtimes.openvino_runner import Int8Check

    for kind in PROBE_KINDS:
        model, feed, exact, unit = int8_conv_probe(kind)
        for rewrite in (False, True):
            if rewrite:
                model, _ = float_reads_of_float_tensors(quantise_concat_inputs(model)[0])
            error = np.abs(onnxruntime_outputs(model, feed) - exact) / unit[None, :, None, None]
            assert error.max() <= Int8Check.ALLOWED, (kind, rewrite, error.max())

    export = open_export(int8_export)
    feed = real_feeds(export, video_file, gops=1)[0]
    tokens = onnxruntime_outputs(onnx.load(str(int8_export / "encoder.int8.onnx")), feed)
    for graph in GRAPHS:
        original = onnx.load(str(int8_export / f"{graph}.int8.onnx"))
        inputs = feed if graph == "encoder" else {"reference": feed["reference"], "tokens": tokens}
        rewritten, concats = quantise_concat_inputs(onnx.load(str(int8_export / f"{graph}.int8.onnx")))
        # The encoder's convs on concatenated features; the decoder's convs read the reference's features per clip
        # through a separate conv (conv_over_groups), so none of its convs reads a quantised Concat.
        assert (concats >= 1) if graph == "encoder" else (concats == 0), (graph, concats)
        assert np.array_equal(onnxruntime_outputs(original, inputs), onnxruntime_outputs(rewritten, inputs)), graph

        floats, dropped = float_reads_of_float_tensors(rewritten)
        assert dropped >= 1, graph
        def int8_convs(model: onnx.ModelProto) -> list[str]:  # convs reading a dequantised input
            producer = {out: node for node in model.graph.node for out in node.output}
            return [n.name for n in model.graph.node if n.op_type == "Conv" and n.input[0] in producer
                    and producer[n.input[0]].op_type == "DequantizeLinear"]

        assert int8_convs(floats) == int8_convs(original), graph


@pytest.fixture(scope="module")
def self_test():
    pytest.importorskip("openvino")
    from reftok_deploy.runtimes.openvino_runner import int8_self_test

    return int8_self_test()


def test_self_test_verdict_holds_on_real_frames(int8_export, video_file, self_test, monkeypatch):
    """The verdict against a real measurement here: OpenVINO's INT8 graphs as exported and as rewritten, each
    against onnxruntime FP32 on a real clip with the INT8 tolerance. "ok": the graphs as exported pass. "rewrite":
    the rewritten graphs pass and are no worse than as exported. (Since only 3 encoder convs read a quantised Concat,
    the fault the probes find costs little on real frames: on the AMX Xeon -0.21 dB as exported, -0.16 rewritten;
    with the earlier graphs, whose decoder had one too, the graphs as exported failed.)"""
    import reftok_deploy.runtimes.openvino_runner as openvino_runner
    from reftok_deploy.base.manifest import open_export
    from reftok_deploy.base.spec import TOLERANCES
    from reftok_deploy.deploy.parity_check import compare
    from reftok_deploy.runtimes.factory import make_runner

    check = self_test
    assert check.verdict in ("ok", "rewrite", "refuse"), check
    if check.verdict == "refuse":
        pytest.skip(f"openvino:int8 is refused here ({check}); the CLI test checks the refusal")
    export = open_export(int8_export)
    feeds = [(f"gop{i}", feed) for i, feed in enumerate(real_feeds(export, video_file))]
    baseline = make_runner("onnxruntime:fp32", export, None)
    reports = {}
    for rewrite in (False, True):  # run the graphs as the other verdict would
        forced = openvino_runner.Int8Check(check.device, check.cpu, 0.0, 1e9 if rewrite else 0.0, 0.0, 0.0)
        monkeypatch.setattr(openvino_runner, "int8_self_test", lambda device="CPU", forced=forced: forced)
        with make_runner("openvino:int8", export, None) as runner:
            runner.load()
            assert ("quantise_concat_inputs" in runner.rewrites["encoder"]) == rewrite
            reports[rewrite] = compare(baseline, runner, feeds, TOLERANCES["int8"])
    summary = {k: (round(r.psnr_delta_db, 3), round(r.token_agreement, 3), r.failures) for k, r in reports.items()}
    if check.verdict == "ok":
        assert reports[False].ok, summary
    else:
        assert reports[True].ok, summary
        assert reports[True].psnr_delta_db >= reports[False].psnr_delta_db - 0.01, summary


def test_reftok_parity_openvino_int8_passes_or_is_refused_in_one_line(int8_export, video_file, self_test):
    """The acceptance command of issue 30 through the real CLI."""
    args = [int8_export, "--a", "onnxruntime:fp32", "--b", "openvino:int8", "--video", video_file, "--size", "64",
            "--max-gops", "2"]
    result = invoke(parity_main, args)
    if self_test.verdict == "refuse":
        line = one_error_line(result, "onnxruntime:int8")
        assert "self-test" in line
    else:
        assert result.exit_code == 0, result.output
        assert result.output.rstrip().endswith("ok"), result.output


def test_openvino_int8_is_refused_in_one_line_where_the_self_test_fails(int8_export, video_file, self_test, monkeypatch):
    """A CPU whose int8 conv is wrong even on the plain probe (measured: AVX2 or AVX512 without VNNI, where u8 x s8
    pair sums saturate: 1.2e6 steps off): opening openvino:int8 is one ReftokError line naming the alternatives,
    and reftok-parity exits 2 with it."""
    import reftok_deploy.runtimes.openvino_runner as openvino_runner
    from reftok_deploy.base.errors import ReftokError
    from reftok_deploy.base.manifest import open_export
    from reftok_deploy.runtimes.factory import make_runner

    broken = openvino_runner.Int8Check("CPU", "Some CPU", 1152108.0, 1955376.0, 1088100.0, 1088100.0)
    assert broken.verdict == "refuse"
    monkeypatch.setattr(openvino_runner, "int8_self_test", lambda device="CPU": broken)
    with pytest.raises(ReftokError) as refused:
        make_runner("openvino:int8", open_export(int8_export), None).load()
    message = str(refused.value)
    assert "\n" not in message and "Some CPU" in message and "1152108 integer steps" in message
    assert "use onnxruntime:int8 or openvino:fp32" in message
    make_runner("openvino:fp32", open_export(int8_export), None).load()  # the float graphs still open
    result = invoke(parity_main, [int8_export, "--a", "onnxruntime:fp32", "--b", "openvino:int8", "--video", video_file,
                                  "--size", "64", "--max-gops", "1"])
    assert one_error_line(result, "use onnxruntime:int8") == f"error: {message}"
