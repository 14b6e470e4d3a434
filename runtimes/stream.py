"""The live loop behind reftok-run and reftok-decode: frames in, tokens and reconstructions out.

Quality and rate figures are computed the way reftok-eval computes them: PSNR over
the block frames (references are sent unquantised), uint8 RGB.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from reftok_deploy.metrics import png_bits
from reftok_deploy.runtimes.codec import FrameCodec
from reftok_deploy.runtimes.gop import BlockEvent, GopEncoder, ReferenceEvent
from reftok_deploy.tokenstream import Block, TokenStreamWriter
from reftok_deploy.video import center_square

FrameSink = Callable[[np.ndarray, np.ndarray, list[str]], None]


@dataclass
class StreamStats:
    fps_source: float
    codebook_size: int
    frames: int = 0
    references: int = 0
    blocks: int = 0
    psnr_sum: float = 0.0
    psnr_frames: int = 0
    token_bits: float = 0.0
    reference_bits: int = 0
    block_seconds: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    digest: "hashlib._Hash" = field(default_factory=hashlib.sha256)

    @property
    def psnr_mean(self) -> float:
        return self.psnr_sum / max(self.psnr_frames, 1)

    def token_kbps(self) -> float:
        return self.token_bits / max(self.frames, 1) * self.fps_source / 1000

    def overlay(self, label: str) -> list[str]:
        wall = max(time.perf_counter() - self.started, 1e-9)
        latency = 1000 * self.block_seconds[-1] if self.block_seconds else 0.0
        return [f"{label} | {self.frames / wall:.1f} fps | {latency:.0f} ms/block",
                f"tokens {self.token_kbps():.1f} kbit/s | PSNR {self.psnr_mean:.2f} dB"]

    def summary(self) -> dict:
        wall = time.perf_counter() - self.started
        return {"frames": self.frames, "references": self.references, "blocks": self.blocks,
                "psnr_db": round(self.psnr_mean, 4), "token_kbps": round(self.token_kbps(), 3),
                "reference_kbps": round(self.reference_bits / max(self.frames, 1) * self.fps_source / 1000, 3),
                "fps": round(self.frames / max(wall, 1e-9), 2), "wall_seconds": round(wall, 2),
                "block_latency_ms": round(1000 * float(np.median(self.block_seconds)), 1) if self.block_seconds else None,
                "reconstruction_sha256": self.digest.hexdigest()}


def encode_stream(frames: Iterable[np.ndarray], gop: GopEncoder, stats: StreamStats, size: int | None = None,
                  tokens: TokenStreamWriter | None = None, sink: FrameSink | None = None, label: str = "") -> StreamStats:
    """Run frames ``[H,W,3]`` uint8 RGB through the GOP encoder; write tokens, show/save side by side."""
    bits_per_token = math.log2(stats.codebook_size)

    def handle(event) -> None:
        if isinstance(event, ReferenceEvent):
            stats.references += 1
            stats.frames += 1
            stats.reference_bits += png_bits(event.frame)
            stats.digest.update(event.frame.tobytes())
            if tokens:
                tokens.write_reference(event.frame)
            if sink:
                sink(event.frame, event.frame, stats.overlay(label) + ["reference frame (sent unquantised)"])
            return
        assert isinstance(event, BlockEvent)
        stats.blocks += 1
        stats.block_seconds.append(event.seconds)
        stats.token_bits += event.tokens.size * bits_per_token
        if tokens:
            tokens.write_block(event.tokens, len(event.recon))
        for original, recon, value in zip(event.originals, event.recon, event.psnr):
            stats.frames += 1
            stats.psnr_sum += value
            stats.psnr_frames += 1
            stats.digest.update(recon.tobytes())
            if sink:
                sink(original, recon, stats.overlay(label))

    for frame in frames:
        if size is not None:
            frame = center_square(frame, size)
        for event in gop.push(frame):
            handle(event)
    for event in gop.flush():
        handle(event)
    return stats


def decode_stream(records: Iterable[np.ndarray | Block], codec: FrameCodec,
                  on_frame: Callable[[np.ndarray], None]) -> "hashlib._Hash":
    """Replay a parsed .rtok stream; ``on_frame`` gets every reconstructed ``[H,W,3]`` frame in order."""
    digest = hashlib.sha256()
    reference = None
    for record in records:
        if isinstance(record, Block):
            frames = codec.decode(reference, record.tokens)[: record.frames]
        else:
            reference = record
            frames = [record]
        for frame in frames:
            digest.update(np.ascontiguousarray(frame).tobytes())
            on_frame(frame)
    return digest
