"""OpenCV capture: camera index, file, RTSP, GStreamer / Jetson CSI, read on a thread into a bounded queue.

Source strings:
- ``0``, ``1``...              camera index (V4L2 / the platform default)
- ``path/to/file.mp4`` or ``file:///abs/path.mp4``
- ``rtsp://host/stream``       (FFmpeg, or GStreamer where OpenCV has it)
- ``csi://N[?width=&height=&framerate=&flip=]``  Jetson CSI camera N via nvarguscamerasrc (needs
  GStreamer); flip as jetson-utils names it: none, counterclockwise, rotate-180, clockwise,
  horizontal, upper-right-diagonal, vertical, upper-left-diagonal
- ``v4l2:///dev/videoN[?width=&height=&framerate=&codec=raw|mjpeg|h264]``  V4L2 device (GStreamer
  pipeline where available, decoding MJPEG / H.264 webcams; else OpenCV's CAP_V4L2, raw formats)
- anything containing ``!``    a raw GStreamer pipeline ending in appsink
Frames come out as ``[H,W,3]`` uint8 RGB. Live sources that drop or stall (no frame for
``read_timeout`` seconds) are reopened with exponential back-off; files and finite GStreamer
pipelines (``num-buffers=``, ``filesrc``) end at their last frame. Opening is bounded by
``open_timeout`` (a watchdog: OpenCV's own open can hang on a bad pipeline or a dead server).
Works with PyPI's OpenCV and with a distribution's (GStreamer) build: optional modules are
feature-detected.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import cv2
import numpy as np

from reftok_deploy.base.errors import ReftokError, report_damaged_input
from reftok_deploy.base.video import to_rgb
from reftok_deploy.base.video_integrity import FrameTally, ended_early

_END = object()


@dataclass(frozen=True)
class SourceSpec:
    """What to open and how: ``target`` for cv2.VideoCapture, ``api`` its backend, ``live`` if it can drop."""

    label: str
    target: int | str
    api: int = cv2.CAP_ANY
    live: bool = False


# Seconds: how long opening a source may take, and how long a live source may go without a frame.
DEFAULT_OPEN_TIMEOUT = 20.0
DEFAULT_READ_TIMEOUT = 10.0
# GStreamer elements that make a pipeline finite: it ends (EOS) and is not reopened.
FINITE_PIPELINE = re.compile(r"\bnum-buffers\s*=\s*\d+|\b(filesrc|multifilesrc)\b|uri=file:")


def has_gstreamer() -> bool:
    info = cv2.getBuildInformation()
    return bool(re.search(r"GStreamer:\s+YES", info))


def opencv_summary() -> str:
    """'OpenCV 4.6.0 (/usr/lib/python3/dist-packages/cv2..., GStreamer yes, GUI yes)' for start-up lines."""
    gui = re.search(r"GUI:\s+(\S+)", cv2.getBuildInformation())
    where = os.path.dirname(getattr(cv2, "__file__", "") or "?")
    return (f"OpenCV {cv2.__version__} ({where}, GStreamer {'yes' if has_gstreamer() else 'no'}, "
            f"GUI {gui.group(1) if gui and gui.group(1).upper() != 'NONE' else 'none'})")


def quiet_opencv() -> None:
    """Keep OpenCV's own warnings off stderr where this build allows it (our one-line errors say it
    better); distribution builds such as Debian's 4.6 have no ``cv2.utils.logging``."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is not None and hasattr(logging, "setLogLevel"):
        if logging.getLogLevel() > logging.LOG_LEVEL_ERROR:  # never louder than the command made it (silent)
            logging.setLogLevel(logging.LOG_LEVEL_ERROR)
    elif hasattr(cv2, "setLogLevel"):
        try:
            if getattr(cv2, "getLogLevel", lambda: 3)() > 2:
                cv2.setLogLevel(2)  # older bindings: 2 = error
        except Exception:
            pass


def _needs_gstreamer(label: str) -> None:
    if not has_gstreamer():
        raise ReftokError(f"{label} needs OpenCV built with GStreamer, and this OpenCV has none "
                          "(PyPI wheels lack it; use the system OpenCV on Jetson)")


FLIP_METHODS = {"none": 0, "counterclockwise": 1, "rotate-180": 2, "clockwise": 3, "horizontal": 4,
                "upper-right-diagonal": 5, "vertical": 6, "upper-left-diagonal": 7}
