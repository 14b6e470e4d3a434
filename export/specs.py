"""I/O specs of the exported graphs, declared once as data: read by export, runtimes and parity."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reftok_deploy.model import RefTokConfig


@dataclass(frozen=True)
class TensorSpec:
    """One graph input/output: symbolic dims are strings (ONNX dim_param), fixed dims ints."""

    name: str
    dtype: type
    dims: tuple[int | str, ...]

    def shape(self, batch: int, height: int, width: int, cfg: RefTokConfig) -> tuple[int, ...]:
        """Concrete shape for a batch and a (padded) frame size."""
        groups = cfg.block_frames // cfg.temporal_factor
        sizes = {"batch": batch, "height": height, "width": width, "token_height": height // cfg.spatial_factor,
                 "token_width": width // cfg.spatial_factor}
        fixed = {"frames": cfg.block_frames, "groups": groups}
        return tuple(d if isinstance(d, int) else sizes.get(d, fixed.get(d)) for d in self.dims)


REFERENCE = TensorSpec("reference", np.float32, ("batch", 3, "height", "width"))
FRAMES_IN = TensorSpec("frames", np.float32, ("batch", 3, "frames", "height", "width"))
TOKENS = TensorSpec("tokens", np.int32, ("batch", "groups", "token_height", "token_width"))
FRAMES_OUT = TensorSpec("reconstruction", np.float32, ("batch", 3, "frames", "height", "width"))

INPUTS = {"encoder": (REFERENCE, FRAMES_IN), "decoder": (REFERENCE, TOKENS)}
OUTPUTS = {"encoder": (TOKENS,), "decoder": (FRAMES_OUT,)}


def fixed_dims(spec: TensorSpec, cfg: RefTokConfig) -> tuple[int | str, ...]:
    """Dims as exported: the block length and group count are baked in from the config."""
    groups = cfg.block_frames // cfg.temporal_factor
    return tuple({"frames": cfg.block_frames, "groups": groups}.get(d, d) if isinstance(d, str) else d
                 for d in spec.dims)


@dataclass(frozen=True)
class Tolerance:
    """Parity thresholds of one precision against PyTorch FP32 (frames in [-1,1], PSNR in dB)."""

    min_token_agreement: float
    max_abs_frames: float
    max_psnr_delta_db: float


TOLERANCES = {
    "fp32": Tolerance(min_token_agreement=0.999, max_abs_frames=1e-3, max_psnr_delta_db=0.05),
    "fp16": Tolerance(min_token_agreement=0.98, max_abs_frames=5e-2, max_psnr_delta_db=0.2),
    "int8": Tolerance(min_token_agreement=0.0, max_abs_frames=float("inf"), max_psnr_delta_db=0.5),
}
PRECISIONS = tuple(TOLERANCES)
GRAPH_NAMES = ("encoder", "decoder")


def artifact_name(graph: str, precision: str) -> str:
    """File name of one exported graph, e.g. ``encoder.fp16.onnx``."""
    return f"{graph}.{precision}.onnx"
