"""The tokenizer service's HTTP API, version 1: paths, headers, payload rules and limits.

Shared by the server (:mod:`reftok_deploy.serve`) and the client (:mod:`reftok_deploy.runtimes.remote`).

| method and path | request body | response body |
| --- | --- | --- |
| ``GET /v1/health`` | - | ``{"status": "ok"}`` |
| ``GET /v1/model`` | - | JSON: geometry, FSQ levels, checkpoint sha256, backend, limits |
| ``POST /v1/encode`` | reference ``[H,W,3]`` uint8 RGB, frames ``[T,H,W,3]`` uint8 RGB | tokens ``[G,ceil(H/8),ceil(W/8)]`` int32 |
| ``POST /v1/decode`` | reference ``[H,W,3]`` uint8 RGB, tokens ``[G,ceil(H/8),ceil(W/8)]`` int32 | frames ``[T,H,W,3]`` uint8 RGB |

Bodies are :mod:`reftok_deploy.base.wire` payloads (``Content-Type: application/x-reftok-npy``).
Errors are a status 4xx/5xx with one line of plain text saying why: 400 a malformed payload,
401 a missing or wrong bearer token, 404 an unknown path, 405 a wrong method, 409 a checkpoint
other than the client's (``X-Reftok-Checkpoint``), 413 a body over the limit, 503 a replica being
replaced (retry). Frames of any size are padded by the server (edge pixels) to multiples of 8.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from reftok_deploy.base.video import DEFAULT_MAX_PIXELS  # the same largest frame as reftok-run's --max-pixels
from reftok_deploy.base.wire import ArrayRule, PayloadError

API_VERSION = "v1"
HEALTH_PATH = f"/{API_VERSION}/health"
MODEL_PATH = f"/{API_VERSION}/model"
ENCODE_PATH = f"/{API_VERSION}/encode"
DECODE_PATH = f"/{API_VERSION}/decode"
TOKEN_ENV = "REFTOK_SERVE_TOKEN"  # the bearer token, for servers and clients that take it from the environment
CHECKPOINT_HEADER = "X-Reftok-Checkpoint"  # sha256 of the weights the client expects (optional)
BATCH_HEADER = "X-Reftok-Batch"  # how many GOPs the replica ran in the batch that held this one
MAX_SIDE = 8192


@dataclass(frozen=True)
class ServiceLimits:
    """What one request may carry, and the model geometry its arrays must match."""

    block_frames: int
    groups: int
    spatial_factor: int
    codebook_size: int
    max_pixels: int = DEFAULT_MAX_PIXELS

    @property
    def max_body_bytes(self) -> int:
        """The largest valid request (an encode of the largest frames) plus room for the headers."""
        return (self.block_frames + 1) * self.max_pixels * 3 + 4096

    def token_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return (self.groups, math.ceil(height / self.spatial_factor), math.ceil(width / self.spatial_factor))

    def encode_rules(self) -> list[ArrayRule]:
        side = (1, MAX_SIDE)
        return [ArrayRule("reference", np.uint8, (side, side, 3)),
                ArrayRule("frames", np.uint8, (self.block_frames, side, side, 3))]

    def decode_rules(self) -> list[ArrayRule]:
        side = (1, MAX_SIDE)
        return [ArrayRule("reference", np.uint8, (side, side, 3)),
                ArrayRule("tokens", np.int32, (self.groups, side, side))]

    def check_encode(self, reference: np.ndarray, frames: np.ndarray) -> None:
        """Sizes that agree with each other and the pixel limit (dtypes and ranks: :meth:`encode_rules`)."""
        self._check_frame(reference)
        if frames.shape[1:3] != reference.shape[:2]:
            raise PayloadError(f"frames are {frames.shape[2]}x{frames.shape[1]}, the reference "
                               f"{reference.shape[1]}x{reference.shape[0]}")

    def check_decode(self, reference: np.ndarray, tokens: np.ndarray) -> None:
        self._check_frame(reference)
        expected = self.token_shape(*reference.shape[:2])
        if tokens.shape != expected:
            raise PayloadError(f"tokens {list(tokens.shape)} do not fit a {reference.shape[1]}x{reference.shape[0]} "
                               f"reference: expected {list(expected)}")
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= self.codebook_size):
            raise PayloadError(f"token ids outside 0..{self.codebook_size - 1}")

    def _check_frame(self, reference: np.ndarray) -> None:
        height, width = reference.shape[:2]
        if height * width > self.max_pixels:
            raise PayloadError(f"{width}x{height} frames ({height * width} pixels) are over this server's limit of "
                               f"{self.max_pixels} pixels")

    def as_dict(self) -> dict[str, Any]:
        return dict(asdict(self), max_body_bytes=self.max_body_bytes)
