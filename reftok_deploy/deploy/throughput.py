"""Side-by-side throughput and latency of backends on the same GOPs, in one run.

Backends are timed round-robin (each repeat runs every backend once in turn), so
machine noise hits all of them alike; figures are medians. Ratios are to the first
backend (PyTorch eager by default). PSNR is each backend's own encode -> decode
against the source frames, rounded to uint8.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reftok_deploy.quality.metrics import clip_psnr
from reftok_deploy.runtimes.runner import Runner
from reftok_deploy.base.spec import FRAMES_IN, REFERENCE, Feed


@dataclass
class BenchResult:
    name: str
    encode_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    psnr: float = 0.0

    def summary(self, frames_per_gop: int) -> dict[str, float]:
        enc, dec = float(np.median(self.encode_s)), float(np.median(self.decode_s))
        return {"encode_ms": 1e3 * enc, "decode_ms": 1e3 * dec, "total_ms": 1e3 * (enc + dec),
                "fps_encode_decode": frames_per_gop / (enc + dec), "psnr_db": self.psnr}


def bench(runners: list[Runner], feeds: list[Feed], repeats: int = 5, warmup: int = 1,
          progress=lambda: None) -> dict[str, Any]:
    """Time every runner on every feed; returns per-backend medians and ratios to ``runners[0]``.
    ``progress()`` is called after each runner's warm-up and after each timed round."""
    results = [BenchResult(r.name) for r in runners]
    tokens: dict[int, list[np.ndarray]] = {}
    for i, runner in enumerate(runners):
        tokens[i] = [runner.encode(f[REFERENCE.name], f[FRAMES_IN.name]) for f in feeds]
        decoded = [runner.decode(f[REFERENCE.name], t) for f, t in zip(feeds, tokens[i])]
        results[i].psnr = float(np.mean([clip_psnr(f[FRAMES_IN.name], d) for f, d in zip(feeds, decoded)]))
        for _ in range(warmup):
            runner.decode(feeds[0][REFERENCE.name], runner.encode(feeds[0][REFERENCE.name], feeds[0][FRAMES_IN.name]))
        progress()
    for _ in range(repeats):
        for i, runner in enumerate(runners):
            enc = dec = 0.0
            for feed, tok in zip(feeds, tokens[i]):
                start = time.perf_counter()
                runner.encode(feed[REFERENCE.name], feed[FRAMES_IN.name])
                middle = time.perf_counter()
                runner.decode(feed[REFERENCE.name], tok)
                enc, dec = enc + middle - start, dec + time.perf_counter() - middle
            results[i].encode_s.append(enc / len(feeds))
            results[i].decode_s.append(dec / len(feeds))
        progress()
    frames = feeds[0][FRAMES_IN.name].shape[0] * feeds[0][FRAMES_IN.name].shape[2]
    table = {r.name: r.summary(frames) for r in results}
    base = table[results[0].name]
    for row in table.values():
        for key in ("encode_ms", "decode_ms", "total_ms"):
            row[f"speedup_{key[:-3]}"] = base[key] / row[key]
    return {"baseline": results[0].name, "repeats": repeats, "gops": len(feeds), "frames_per_gop": frames,
            "backends": table}


def parse_size(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); '640x480' -> (480, 640) as (height, width); both multiples of 8, from 16 to 4096
    (every command's --size bounds)."""
    from reftok_deploy.base.errors import ReftokError

    parts = text.lower().split("x")
    try:
        width, height = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        raise ReftokError(f"--size {text!r}: give N or WIDTHxHEIGHT, e.g. 256 or 640x480") from None
    if len(parts) > 2 or not (16 <= width <= 4096 and 16 <= height <= 4096) or width % 8 or height % 8:
        raise ReftokError(f"--size {text!r}: width and height must each be a multiple of 8, between 16 and 4096")
    return height, width


def matmul_peak_gflops(seconds: float = 1.0, n: int = 1024) -> float:
    """This machine's float32 matrix-multiply rate (GFLOP/s) with PyTorch's current thread count:
    the best of repeated ``n x n`` products over about ``seconds`` (a practical peak to compare with)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def end_to_end(runners: list[Runner], frames: list[np.ndarray], block_frames: int, codebook_size: int,
               fps: float = 30.0) -> dict[str, Any]:
    """What reftok-run does with ``frames`` ``[H,W,3]`` uint8 RGB: GOPs, encode, decode (one block per
    runner side by side, as ``--streams``), overlay and an MP4 written to a temporary folder -> its
    summary (end-to-end fps, model-only fps, stage times)."""
    import tempfile
    from pathlib import Path

    from reftok_deploy.runtimes.codec import FrameCodec
    from reftok_deploy.runtimes.gop_encoder import GopEncoder
    from reftok_deploy.runtimes.output import VideoFile, side_by_side
    from reftok_deploy.runtimes.stream import StreamStats, encode_stream

    height, width = frames[0].shape[:2]
    with tempfile.TemporaryDirectory(prefix="reftok-bench-") as tmp:
        writer = VideoFile(Path(tmp) / "run.mp4", fps, (2 * width, height))
        stats = StreamStats(fps_source=fps, codebook_size=codebook_size)
        try:
            encode_stream(frames, GopEncoder([FrameCodec(r) for r in runners], block_frames), stats,
                          label=runners[0].name,
                          sink=lambda o, r, lines, labels: writer.write(side_by_side(o, r, lines, labels)))
        except BaseException:
            writer.abort()
            raise
        writer.close()
    return stats.summary()
