"""Where frames go: an MP4 written atomically, an optional window, and the overlay drawn on both."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.files import AtomicFile, StagedOutput


class VideoFile(StagedOutput):
    """cv2.VideoWriter into a temp file in the target folder, checked and renamed on close (never a
    half-written file, never a claimed one that does not play).

    OpenCV reports a failed write only through the file it leaves (a full disk gives a few KB with no
    readable frame, or an AVI whose header lists every frame while its data stops early): :meth:`finish`
    opens the written file again and checks that it lists exactly the frames written and that the last
    one decodes. :meth:`close` is :meth:`finish` then :meth:`commit`; a writer of several outputs finishes
    them all before it commits any.
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in (".mp4", ".avi", ".mkv", ".mov"):
            raise ReftokError(f"{self.path}: output video must end in .mp4, .avi, .mkv or .mov")
        if not self.path.parent.is_dir():
            raise ReftokError(f"output folder {self.path.parent} does not exist")
        try:
            self._out = AtomicFile(self.path, suffix=self.path.suffix)  # OpenCV picks the container by suffix
        except OSError as exc:
            raise ReftokError(f"cannot write video {self.path}: {exc.strerror or exc}") from None
        fourcc = cv2.VideoWriter_fourcc(*("MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"))
        self._writer = cv2.VideoWriter(str(self._out.tmp), fourcc, fps, size)
        if not self._writer.isOpened():
            self._out.discard()
            raise ReftokError(f"cannot write video {self.path} (codec or permissions)")
        self.frames = 0

    def write(self, frame_rgb: np.ndarray) -> None:
        self._writer.write(np.ascontiguousarray(frame_rgb[:, :, ::-1]))
        self.frames += 1

    def finish(self) -> None:
        """Close the writer, check the file it wrote and sync it (ReftokError, temp file removed, if bad)."""
        self._writer.release()
        listed, last_decodes = _written_frames(self._out.tmp, self.frames)
        if listed != self.frames or not last_decodes:
            self._out.discard()
            found = ("does not open" if listed < 0 else
                     f"lists {listed} of the {self.frames} frames written" if listed != self.frames else
                     "does not decode to its last frame")
            raise ReftokError(f"cannot write video {self.path}: the file OpenCV wrote {found} (disk full or an I/O "
                              "error?); nothing was written there")
        self._out.sync()

    def abort(self) -> None:
        self._writer.release()
        self._out.discard()


def _written_frames(path: Path, expected: int) -> tuple[int, bool]:
    """(frames the container at ``path`` lists, -1 if it does not open; whether frame ``expected`` - 1
    decodes and is the last one). One seek, not a full decode."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return -1, False
        listed = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if expected == 0:
            return listed, True
        if not cap.set(cv2.CAP_PROP_POS_FRAMES, expected - 1):
            return listed, False
        ok, _ = cap.read()
        return listed, bool(ok) and not cap.read()[0]
    finally:
        cap.release()


def display_available() -> bool:
    """True where a window can be shown (a display and an OpenCV with HighGUI)."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        cv2.namedWindow("reftok-probe", cv2.WINDOW_NORMAL)
        cv2.destroyWindow("reftok-probe")
        return True
    except cv2.error:
        return False


def side_by_side(original: np.ndarray, recon: np.ndarray, lines: list[str],
                 labels: tuple[str, str] = ("original", "reconstruction")) -> np.ndarray:
    """``[H,2W,3]`` uint8 RGB: original | reconstruction, text lines on a dark band at the top left and
    each half's label at its bottom left."""
    canvas = np.concatenate([original, recon], axis=1)
    scale = float(np.clip(canvas.shape[1] / 1280, 0.4, 1.0))
    line_height = int(32 * scale) + 2
    _draw_lines(canvas, lines, 0, line_height, scale)
    half = original.shape[1]
    for x, label in zip((0, half), labels):
        _draw_lines(canvas[:, x:x + half], [label], max(canvas.shape[0] - line_height - 6, 0), line_height, scale)
    return canvas


def _draw_lines(canvas: np.ndarray, lines: list[str], top: int, line_height: int, scale: float) -> None:
    """White text on a darkened band starting ``top`` pixels down, in place."""
    if not lines:
        return
    width = max(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for line in lines) + 10
    band = canvas[top: top + line_height * len(lines) + 6, :width]
    band[:] = (band * 0.35).astype(np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(canvas, line, (5, top + line_height * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)

