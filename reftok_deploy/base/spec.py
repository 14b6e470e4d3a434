"""The graphs' I/O contract, declared once as data: names, dtypes, dims, geometry, parity tolerances.

Base layer: imports numpy only (no torch, no export or runtime code), so a runtime can read it
on a box without PyTorch. Every runner checks its feeds here (:func:`check_feed`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from reftok_deploy.base.errors import ReftokError

# Version of the model family (architecture and token meaning); checkpoints, exports and streams record it.
# MODEL_VERSION is what a new config gets; every version in MODEL_VERSIONS loads, exports and runs.
MODEL_VERSION = 2
MODEL_VERSIONS = (2, 3)
# Architecture constant: three 2x downsamplings; H and W of every feed are multiples of it.
SPATIAL_FACTOR = 8


@dataclass(frozen=True)
class Geometry:
    """How frames map to tokens: T frames per block, T/temporal_factor token groups, H/8 x W/8 tokens."""

    block_frames: int = 8
    temporal_factor: int = 4
    spatial_factor: int = SPATIAL_FACTOR

    @property
    def groups(self) -> int:
        return self.block_frames // self.temporal_factor

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Geometry":
        """From a model config (``config.json``'s or a manifest's ``model``, or a RefTokConfig)."""
        get = config.get if isinstance(config, Mapping) else lambda k: getattr(config, k)
        try:
            block, temporal = int(get("block_frames")), int(get("temporal_factor"))
        except (TypeError, ValueError):
            raise ReftokError("model config has no valid block_frames/temporal_factor") from None
        if block < 1 or temporal < 1 or block % temporal:
            raise ReftokError(f"model config: block_frames {block} is not a positive multiple of temporal_factor {temporal}")
        return cls(block, temporal)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input/output: symbolic dims are strings (ONNX dim_param), fixed dims ints."""

    name: str
    dtype: type
    dims: tuple[int | str, ...]

    def shape(self, batch: int, height: int, width: int, geometry: Geometry) -> tuple[int, ...]:
        """Concrete shape for a batch and a (padded) frame size."""
        sizes = {"batch": batch, "height": height, "width": width, "token_height": height // geometry.spatial_factor,
                 "token_width": width // geometry.spatial_factor}
        fixed = {"frames": geometry.block_frames, "groups": geometry.groups}
        return tuple(d if isinstance(d, int) else sizes.get(d, fixed.get(d)) for d in self.dims)


REFERENCE = TensorSpec("reference", np.float32, ("batch", 3, "height", "width"))
FRAMES_IN = TensorSpec("frames", np.float32, ("batch", 3, "frames", "height", "width"))
TOKENS = TensorSpec("tokens", np.int32, ("batch", "groups", "token_height", "token_width"))
FRAMES_OUT = TensorSpec("reconstruction", np.float32, ("batch", 3, "frames", "height", "width"))

INPUTS = {"encoder": (REFERENCE, FRAMES_IN), "decoder": (REFERENCE, TOKENS)}
OUTPUTS = {"encoder": (TOKENS,), "decoder": (FRAMES_OUT,)}


def fixed_dims(spec: TensorSpec, geometry: Geometry) -> tuple[int | str, ...]:
    """Dims as exported: the block length and group count are baked in from the geometry."""
    return tuple({"frames": geometry.block_frames, "groups": geometry.groups}.get(d, d) if isinstance(d, str) else d
                 for d in spec.dims)


@dataclass(frozen=True)
class Tolerance:
    """Parity thresholds of one precision against PyTorch FP32 (frames in [-1,1], PSNR in dB).

    INT8 moves tokens across FSQ boundaries and single pixels a long way by design, so it is held to
    what a viewer sees: the end-to-end PSNR and the mean decoder error (a broken graph, OpenVINO
    misreading our Q/DQ pairs, measured 0.07-0.14 mean abs and -8 to -13 dB; sound ones 3e-3 to 1e-2
    and -0.1 to -0.5 dB, the last with 8 calibration GOPs)."""

    min_token_agreement: float
    max_abs_frames: float
    max_psnr_delta_db: float
    max_mean_abs_frames: float = float("inf")


TOLERANCES = {
    "fp32": Tolerance(min_token_agreement=0.999, max_abs_frames=1e-3, max_psnr_delta_db=0.05, max_mean_abs_frames=1e-4),
    "fp16": Tolerance(min_token_agreement=0.98, max_abs_frames=5e-2, max_psnr_delta_db=0.2, max_mean_abs_frames=5e-3),
    "int8": Tolerance(min_token_agreement=0.0, max_abs_frames=float("inf"), max_psnr_delta_db=0.5,
                      max_mean_abs_frames=3e-2),
    # OpenVINO computing the FP32 graphs in bfloat16 (``openvino:bf16``, CPUs with AVX512-BF16/AMX): 8-bit
    # mantissas move latents near a rounding boundary to the next code (measured, shipped model: box + tree
    # tokens 97.6 %, max abs 0.10, mean abs 2.4e-4, +0.004 dB; built-in clips 97.8-99.0 %, +0.01 to +0.12 dB
    # on 3 GOPs; the tests' tiny model 93 %). PSNR as FP16's: a few GOPs move either way by 0.1 dB.
    "bf16": Tolerance(min_token_agreement=0.9, max_abs_frames=0.25, max_psnr_delta_db=0.2, max_mean_abs_frames=5e-3),
}
GRAPH_NAMES = ("encoder", "decoder")


def artifact_name(graph: str, precision: str) -> str:
    """File name of one exported graph, e.g. ``encoder.fp16.onnx``."""
    return f"{graph}.{precision}.onnx"


Feed = dict[str, np.ndarray]


def _to_model_range(pixels: np.ndarray) -> np.ndarray:
    """uint8 in [0,255], any layout -> a C-contiguous float32 copy in [-1,1] (x / 127.5 - 1, in place: live
    video converts every frame, so the copies are kept to one)."""
    x = pixels.astype(np.float32, order="C")
    np.divide(x, np.float32(127.5), out=x)
    np.subtract(x, np.float32(1.0), out=x)
    return x


def frames_to_tensor_range(frames: np.ndarray) -> np.ndarray:
    """uint8 ``[...,H,W,3]`` in [0,255] -> float32 ``[...,3,H,W]`` in [-1,1], C-contiguous."""
    return _to_model_range(np.moveaxis(frames, -1, -3))


def tensor_range_to_frames(x: np.ndarray) -> np.ndarray:
    """float32 ``[...,3,H,W]`` in [-1,1] -> uint8 ``[...,H,W,3]`` (rounded, clipped), C-contiguous."""
    y = np.add(np.asarray(x, dtype=np.float32), np.float32(1.0))
    np.multiply(y, np.float32(127.5), out=y)
    np.add(y, np.float32(0.5), out=y)
    np.clip(y, 0, 255, out=y)
    return np.ascontiguousarray(np.moveaxis(y.astype(np.uint8), -3, -1))  # channels moved as bytes, not floats


def encoder_feed(reference: np.ndarray, block: np.ndarray) -> Feed:
    """(reference ``[H,W,3]``, block ``[T,H,W,3]``) uint8 RGB -> the encoder's feed, batch 1:
    ``reference [1,3,H,W]`` and ``frames [1,3,T,H,W]`` float32 in [-1,1]."""
    return {REFERENCE.name: frames_to_tensor_range(reference)[None],
            FRAMES_IN.name: _to_model_range(np.moveaxis(block, -1, 0))[None]}


def decoder_feed(reference: np.ndarray, tokens: np.ndarray) -> Feed:
    """(reference ``[B,3,H,W]`` float32 in [-1,1], token ids ``[B,G,H/8,W/8]``) -> the decoder's feed."""
    return {REFERENCE.name: reference, TOKENS.name: tokens}


def check_feed(graph: str, feed: Mapping[str, np.ndarray], geometry: Geometry) -> None:
    """Raise one ReftokError line unless ``feed`` matches ``INPUTS[graph]`` for ``geometry``.

    Checked: graph name, input names (missing or unexpected), dtypes (int32 tokens, float32
    frames), ranks, fixed dims (3 channels, T frames, T/temporal_factor groups), one batch and
    frame size across inputs, H and W multiples of the spatial factor, tokens of H/8 x W/8.
    Every runner calls it, so a bad feed reads the same on every backend.
    """
    if graph not in INPUTS:
        raise ReftokError(f"unknown graph {graph!r}: use {' or '.join(INPUTS)}")
    specs = INPUTS[graph]
    expected = [s.name for s in specs]
    missing = [n for n in expected if n not in feed]
    extra = sorted(set(feed) - set(expected))
    if missing or extra:
        raise ReftokError(f"{graph} feed: expected inputs {', '.join(expected)}; "
                          + (f"missing {', '.join(missing)}" if missing else f"unexpected {', '.join(extra)}"))
    sizes: dict[str, int] = {}
    for spec in specs:
        value = np.asarray(feed[spec.name])
        if value.dtype != np.dtype(spec.dtype):
            raise ReftokError(f"{graph} feed: {spec.name} must be {np.dtype(spec.dtype).name}, got {value.dtype.name}"
                              + (" (convert with .astype(np.int32))" if spec.dtype is np.int32 else ""))
        if value.ndim != len(spec.dims):
            raise ReftokError(f"{graph} feed: {spec.name} must have {len(spec.dims)} dims "
                              f"[{','.join(map(str, spec.dims))}], got shape {tuple(value.shape)}")
        for dim, size in zip(fixed_dims(spec, geometry), value.shape):
            if isinstance(dim, int) and size != dim:
                raise ReftokError(f"{graph} feed: {spec.name} has shape {tuple(value.shape)}; expected "
                                  f"[{','.join(map(str, fixed_dims(spec, geometry)))}]")
            if isinstance(dim, str):
                if sizes.setdefault(dim, size) != size:
                    raise ReftokError(f"{graph} feed: {dim} differs between inputs ({sizes[dim]} vs {size})")
    s = geometry.spatial_factor
    if "height" in sizes and (sizes["height"] % s or sizes["width"] % s or not sizes["height"] or not sizes["width"]):
        raise ReftokError(f"{graph} feed: frame size {sizes['height']}x{sizes['width']} is not a multiple of {s} "
                          "(pad the frames; the codec layer does)")
    if "token_height" in sizes and "height" in sizes and (
            (sizes["token_height"], sizes["token_width"]) != (sizes["height"] // s, sizes["width"] // s)):
        raise ReftokError(f"{graph} feed: tokens {sizes['token_height']}x{sizes['token_width']} do not match frames "
                          f"{sizes['height']}x{sizes['width']} (expected {sizes['height'] // s}x{sizes['width'] // s})")
