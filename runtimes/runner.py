"""The Runner contract every backend implements.

A runner executes the two graphs on feeds (``dict[str, np.ndarray]``) named as in
:mod:`reftok_deploy.base.spec`:
- ``encode(reference [B,3,H,W] f32 in [-1,1], frames [B,3,T,H,W] f32 in [-1,1]) -> tokens [B,G,H/8,W/8] int32``
- ``decode(reference [B,3,H,W] f32 in [-1,1], tokens int32) -> frames [B,3,T,H,W] f32 in [-1,1]``
H and W must be multiples of 8; the codec layer pads and crops. Every feed is checked against
the spec before a backend sees it (:func:`reftok_deploy.base.spec.check_feed`), so a wrong dtype,
a missing input or a bad size is the same one-line error on every backend.
Runners are context managers: ``load`` on enter, ``close`` on exit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from reftok_deploy.base.spec import FRAMES_OUT, INPUTS, REFERENCE, TOKENS, FRAMES_IN, Geometry, check_feed


class Runner(ABC):
    """One backend (PyTorch, ONNX Runtime, TensorRT) running the encoder and decoder graphs.

    ``geometry`` (block frames, temporal and spatial factors) is fixed when the runner is made,
    from the one source its backend has: the checkpoint's config, the graphs' own dims, the manifest.
    """

    name: str = "runner"

    def __init__(self, geometry: Geometry) -> None:
        self._geometry = geometry

    @property
    def geometry(self) -> Geometry:
        return self._geometry

    @property
    def block_frames(self) -> int:
        return self._geometry.block_frames

    @property
    def temporal_factor(self) -> int:
        return self._geometry.temporal_factor

    @property
    def spatial_factor(self) -> int:
        return self._geometry.spatial_factor

    @abstractmethod
    def load(self) -> None:
        """Allocate sessions/engines; idempotent."""

    def run(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run 'encoder' or 'decoder' on a feed checked against the spec; returns outputs by name."""
        check_feed(graph, feed, self._geometry)
        self.load()
        return self._run(graph, {name: np.ascontiguousarray(feed[name]) for name in (s.name for s in INPUTS[graph])})

    @abstractmethod
    def _run(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The backend's own execution of a checked, contiguous feed."""

    def close(self) -> None:
        """Release sessions/engines."""

    def encode(self, reference: np.ndarray, frames: np.ndarray) -> np.ndarray:
        return self.run("encoder", {REFERENCE.name: reference, FRAMES_IN.name: frames})[TOKENS.name]

    def decode(self, reference: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return self.run("decoder", {REFERENCE.name: reference, TOKENS.name: tokens})[FRAMES_OUT.name]

    def __enter__(self) -> "Runner":
        self.load()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
