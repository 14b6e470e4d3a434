"""One GOP definition for every command: evaluation, parity, calibration feeds and the live runtime.

A stream is cut into GOPs: a reference frame (sent unquantised) followed by blocks of T frames
encoded as tokens against it. A new reference starts

- at the first frame;
- after ``refresh_blocks`` blocks;
- at a scene cut: a frame the reference cannot explain (:func:`scene_cut_score` above
  ``cut_threshold``), detected *before* encoding, so the block in progress ends there and no
  decoded frame ever shows the previous scene.

A block shorter than T (before a cut, or at the end of the stream) is padded with its last
frame for the codec; only its real frames are kept and scored. References are shown exactly
and never scored. Frames are ``[H,W,3]`` uint8 RGB throughout; no torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import cv2
import numpy as np

# Scene-cut score (mean absolute difference, 8-bit levels, of 3x3-cell patches at a 64-cell-wide
# thumbnail after the best local shift of up to 4 cells) above which the frame starts a new
# reference. Measured against each GOP's reference at 256x256: motion within one scene stays
# under 19 (box 5.4, carphone 4.7, vtest 3.2, cup 13.8, tree 18.9 in its fastest frames; suite
# pans, zooms, fast objects and noise under 4); the suite's cut scores 73, bikes.mp4's opening
# change 102, Megamind.avi's fade 44.
DEFAULT_CUT_THRESHOLD = 25.0
_THUMB_WIDTH = 64
_SEARCH_CELLS = 4


@dataclass(frozen=True)
class Gop:
    """A reference ``[H,W,3]`` and its block's real frames ``[k,H,W,3]`` (1 <= k <= T), uint8 RGB."""

    reference: np.ndarray
    block: np.ndarray
    cut: bool = False  # this GOP's reference starts a new scene
    index: int = 0  # position of the reference in the stream (its block follows it)

    def padded(self, block_frames: int) -> np.ndarray:
        """The block padded with its last frame to ``[T,H,W,3]``, as the codec needs it."""
        missing = block_frames - len(self.block)
        if missing <= 0:
            return self.block
        return np.concatenate([self.block, np.repeat(self.block[-1:], missing, axis=0)])


@dataclass(frozen=True)
class NewReference:
    """A frame that starts a GOP (``cut``: because the previous reference could not explain it)."""

    frame: np.ndarray
    cut: bool


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """Luma thumbnail ``[h,64]`` float32 of an ``[H,W,3]`` uint8 RGB frame (area-averaged: noise averages out)."""
    h, w = frame.shape[:2]
    size = (_THUMB_WIDTH, max(8, round(_THUMB_WIDTH * h / w)))
    gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA).astype(np.float32)


def scene_cut_score(reference_thumb: np.ndarray, frame_thumb: np.ndarray) -> float:
    """How badly the reference explains a frame: mean over the thumbnail of the smallest 3x3-patch
    mean absolute difference (8-bit levels) over shifts of up to 4 cells. Low for motion, high for cuts."""
    r = _SEARCH_CELLS
    padded = cv2.copyMakeBorder(reference_thumb, r, r, r, r, cv2.BORDER_REPLICATE)
    h, w = frame_thumb.shape
    best = np.full((h, w), np.inf, np.float32)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            diff = cv2.blur(np.abs(frame_thumb - padded[dy : dy + h, dx : dx + w]), (3, 3))
            np.minimum(best, diff, out=best)
    return float(best.mean())


class GopPlanner:
    """Streaming GOP decisions: feed frames one by one, get :class:`NewReference` and :class:`Gop` events."""

    def __init__(self, block_frames: int, refresh_blocks: int = 1,
                 cut_threshold: float | None = DEFAULT_CUT_THRESHOLD) -> None:
        if block_frames < 1 or refresh_blocks < 1:
            raise ValueError("block_frames and refresh_blocks must be >= 1")
        self.block_frames = block_frames
        self.refresh_blocks = refresh_blocks
        self.cut_threshold = cut_threshold
        self.reference: np.ndarray | None = None
        self._reference_thumb: np.ndarray | None = None
        self._cut = False
        self._blocks = 0
        self._pending: list[np.ndarray] = []
        self.references = 0
        self.cuts = 0
        self._seen = 0
        self._reference_index = 0

    def _start(self, frame: np.ndarray, cut: bool) -> NewReference:
        self.reference = frame
        self._reference_index = self._seen - 1
        self._reference_thumb = thumbnail(frame) if self.cut_threshold is not None else None
        self._cut = cut
        self._blocks = 0
        self.references += 1
        self.cuts += int(cut)
        return NewReference(frame, cut)

    def _close_block(self) -> Gop:
        gop = Gop(self.reference, np.stack(self._pending), self._cut, self._reference_index)
        self._pending = []
        self._blocks += 1
        return gop

    def push(self, frame: np.ndarray) -> list[NewReference | Gop]:
        """Feed one ``[H,W,3]`` uint8 RGB frame; returns the events it completes, in order."""
        self._seen += 1
        if self.reference is None:
            return [self._start(frame, cut=False)]
        if self.cut_threshold is not None and \
                scene_cut_score(self._reference_thumb, thumbnail(frame)) > self.cut_threshold:
            events: list[NewReference | Gop] = [self._close_block()] if self._pending else []
            return events + [self._start(frame, cut=True)]
        self._pending.append(frame)
        if len(self._pending) < self.block_frames:
            return []
        gop = self._close_block()
        if self._blocks >= self.refresh_blocks:
            self.reference = None  # the next frame becomes the reference
        return [gop]

    def flush(self) -> list[Gop]:
        """End of stream: the tail block (fewer than T frames), if any."""
        return [self._close_block()] if self._pending else []


def plan_gops(frames: Iterable[np.ndarray], block_frames: int, refresh_blocks: int = 1,
              cut_threshold: float | None = DEFAULT_CUT_THRESHOLD) -> list[Gop]:
    """Every GOP of a clip (``[N,H,W,3]`` uint8 or an iterable of frames), exactly as the live runtime forms them."""
    return list(iter_gops(frames, block_frames, refresh_blocks, cut_threshold))


def iter_gops(frames: Iterable[np.ndarray], block_frames: int, refresh_blocks: int = 1,
              cut_threshold: float | None = DEFAULT_CUT_THRESHOLD) -> Iterator[Gop]:
    planner = GopPlanner(block_frames, refresh_blocks, cut_threshold)
    for frame in frames:
        yield from (e for e in planner.push(frame) if isinstance(e, Gop))
    yield from planner.flush()
