"""Load test of a reftok-serve server: N concurrent streams of real GOPs against the model alone, in one run.

Each client streams its clip as a live run does: for every GOP, an encode request and then a decode
request of the tokens it got back. The report gives the aggregate frames per second of all clients,
the per-GOP latency (encode + decode round trips) at p50/p95/p99, and the batch sizes the replicas
formed; beside it, the same GOPs encoded and decoded by the same backend in this process on every
core (the model-only row), measured before and after the load and averaged, since machines are noisy.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any, Callable

import numpy as np

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.gop_plan import plan_gops
from reftok_deploy.deploy.deployment import Deployment
from reftok_deploy.runtimes.codec import FrameCodec
from reftok_deploy.runtimes.remote import ServerClient

GopPair = tuple[np.ndarray, np.ndarray]  # (reference [H,W,3], block [T,H,W,3]) uint8 RGB


def clip_gops(clips: dict[str, np.ndarray], block_frames: int) -> dict[str, list[GopPair]]:
    """Each clip ``[N,H,W,3]`` uint8 RGB -> its GOPs as reftok-run forms them (blocks padded to T)."""
    return {name: [(g.reference, g.padded(block_frames)) for g in plan_gops(frames, block_frames)]
            for name, frames in clips.items()}


def model_only_fps(deployment: Deployment, gops: list[GopPair]) -> float:
    """Frames per second of encode + decode of ``gops`` by the deployment's runner in this process (after one
    warm-up GOP)."""
    with deployment.runner() as runner:
        codec = FrameCodec(runner)
        codec.decode(gops[0][0], codec.encode(*gops[0]))
        start = time.perf_counter()
        for reference, block in gops:
            codec.decode(reference, codec.encode(reference, block))
        return sum(len(block) for _, block in gops) / (time.perf_counter() - start)


def drive_clients(url: str, streams: list[list[GopPair]], token: str | None = None,
                  on_gop: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """One client thread per entry of ``streams`` (its GOPs, in order), all at once -> aggregate figures."""
    latencies: list[float] = []
    batches: Counter[int] = Counter()
    failures: list[str] = []
    retries = [0]
    lock = threading.Lock()

    def stream(gops: list[GopPair]) -> None:
        client = ServerClient(url, token=token)
        try:
            for reference, block in gops:
                start = time.perf_counter()
                client.decode(reference, client.encode(reference, block))
                with lock:
                    latencies.append(time.perf_counter() - start)
                    batches[client.last_batch] += 1
                on_gop()
        except ReftokError as exc:
            with lock:
                failures.append(str(exc))
        finally:
            with lock:
                retries[0] += client.retries
            client.close()

    threads = [threading.Thread(target=stream, args=(gops,), daemon=True) for gops in streams]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if failures:
        raise ReftokError(f"{len(failures)} of {len(streams)} clients failed; first: {failures[0]}")
    frames = sum(len(block) for gops in streams for _, block in gops)
    p50, p95, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 95, 99))
    return {"clients": len(streams), "gops": len(latencies), "frames": frames, "seconds": seconds,
            "fps": frames / seconds, "latency_ms": {"p50": p50, "p95": p95, "p99": p99},
            "batch_sizes": dict(sorted(batches.items())), "retries": retries[0]}


def load_test(url: str, deployment: Deployment, clips: dict[str, np.ndarray], clients: int, rounds: int = 1,
              token: str | None = None, on_gop: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """The server's aggregate throughput with ``clients`` streams (client i streams clip i mod len(clips),
    ``rounds`` times) beside the model-only row of the server's backend in this process.

    ``deployment`` names this process's checkpoint (and export); its backend is set to the server's, and the
    server must run the same checkpoint (checked)."""
    server = ServerClient(url, token=token).model()
    deployment.with_shipped_checkpoint()
    if server.get("checkpoint_sha256") != deployment.weights_sha256():
        raise ReftokError(f"the server at {url} runs checkpoint {str(server.get('checkpoint_sha256'))[:16]}, not "
                          f"{deployment.checkpoint}: pass the server's --checkpoint for the model-only row")
    deployment.backend = str(server["backend_spec"])
    deployment.choose_backend()
    gops = clip_gops(clips, int(server["block_frames"]))
    names = list(gops)
    streams = [gops[names[i % len(names)]] * rounds for i in range(clients)]
    one_stream = [pair for name in names for pair in gops[name]]
    before = model_only_fps(deployment, one_stream)
    served = drive_clients(url, streams, token, on_gop)
    after = model_only_fps(deployment, one_stream)
    model_fps = (before + after) / 2
    return {"server": {k: server.get(k) for k in ("backend", "checkpoint_sha256")}, "model_only_fps": model_fps,
            "model_only_runs": [before, after], **served, "ratio": served["fps"] / model_fps}


def load_test_lines(report: dict[str, Any], threads: int | None) -> list[str]:
    """The report as the lines reftok-bench prints."""
    latency = report["latency_ms"]
    return [f"server {report['server']['backend']}: {report['clients']} clients, {report['gops']} GOPs, "
            f"{report['frames']} frames in {report['seconds']:.1f} s: {report['fps']:.1f} frames/s in all",
            f"model alone in this process ({report['server']['backend']}, {threads or 'all'} threads): "
            f"{report['model_only_fps']:.1f} frames/s (runs before and after: "
            + ", ".join(f"{v:.1f}" for v in report["model_only_runs"]) + ")",
            f"ratio served / model alone: {report['ratio']:.2f}",
            f"latency per GOP (encode + decode round trips): p50 {latency['p50']:.0f} ms, p95 {latency['p95']:.0f} ms, "
            f"p99 {latency['p99']:.0f} ms",
            "batches the replicas formed (GOPs per batch: requests): "
            + ", ".join(f"{size}: {count}" for size, count in report["batch_sizes"].items())
            + f"; requests retried: {report['retries']}"]
