"""Local matching of feature maps: cost volumes (correlations within a radius) and their soft-argmax
displacements. Layouts: features ``[N,C,h,w]``; volumes ``[N,(2r+1)^2,h,w]``; displacements ``[N,2,h,w]`` in cells."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def unit_norm(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise ``[N,C,h,w]`` over channels: correlations are cosines in [-1,1] (safe for FP16/INT8)."""
    return x * torch.rsqrt((x * x).sum(1, keepdim=True) + 1e-6)


CORRELATION_TILE = 8  # cells of a row multiplied as one small matrix (>= 2 * the largest radius)


def correlation(a: torch.Tensor, b: torch.Tensor, radius: int) -> torch.Tensor:
    """Local cost volume: ``a [N,C,h,w]`` against ``b [M,C,h,w]`` -> ``[N,(2r+1)^2,h,w]``, channel (dy, dx) =
    <a(p), b(p + d)>, zero where p + d is outside ``b``. N is a multiple of M: ``a``'s items are M runs of N/M,
    run k against ``b[k]`` (every frame of a clip against its one reference, without copying it N/M times).

    Computed per row offset dy as batched matrix products: the ``tile + 2r`` cells of ``b`` that a run of
    CORRELATION_TILE cells of ``a`` can reach (``[tile+2r,C]``) times those cells (``[C,tile]``), then the
    ``2r+1`` diagonals wanted are gathered from each ``[tile+2r,tile]`` product. Plain ONNX
    (Pad/Transpose/Reshape/MatMul/Gather); 2r+1 matrix products instead of (2r+1)^2 multiplies and
    channel sums over the whole map, which left runtimes memory-bound (measured: OpenVINO's bf16
    encoder at 640x480 174 instead of 392 ms, per OpenVINO's layer counters). Equal to the direct sum up to float rounding order.
    """
    tile = CORRELATION_TILE
    if 2 * radius > tile:
        raise ValueError(f"correlation radius {radius} needs CORRELATION_TILE >= {2 * radius}")
    n, c, h, w = a.shape
    m = b.shape[0]
    size, span = 2 * radius + 1, tile + 2 * radius
    tiles = (w + tile - 1) // tile
    pad = tiles * tile - w  # cells past the right edge; their results are cropped
    # a as [M,N/M,h,tiles,C,tile] and b as [M,h,w,C] (channels last): no per-offset transpose is needed
    cells_a = F.pad(a, (0, pad)).permute(0, 2, 1, 3).reshape(m, n // m, h, c, tiles, tile).transpose(3, 4)
    # b with radius cells of zeros around it, and one more tile on the right so every window is whole
    padded = F.pad(b, (radius, radius + pad + tile, radius, radius)).permute(0, 2, 3, 1)
    # flat index of (cell i, offset dx) in a [tile+2r, tile] product: row i + dx, column i
    diagonals = torch.tensor([(i + dx) * tile + i for i in range(tile) for dx in range(size)], device=a.device)
    rows = []
    for dy in range(size):
        row = padded[:, dy : dy + h]
        windows = torch.cat([row[:, :, : w + pad].reshape(m, h, tiles, tile, c),
                             row[:, :, tile : tile + w + pad].reshape(m, h, tiles, tile, c)[:, :, :, : 2 * radius]], 3)
        products = torch.matmul(windows.unsqueeze(1), cells_a).reshape(n, h, tiles, span * tile)
        rows.append(products.index_select(-1, diagonals).reshape(n, h, w + pad, size))
    # [N,dy,h,w,dx] (whole rows stacked: a plain copy; stacked innermost, a strided one) -> channel dy*size+dx
    volume = torch.stack(rows, 1).permute(0, 1, 4, 2, 3).reshape(n, size * size, h, w + pad)
    return volume[..., :w]


# Cosine similarities are in [-1,1]; this temperature makes the soft-argmax follow the best match.
SOFT_ARGMAX_TEMPERATURE = 0.05


def soft_argmax(volume: torch.Tensor, radius: int) -> torch.Tensor:
    """Cost volume ``[N,(2r+1)^2,h,w]`` (channel order of :func:`correlation`) -> expected displacement
    ``[N,2,h,w]`` (x, y) in cells: where, around each cell, the reference matches best."""
    size = 2 * radius + 1
    # The softmax over channels written out (exp of the shift by each cell's best match, channel sums): the same
    # numbers, and onnxruntime's Softmax over channels (a transpose to the last axis and back) took 132 of its
    # encoder's 377 ms per 640x480 GOP. The best match's weight is 1, so the sum never underflows, in FP16 too.
    weights = torch.exp((volume - volume.amax(1, keepdim=True)) * (1.0 / SOFT_ARGMAX_TEMPERATURE))
    offsets = torch.arange(size, device=volume.device).to(volume.dtype) - radius
    dx = offsets.repeat(size).view(1, -1, 1, 1)
    dy = offsets.repeat_interleave(size).view(1, -1, 1, 1)
    total = weights.sum(1, keepdim=True)
    return torch.cat([(weights * dx).sum(1, keepdim=True), (weights * dy).sum(1, keepdim=True)], 1) / total
