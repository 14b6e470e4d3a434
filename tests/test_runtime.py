"""Runtimes: capture sources, reconnects, GOP logic, CPU backends, reftok-run / reftok-decode / reftok-bench."""

import json
import time

import cv2
import numpy as np
import pytest

from reftok_deploy.cli.bench import main as bench_main
from reftok_deploy.deploy.benchmark import E2E_GOPS
from reftok_deploy.cli.decode import main as decode_main
from reftok_deploy.cli.eval import main as eval_main
from reftok_deploy.cli.run import main as run_main
from reftok_deploy.base.errors import ReftokError
from reftok_deploy.runtimes.capture import FrameSource, SourceSpec, has_gstreamer, parse_source
from reftok_deploy.runtimes.codec import FrameCodec
from reftok_deploy.runtimes.gop_encoder import BlockEvent, GopEncoder, ReferenceEvent
from reftok_deploy.runtimes.onnxruntime_runner import OnnxRuntimeRunner
from reftok_deploy.runtimes.torch_runner import TorchRunner
from tests.conftest import invoke, moving_still, tree_listing, write_video


@pytest.fixture
def export_dir(tiny_export):
    """The session's FP32 export of the tiny checkpoint; tests that change it copy it (checked)."""
    before = tree_listing(tiny_export)
    yield tiny_export
    assert tree_listing(tiny_export) == before, "the test changed the session's export: copy it first"


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """18 frames (2 GOPs) of a real photograph under camera motion, 64x64."""
    return write_video(tmp_path_factory.mktemp("clip") / "clip.avi", moving_still("chelsea", 18, 64, seed=3))


def test_parse_source_forms():
    assert parse_source("0") == SourceSpec("camera 0", 0, live=True)
    assert parse_source("file:///data/a.mp4").target == "/data/a.mp4" and not parse_source("a.mp4").live
    rtsp = parse_source("rtsp://cam.local/stream")
    assert rtsp.live and rtsp.api == cv2.CAP_FFMPEG
    if has_gstreamer():
        assert "nvarguscamerasrc sensor-id=1" in parse_source("csi://1").target
    else:
        with pytest.raises(ReftokError, match="GStreamer"):
            parse_source("csi://0")
        v4l2 = parse_source("v4l2:///dev/video2")
        assert v4l2.target == 2 and v4l2.api == cv2.CAP_V4L2
    for bad in ("csi://front", "v4l2://video0"):
        with pytest.raises(ReftokError):
            parse_source(bad)


def test_camera_uri_options_follow_jetson_utils(monkeypatch):
    from reftok_deploy.runtimes import capture

    monkeypatch.setattr(capture, "has_gstreamer", lambda: True)
    csi = parse_source("csi://1?width=1920&height=1080&framerate=60&flip=rotate-180").target
    assert "sensor-id=1" in csi and "width=1920,height=1080,framerate=60/1" in csi and "flip-method=2" in csi
    mjpeg = parse_source("v4l2:///dev/video0?width=640&height=480&framerate=30&codec=mjpeg").target
    assert "image/jpeg,width=640,height=480,framerate=30/1 ! decodebin" in mjpeg
    assert "video/x-h264" in parse_source("v4l2:///dev/video0?codec=h264").target
    for bad, message in (("csi://0?flip=sideways", "flip must be one of"), ("csi://0?width=wide", "positive integer"),
                         ("v4l2:///dev/video0?codec=vp9", "codec must be one of"), ("csi://0?zoom=2", "unknown option")):
        with pytest.raises(ReftokError, match=message):
            parse_source(bad)
    monkeypatch.setattr(capture, "has_gstreamer", lambda: False)
    with pytest.raises(ReftokError, match="GStreamer"):
        parse_source("v4l2:///dev/video0?codec=mjpeg")


class FakeCapture:
    """A cv2.VideoCapture stand-in that delivers ``n`` frames and then fails, as a dropped stream does."""

    def __init__(self, frames):
        self.frames = list(frames)

    def read(self):
        return (True, self.frames.pop(0)[:, :, ::-1]) if self.frames else (False, None)

    def get(self, prop):
        return 10.0

    def release(self):
        pass


def test_live_source_that_drops_is_reopened_then_ends_cleanly():
    clip = moving_still("astronaut", 12, 32)
    sessions = [FakeCapture(clip[:5]), FakeCapture(clip[5:12])]

    def opener(spec):
        if not sessions:
            raise ReftokError("cannot open rtsp://x")
        return sessions.pop(0)

    spec = SourceSpec("rtsp://x", "rtsp://x", live=True)
    with FrameSource(spec, queue_size=32, retries=3, backoff=0.001, opener=opener) as source:
        frames = list(source)
    assert len(frames) == 12 and np.array_equal(frames[7], clip[7])
    assert source.reconnects == 1


class FrozenCapture(FakeCapture):
    """Delivers its frames, then blocks in read() like a SIGSTOPped server, until released."""

    def __init__(self, frames):
        super().__init__(frames)
        import threading

        self.unfreeze = threading.Event()

    def read(self):
        if not self.frames:
            self.unfreeze.wait(5)
            return False, None
        return super().read()

    def release(self):
        self.unfreeze.set()


