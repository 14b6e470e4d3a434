"""The Runner contract every backend implements.

A runner executes the two graphs on feeds (``dict[str, np.ndarray]``) named as in
:mod:`reftok_deploy.export.specs`:
- ``encode(reference [B,3,H,W] f32 in [-1,1], frames [B,3,T,H,W] f32 in [-1,1]) -> tokens [B,G,H/8,W/8] int32``
- ``decode(reference [B,3,H,W] f32 in [-1,1], tokens int32) -> frames [B,3,T,H,W] f32 in [-1,1]``
H and W must be multiples of 8; the codec layer pads and crops.
Runners are context managers: ``load`` on enter, ``close`` on exit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Runner(ABC):
    """One backend (PyTorch, ONNX Runtime, TensorRT) running the encoder and decoder graphs."""

    name: str = "runner"
    block_frames: int = 8
    temporal_factor: int = 4
    spatial_factor: int = 8

    @abstractmethod
    def load(self) -> None:
        """Allocate sessions/engines; idempotent."""

    @abstractmethod
    def run(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run 'encoder' or 'decoder' on a feed; returns outputs by name."""

    def close(self) -> None:
        """Release sessions/engines."""

    def encode(self, reference: np.ndarray, frames: np.ndarray) -> np.ndarray:
        return self.run("encoder", {"reference": reference, "frames": frames})["tokens"]

    def decode(self, reference: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return self.run("decoder", {"reference": reference, "tokens": tokens})["reconstruction"]

    def __enter__(self) -> "Runner":
        self.load()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
