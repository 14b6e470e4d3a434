"""Where frames go: an MP4 written atomically, an optional window, and the overlay drawn on both."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from reftok_deploy.errors import ReftokError
from reftok_deploy.files import AtomicFile


class VideoFile:
    """cv2.VideoWriter into a temp file in the target folder, renamed on close (never a half-written file)."""

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

    def close(self) -> Path:
        self._writer.release()
        return self._out.commit()

    def abort(self) -> None:
        self._writer.release()
        self._out.discard()


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