V4L2_CODECS = {"raw": "", "mjpeg": "image/jpeg", "h264": "video/x-h264"}


def csi_pipeline(sensor: int, width: int = 1280, height: int = 720, fps: int = 30, flip: str = "none") -> str:
    return (f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width={width},height={height},"
            f"framerate={fps}/1 ! nvvidconv flip-method={FLIP_METHODS[flip]} ! video/x-raw,format=BGRx ! "
            "videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=2")


def v4l2_pipeline(device: str, width: int | None = None, height: int | None = None, fps: int | None = None,
                  codec: str = "raw") -> str:
    """v4l2src with the camera's format asked for; MJPEG and H.264 webcams decoded (decodebin)."""
    caps = ",".join([V4L2_CODECS[codec] or "video/x-raw"] + [f"{k}={v}" for k, v in
                    (("width", width), ("height", height)) if v] + ([f"framerate={fps}/1"] if fps else []))
    decode = " ! decodebin" if codec != "raw" else ""
    return (f"v4l2src device={device} ! {caps}{decode} ! videoconvert ! video/x-raw,format=BGR ! "
            "appsink drop=1 max-buffers=2")


def _uri_options(text: str, allowed: dict[str, type | dict]) -> tuple[str, dict]:
    """'csi://0?width=1920&flip=rotate-180' -> ('csi://0', {'width': 1920, 'flip': 'rotate-180'})."""
    base, _, query = text.partition("?")
    options: dict = {}
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        kind = allowed.get(key)
        if kind is None:
            raise ReftokError(f"{base}: unknown option {key!r} (known: {', '.join(allowed)})")
        if isinstance(kind, dict):
            if value not in kind:
                raise ReftokError(f"{base}: {key} must be one of {', '.join(kind)}, got {value!r}")
            options[key] = value
        elif not value.isdigit() or not 0 < int(value) <= 16384:
            raise ReftokError(f"{base}: {key} must be a positive integer, got {value!r}")
        else:
            options[key] = int(value)
    return base, options


