"""GOP logic: a reference frame, then blocks of T frames encoded against it.

The reference is refreshed after ``refresh_blocks`` blocks, and early when the
encoder-side reconstruction of a block falls under ``scene_change_psnr`` dB (a cut or
a large change the tokens cannot carry). A short tail is padded with its last frame
and only its real frames are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from reftok_deploy.metrics import psnr
from reftok_deploy.runtimes.codec import FrameCodec


@dataclass
class ReferenceEvent:
    frame: np.ndarray  # [H,W,3] uint8 RGB, sent unquantised


@dataclass
class BlockEvent:
    tokens: np.ndarray  # [G,h,w] int32
    originals: np.ndarray  # [k,H,W,3] uint8 RGB (k <= T real frames)
    recon: np.ndarray  # [k,H,W,3] uint8 RGB
    psnr: list[float] = field(default_factory=list)
    seconds: float = 0.0  # encode + decode wall time


class GopEncoder:
    def __init__(self, codec: FrameCodec, block_frames: int, refresh_blocks: int = 1,
                 scene_change_psnr: float | None = None) -> None:
        if refresh_blocks < 1:
            raise ValueError("refresh_blocks must be >= 1")
        self.codec = codec
        self.block_frames = block_frames
        self.refresh_blocks = refresh_blocks
        self.scene_change_psnr = scene_change_psnr
        self.reference: np.ndarray | None = None
        self.blocks_since_reference = 0
        self.pending: list[np.ndarray] = []
        self.references = 0
        self.scene_changes = 0

    def push(self, frame: np.ndarray) -> Iterator[ReferenceEvent | BlockEvent]:
        """Feed one ``[H,W,3]`` uint8 RGB frame; yields the events it completes."""
        if self.reference is None:
            self.reference = frame
            self.blocks_since_reference = 0
            self.references += 1
            yield ReferenceEvent(frame)
            return
        self.pending.append(frame)
        if len(self.pending) == self.block_frames:
            yield self._encode_pending()

    def flush(self) -> Iterator[BlockEvent]:
        """Encode the tail (fewer than T frames) at the end of a stream."""
        if self.pending:
            yield self._encode_pending()

    def _encode_pending(self) -> BlockEvent:
        import time

        real = len(self.pending)
        block = np.stack(self.pending + [self.pending[-1]] * (self.block_frames - real))
        self.pending = []
        start = time.perf_counter()
        tokens = self.codec.encode(self.reference, block)
        recon = self.codec.decode(self.reference, tokens)[:real]
        event = BlockEvent(tokens, block[:real], recon, [psnr(o, r) for o, r in zip(block[:real], recon)],
                           time.perf_counter() - start)
        self.blocks_since_reference += 1
        scene_change = self.scene_change_psnr is not None and np.mean(event.psnr) < self.scene_change_psnr
        if scene_change:
            self.scene_changes += 1
        if scene_change or self.blocks_since_reference >= self.refresh_blocks:
            self.reference = None  # the next frame becomes the reference
        return event
