"""Capture and display against real components: the system's OpenCV (GStreamer and Qt build), a
videotestsrc pipeline, a loopback RTSP server that is killed, frozen (SIGSTOP) and restarted, and
the side-by-side window on an Xvfb display, read back from the X server.

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
    for folder in ("base", "runtimes"):
        (package / folder).mkdir(parents=True)
    shutil.copy(ROOT / "reftok_deploy" / "__init__.py", package / "__init__.py")
    for name in ("__init__.py", "errors.py", "video.py", "video_integrity.py", "files.py"):
        shutil.copy(ROOT / "reftok_deploy" / "base" / name, package / "base" / name)
    for name in ("__init__.py", "capture.py", "output.py"):
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


@pytest.mark.slow  # end-to-end tier: waits out the 8 s open watchdog (fast cover: test_runtime's watchdog test)
def test_a_pipeline_with_a_missing_element_fails_fast_with_one_line(capture_tree):
    report = run_system(capture_tree, """
        import json, time
        from reftok_deploy.base.errors import ReftokError
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


@pytest.mark.slow  # end-to-end tier: a real RTSP server killed, frozen 5 s and restarted (fast cover: test_runtime's
# fake captures that drop and freeze)
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


def read_xwd(data: bytes):
    """An X window dump (xwd -root, 24/32-bit TrueColor) -> ``[H,W,3]`` uint8 RGB."""
    import struct

    import numpy as np

    fields = struct.unpack(">25I", data[:100])
    header_size, width, height, byte_order = fields[0], fields[4], fields[5], fields[7]
    bits_per_pixel, bytes_per_line, ncolors = fields[11], fields[12], fields[19]
    assert bits_per_pixel in (24, 32), f"xwd with {bits_per_pixel} bits per pixel"
    size = bits_per_pixel // 8
    start = header_size + 12 * ncolors
    rows = np.frombuffer(data[start:start + bytes_per_line * height], np.uint8).reshape(height, bytes_per_line)
    pixels = rows[:, :size * width].reshape(height, width, size)
    # byte_order 0 (LSBFirst): B, G, R[, X] in memory; 1 (MSBFirst): [X,] R, G, B
    return pixels[:, :, [2, 1, 0]] if byte_order == 0 else pixels[:, :, [size - 3, size - 2, size - 1]]


@pytest.mark.skipif(shutil.which("Xvfb") is None or shutil.which("xwd") is None,
                    reason="Xvfb or xwd missing (apt install xvfb x11-apps)")
