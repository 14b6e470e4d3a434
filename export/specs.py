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
