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

from reftok_deploy.parity import Feed, _psnr_uint8
from reftok_deploy.runtimes.base import Runner


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
        tokens[i] = [runner.encode(f["reference"], f["frames"]) for f in feeds]
        decoded = [runner.decode(f["reference"], t) for f, t in zip(feeds, tokens[i])]
        results[i].psnr = float(np.mean([_psnr_uint8(f["frames"], d) for f, d in zip(feeds, decoded)]))
        for _ in range(warmup):
            runner.decode(feeds[0]["reference"], runner.encode(feeds[0]["reference"], feeds[0]["frames"]))
    for _ in range(repeats):
        for i, runner in enumerate(runners):
            enc = dec = 0.0
            for feed, tok in zip(feeds, tokens[i]):
                start = time.perf_counter()
                runner.encode(feed["reference"], feed["frames"])
                middle = time.perf_counter()
                runner.decode(feed["reference"], tok)
                enc, dec = enc + middle - start, dec + time.perf_counter() - middle
            results[i].encode_s.append(enc / len(feeds))
            results[i].decode_s.append(dec / len(feeds))
    frames = feeds[0]["frames"].shape[0] * feeds[0]["frames"].shape[2]
    table = {r.name: r.summary(frames) for r in results}
    base = table[results[0].name]
    for row in table.values():
        for key in ("encode_ms", "decode_ms", "total_ms"):
            row[f"speedup_{key[:-3]}"] = base[key] / row[key]
    return {"baseline": results[0].name, "repeats": repeats, "gops": len(feeds), "frames_per_gop": frames,
            "backends": table}
