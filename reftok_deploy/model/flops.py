"""Compute cost of one GOP (encode + decode of T frames against a reference), counted by PyTorch.

``python -m reftok_deploy.cli.count_flops [--preset tiny] [--size 256]`` prints GFLOP per GOP for the
encoder, the decoder and both (PyTorch's FlopCounterMode: convolutions and matrix products, 2 FLOPs
per multiply-add; elementwise ops and GridSample are not counted). The cost volume is counted apart, as its dot
products (2 FLOPs per channel of each offset and cell); the tiled matrix products that compute it
(:func:`reftok_deploy.model.matching.correlation`) also multiply cells no offset needs, about 1.9x as many.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from reftok_deploy.model.reftok import CORRELATION_RADII, RefTok


@torch.no_grad()
def gop_flops(model: RefTok, size: int | tuple[int, int] = 256) -> dict[str, float]:
    """GFLOP per GOP at ``size x size`` (or ``(height, width)``): encoder, decoder, total, and the cost
    volume's multiply-adds. Every term is proportional to the pixel count (all layers are convolutions
    over the full frame or fixed fractions of it)."""
    t = model.cfg.block_frames
    height, width = (size, size) if isinstance(size, int) else size
    reference = torch.zeros(1, 3, height, width)
    frames = torch.zeros(1, 3, t, height, width)
    with FlopCounterMode(display=False) as counter:
        tokens = model.encode(reference, frames)
    encoder = _without_cost_volume(counter) / 1e9
    with FlopCounterMode(display=False) as counter:
        model.decode(reference, tokens)
    decoder = _without_cost_volume(counter) / 1e9
    correlation = 0.0
    if model.cfg.reference:
        m = model.cfg.motion_channels
        for scale, radius in zip((4, 8), CORRELATION_RADII):
            correlation += 2 * t * m * (2 * radius + 1) ** 2 * (height // scale) * (width // scale) / 1e9
    return {"encoder": encoder, "decoder": decoder, "cost_volume": correlation,
            "total": encoder + decoder + correlation}


def _without_cost_volume(counter: FlopCounterMode) -> int:
    """A count's FLOPs less its batched matrix products (aten.bmm: in these models only the cost volume's,
    counted apart as its dot products)."""
    return sum(flops for op, flops in counter.get_flop_counts().get("Global", {}).items() if "bmm" not in str(op))
