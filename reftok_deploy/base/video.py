"""Reading videos and stills as RGB uint8 frames, and the resize/crop used everywhere.

Frames are ``[H,W,3]`` uint8 RGB; clips are ``[N,H,W,3]`` uint8 RGB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from reftok_deploy.base.errors import ReftokError, report_damaged_input
from reftok_deploy.base.video_integrity import FrameTally, ended_early, unopenable_reason

# Largest frame (pixels) the commands run the model on unless told otherwise: 1920x1088. Memory
# grows linearly with pixels (measured: ~3 GB at 1280x720, ~6 GB at 1920x1080, OOM at 4000x3000).
DEFAULT_MAX_PIXELS = 1920 * 1088

VIDEO_SUFFIXES = {".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def to_rgb(image: np.ndarray, channel_order: str = "BGR") -> np.ndarray:
    """Convert gray ``[H,W]``/``[H,W,1]``, BGR(A)/RGB(A) ``[H,W,3|4]`` of any int/bool/float dtype to uint8 RGB.

    Alpha is dropped (composited over black). Floats are taken as [0,1].
    """
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif np.issubdtype(image.dtype, np.floating):
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ReftokError(f"unsupported pixel type {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ReftokError(f"unsupported image shape {image.shape}: expected gray, RGB or RGBA")
    if image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        image = (image[:, :, :3].astype(np.float32) * alpha + 0.5).astype(np.uint8)
    if channel_order == "BGR":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def resize_short_side(frame: np.ndarray, short: int) -> np.ndarray:
    """Resize ``[H,W,3]`` so min(H, W) == short, keeping the aspect ratio."""
    h, w = frame.shape[:2]
    scale = short / min(h, w)
    size = (max(short, round(w * scale)), max(short, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(frame, size, interpolation=interp)


def center_crop(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize ``[H,W,3]`` (aspect kept) until it covers ``width x height``, then crop the centre
    ``[height,width,3]``. A smaller frame is scaled up."""
    h, w = frame.shape[:2]
    scale = max(width / w, height / h)
    if (round(w * scale), round(h * scale)) != (w, h):
        size = (max(width, round(w * scale)), max(height, round(h * scale)))
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    h, w = frame.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    return np.ascontiguousarray(frame[top : top + height, left : left + width])


def center_square(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side to ``size`` and crop the centre ``[size,size,3]``."""
    return center_crop(frame, size, size)


def iter_video(path: str | Path, size: int | None = None) -> Iterator[np.ndarray]:
    """Yield RGB uint8 ``[H,W,3]`` frames of a video file (``size``: :func:`center_square` to ``[size,size,3]``,
    done before the BGR -> RGB copy, on fewer pixels; per channel, so the frames are the same); raise
    ReftokError if it cannot be read.

    A file that stops decoding before its end (truncated or damaged) yields what it has and is
    reported once (:func:`ended_early`); a caller that stops early (closes the generator) is
    not.
    """
    path = Path(path)
    if not path.is_file():
        raise ReftokError(f"video not found: {path}")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ReftokError(f"cannot open video {path}: {unopenable_reason(path)}")
        tally = FrameTally()
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            tally.add(cap)
            yield to_rgb(frame if size is None else center_square(frame, size), "BGR")
        if tally.frames == 0:
            raise ReftokError(f"cannot decode any frame of {path}: corrupt or unsupported video")
        if (message := ended_early(path, cap, tally)) is not None:
            report_damaged_input(message)
    finally:
        cap.release()


def read_video(path: str | Path, size: int | None = None, short_side: int | None = None,
               max_frames: int | None = None) -> np.ndarray:
    """Read a whole video as ``[N,H,W,3]`` uint8 RGB, optionally centre-cropped square or short-side resized."""
    frames = []
    for frame in iter_video(path):
        if size is not None:
            frame = center_square(frame, size)
        elif short_side is not None:
            frame = resize_short_side(frame, short_side)
        frames.append(frame)
        if max_frames is not None and len(frames) >= max_frames:
            break
    return np.stack(frames)


def read_image(path: str | Path) -> np.ndarray:
    """Read a still as ``[H,W,3]`` uint8 RGB (gray and RGBA are converted)."""
    path = Path(path)
    if not path.is_file():
        raise ReftokError(f"image not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ReftokError(f"cannot decode image {path}: corrupt or unsupported format")
    return to_rgb(image, "BGR")


def list_media(paths: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """Split files and folders (searched recursively) into (videos, images) by suffix."""
    videos: list[Path] = []
    images: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ReftokError(f"data path not found: {p}")
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            suffix = f.suffix.lower()
            if suffix in VIDEO_SUFFIXES:
                videos.append(f)
            elif suffix in IMAGE_SUFFIXES:
                images.append(f)
    return videos, images
