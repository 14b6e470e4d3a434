"""The block-motion warp baseline: the reference moved by one half-pel vector per 8x8 block and frame
(or coarser blocks, which cost fewer motion bits).

What a classical codec would send before any residual, and the bound a reference-based tokenizer
should pass: for every block frame, OpenCV's DIS optical flow (frame -> reference, the backward flow a
decoder samples with) is averaged over each 8x8 block, rounded to half a pixel, and the reference is
warped bilinearly by that one vector per block (edges replicated). No residual is sent.

Its motion is not free: :func:`motion_bits` states the cost as the empirical entropy of each vector's
change from the same block's vector one frame earlier (zero before the first frame), per component, as
a simple entropy coder with temporal prediction would pay at best; the tokenizer is held to its own
fixed token budget, so the baseline's bits are reported, not matched.

Frames are ``[H,W,3]`` uint8 RGB throughout; no torch here.
"""

from __future__ import annotations

import cv2
import numpy as np

from reftok_deploy.base.spec import SPATIAL_FACTOR

BLOCK = SPATIAL_FACTOR  # pixels per side of a motion block: one vector per token cell
PRECISION = 0.5  # vector resolution in pixels (half-pel)


def block_flow(reference: np.ndarray, frame: np.ndarray, block: int = BLOCK, precision: float = PRECISION,
               dis: "cv2.DISOpticalFlow | None" = None) -> np.ndarray:
    """Backward motion ``[ceil(H/b),ceil(W/b),2]`` float32 (x, y in pixels, multiples of ``precision``): where
    each block of ``frame`` samples ``reference`` (both ``[H,W,3]`` uint8 RGB)."""
    dis = dis or cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = dis.calc(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), cv2.cvtColor(reference, cv2.COLOR_RGB2GRAY), None)
    h, w = flow.shape[:2]
    bh, bw = -(-h // block), -(-w // block)
    padded = np.pad(flow, ((0, bh * block - h), (0, bw * block - w), (0, 0)), mode="edge")
    means = padded.reshape(bh, block, bw, block, 2).mean(axis=(1, 3))
    return (np.round(means / precision) * precision).astype(np.float32)


def warp_by_blocks(reference: np.ndarray, vectors: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Reference ``[H,W,3]`` uint8 sampled at each pixel + its block's vector (bilinear, edges replicated)
    -> ``[H,W,3]`` uint8."""
    h, w = reference.shape[:2]
    per_pixel = np.repeat(np.repeat(vectors, block, 0), block, 1)[:h, :w]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(reference, xs + per_pixel[..., 0], ys + per_pixel[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def motion_bits(vectors: np.ndarray, precision: float = PRECISION) -> float:
    """Bits to send ``[F,bh,bw,2]`` vectors of one GOP's F frames: the empirical entropy (per component) of
    each vector minus the same block's vector one frame earlier, times the number of components."""
    steps = np.round(vectors / precision).astype(np.int64)
    deltas = np.diff(steps, axis=0, prepend=np.zeros_like(steps[:1]))
    bits = 0.0
    for component in range(2):
        values = deltas[..., component].reshape(-1)
        _, counts = np.unique(values, return_counts=True)
        p = counts / counts.sum()
        bits += float(-(p * np.log2(p)).sum()) * values.size
    return bits


def block_motion_warp(reference: np.ndarray, block: np.ndarray, size: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(reference ``[H,W,3]``, block frames ``[k,H,W,3]``, uint8 RGB; ``size`` pixels per side of a motion block)
    -> (warped ``[k,H,W,3]`` uint8, vectors ``[k,ceil(H/size),ceil(W/size),2]`` float32 pixels)."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    vectors = np.stack([block_flow(reference, frame, block=size, dis=dis) for frame in block])
    return np.stack([warp_by_blocks(reference, v, block=size) for v in vectors]), vectors
