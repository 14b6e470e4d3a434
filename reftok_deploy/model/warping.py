"""Backward warps by motion fields: bilinear GridSample of the reference (or its features) at each output
position moved by its motion, with the grids built so exported graphs stay fast and quantisable."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sampling_grid(offsets: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """Offsets ``[N,2,h,w]`` ((x, y) in pixels of a map ``scale`` times finer) -> grid_sample's grid
    ``[N,h*scale,w*scale,2]``: normalised coordinates (align_corners=False) of each pixel centre moved by its
    offset, the offsets upsampled bilinearly. In the offsets' dtype: pass float32 under bf16 autocast, whose
    8-bit mantissa would put centres up to 0.25 pixel off near the edges of a 256 map.

    Sizes come from the offsets, never from the map sampled: an exported graph then keeps the
    sampling region (motion, grid) apart from the features it samples. Integer ranges, cast after: TensorRT
    parses a float Range only when its bounds are constants. Offsets are normalised before upsampling
    (upsampling is linear: the same values on 64 times fewer pixels) and the centres added channels-first,
    then one transpose (x, y interleaved per pixel over the whole map was the decoder's slowest step at
    640x480 under OpenVINO).
    """
    h, w = offsets.shape[-2] * scale, offsets.shape[-1] * scale
    normalised = torch.cat([offsets[:, :1] * (2.0 / w), offsets[:, 1:] * (2.0 / h)], 1)
    if scale != 1:  # all maps as the channels of one item: interpolating 2 channels wide was 4x slower
        n, _, mh, mw = normalised.shape
        normalised = F.interpolate(normalised.reshape(1, 2 * n, mh, mw), scale_factor=float(scale), mode="bilinear",
                                   align_corners=False).reshape(n, 2, h, w)
    xs = (torch.arange(w, device=offsets.device).to(offsets.dtype) + 0.5) * (2.0 / w) - 1.0
    ys = (torch.arange(h, device=offsets.device).to(offsets.dtype) + 0.5) * (2.0 / h) - 1.0
    centres = torch.cat([xs.view(1, 1, 1, w).expand(1, 1, h, w), ys.view(1, 1, h, 1).expand(1, 1, h, w)], 1)
    return (normalised + centres).permute(0, 2, 3, 1)


def sample_per_clip(images: torch.Tensor, grid: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    """Bilinear samples (edges repeated) of ``images [B,C,H,W]`` at ``grid [B*K,h,w,2]`` (K grids per image, in
    order) -> ``[B*K,C,h,w]``. The K grids are stacked into one tall grid per image, so the images are never
    copied K times. ``batch``: B, when the images are computed; default ``images.shape[0]``. Computed images'
    shapes are never read: in an exported graph that would join the grid's region to the layers that made them,
    and a Shape op on a conv's output keeps ONNX Runtime from fusing that conv into an int8 kernel."""
    b = images.shape[0] if batch is None else batch
    n, h, w, _ = grid.shape
    tall = grid.reshape(b, n // b * h, w, 2)
    sampled = F.grid_sample(images, tall.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return sampled.reshape(b, -1, n // b, h, w).transpose(1, 2).reshape(n, -1, h, w)


def warp_reference(reference: torch.Tensor, motion: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """Backward-warp the reference once per frame.

    reference ``[B,3,H,W]`` in [-1,1]; motion ``[B*G,2*ft,H/scale,W/scale]``, per frame the (x, y) offset in
    pixels at which each output pixel samples the reference, at full resolution or coarser (upsampled
    bilinearly, see :func:`sampling_grid`). Returns ``[B*G,3*ft,H,W]`` laid out like folded frames
    (frame-major, then RGB).
    """
    h, w = reference.shape[-2:]
    n, c = motion.shape[:2]
    ft = c // 2
    offsets = motion.reshape(n * ft, 2, *motion.shape[-2:]).to(reference.dtype)
    grid = sampling_grid(offsets, scale)  # [N*ft,H,W,2]
    return sample_per_clip(reference, grid).reshape(n, ft * 3, h, w)


def warp_features(features: torch.Tensor, motion: torch.Tensor, cell: int, dtype: torch.dtype,
                  batch: int | None = None) -> torch.Tensor:
    """Backward-warp feature maps by each group's motion.

    features ``[B,C,H/cell,W/cell]`` (one per clip, or one per group: B = N); motion ``[N,2,H/8,W/8]``, N = B*G,
    (x, y) offsets in full-resolution pixels at which each position samples the reference; ``dtype`` that of
    the grid (the reference's); ``batch`` B (see :func:`sample_per_clip`). Returns ``[N,C,H/cell,W/cell]``
    (bilinear, edges repeated).
    """
    if 8 % cell:
        raise ValueError(f"cell {cell} does not divide the motion's 8-pixel cells")
    offsets = (motion * (1.0 / cell)).to(dtype)
    return sample_per_clip(features, sampling_grid(offsets, 8 // cell), batch)
