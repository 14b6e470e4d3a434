"""Capture against real components: the system's OpenCV (GStreamer build), a videotestsrc pipeline,
and a loopback RTSP server that is killed, frozen (SIGSTOP) and restarted.

They run with the system Python (Debian's python3-opencv: the OpenCV Jetson users are told to use)
on a copy of the capture layer, which needs neither torch nor a pip OpenCV. .ci/run installs the
packages; elsewhere the tests skip with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"


def _system_probe() -> str | None:
    """Why the system stack is unusable here, or None."""
    if not os.path.exists(SYSTEM_PYTHON):
        return "no system python3"
    probe = ("import re, cv2, numpy, gi; gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import GstRtspServer; "
             "assert re.search(r'GStreamer:\\s+YES', cv2.getBuildInformation()), 'no GStreamer'")
    result = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    return None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["failed"])[-1]


REASON = _system_probe()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"system OpenCV/GStreamer/RTSP stack missing: {REASON} "
                                "(apt install python3-opencv gir1.2-gst-rtsp-server-1.0 python3-gi "
                                "gstreamer1.0-plugins-good)")


@pytest.fixture(scope="module")
def capture_tree(tmp_path_factory) -> Path:
    """The capture layer as an importable tree for the system Python (it needs no torch)."""
    root = tmp_path_factory.mktemp("syspkg")
    package = root / "reftok_deploy"
    (package / "runtimes").mkdir(parents=True)
    for name in ("__init__.py", "errors.py", "video.py"):
        shutil.copy(ROOT / "reftok_deploy" / name, package / name)
    for name in ("__init__.py", "capture.py"):
        shutil.copy(ROOT / "runtimes" / name, package / "runtimes" / name)
    return root


def run_system(capture_tree: Path, code: str, timeout: float = 120) -> dict:
    """Run ``code`` with the system Python on the capture tree; it prints one JSON line last."""
    result = subprocess.run([SYSTEM_PYTHON, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=timeout, cwd=capture_tree, env=dict(os.environ, PYTHONPATH=str(capture_tree)))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_system_opencv_reads_a_finite_gstreamer_pipeline_to_its_end(capture_tree):
    report = run_system(capture_tree, """
        import json
        from reftok_deploy.runtimes.capture import FrameSource, opencv_summary, parse_source
        spec = parse_source("videotestsrc num-buffers=30 ! video/x-raw,width=64,height=48 ! videoconvert ! "
                            "video/x-raw,format=BGR ! appsink")
        with FrameSource(spec, read_timeout=10) as source:
            frames = list(source)
        print(json.dumps({"frames": len(frames), "shape": list(frames[0].shape), "live": spec.live,
                          "reconnects": source.reconnects, "opencv": opencv_summary()}))
    """)
    assert report["frames"] == 30 and report["shape"] == [48, 64, 3]
    assert not report["live"] and report["reconnects"] == 0 and "GStreamer yes" in report["opencv"]


def test_a_pipeline_with_a_missing_element_fails_fast_with_one_line(capture_tree):
    report = run_system(capture_tree, """
        import json, time
        from reftok_deploy.errors import ReftokError
        from reftok_deploy.runtimes.capture import SourceSpec, open_capture, parse_source
        started = time.perf_counter()
        try:
            open_capture(parse_source("csi://0"), timeout=8)
            message = None
        except ReftokError as exc:
            message = str(exc)
        print(json.dumps({"message": message, "seconds": time.perf_counter() - started}))
    """)
    assert report["message"] and "\\n" not in report["message"] and report["seconds"] < 15, report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtspServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([SYSTEM_PYTHON, str(ROOT / "tests" / "live" / "rtsp_server.py"), str(self.port)],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.process.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)


def test_rtsp_server_killed_frozen_and_restarted(capture_tree):
    port = free_port()
    server = RtspServer(port)
    server.start()
    control = capture_tree / "control"
    control.mkdir()
    script = f"""
        import json, os, time
        from reftok_deploy.runtimes.capture import FrameSource, parse_source
        events, count = [], 0
        source = FrameSource(parse_source("rtsp://127.0.0.1:{port}/test"), retries=8, backoff=0.5, read_timeout=3)
        started = time.perf_counter()
        with source:
            for frame in source:
                count += 1
                if count in (20, 60):  # ask the test to kill / freeze the server, once each
                    open("{control}/at_%d" % count, "w").close()
                if count >= 100 or time.perf_counter() - started > 90:
                    break
        print(json.dumps({{"frames": count, "reconnects": source.reconnects, "stalls": source.stalls,
                          "seconds": time.perf_counter() - started, "shape": list(frame.shape)}}))
    """
    client = subprocess.Popen([SYSTEM_PYTHON, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=capture_tree,
                              env=dict(os.environ, PYTHONPATH=str(capture_tree)))
    try:
        deadline = time.time() + 100
        killed = frozen = False
        while client.poll() is None and time.time() < deadline:
            if not killed and (control / "at_20").exists():
                server.stop()
                time.sleep(1.0)
                server.start()
                killed = True
            if killed and not frozen and (control / "at_60").exists():
                server.process.send_signal(signal.SIGSTOP)
                time.sleep(5)  # longer than read_timeout: the client must notice
                server.process.send_signal(signal.SIGCONT)
                frozen = True
            time.sleep(0.1)
        out, err = client.communicate(timeout=30)
    finally:
        client.kill()
        server.stop()
    assert client.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert killed and frozen, report
    assert report["frames"] == 100 and report["shape"] == [48, 64, 3], report
    assert report["reconnects"] >= 1 and report["stalls"] >= 1, report


def test_v4l2_pipelines_parse_in_real_gstreamer(capture_tree):
    """The pipelines made for raw, MJPEG and H.264 webcams are valid GStreamer (parsed, not played:
    no camera here)."""
    report = run_system(capture_tree, """
        import json
        import gi
        gi.require_version("Gst", "1.0")
        from gi.repository import Gst
        from reftok_deploy.runtimes import capture
        Gst.init(None)
        capture.has_gstreamer = lambda: True
        errors = {}
        for codec in ("raw", "mjpeg", "h264"):
            text = capture.parse_source(f"v4l2:///dev/video0?width=640&height=480&framerate=30&codec={codec}").target
            try:
                Gst.parse_launch(text)
                errors[codec] = None
            except Exception as exc:
                errors[codec] = str(exc)
        print(json.dumps(errors))
    """)
    assert report == {"raw": None, "mjpeg": None, "h264": None}, report
