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

from reftok_deploy.metrics import clip_psnr
from reftok_deploy.runtimes.base import Runner
from reftok_deploy.spec import FRAMES_IN, REFERENCE, Feed


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


def bench(runners: list[Runner], feeds: list[Feed], repeats: int = 5, warmup: int = 1) -> dict[str, Any]:
    """Time every runner on every feed; returns per-backend medians and ratios to ``runners[0]``."""
    results = [BenchResult(r.name) for r in runners]
    tokens: dict[int, list[np.ndarray]] = {}
    for i, runner in enumerate(runners):
        tokens[i] = [runner.encode(f[REFERENCE.name], f[FRAMES_IN.name]) for f in feeds]
        decoded = [runner.decode(f[REFERENCE.name], t) for f, t in zip(feeds, tokens[i])]
        results[i].psnr = float(np.mean([clip_psnr(f[FRAMES_IN.name], d) for f, d in zip(feeds, decoded)]))
        for _ in range(warmup):
            runner.decode(feeds[0][REFERENCE.name], runner.encode(feeds[0][REFERENCE.name], feeds[0][FRAMES_IN.name]))
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
    frames = feeds[0][FRAMES_IN.name].shape[0] * feeds[0][FRAMES_IN.name].shape[2]
    table = {r.name: r.summary(frames) for r in results}
    base = table[results[0].name]
    for row in table.values():
        for key in ("encode_ms", "decode_ms", "total_ms"):
            row[f"speedup_{key[:-3]}"] = base[key] / row[key]
    return {"baseline": results[0].name, "repeats": repeats, "gops": len(feeds), "frames_per_gop": frames,
            "backends": table}