def parse_source(text: str) -> SourceSpec:
    """Turn a user's source string into a :class:`SourceSpec` (see module docstring)."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        return SourceSpec(f"camera {text}", int(text), live=True)
    if "!" in text:
        _needs_gstreamer("a GStreamer pipeline")
        return SourceSpec("GStreamer pipeline", text, cv2.CAP_GSTREAMER, live=not FINITE_PIPELINE.search(text))
    if text.startswith("csi://"):
        base, options = _uri_options(text, {"width": int, "height": int, "framerate": int, "flip": FLIP_METHODS})
        sensor = base[len("csi://"):]
        if not sensor.isdigit():
            raise ReftokError(f"bad CSI source {text!r}: expected csi://N[?width=W&height=H&framerate=F&flip=...]")
        _needs_gstreamer(base)
        pipeline = csi_pipeline(int(sensor), options.get("width", 1280), options.get("height", 720),
                                options.get("framerate", 30), options.get("flip", "none"))
        return SourceSpec(f"CSI camera {sensor}", pipeline, cv2.CAP_GSTREAMER, live=True)
    if text.startswith("v4l2://"):
        base, options = _uri_options(text, {"width": int, "height": int, "framerate": int, "codec": V4L2_CODECS})
        device = base[len("v4l2://"):]
        match = re.fullmatch(r"/dev/video(\d+)", device)
        if not match:
            raise ReftokError(f"bad V4L2 source {text!r}: expected v4l2:///dev/videoN[?width=W&height=H&codec=mjpeg]")
        if has_gstreamer():
            pipeline = v4l2_pipeline(device, options.get("width"), options.get("height"), options.get("framerate"),
                                     options.get("codec", "raw"))
            return SourceSpec(f"V4L2 {device}", pipeline, cv2.CAP_GSTREAMER, live=True)
        if options.get("codec", "raw") != "raw":
            _needs_gstreamer(f"{base} with codec={options['codec']}")
        return SourceSpec(f"V4L2 {device}", int(match.group(1)), cv2.CAP_V4L2, live=True)
    if text.startswith(("rtsp://", "rtsps://", "http://", "https://")):
        return SourceSpec(text, text, cv2.CAP_FFMPEG, live=True)
    path = text[len("file://"):] if text.startswith("file://") else text
    return SourceSpec(path, path)


def is_file_source(spec: SourceSpec) -> bool:
    """A video file (``--video``, ``file://``), not a camera, stream, pipeline or image sequence."""
    return (not spec.live and spec.api == cv2.CAP_ANY and isinstance(spec.target, str)
            and os.path.isfile(spec.target))


def open_capture(spec: SourceSpec, timeout: float = DEFAULT_OPEN_TIMEOUT) -> cv2.VideoCapture:
    """cv2.VideoCapture of ``spec``, opened on a watchdog thread: a hang past ``timeout`` seconds
    is one clear error (the stuck open is abandoned on its daemon thread)."""
    quiet_opencv()
    result: list = []
    opener = threading.Thread(target=lambda: result.append(cv2.VideoCapture(spec.target, spec.api)),
                              name="reftok-open", daemon=True)
    opener.start()
    opener.join(timeout)
    if not result:
        raise ReftokError(f"opening {spec.label} timed out after {timeout:g} s (a missing GStreamer element, "
                          "an unreachable server?); raise it with --open-timeout")
    cap = result[0]
    if not cap.isOpened():
        cap.release()
        raise ReftokError(f"cannot open {spec.label}" + (": no such camera or it is busy" if "camera" in spec.label
                                                        else ""))
    return cap


class FrameSource:
    """Iterate RGB frames of a source; a reader thread fills a bounded queue.

    Files block the reader when the queue is full (no frame lost); live sources drop the
    oldest frame instead (latency stays low). A live source that stops delivering is
    reopened up to ``retries`` times with back-off; after that the stream ends cleanly.
    A file that stops before its end (truncated, damaged) is reported once through
    ``report_damaged_input`` when iteration reaches that end (see ``reftok_deploy.base.video_integrity.ended_early``).
    """

    def __init__(self, spec: SourceSpec, queue_size: int = 16, retries: int = 5, backoff: float = 0.5,
                 opener: Callable[[SourceSpec], cv2.VideoCapture] = open_capture,
                 read_timeout: float = DEFAULT_READ_TIMEOUT) -> None:
        self.spec = spec
        self.read_timeout = read_timeout
        self.stalls = 0  # stalls seen (reported)
        self._stalled_in_a_row = 0
        self.retries = retries
        self.backoff = backoff
        self.opener = opener
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.reconnects = 0
        self.dropped = 0
        self.read_seconds = 0.0  # time the reader spent in read() and colour conversion (the capture stage)
        self._stop = threading.Event()
        self._interrupted = threading.Event()
        self._cap = opener(spec)  # fail fast, in the caller's thread, with one clear line
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.0 < fps <= 1000.0 else 30.0  # RTSP may report 0, NaN or 90000
        self._generation = 0  # bumped when a stalled reader is abandoned; its late frames are dropped
        self._thread = threading.Thread(target=self._read, args=(0, self._cap), name="reftok-capture", daemon=True)
        self.error: Exception | None = None
        self._newest: np.ndarray | None = None
        self._ended = False  # skip_backlog took the reader's end mark
        self._drop_lock = threading.Lock()
        self._tally = FrameTally() if is_file_source(spec) else None  # files only: frames read, last timestamp
        self._damage: str | None = None  # set by the reader when a file ends early; reported at the end

    def __enter__(self) -> "FrameSource":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _put(self, item) -> None:
        if not self.spec.live or item is _END:
            while not self._stop.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue
            return
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            try:
                self.queue.get_nowait()
                self.count_dropped(1)
            except queue.Empty:
                pass
            self.queue.put_nowait(item)

    def _reopen(self, cap: cv2.VideoCapture | None, generation: int) -> cv2.VideoCapture | None:
        if cap is not None:
            cap.release()
        for attempt in range(self.retries):
            if self._stop.wait(self.backoff * 2**attempt) or generation != self._generation:
                return None  # closing, or a newer reader owns the source
            try:
                cap = self.opener(self.spec)
                self.reconnects += 1
                return cap
            except ReftokError:
                continue
        return None

    def _read(self, generation: int, cap: cv2.VideoCapture | None) -> None:
        try:
            while not self._stop.is_set() and generation == self._generation:
                start = time.perf_counter()
                ok, frame = cap.read() if cap is not None else (False, None)
                if generation != self._generation:
                    break  # abandoned while blocked in read(): a newer reader owns the source
                if ok:
                    if self._tally is not None:
                        self._tally.add(cap)
                    frame = to_rgb(frame, "BGR")
                    self.read_seconds += time.perf_counter() - start
                    self._put(frame)
                elif not self.spec.live:
                    if self._tally is not None and self._tally.frames:
                        self._damage = ended_early(self.spec.target, cap, self._tally)
                    break
                elif (cap := self._reopen(cap, generation)) is None:
                    break
        except Exception as exc:  # surfaced to the consumer, never lost in the thread
            if generation == self._generation:
                self.error = exc
        finally:
            if cap is not None:
                cap.release()
            if generation == self._generation:
                self._put(_END)

    def _restart_stalled(self) -> None:
        """A live source sent nothing for read_timeout s (a frozen server): abandon the blocked
        reader and read from a fresh connection on a new thread."""
        self.stalls += 1
        self._stalled_in_a_row += 1
        self._generation += 1
        self._thread = threading.Thread(target=self._read, args=(self._generation, None), name="reftok-capture",
                                        daemon=True)
        self._thread.start()

    def skip_backlog(self) -> int:
        """Live sources: drop the frames queued while the consumer was busy elsewhere (measuring
        backends, say) except the newest, which iteration yields next, so processing resumes on a
        fresh frame. They count in ``dropped``; returns how many were dropped. Files keep every
        frame (returns 0)."""
        if not self.spec.live:
            return 0
        newest, skipped = None, 0
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is _END:  # the reader's last item: iteration ends after the newest frame
                self._ended = True
                break
            skipped += newest is not None
            newest = item
        if newest is not None:
            self._newest = newest
        self.count_dropped(skipped)
        return skipped

    def count_dropped(self, frames: int) -> None:
        """Add ``frames`` to ``dropped`` (the reader thread and the consumer both drop frames)."""
        with self._drop_lock:
            self.dropped += frames

    def interrupt(self) -> None:
        """End iteration within a tenth of a second, even while waiting on a source that stalls (Ctrl-C)."""
        self._interrupted.set()

    def _get(self):
        """The next queued item, waiting up to read_timeout in short slices so interrupt() is seen."""
        deadline = time.monotonic() + self.read_timeout
        while not self._interrupted.is_set():
            if self._ended and self.queue.empty():
                return _END
            left = deadline - time.monotonic()
            if left <= 0:
                raise queue.Empty
            try:
                return self.queue.get(timeout=min(0.1, left))
            except queue.Empty:
                continue
        return _END

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            if self._newest is not None:  # kept by skip_backlog
                item, self._newest = self._newest, None
                yield item
                continue
            try:
                item = self._get()
            except queue.Empty:
                if not self.spec.live:
                    raise ReftokError(f"{self.spec.label} delivered no frame for {self.read_timeout:g} s") from None
                if self._stalled_in_a_row >= self.retries:
                    raise ReftokError(f"{self.spec.label} stalled {self._stalled_in_a_row} times in a row (no frame "
                                      f"for "
                                      f"{self.read_timeout:g} s each); giving up") from None
                self._restart_stalled()
                continue
            if item is _END:
                if self.error is not None:
                    raise ReftokError(f"reading {self.spec.label} failed: {self.error}")
                if self._damage is not None:
                    report_damaged_input(self._damage)
                return
            self._stalled_in_a_row = 0  # a 24/7 stream may stall now and then: give up on a run of them
            yield item

    def close(self) -> None:
        self._stop.set()
        if self._thread.ident is None:  # never started: release what __init__ opened
            self._cap.release()
        elif self._thread.is_alive():
            self._thread.join(timeout=5)


class ArraySource:
    """In-memory frames ``[H,W,3]`` uint8 RGB with the FrameSource interface (demo clips, tests)."""

    def __init__(self, label: str, frames: list[np.ndarray], fps: float = 10.0) -> None:
        self.spec = SourceSpec(label, label)
        self.frames = frames
        self.fps = fps
        self.dropped = self.reconnects = 0

    def __enter__(self) -> "ArraySource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release (FrameSource's interface)."""

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.frames)