def test_a_frozen_live_source_is_abandoned_and_reopened():
    clip = moving_still("astronaut", 12, 32)
    frozen = FrozenCapture(clip[:4])
    sessions = [frozen, FakeCapture(clip[4:12])]

    def opener(spec):
        if not sessions:
            raise ReftokError("cannot open rtsp://x")
        return sessions.pop(0)

    spec = SourceSpec("rtsp://x", "rtsp://x", live=True)
    with FrameSource(spec, queue_size=32, retries=3, backoff=0.001, opener=opener, read_timeout=0.3) as source:
        frames = list(source)
    assert len(frames) == 12 and np.array_equal(frames[9], clip[9])
    assert source.stalls == 1


def test_a_file_that_stops_delivering_is_one_error():
    frozen = FrozenCapture(moving_still("astronaut", 3, 32))
    with FrameSource(SourceSpec("slow.mp4", "slow.mp4"), opener=lambda spec: frozen, read_timeout=0.3) as source:
        with pytest.raises(ReftokError, match="delivered no frame for 0.3 s"):
            list(source)
    frozen.release()


def test_an_open_that_hangs_is_cut_by_the_watchdog(monkeypatch):
    import time

    from reftok_deploy.runtimes import capture

    monkeypatch.setattr(capture.cv2, "VideoCapture", lambda *a: time.sleep(5))
    started = time.perf_counter()
    with pytest.raises(ReftokError, match="timed out after 0.2 s"):
        capture.open_capture(SourceSpec("csi://0", "nvarguscamerasrc ! appsink"), timeout=0.2)
    assert time.perf_counter() - started < 2


def test_capture_works_without_opencv_logging_module(monkeypatch):
    """Debian's OpenCV 4.6 has no cv2.utils.logging: capture must not need it."""
    from reftok_deploy.runtimes import capture

    monkeypatch.delattr(capture.cv2.utils, "logging", raising=False)
    capture.quiet_opencv()
    assert "OpenCV" in capture.opencv_summary()


def test_finite_gstreamer_pipelines_are_not_reopened(monkeypatch):
    from reftok_deploy.runtimes import capture

    monkeypatch.setattr(capture, "has_gstreamer", lambda: True)
    assert not parse_source("videotestsrc num-buffers=100 ! videoconvert ! appsink").live
    assert not parse_source("filesrc location=a.mp4 ! decodebin ! videoconvert ! appsink").live
    assert parse_source("videotestsrc ! videoconvert ! appsink").live


