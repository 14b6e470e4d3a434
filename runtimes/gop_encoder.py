"""The live GOP encoder: :class:`reftok_deploy.base.gop_plan.GopPlanner`'s decisions run through a codec.

The planner decides (reference at the first frame, after ``refresh_blocks`` blocks, and at a
scene cut detected before encoding); this module encodes and decodes each block, padded with
its last frame to T, keeping only the real frames. reftok-eval forms the same GOPs with the
same planner, so both report the same quality on the same clip.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from reftok_deploy.base.gop_plan import DEFAULT_CUT_THRESHOLD, Gop, GopPlanner, NewReference
from reftok_deploy.quality.metrics import psnr
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
    """Plans GOPs and encodes + decodes each block. Given several codecs (one runner each), consecutive
    blocks run side by side, one per codec in turn, and the events still come out in stream order;
    :meth:`close` waits for the blocks in flight."""

    def __init__(self, codec: FrameCodec | Sequence[FrameCodec], block_frames: int, refresh_blocks: int = 1,
                 cut_threshold: float | None = DEFAULT_CUT_THRESHOLD) -> None:
        self.codecs = list(codec) if isinstance(codec, (list, tuple)) else [codec]
        if not self.codecs:
            raise ValueError("GopEncoder needs at least one codec")
        self.codec = self.codecs[0]
        self.block_frames = block_frames
        self.planner = GopPlanner(block_frames, refresh_blocks, cut_threshold)
        self._workers = ([ThreadPoolExecutor(1, thread_name_prefix=f"reftok-gop{i}") for i in range(len(self.codecs))]
                         if len(self.codecs) > 1 else [])
        self._pending: deque[ReferenceEvent | BlockEvent | Future] = deque()  # stream order
        self._turns = itertools.cycle(zip(self._workers, self.codecs))  # blocks go round the copies

    @property
    def references(self) -> int:
        return self.planner.references

    @property
    def scene_changes(self) -> int:
        return self.planner.cuts

    def _handle(self, events: list[NewReference | Gop]) -> Iterator[ReferenceEvent | BlockEvent]:
        for event in events:
            if isinstance(event, NewReference):
                self._pending.append(ReferenceEvent(event.frame, event.cut))
            elif self._workers:
                worker, codec = next(self._turns)
                self._pending.append(worker.submit(self._encode, codec, event))
            else:
                self._pending.append(self._encode(self.codec, event))
            yield from self._ready(in_flight=len(self._workers))

    def _ready(self, in_flight: int) -> Iterator[ReferenceEvent | BlockEvent]:
        """Events from the front of the queue; a block still running is waited for only while more than
        ``in_flight`` blocks are (every codec busy), so planning goes on beside them."""
        while self._pending:
            head = self._pending[0]
            if isinstance(head, Future):
                if not head.done() and sum(isinstance(e, Future) for e in self._pending) <= in_flight:
                    return
                head = head.result()
            self._pending.popleft()
            yield head

    def push(self, frame: np.ndarray) -> Iterator[ReferenceEvent | BlockEvent]:
        """Feed one ``[H,W,3]`` uint8 RGB frame; yields the events it completes, and blocks that finished
        on other threads since the last call."""
        yield from self._handle(self.planner.push(frame))
        yield from self._ready(in_flight=len(self._workers))

    def flush(self) -> Iterator[ReferenceEvent | BlockEvent]:
        """Encode the tail (fewer than T frames) at the end of a stream and yield every event left."""
        yield from self._handle(self.planner.flush())
        yield from self._ready(in_flight=0)

    def close(self) -> None:
        """Wait for the blocks in flight (their runners may be closed next) and stop the workers."""
        for worker in self._workers:
            worker.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()

    def _encode(self, codec: FrameCodec, gop: Gop) -> BlockEvent:
        real = len(gop.block)
        start = time.perf_counter()
        tokens = codec.encode(gop.reference, gop.padded(self.block_frames))
        recon = codec.decode(gop.reference, tokens)[:real]
        return BlockEvent(tokens, gop.block, recon, [psnr(o, r) for o, r in zip(gop.block, recon)],
                          time.perf_counter() - start)
