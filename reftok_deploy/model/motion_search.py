"""Coarse-to-fine motion search: where, per frame, the reference matches best, to a fraction of a pixel.

The search matches learned features of each frame against the reference's: at 1/8 resolution over +-4 cells
(+-32 px, the reach), then at 1/4 over +-2 cells (+-8 px) around that match, with the reference's 1/4 features
warped by the coarse motion first (as optical-flow networks such as PWC-Net refine a coarse estimate). Each
level's displacement is the soft-argmax of its cost volume. Lucas-Kanade steps per 8x8 block on the grey pixels
then take the match from a cell to a fraction of a pixel (:func:`refine_blocks`). A single volume of the same
reach at 1/8 was worse than assuming no motion on real video, and a finer one could not reach large motion
(``docs/motion_measurement_probe.py``). Every step is a conv, a matrix product, a GridSample or elementwise: it
exports to ONNX with the rest of the encoder.

Layouts: images ``[N,3,H,W]`` float32 in [-1,1] (H, W multiples of 8); motion ``[N,2,H/8,W/8]`` (x, y) in pixels
at which each 8x8 block of a frame finds its content in the reference (backward motion, as the decoder warps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reftok_deploy.model.layers import stage_on_unshuffled
from reftok_deploy.model.matching import correlation, soft_argmax, unit_norm
from reftok_deploy.model.warping import warp_features

SEARCH_CHANNELS = 24  # of the features matched
COARSE_RADIUS, FINE_RADIUS = 4, 2  # cells at 1/8 and at 1/4
COARSE_CELL, FINE_CELL = 8, 4  # pixels per cell
# Largest motion the search can express, per axis (px): the coarse reach, the fine one and Lucas-Kanade's steps.
SEARCH_REACH_PX = COARSE_RADIUS * COARSE_CELL + FINE_RADIUS * FINE_CELL + 4


class SearchFeatures(nn.Module):
    """Image ``[N,3,H,W]`` in [-1,1] -> unit-norm features ``[N,C,H/4,W/4]`` and ``[N,C,H/8,W/8]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        self.s4 = nn.Sequential(nn.Conv2d(48, c, 3, padding=1), nn.ReLU6(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU6(),
                                nn.Conv2d(c, c, 3, padding=1))
        self.s8 = nn.Sequential(nn.ReLU6(), nn.Conv2d(c, c, 3, stride=2, padding=1), nn.ReLU6(),
                                nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f4 = stage_on_unshuffled(self.s4, x, 4)  # over x unshuffled to 1/4
        return unit_norm(f4), unit_norm(self.s8(f4))


class MotionSearch(nn.Module):
    """(reference ``[B,3,H,W]``, frames ``[B*K,3,H,W]``, K frames per clip in order, both in [-1,1]) ->
    motion ``[B*K,2,H/8,W/8]`` px found at 1/8, refined at 1/4, then per 8x8 block by :func:`refine_blocks`
    (see the module docstring)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.features = SearchFeatures(channels)

    def forward(self, reference: torch.Tensor, frames: torch.Tensor, batch: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f4, f8 = self.features(frames)
        r4, r8 = self.features(reference)
        coarse = soft_argmax(correlation(f8, r8, COARSE_RADIUS), COARSE_RADIUS) * float(COARSE_CELL)
        # The reference's 1/4 features where the coarse match points, one map per frame.
        aligned = unit_norm(warp_features(r4, coarse, FINE_CELL, reference.dtype, batch))
        fine = soft_argmax(correlation(f4, aligned, FINE_RADIUS), FINE_RADIUS) * float(FINE_CELL)
        matched = coarse + F.avg_pool2d(fine, 2)
        return coarse, matched, refine_blocks(reference, frames, matched, batch)


LK_ITERATIONS = 4
GREY_SCALE = 16.0  # grey levels as [-16,16]: the normal equations' sums stay well inside FP16's range
LK_DAMPING = 0.25  # added to their diagonal (grey levels squared): flat blocks stay put
LK_STEP_PX = 1.0  # largest change of one iteration, per axis


def _differences(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N,1,H,W]`` -> (d/dx, d/dy): central differences, one-sided at the edges (slices only, no Pad)."""
    dx = torch.cat([x[..., :, 1:2] - x[..., :, :1], (x[..., :, 2:] - x[..., :, :-2]) * 0.5,
                    x[..., :, -1:] - x[..., :, -2:-1]], 3)
    dy = torch.cat([x[..., 1:2, :] - x[..., :1, :], (x[..., 2:, :] - x[..., :-2, :]) * 0.5,
                    x[..., -1:, :] - x[..., -2:-1, :]], 2)
    return dx, dy


def refine_blocks(reference: torch.Tensor, frames: torch.Tensor, motion: torch.Tensor, batch: int,
                  iterations: int = LK_ITERATIONS) -> torch.Tensor:
    """Lucas-Kanade steps per 8x8 block. reference ``[B,3,H,W]``, frames ``[B*K,3,H,W]`` in [-1,1]; motion
    ``[B*K,2,H/8,W/8]`` px -> the same, moved to where the grey reference, warped by it (bilinear between block
    centres, as the decoder warps), best matches each frame.

    Each step solves the 2x2 normal equations of the block's linearised warp error (damped by LK_DAMPING, capped
    at LK_STEP_PX per axis): the feature search finds the match to a cell, this makes it sub-pixel on the pixels.
    """
    grey_reference = reference.mean(1, keepdim=True) * GREY_SCALE
    grey_frames = frames.mean(1, keepdim=True) * GREY_SCALE
    block = lambda x: F.avg_pool2d(x, COARSE_CELL)  # noqa: E731
    for _ in range(iterations):
        warped = warp_features(grey_reference, motion, 1, reference.dtype, batch)
        gx, gy = _differences(warped)
        error = grey_frames - warped
        xx, xy, yy = block(gx * gx) + LK_DAMPING, block(gx * gy), block(gy * gy) + LK_DAMPING
        ex, ey = block(gx * error), block(gy * error)
        step = torch.cat([yy * ex - xy * ey, xx * ey - xy * ex], 1) / (xx * yy - xy * xy)
        motion = motion + step.clamp(-LK_STEP_PX, LK_STEP_PX)
    return motion