def test_missing_camera_is_one_line_and_exit_2():
    result = invoke(run_main, ["--camera", "7", "--backend", "torch"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == "error: cannot open camera 7: no such camera or it is busy"


class CountingCodec:
    """Codec stand-in whose reconstruction quality is chosen by the test."""

    def __init__(self, noise):
        self.noise = noise

    def encode(self, reference, block):
        return np.zeros((2, 1, 1), np.int32)

    def decode(self, reference, tokens):
        return np.clip(np.repeat(reference[None], 8, 0).astype(int) + self.noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("refresh,references", [(1, 3), (2, 2)])
def test_gop_reference_refresh(refresh, references):
    gop = GopEncoder(CountingCodec(0), 8, refresh_blocks=refresh, cut_threshold=None)
    frames = moving_still("coffee", 1 + 8 + 1 + 8 + 1 + 5, 16)
    events = [e for f in frames for e in gop.push(f)] + list(gop.flush())
    assert sum(isinstance(e, ReferenceEvent) for e in events) == gop.references
    assert sum(len(e.recon) for e in events if isinstance(e, BlockEvent)) + gop.references == len(frames)
    assert gop.references == references and gop.scene_changes == 0


def test_runtime_gops_are_the_evaluation_gops():
    """reftok-run's encoder and reftok-eval's planner cut a clip with a scene change identically."""
    from reftok_deploy.base.gop_plan import plan_gops
    from reftok_deploy.quality.suite import suite_clips

    clip = suite_clips(64, cases=("cut",))["suite:cut"]
    gop = GopEncoder(CountingCodec(0), 8)
    events = [e for f in clip for e in gop.push(f)] + list(gop.flush())
    blocks = [e.originals for e in events if isinstance(e, BlockEvent)]
    planned = plan_gops(clip, 8)
    assert [len(b) for b in blocks] == [len(g.block) for g in planned] == [8, 3, 4]
    assert all(np.array_equal(b, g.block) for b, g in zip(blocks, planned))
    assert gop.scene_changes == 1 and [e.cut for e in events if isinstance(e, ReferenceEvent)] == [False, False, True]


class SlowCodec(CountingCodec):
    """Decodes ``reference + noise`` after a delay that differs per call, so blocks run side by side finish
    out of order; records how many calls overlap."""

    def __init__(self, noise, delays, clock):
        super().__init__(noise)
        self.delays, self.clock = iter(delays), clock

    def decode(self, reference, tokens):
        with self.clock["lock"]:
            self.clock["running"] += 1
            self.clock["most"] = max(self.clock["most"], self.clock["running"])
        time.sleep(next(self.delays))
        with self.clock["lock"]:
            self.clock["running"] -= 1
            self.clock["done"] += 1
        return super().decode(reference, tokens)


def test_gop_encoder_runs_blocks_side_by_side_and_keeps_stream_order():
    import threading

    clip = moving_still("coffee", 9 * 5 + 3, 16)  # 5 whole GOPs and a tail
    serial = GopEncoder(CountingCodec(0), 8, cut_threshold=None)
    expected = [e for f in clip for e in serial.push(f)] + list(serial.flush())
    clock = {"lock": threading.Lock(), "running": 0, "most": 0, "done": 0}
    codecs = [SlowCodec(0, [0.2, 0.0, 0.1], clock), SlowCodec(0, [0.0, 0.15, 0.0], clock)]
    gop = GopEncoder(codecs, 8, cut_threshold=None)
    events = [e for f in clip for e in gop.push(f)] + list(gop.flush())
    gop.close()
    assert [type(e) for e in events] == [type(e) for e in expected] and len(events) == 12
    for got, want in zip(events, expected):
        if isinstance(want, BlockEvent):
            assert np.array_equal(got.recon, want.recon) and np.array_equal(got.originals, want.originals)
        else:
            assert np.array_equal(got.frame, want.frame)
    assert clock["most"] == 2  # two blocks were decoding at once


def test_gop_encoder_close_waits_for_blocks_in_flight():
    import threading

    clock = {"lock": threading.Lock(), "running": 0, "most": 0, "done": 0}
    gop = GopEncoder([SlowCodec(0, [0.3], clock), SlowCodec(0, [0.3], clock)], 8, cut_threshold=None)
    clip = moving_still("coffee", 18, 16)
    events = [e for frame in clip for e in gop.push(frame)]
    assert [type(e) for e in events] == [ReferenceEvent] and clock["done"] == 0  # both blocks still running
    gop.close()
    assert clock["done"] == 2 and clock["running"] == 0


def test_gop_encoder_passes_on_finished_blocks_at_the_next_frame():
    """A block finished on another thread comes out at the next push, not when the next block closes."""
    import threading

    clock = {"lock": threading.Lock(), "running": 0, "most": 0, "done": 0}
    gop = GopEncoder([SlowCodec(0, [0.05] * 3, clock), SlowCodec(0, [0.05] * 3, clock)], 8, cut_threshold=None)
    out_at = []
    for i, frame in enumerate(moving_still("coffee", 9 * 4, 16)):
        out_at += [i for e in gop.push(frame) if isinstance(e, BlockEvent)]
        time.sleep(0.02)  # a 50 fps source
    gop.close()
    closed_at = [8 + 9 * k for k in range(4)]  # frame that completes each block
    assert len(out_at) >= 3 and all(closed_at[k] < out_at[k] < closed_at[k + 1] for k in range(len(out_at) - 1))


def test_a_failing_block_is_raised_in_the_consumer_and_no_worker_is_left(tiny_checkpoint):
    import threading

    from reftok_deploy.runtimes.stream import StreamStats, encode_stream

    class FailingCodec(CountingCodec):
        def decode(self, reference, tokens):
            raise ReftokError("decoder blew up")

    gop = GopEncoder([FailingCodec(0), FailingCodec(0)], 8, cut_threshold=None)
    with pytest.raises(ReftokError, match="decoder blew up"):
        encode_stream(moving_still("coffee", 27, 16), gop, StreamStats(10.0, 1000))
    assert not any(t.name.startswith("reftok-gop") for t in threading.enumerate())


def test_streams_share_the_threads_and_stay_on_the_cpu(export_dir, tiny_checkpoint):
    from reftok_deploy.base.manifest import open_export
    from reftok_deploy.runtimes.factory import make_runners

    export = open_export(export_dir)
    runners = make_runners("onnxruntime:fp32", export, tiny_checkpoint, threads=4, streams=2)
    assert len(runners) == 2 and [r.threads for r in runners] == [2, 2] and runners[0] is not runners[1]
    assert [r.threads for r in make_runners("torch", None, tiny_checkpoint, threads=3, streams=2)] == [2, 1]
    assert [r.threads for r in make_runners("torch", None, tiny_checkpoint, threads=3, streams=3)] == [1, 1, 1]
    with pytest.raises(ReftokError, match="needs at least one thread per copy"):
        make_runners("torch", None, tiny_checkpoint, threads=1, streams=2)
    # OpenVINO pins its threads to cores by default: copies side by side were pinned to the same core
    assert make_runners("openvino:fp32", export, tiny_checkpoint, threads=2)[0].pin_threads
    assert not any(r.pin_threads for r in make_runners("openvino:fp32", export, tiny_checkpoint, threads=2, streams=2))
    with pytest.raises(ReftokError, match="side by side on CPU cores; --device cuda takes --streams 1"):
        make_runners("torch", None, tiny_checkpoint, device="cuda", streams=2)
    with pytest.raises(ReftokError, match="; tensorrt:fp16 takes --streams 1"):
        make_runners("tensorrt:fp16", export, tiny_checkpoint, streams=2)


def test_streams_that_cannot_run_are_refused_before_any_work(tiny_checkpoint, export_dir, clip_file):
    started = time.perf_counter()
    run = invoke(run_main, ["--video", clip_file, "--checkpoint", tiny_checkpoint, "--device", "cuda", "--streams", "2"])
    assert run.exit_code == 2 and run.stderr.count("\n") == 1 and "takes --streams 1" in run.stderr
    assert time.perf_counter() - started < 5  # no backend was measured, no model loaded
    bench = invoke(bench_main, [export_dir, "--checkpoint", tiny_checkpoint, "--model-only", "--streams", "2"])
    assert bench.exit_code == 2 and "--streams applies to the end-to-end row" in bench.stderr
    assert invoke(run_main, ["--demo", "--streams", "0"]).exit_code == 2


def test_openvino_copies_side_by_side_are_not_pinned_to_cores(tiny_checkpoint, export_dir):
    pytest.importorskip("openvino")
    from reftok_deploy.base.manifest import open_export
    from reftok_deploy.runtimes.factory import make_runners

    for streams, pinned in ((1, True), (2, False)):
        runner = make_runners("openvino:fp32", open_export(export_dir), tiny_checkpoint, threads=2, streams=streams)[0]
        with runner:
            assert runner.compiled["encoder"].get_property("ENABLE_CPU_PINNING") is pinned


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino:fp32", "torch"])
def test_run_with_two_streams_gives_the_same_stream(tmp_path, tiny_checkpoint, export_dir, clip_file, backend):
    if backend.startswith("openvino"):
        pytest.importorskip("openvino")
    common = ["--video", clip_file, "--checkpoint", tiny_checkpoint, "--backend", backend, "--export", export_dir,
              "--no-display", "--json"]
    # PyTorch's threads are per process: its two copies run on one thread each, and oneDNN's batch-1 convs (the
    # reference's features, once per clip) round differently on one and two threads, so its one-stream run
    # is compared at one thread. onnxruntime and OpenVINO give the same numbers on one thread and two.
    one_threads = "1" if backend == "torch" else "2"
    one = invoke(run_main, [*common, "--threads", one_threads, "--tokens", tmp_path / "one.rtok"])
    two = invoke(run_main, [*common, "--threads", "2", "--streams", "2", "--tokens", tmp_path / "two.rtok",
                            "-o", tmp_path / "two.avi"])
    assert one.exit_code == 0 and two.exit_code == 0, one.output + two.output
    one, two = json.loads(one.stdout), json.loads(two.stdout)
    assert two["streams"] == 2 and two["frames"] == one["frames"] == 18 and two["blocks"] == 2
    assert two["reconstruction_sha256"] == one["reconstruction_sha256"]
    assert (tmp_path / "two.rtok").read_bytes() == (tmp_path / "one.rtok").read_bytes()
    assert int(cv2.VideoCapture(str(tmp_path / "two.avi")).get(cv2.CAP_PROP_FRAME_COUNT)) == 18


def test_cpu_backends_agree_through_the_codec(tiny_checkpoint, export_dir):
    clip = moving_still("astronaut", 9, 50)[:, :36]
    files = {g: export_dir / f"{g}.fp32.onnx" for g in ("encoder", "decoder")}
    with TorchRunner(tiny_checkpoint) as torch_runner, OnnxRuntimeRunner(files) as ort_runner:
        a, b = FrameCodec(torch_runner), FrameCodec(ort_runner)
        tokens = a.encode(clip[0], clip[1:])
        assert tokens.shape == (2, 5, 7) and (tokens == b.encode(clip[0], clip[1:])).mean() >= 0.999
        frames = a.decode(clip[0], tokens)
        assert frames.shape == (8, 36, 50, 3) and frames.dtype == np.uint8
        assert np.abs(frames.astype(int) - b.decode(clip[0], tokens)).max() <= 1


def test_bad_feeds_get_the_same_one_line_error_on_every_backend(tiny_checkpoint, export_dir):
    from reftok_deploy.base.errors import ReftokError

    rng = np.random.default_rng(0)
    reference = rng.uniform(-1, 1, (1, 3, 32, 40)).astype(np.float32)
    frames = rng.uniform(-1, 1, (1, 3, 8, 32, 40)).astype(np.float32)
    tokens = np.zeros((1, 2, 4, 5), np.int32)
    bad = {
        "int64 tokens": ("decoder", {"reference": reference, "tokens": tokens.astype(np.int64)}, "must be int32"),
        "missing input": ("decoder", {"reference": reference}, "missing tokens"),
        "size not a multiple of 8": ("encoder", {"reference": reference[..., :36], "frames": frames[..., :36]},
                                     "not a multiple of 8"),
        "block length": ("encoder", {"reference": reference, "frames": frames[:, :, :5]}, "expected [batch,3,8,"),
        "tokens of another size": ("decoder", {"reference": reference, "tokens": tokens[..., :4]}, "do not match"),
        "float frames as float64": ("encoder", {"reference": reference, "frames": frames.astype(np.float64)},
                                    "must be float32"),
        "unknown input": ("encoder", {"reference": reference, "frames": frames, "extra": frames}, "unexpected extra"),
    }
    files = {g: export_dir / f"{g}.fp32.onnx" for g in ("encoder", "decoder")}
    with TorchRunner(tiny_checkpoint) as torch_runner, OnnxRuntimeRunner(files) as ort_runner:
        assert torch_runner.geometry == ort_runner.geometry
        for case, (graph, feed, expected) in bad.items():
            messages = []
            for runner in (torch_runner, ort_runner):
                with pytest.raises(ReftokError) as err:
                    runner.run(graph, feed)
                messages.append(str(err.value))
            assert messages[0] == messages[1] and expected in messages[0] and "\n" not in messages[0], (case, messages)
        # a good feed still runs on both
        assert (torch_runner.encode(reference, frames) == ort_runner.encode(reference, frames)).mean() >= 0.99


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_run_writes_every_frame_and_decode_replays_bit_exactly(tmp_path, tiny_checkpoint, export_dir, clip_file, backend):
    out, rtok = tmp_path / "side.avi", tmp_path / "t.rtok"
    common = ["--checkpoint", tiny_checkpoint, "--backend", backend, "--export", export_dir]
    result = invoke(run_main, ["--video", clip_file, "--output", out, "--tokens", rtok, "--json", *common])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["frames"] == 18 and summary["references"] == 2 and summary["blocks"] == 2
    cap = cv2.VideoCapture(str(out))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = cap.read()
    assert count == 18 and ok and frame.shape == (64, 128, 3)
    replay = invoke(decode_main, [rtok, "-o", tmp_path / "replay.avi", "--json", *common])
    assert replay.exit_code == 0, replay.output
    assert json.loads(replay.stdout)["reconstruction_sha256"] == summary["reconstruction_sha256"]
    assert json.loads(replay.stdout)["frames"] == 18
    assert "was encoded with" not in replay.stderr
    other = "onnxruntime" if backend == "torch" else "torch"
    crossed = invoke(decode_main, [rtok, "--json", *common[:2], "--backend", other, "--export", export_dir])
    assert crossed.exit_code == 0 and f"was encoded with {backend}:fp32; decoding with {other}:fp32" in crossed.stderr
    evaluation = invoke(eval_main, [clip_file, "--checkpoint", tiny_checkpoint, "--no-twin", "--size", "64", "--json"])
    assert abs(json.loads(evaluation.stdout)["mean"]["reftok"]["psnr"] - summary["psnr_db"]) <= 0.1


def test_run_on_a_tail_and_with_a_centre_crop(tmp_path, tiny_checkpoint, export_dir):
    video = write_video(tmp_path / "odd.avi", moving_still("text", 13, 72)[:, :, :60])
    result = invoke(run_main, ["--video", video, "--size", "48", "--json", "--checkpoint", tiny_checkpoint,
                               "--backend", "torch"])
    summary = json.loads(result.stdout)
    assert summary["frames"] == 13 and summary["size"] == [48, 48] and summary["blocks"] == 2


def test_decode_refuses_damaged_stream_and_other_checkpoint(tmp_path, tiny_checkpoint, clip_file):
    rtok = tmp_path / "t.rtok"
    invoke(run_main, ["--video", clip_file, "--tokens", rtok, "--checkpoint", tiny_checkpoint, "--backend", "torch"])
    data = rtok.read_bytes()
    (tmp_path / "cut.rtok").write_bytes(data[: len(data) // 2])
    result = invoke(decode_main, [tmp_path / "cut.rtok", "--checkpoint", tiny_checkpoint, "--backend", "torch"])
    assert result.exit_code == 2 and "truncated" in result.stderr
    other = tmp_path / "other"
    import shutil

    shutil.copytree(tiny_checkpoint, other)
    config = json.loads((other / "config.json").read_text())
    config["weights_sha256"] = "0" * 64
    (other / "config.json").write_text(json.dumps(config))
    result = invoke(decode_main, [rtok, "--checkpoint", other, "--backend", "torch"])
    assert result.exit_code == 2


def test_dropped_live_source_keeps_the_output_playable(tmp_path, tiny_checkpoint):
    from reftok_deploy.runtimes.output import VideoFile, side_by_side
    from reftok_deploy.runtimes.stream import StreamStats, encode_stream

    clip = moving_still("astronaut", 14, 32)
    sessions = [FakeCapture(clip)]

    def opener(spec):
        if sessions:
            return sessions.pop(0)
        raise ReftokError("gone")

    out = tmp_path / "live.avi"
    with TorchRunner(tiny_checkpoint) as runner, FrameSource(SourceSpec("rtsp://x", "x", live=True), queue_size=64,
                                                              retries=2, backoff=0.001, opener=opener) as source:
        writer = VideoFile(out, 10.0, (64, 32))
        stats = encode_stream(source, GopEncoder(FrameCodec(runner), 8), StreamStats(10.0, 1000),
                              sink=lambda o, r, lines, labels: writer.write(side_by_side(o, r, lines, labels)))
        writer.close()
    cap = cv2.VideoCapture(str(out))
    assert stats.frames == 14 and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 14


def test_bench_prints_ratios_side_by_side(export_dir, tiny_checkpoint):
    result = invoke(bench_main, [export_dir, "--checkpoint", tiny_checkpoint, "--size", "64", "--size", "80x48",
                                 "--gops", "1", "--repeats", "2", "--json"])  # --gops: the old spelling still works
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["matmul_peak_gflops"] > 0 and report["cpu"] and set(report["sizes"]) == {"64x64", "80x48"}
    square, wide = report["sizes"]["64x64"], report["sizes"]["80x48"]
    assert wide["gflop_per_gop"] == pytest.approx(square["gflop_per_gop"] * 80 * 48 / 64**2)
    rows = square["backends"]
    assert set(rows) == {"torch-cpu", "onnxruntime-fp32"} and rows["torch-cpu"]["speedup_total"] == 1.0
    assert rows["onnxruntime-fp32"]["encode_ms"] > 0 and rows["onnxruntime-fp32"]["psnr_db"] > 0
    assert 0 < rows["onnxruntime-fp32"]["gflop_per_s"] == pytest.approx(
        square["gflop_per_gop"] / rows["onnxruntime-fp32"]["total_ms"] * 1000)
    e2e = wide["end_to_end"]
    assert e2e["backend"] in rows and e2e["fps"] > 0 and e2e["model_fps"] > 0
    assert e2e["frame_count"] == 9 * max(wide["gops"], E2E_GOPS)  # replayed: the steady state is timed
    assert 0 < e2e["of_model_only"] == pytest.approx(
        e2e["fps"] / wide["backends"][e2e["backend"]]["fps_encode_decode"])
    text = invoke(bench_main, [export_dir, "--checkpoint", tiny_checkpoint, "--size", "64", "--max-gops", "1",
                               "--repeats", "1", "--model-only"])
    assert text.exit_code == 0 and "GFLOP/s" in text.stdout and "end to end" not in text.stdout
    assert "--gops" not in invoke(bench_main, ["--help"]).stdout
    streams = invoke(bench_main, [export_dir, "--checkpoint", tiny_checkpoint, "--backends", "onnxruntime:fp32",
                                  "--size", "64", "--max-gops", "1", "--repeats", "1", "--streams", "2", "--json"])
    assert streams.exit_code == 0, streams.output
    e2e = json.loads(streams.stdout)["sizes"]["64x64"]["end_to_end"]
    assert e2e["streams"] == 2 and e2e["frame_count"] == 9 * E2E_GOPS and e2e["fps"] > 0


@pytest.mark.parametrize("command", ["parity", "bench", "run"])
def test_a_command_reads_and_hashes_the_manifest_once(tmp_path, tiny_checkpoint, export_dir, clip_file, monkeypatch,
                                                       command):
    import collections

    import reftok_deploy.base.manifest as manifest_module
    from reftok_deploy.cli.parity import main as parity_main

    reads, hashes = [], collections.Counter()
    real_read, real_hash = manifest_module.read_json_object, manifest_module.sha256_file
    monkeypatch.setattr(manifest_module, "read_json_object", lambda path, *a: reads.append(path) or real_read(path, *a))
    monkeypatch.setattr(manifest_module, "sha256_file", lambda path: hashes.update([str(path)]) or real_hash(path))
    videos = ["--video", clip_file]
    args = {
        "parity": (parity_main, [export_dir, "--checkpoint", tiny_checkpoint, "--b", "onnxruntime:fp32", *videos,
                                 "--size", "64", "--max-gops", "1", "--json"]),
        "bench": (bench_main, [export_dir, "--checkpoint", tiny_checkpoint, "--backends", "onnxruntime:fp32,torch",
                               *videos, "--size", "64", "--gops", "1", "--repeats", "1", "--json"]),
        "run": (run_main, ["--video", clip_file, "--checkpoint", tiny_checkpoint, "--export", export_dir,
                           "--backend", "onnxruntime:fp32", "--size", "64", "--json", "--no-display"]),
    }
    main, argv = args[command]
    result = invoke(main, argv)
    assert result.exit_code == 0, result.output
    assert len(reads) == 1, reads
    assert hashes and max(hashes.values()) == 1, hashes


def test_openvino_runs_the_exported_graphs_like_pytorch(tiny_checkpoint, export_dir):
    pytest.importorskip("openvino")
    from reftok_deploy.base.errors import ReftokError
    from reftok_deploy.base.manifest import open_export
    from reftok_deploy.runtimes.factory import make_runner

    rng = np.random.default_rng(1)
    reference = rng.uniform(-1, 1, (1, 3, 32, 40)).astype(np.float32)
    frames = np.clip(reference[:, :, None] + rng.normal(0, 0.2, (1, 3, 8, 32, 40)), -1, 1).astype(np.float32)
    with make_runner("torch", None, tiny_checkpoint) as torch_runner, \
            make_runner("openvino:fp32", open_export(export_dir), tiny_checkpoint) as ov_runner:
        assert ov_runner.name == "openvino-fp32" and ov_runner.geometry == torch_runner.geometry
        tokens = torch_runner.encode(reference, frames)
        assert (ov_runner.encode(reference, frames) == tokens).mean() >= 0.999
        assert np.abs(ov_runner.decode(reference, tokens) - torch_runner.decode(reference, tokens)).max() < 1e-3
        with pytest.raises(ReftokError, match="must be int32"):
            ov_runner.decode(reference, tokens.astype(np.int64))


def test_openvino_bf16_is_a_runtime_precision_of_openvino_only():
    from reftok_deploy.base.errors import ReftokError
    from reftok_deploy.runtimes.factory import backend_label, parse_spec

    assert parse_spec("openvino:bf16") == ("openvino", "bf16") == parse_spec("ov:bf16")
    assert backend_label("openvino:bf16") == "openvino:bf16"
    for spec in ("onnxruntime:bf16", "torch:bf16", "tensorrt:bf16", "openvino:bf8"):
        with pytest.raises(ReftokError, match="unknown backend"):
            parse_spec(spec)


def test_openvino_bf16_runs_the_fp32_graphs_and_is_refused_without_native_bf16(tiny_checkpoint, export_dir,
                                                                               monkeypatch):
    pytest.importorskip("openvino")
    import reftok_deploy.deploy.backends as backends
    import reftok_deploy.runtimes.openvino_runner as openvino_runner
    from reftok_deploy.base.errors import ReftokError
    from reftok_deploy.base.manifest import open_export
    from reftok_deploy.runtimes.factory import make_runner

    export = open_export(export_dir)
    runner = make_runner("openvino:bf16", export, tiny_checkpoint)
    assert runner.name == "openvino-bf16" and runner.hint == "bf16"
    assert runner.files == {g: export.artifact(g, "fp32") for g in ("encoder", "decoder")}
    monkeypatch.setattr(openvino_runner, "native_bf16", lambda device="CPU": False)
    with pytest.raises(ReftokError, match="no native bf16"):
        runner.load()
    assert "openvino:bf16" not in backends.candidate_specs(export, "cpu")
    monkeypatch.setattr(openvino_runner, "native_bf16", lambda device="CPU": True)
    assert backends.candidate_specs(export, "cpu")[-1] == "openvino:bf16"
    assert "openvino:bf16" not in backends.candidate_specs(export, "cuda")


def test_openvino_bf16_decodes_within_its_tolerance_where_the_cpu_has_bf16(tiny_checkpoint, export_dir):
    """Where the CPU computes bf16 natively (AVX512-BF16/AMX), openvino:bf16 passes the bf16 tolerance
    against PyTorch on moving real-like frames; elsewhere there is nothing to measure."""
    pytest.importorskip("openvino")
    from reftok_deploy.runtimes.openvino_runner import native_bf16

    if not native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 or AMX)")
    from reftok_deploy.deploy.backends import probe_clips
    from reftok_deploy.base.manifest import open_export
    from reftok_deploy.deploy.parity_check import compare, gop_feeds
    from reftok_deploy.runtimes.factory import make_runner
    from reftok_deploy.base.spec import TOLERANCES

    feeds = list(gop_feeds(probe_clips((64, 64), 8), 8, 1))
    with make_runner("torch", None, tiny_checkpoint) as torch_runner, \
            make_runner("openvino:bf16", open_export(export_dir), tiny_checkpoint) as bf16, \
            make_runner("openvino:fp32", open_export(export_dir), tiny_checkpoint) as fp32:
        report = compare(torch_runner, bf16, feeds, TOLERANCES["bf16"])
        assert report.ok, report.failures
        exact = compare(torch_runner, fp32, feeds, TOLERANCES["fp32"])
        assert report.mean_abs_frames > exact.mean_abs_frames  # it really computed in bf16


def test_threaded_stage_passes_items_errors_and_stops_with_its_consumer():
    import threading
    import time

    from reftok_deploy.runtimes.threaded_stage import threaded

    assert list(threaded(lambda stop: iter(range(50)), depth=2)) == list(range(50))

    def failing(stop):
        yield 1
        raise ValueError("model failed")

    items = threaded(failing)
    assert next(items) == 1
    with pytest.raises(ValueError, match="model failed"):
        next(items)

    def refused(stop):  # fails when called, before any iterator exists
        raise ValueError("no model")

    with pytest.raises(ValueError, match="no model"):
        list(threaded(refused))
    cleaned = []

    def cleans_up(stop):
        try:
            yield from range(100)
        finally:
            cleaned.append(True)

    stopped_early = threaded(cleans_up, depth=2)
    next(stopped_early)
    stopped_early.close()
    assert cleaned == [True]  # the producer's own finally ran before close() returned (GopEncoder.close)
    produced, started = [], threading.Event()

    def endless(stop):
        started.set()
        for i in range(10**9):
            if stop.is_set():
                return
            produced.append(i)
            yield i

    stream = threaded(endless, depth=2)
    assert next(stream) == 0
    stream.close()  # the consumer stops early (Ctrl-C, an output error): returns once the worker has stopped
    assert not [t for t in threading.enumerate() if t.name == "reftok-stage"]
    count = len(produced)
    time.sleep(0.3)
    assert len(produced) == count and count <= 4  # bounded queue, worker gone


def test_run_reports_stage_times_rates_with_references_and_the_full_sha(tmp_path, tiny_checkpoint, clip_file):
    result = invoke(run_main, ["--video", clip_file, "--checkpoint", tiny_checkpoint, "--backend", "torch",
                               "--size", "64", "--json", "--no-display", "--threads", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    stages = summary["stage_ms_per_frame"]
    assert stages["model"] > 0 and stages["capture"] > 0 and stages["output"] >= 0
    assert summary["model_fps"] > 0 and summary["total_kbps"] > summary["token_kbps"] > 0
    assert summary["total_kbps"] == pytest.approx(summary["token_kbps"] + summary["reference_kbps"], abs=0.01)
    text = invoke(run_main, ["--video", clip_file, "--checkpoint", tiny_checkpoint, "--backend", "torch",
                             "--size", "64", "--no-display"])
    assert f"reconstruction sha256 {summary['reconstruction_sha256']}" in text.stdout
    assert "with the reference frames" in text.stdout


def test_run_with_auto_measures_backends_at_the_frames_own_size(tmp_path, tiny_checkpoint, export_dir, clip_file):
    import shutil

    export = shutil.copytree(export_dir, tmp_path / "export")
    for old in export.glob("auto-backend*.json"):
        old.unlink()
    rtok = tmp_path / "t.rtok"
    result = invoke(run_main, ["--video", clip_file, "--export", export, "--checkpoint", tiny_checkpoint,
                               "--tokens", rtok, "--json", "--max-frames", "9"])
    assert result.exit_code == 0, result.output
    assert "on 2 GOPs at 64x64" in result.stderr  # the clip's 64x64 frames, not the default 256x256
    record = json.loads((export / "auto-backend-64x64.json").read_text())
    chosen = json.loads(result.stdout)["backend"]
    assert record["key"]["probe"]["size"] == [64, 64] and chosen
    assert not (export / "auto-backend.json").exists()
    from reftok_deploy.base.tokenstream import read_stream

    header, _ = read_stream(rtok)
    assert header["backend"].split(":")[0] in {"torch", "onnxruntime", "openvino"}


class LiveCamera:
    """A cv2.VideoCapture stand-in for a 30 fps camera; subclasses deliver frames in read()."""

    def __init__(self):
        self.count = 0

    def isOpened(self):
        return True

    def get(self, _prop):
        return 30.0

    def release(self):
        pass


def test_auto_on_a_live_camera_starts_from_a_fresh_frame(tmp_path, tiny_checkpoint, export_dir, monkeypatch):
    """The camera keeps delivering while backends are measured: the frames queued meanwhile are
    dropped, not encoded seconds late."""
    import shutil

    import reftok_deploy.runtimes.capture as capture

    class Camera(LiveCamera):  # 30 fps, each frame one grey level brighter
        def read(self):
            time.sleep(1 / 30)
            self.count += 1
            return True, np.full((64, 64, 3), self.count % 256, np.uint8)

    camera = Camera()
    monkeypatch.setattr(capture, "open_capture", lambda spec, timeout=None: camera)
    seen = {}
    skip_backlog = capture.FrameSource.skip_backlog

    def spying(source):
        seen["skipped"] = skip_backlog(source)
        seen["kept"], seen["captured"] = int(source._newest[0, 0, 0]), camera.count
        return seen["skipped"]

    monkeypatch.setattr(capture.FrameSource, "skip_backlog", spying)
    export = shutil.copytree(export_dir, tmp_path / "export")
    for old in export.glob("auto-backend*.json"):
        old.unlink()
    result = invoke(run_main, ["--camera", "0", "--export", export, "--checkpoint", tiny_checkpoint, "--json",
                               "--max-frames", "18", "--no-display"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert "auto: checking" in result.stderr and summary["frames"] == 18
    # the frames queued during the measurement were dropped (and the one read before it), and the
    # run went on from the newest frame the camera had delivered
    assert seen["skipped"] > 0 and summary["dropped"] >= seen["skipped"] + 1
    assert (seen["captured"] - seen["kept"]) % 256 <= 2


def test_an_output_that_stops_wakes_a_stalled_live_source_at_once():
    """Fast cover of the Ctrl-C test below (end-to-end tier: a nested pytest run): the output stops (Ctrl-C
    arrives there) while the model stage waits on a source that stopped delivering; the stream wakes the source
    (FrameSource.interrupt) and returns in well under --read-timeout, with what it finished written."""
    from reftok_deploy.runtimes.stream import StreamStats, encode_stream

    clip = moving_still("astronaut", 9, 32)
    stalled = FrozenCapture(clip)  # one reference and one block, then read() blocks
    source = FrameSource(SourceSpec("rtsp://x", "rtsp://x", live=True), retries=3, backoff=0.001,
                         opener=lambda spec: stalled, read_timeout=30)
    shown = []

    def sink(original, recon, overlay, labels):
        shown.append(recon)
        if len(shown) == 9:  # the whole block is out and the source has stalled: Ctrl-C
            raise KeyboardInterrupt

    with source:
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            encode_stream(source, GopEncoder(CountingCodec(0), 8, cut_threshold=None), StreamStats(10.0, 1000),
                          sink=sink, interrupt=source.interrupt)
        assert time.monotonic() - started < 3 and len(shown) == 9  # not the 30 s read timeout
        stalled.release()


@pytest.mark.slow  # end-to-end tier: a nested pytest run sends SIGINT to a real reftok-run
def test_ctrl_c_on_a_stalled_live_source_stops_at_once(tmp_path, tiny_checkpoint, monkeypatch):
    """Ctrl-C while a camera has stopped delivering: reftok-run keeps what it wrote and returns in about
    a second, not after --read-timeout."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    if os.environ.get("REFTOK_TEST_ISOLATED") != "1":
        # Run in a process of its own: in the full suite (CI, 2026-11-27) the pytest process crashed with
        # SIGSEGV at the test after this one's SIGINT; alone it passes. Cause not found yet.
        name = f"{__file__}::test_ctrl_c_on_a_stalled_live_source_stops_at_once"
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name],
                                env={**os.environ, "REFTOK_TEST_ISOLATED": "1"}, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]
        return

    import reftok_deploy.runtimes.capture as capture

    class StallingCamera(LiveCamera):  # 9 frames, then read() blocks until the capture is released
        def __init__(self):
            super().__init__()
            self.released = threading.Event()

        def read(self):
            self.count += 1
            if self.count > 9:
                self.released.wait()
                return False, None
            return True, np.full((32, 32, 3), 10 * self.count, np.uint8)

        def release(self):
            self.released.set()

    monkeypatch.setattr(capture, "open_capture", lambda spec, timeout=None: StallingCamera())
    # Ctrl-C as a terminal delivers it, whatever handler an earlier library installed in this process
    # (in the full suite one did, and the run never stopped); --max-frames bounds the run either way.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(3.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    start = time.monotonic()
    try:
        result = invoke(run_main, ["--camera", "0", "--checkpoint", tiny_checkpoint, "--backend", "torch",
                                   "--read-timeout", "30", "--max-frames", "12", "--tokens", tmp_path / "t.rtok",
                                   "--no-display"])
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert result.exit_code == 0, result.output
    assert "stopped; keeping what was written" in result.stderr
    assert time.monotonic() - start < 10  # SIGINT at 3 s; before the fix it waited for the 30 s read timeout
    assert (tmp_path / "t.rtok").is_file()


def test_skip_backlog_keeps_the_newest_live_frame_and_counts_the_rest_as_dropped():
    clip = moving_still("astronaut", 6, 32)
    live = FrameSource(SourceSpec("rtsp://x", "x", live=True), queue_size=16, retries=0,
                       opener=lambda spec: FakeCapture(clip))
    with live:
        deadline = time.monotonic() + 10
        while live.queue.qsize() < 7 and time.monotonic() < deadline:  # six frames, then the end mark
            time.sleep(0.01)
        assert live.skip_backlog() == 5 and live.dropped == 5 and live.queue.empty()
        frames = list(live)
    assert len(frames) == 1 and np.array_equal(frames[0], clip[-1])
    with FrameSource(SourceSpec("clip.mp4", "clip.mp4"), opener=lambda spec: FakeCapture(clip)) as file_source:
        assert file_source.skip_backlog() == 0
        assert len(list(file_source)) == 6
