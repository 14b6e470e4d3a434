"""The live GOP encoder: :class:`reftok_deploy.gop.GopPlanner`'s decisions run through a codec.

The planner decides (reference at the first frame, after ``refresh_blocks`` blocks, and at a
scene cut detected before encoding); this module encodes and decodes each block, padded with
its last frame to T, keeping only the real frames. reftok-eval forms the same GOPs with the
same planner, so both report the same quality on the same clip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from reftok_deploy.gop import DEFAULT_CUT_THRESHOLD, Gop, GopPlanner, NewReference
from reftok_deploy.metrics import psnr
from reftok_deploy.runtimes.codec import FrameCodec


@dataclass
class ReferenceEvent:
    frame: np.ndarray  # [H,W,3] uint8 RGB, sent unquantised
    cut: bool = False  # starts a new scene


@dataclass
class BlockEvent:
    tokens: np.ndarray  # [G,h,w] int32
    originals: np.ndarray  # [k,H,W,3] uint8 RGB (k <= T real frames)
    recon: np.ndarray  # [k,H,W,3] uint8 RGB
    psnr: list[float] = field(default_factory=list)
    seconds: float = 0.0  # encode + decode wall time


class GopEncoder:
    def __init__(self, codec: FrameCodec, block_frames: int, refresh_blocks: int = 1,
                 cut_threshold: float | None = DEFAULT_CUT_THRESHOLD) -> None:
        self.codec = codec
        self.block_frames = block_frames
        self.planner = GopPlanner(block_frames, refresh_blocks, cut_threshold)

    @property
    def references(self) -> int:
        return self.planner.references

    @property
    def scene_changes(self) -> int:
        return self.planner.cuts

    def _handle(self, events: list[NewReference | Gop]) -> Iterator[ReferenceEvent | BlockEvent]:
        for event in events:
            if isinstance(event, NewReference):
                yield ReferenceEvent(event.frame, event.cut)
            else:
                yield self._encode(event)

    def push(self, frame: np.ndarray) -> Iterator[ReferenceEvent | BlockEvent]:
        """Feed one ``[H,W,3]`` uint8 RGB frame; yields the events it completes."""
        yield from self._handle(self.planner.push(frame))

    def flush(self) -> Iterator[BlockEvent]:
        """Encode the tail (fewer than T frames) at the end of a stream."""
        yield from self._handle(self.planner.flush())

    def _encode(self, gop: Gop) -> BlockEvent:
        real = len(gop.block)
        start = time.perf_counter()
        tokens = self.codec.encode(gop.reference, gop.padded(self.block_frames))
        recon = self.codec.decode(gop.reference, tokens)[:real]
        return BlockEvent(tokens, gop.block, recon, [psnr(o, r) for o, r in zip(gop.block, recon)],
                          time.perf_counter() - start)