def test_display_window_under_xvfb_shows_both_halves(capture_tree, tmp_path):
    """The side-by-side window of reftok-run, drawn by the system OpenCV (Qt) on a virtual display,
    read back from the X server: original on the left, reconstruction on the right."""
    import numpy as np

    display = f":{90 + os.getpid() % 9}"
    server = subprocess.Popen(["Xvfb", display, "-screen", "0", "1600x900x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        env = dict(os.environ, DISPLAY=display, QT_QPA_PLATFORM="xcb")
        script = textwrap.dedent("""
            import json, subprocess, sys, time
            import cv2, numpy as np
            from reftok_deploy.runtimes.output import display_available, side_by_side
            ok = display_available()
            left = np.zeros((120, 160, 3), np.uint8); left[:] = (220, 30, 30)     # red original
            right = np.zeros((120, 160, 3), np.uint8); right[:] = (30, 30, 220)   # blue reconstruction
            canvas = side_by_side(left, right, ["RefTok test"])
            cv2.namedWindow("reftok-run", cv2.WINDOW_AUTOSIZE)
            cv2.moveWindow("reftok-run", 0, 0)
            end = time.time() + 2.0
            while time.time() < end:
                cv2.imshow("reftok-run", canvas[:, :, ::-1])
                cv2.waitKey(50)
            dump = subprocess.run(["xwd", "-root", "-silent"], capture_output=True).stdout
            open(sys.argv[1], "wb").write(dump)
            cv2.destroyAllWindows()
            print(json.dumps({"display_available": ok}))
        """)
        shot = tmp_path / "screen.xwd"
        result = subprocess.run([SYSTEM_PYTHON, "-c", script, str(shot)], capture_output=True, text=True, timeout=60,
                                cwd=capture_tree, env=dict(env, PYTHONPATH=str(capture_tree)))
        assert result.returncode == 0, result.stderr[-2000:]
        assert json.loads(result.stdout.strip().splitlines()[-1])["display_available"]
        screen = read_xwd(shot.read_bytes()).astype(int)
        red = (screen[:, :, 0] > 180) & (screen[:, :, 2] < 80)
        blue = (screen[:, :, 2] > 180) & (screen[:, :, 0] < 80)
        assert red.sum() > 5000 and blue.sum() > 5000, (red.sum(), blue.sum())
        red_x, blue_x = np.nonzero(red)[1].mean(), np.nonzero(blue)[1].mean()
        assert blue_x - red_x > 100, (red_x, blue_x)  # original left, reconstruction right, side by side
    finally:
        server.kill()
        server.wait(10)


@pytest.fixture(scope="module")
def system_venv(tmp_path_factory) -> Path:
    """A venv on the system Python that sees Debian's OpenCV (--system-site-packages), with torch and
    this package: how a Jetson / GStreamer box installs reftok-deploy (README). numpy stays < 2 because
    Debian's cv2 is built against numpy 1.x."""
    import torch

    venv = tmp_path_factory.mktemp("sysvenv") / "venv"
    steps = [[SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv)],
             [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
              f"torch=={torch.__version__.split('+')[0]}", "numpy<2", "-e", str(ROOT)]]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.skip(f"cannot make a system-OpenCV venv here: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    check = subprocess.run([str(venv / "bin" / "python"), "-c", "import cv2, torch; print(cv2.__file__)"],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and check.stdout.startswith("/usr/lib/python3"), check.stderr[-2000:]
    return venv


@pytest.mark.slow  # end-to-end tier: builds a venv on the system Python (pip installs torch and this package)
def test_reftok_run_end_to_end_on_the_system_opencv(system_venv, tmp_path):
    """reftok-run on a real GStreamer pipeline through Debian's OpenCV, then its stream replayed."""
    pipeline = ("videotestsrc num-buffers=40 pattern=ball ! video/x-raw,width=96,height=64 ! videoconvert ! "
                "video/x-raw,format=BGR ! appsink")
    run = subprocess.run([str(system_venv / "bin" / "reftok-run"), "--source", pipeline, "--backend", "torch", "--json",
                          "--output", str(tmp_path / "side.mp4"), "--tokens", str(tmp_path / "t.rtok")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert summary["frames"] == 40 and summary["source"] == "GStreamer pipeline" and summary["reconnects"] == 0
    assert "GStreamer yes" in run.stderr and "/usr/lib/python3" in run.stderr  # the start-up line names the OpenCV
    replay = subprocess.run([str(system_venv / "bin" / "reftok-decode"), str(tmp_path / "t.rtok"), "--backend", "torch",
                             "--json"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert replay.returncode == 0, replay.stderr[-3000:]
    assert json.loads(replay.stdout)["reconstruction_sha256"] == summary["reconstruction_sha256"]


@pytest.mark.slow  # end-to-end tier: the system-OpenCV venv, a real reftok-run on a virtual display
@pytest.mark.skipif(shutil.which("Xvfb") is None or shutil.which("xwd") is None,
                    reason="Xvfb or xwd missing (apt install xvfb x11-apps)")
def test_reftok_run_display_under_xvfb(system_venv, tmp_path):
    """reftok-run --display on a virtual display: the window holds both halves (a solid red source,
    so the original and its reconstruction are both red blocks side by side)."""
    import numpy as np

    display = f":{80 + os.getpid() % 9}"
    server = subprocess.Popen(["Xvfb", display, "-screen", "0", "1600x900x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, DISPLAY=display, QT_QPA_PLATFORM="xcb")
    # a source longer than the run (--max-frames ends it), so the window stays up while a slow, busy
    # machine loads the model and decodes the first block
    pipeline = ("videotestsrc is-live=true num-buffers=1800 pattern=red ! video/x-raw,width=160,height=128,framerate=30/1 "
                "! videoconvert ! video/x-raw,format=BGR ! appsink")
    try:
        time.sleep(1.5)
        run = subprocess.Popen([str(system_venv / "bin" / "reftok-run"), "--source", pipeline, "--backend", "torch",
                                "--display", "--json", "--max-frames", "120"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env=env, cwd=tmp_path)
        shot = b""
        deadline = time.time() + 120
        while run.poll() is None and time.time() < deadline:
            time.sleep(0.3)
            grab = subprocess.run(["xwd", "-root", "-silent", "-display", display], capture_output=True, timeout=30)
            if grab.returncode != 0 or len(grab.stdout) < 100:
                continue  # a busy X server can answer a grab with nothing; try again
            screen = read_xwd(grab.stdout).astype(int)
            red = (screen[:, :, 0] > 150) & (screen[:, :, 1] < 90) & (screen[:, :, 2] < 90)
            # more red than one frame holds (the overlay text and the two labels darken about a third of it)
            if red.sum() > 1.1 * 160 * 128:
                shot = grab.stdout
                break
        out, err = run.communicate(timeout=120)
    finally:
        server.kill()
        server.wait(10)
    assert run.returncode == 0, err[-3000:]
    assert shot, "no window with both halves appeared"
    screen = read_xwd(shot).astype(int)
    red = (screen[:, :, 0] > 150) & (screen[:, :, 1] < 90) & (screen[:, :, 2] < 90)
    xs = np.nonzero(red)[1]
    assert xs.max() - xs.min() > 1.8 * 160, (xs.min(), xs.max())  # two frames wide: original | reconstruction
