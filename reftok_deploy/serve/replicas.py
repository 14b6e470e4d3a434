"""Ray Serve replicas that run one graph each (encoder or decoder), batching the GOPs of many clients.

A replica opens one runner when it starts and keeps it. Requests that arrive within the batch wait
are run together: GOPs of one frame size are stacked into one batch of the graph (backends give the
same tokens and frames batched as one by one, checked in the tests), GOPs of other sizes in their own.
The graph runs in a worker thread, so the replica keeps answering Serve's health checks meanwhile.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from ray import serve

from reftok_deploy.deploy.deployment import Deployment
from reftok_deploy.runtimes.codec import FrameCodec


@dataclass(frozen=True)
class RunnerSettings:
    """How each replica opens its runner: a concrete backend spec (never ``auto``: the driver resolves
    it once), the export folder and checkpoint paths as the driver resolved them, device and threads."""

    backend: str
    export: str | None
    checkpoint: str
    device: str = "cpu"
    threads: int | None = None


def open_codec(settings: RunnerSettings) -> FrameCodec:
    """The replica's runner, loaded, behind the same pre/post-processing as a local run."""
    deployment = Deployment(settings.checkpoint, settings.export, settings.backend, settings.device, settings.threads)
    deployment.choose_backend()
    runner = deployment.runner()
    runner.load()
    return FrameCodec(runner)


class GraphReplica:
    """One graph of the model in a Serve replica; :meth:`__call__` takes one GOP's two arrays and returns
    (the result, how many GOPs ran in its batch)."""

    graph = "encoder"

    def __init__(self, settings: RunnerSettings, max_batch: int, batch_wait_s: float) -> None:
        self.codec = open_codec(settings)
        self.run_batch.set_max_batch_size(max_batch)
        self.run_batch.set_batch_wait_timeout_s(batch_wait_s)

    def _run_group(self, firsts: list[np.ndarray], seconds: list[np.ndarray]) -> list[np.ndarray]:
        many = self.codec.encode_many if self.graph == "encoder" else self.codec.decode_many
        return many(firsts, seconds)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def run_batch(self, items: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, int]]:
        results: list[tuple[np.ndarray, int] | None] = [None] * len(items)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for index, (reference, _) in enumerate(items):
            by_size.setdefault(reference.shape, []).append(index)
        for indices in by_size.values():
            outputs = await asyncio.to_thread(self._run_group, [items[i][0] for i in indices],
                                              [items[i][1] for i in indices])
            for index, output in zip(indices, outputs):
                results[index] = (output, len(indices))
        return results  # type: ignore[return-value]

    async def __call__(self, reference: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, int]:
        return await self.run_batch((reference, second))


class EncoderReplica(GraphReplica):
    graph = "encoder"


class DecoderReplica(GraphReplica):
    graph = "decoder"
