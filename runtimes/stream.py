"""The live loop behind reftok-run and reftok-decode: frames in, tokens and reconstructions out.

Quality and rate figures are computed the way reftok-eval computes them: PSNR over
the block frames (references are sent unquantised), uint8 RGB.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from reftok_deploy.runtimes.codec import FrameCodec
from reftok_deploy.runtimes.gop_encoder import BlockEvent, GopEncoder, ReferenceEvent
from reftok_deploy.runtimes.threaded_stage import threaded
from reftok_deploy.base.tokenstream import Block, TokenStreamWriter, reference_png
from reftok_deploy.base.video import center_square

# sink(original, reconstruction, overlay lines, (left label, right label)); frames [H,W,3] uint8 RGB.
FrameSink = Callable[[np.ndarray, np.ndarray, list[str], tuple[str, str]], None]


@dataclass
class StreamStats:
    """Running figures of one stream. Rates count what a receiver needs: ``token_kbps`` the block
    tokens alone, ``total_kbps`` tokens plus the reference frames (PNG, as .rtok stores them).
    Stage times: ``capture`` (reading and converting frames, in the capture thread), ``model`` (GOP
    planning, encode and decode; with several streams, planning and waiting for the copies of the model),
    ``output`` (statistics, overlay, video, window, token stream). ``block_seconds``: each block's encode
    + decode on the copy that ran it."""

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
    model_seconds: float = 0.0
    output_seconds: float = 0.0
    capture_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    digest: "hashlib._Hash" = field(default_factory=hashlib.sha256)

    @property
    def psnr_mean(self) -> float:
        return self.psnr_sum / max(self.psnr_frames, 1)

    def _kbps(self, bits: float) -> float:
        return bits / max(self.frames, 1) * self.fps_source / 1000

    def token_kbps(self) -> float:
        return self._kbps(self.token_bits)

    def total_kbps(self) -> float:
        return self._kbps(self.token_bits + self.reference_bits)

    def overlay(self, label: str) -> list[str]:
        wall = max(time.perf_counter() - self.started, 1e-9)
        latency = f"{1000 * self.block_seconds[-1]:.0f} ms/block" if self.block_seconds else "first block pending"
        psnr = f"PSNR {self.psnr_mean:.2f} dB" if self.psnr_frames else "PSNR pending"
        return [f"{label} | {self.frames / wall:.1f} fps | {latency}",
                f"tokens {self.token_kbps():.1f} kbit/s, with references {self.total_kbps():.0f} kbit/s | {psnr}"]

    def summary(self) -> dict:
        wall = time.perf_counter() - self.started
        frames = max(self.frames, 1)
        return {"frames": self.frames, "references": self.references, "blocks": self.blocks,
                "psnr_db": round(self.psnr_mean, 4), "token_kbps": round(self.token_kbps(), 3),
                "reference_kbps": round(self._kbps(self.reference_bits), 3),
                "total_kbps": round(self.total_kbps(), 3),
                "fps": round(self.frames / max(wall, 1e-9), 2), "wall_seconds": round(wall, 2),
                "model_fps": round(self.frames / self.model_seconds, 2) if self.model_seconds else None,
                "stage_ms_per_frame": {"capture": round(1000 * self.capture_seconds / frames, 3),
                                       "model": round(1000 * self.model_seconds / frames, 3),
                                       "output": round(1000 * self.output_seconds / frames, 3)},
                "block_latency_ms": round(1000 * float(np.median(self.block_seconds)), 1) if self.block_seconds else None,
                "reconstruction_sha256": self.digest.hexdigest()}


def encode_stream(frames: Iterable[np.ndarray], gop: GopEncoder, stats: StreamStats, size: int | None = None,
                  tokens: TokenStreamWriter | None = None, sink: FrameSink | None = None, label: str = "",
                  queue_depth: int = 4, interrupt: Callable[[], None] | None = None) -> StreamStats:
    """Run frames ``[H,W,3]`` uint8 RGB through the GOP encoder; write tokens, show/save side by side.

    The model runs in its own thread (:func:`reftok_deploy.runtimes.threaded_stage.threaded`), ``queue_depth``
    events ahead of the output, which stays in the caller's thread (windows need it); a GopEncoder with several
    codecs runs consecutive blocks side by side on threads of its own. ``interrupt`` wakes
    the frame source when the run stops early (Ctrl-C, an output error), e.g. ``FrameSource.interrupt``."""
    bits_per_token = math.log2(stats.codebook_size)
    labels = ("original", f"RefTok {label}".strip())

    def model_events(stop) -> Iterator[ReferenceEvent | BlockEvent]:
        try:
            for frame in frames:
                if stop.is_set():
                    return
                start = time.perf_counter()
                if size is not None:
                    frame = center_square(frame, size)
                events = list(gop.push(frame))
                stats.model_seconds += time.perf_counter() - start
                yield from events
            if stop.is_set():
                return
            start = time.perf_counter()
            events = list(gop.flush())
            stats.model_seconds += time.perf_counter() - start
            yield from events
        finally:
            gop.close()  # blocks still running on other threads finish before their runners can close

    def handle(event) -> None:
        if isinstance(event, ReferenceEvent):
            stats.references += 1
            stats.frames += 1
            png = reference_png(event.frame)  # the bytes .rtok stores: the rate counts what is sent
            stats.reference_bits += 8 * len(png)
            stats.digest.update(event.frame.tobytes())
            if tokens:
                tokens.write_reference(event.frame, png=png)
            if sink:
                sink(event.frame, event.frame, stats.overlay(label), ("original", "reference (sent unquantised)"))
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
                sink(original, recon, stats.overlay(label), labels)

    events = threaded(model_events, depth=queue_depth, name="reftok-model", on_stop=interrupt)
    try:
        for event in events:
            start = time.perf_counter()
            handle(event)
            stats.output_seconds += time.perf_counter() - start
    finally:
        events.close()
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
