"""The flow teacher: which pixels a teacher flow (true motion, or DIS optical flow on real video) explains, and
how far measured motion is from it per 8x8 block.

Layouts: reference ``[B,3,H,W]`` and frames ``[B,3,T,H,W]`` float32 in [-1,1]; flows ``[B,2,T,H,W]`` (x, y) in
pixels at which each frame pixel finds its content in the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reftok_deploy.model.warping import warp_reference

# A teacher flow is trusted where warping the reference by it reproduces the frame to within
# this mean absolute error ([-1,1] units; 0.08 ~ 10 levels, above sensor noise): elsewhere
# (occlusions, new content, cuts) there is no true motion to learn.
TEACHER_TOLERANCE = 0.08
# A block's teacher vector is used when at least this share of its pixels is trusted (teacher_mask).
TRUSTED_BLOCK_SHARE = 0.9


@torch.no_grad()
def teacher_mask(reference: torch.Tensor, frames: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``[B,1,T,H,W]`` float mask, 1 where ``flow [B,2,T,H,W]`` explains ``frames [B,3,T,H,W]``."""
    b, _, t, h, w = frames.shape
    # All T frames as one group of T: warp_reference's motion [B,2T,H,W] and output [B,3T,H,W] are frame-major.
    warped = warp_reference(reference, flow.transpose(1, 2).reshape(b, 2 * t, h, w))
    warped = warped.reshape(b, t, 3, h, w).transpose(1, 2)
    return ((warped - frames).abs().mean(1, keepdim=True) < TEACHER_TOLERANCE).to(frames.dtype)


def block_targets(flow: torch.Tensor, trusted: torch.Tensor, cell: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the teacher's ``cell`` x ``cell`` block means ``[B,2,T,H/cell,W/cell]``, 0/1 weights ``[B,1,T,H/cell,W/cell]``
    of the blocks ``trusted [B,1,T,H,W]`` enough)."""
    b, _, t, h, w = flow.shape
    target = F.avg_pool2d(flow.reshape(b, 2 * t, h, w), cell).reshape(b, 2, t, h // cell, w // cell)
    weight = (F.avg_pool2d(trusted.reshape(b, t, h, w), cell) >= TRUSTED_BLOCK_SHARE).to(flow.dtype).unsqueeze(1)
    return target, weight


def block_error(measured: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, reach: float) -> torch.Tensor:
    """Mean L1 (pixels, x + y) of ``measured [B,2,T,h,w]`` against ``target`` clamped to +-``reach`` (what the
    measurement can express), over the blocks of ``weight`` (see :func:`block_targets`)."""
    error = (measured.float() - target.clamp(-reach, reach)).abs().sum(1, keepdim=True)
    return (error * weight).sum() / weight.sum().clamp(min=1.0)
