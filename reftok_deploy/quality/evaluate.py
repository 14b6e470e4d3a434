"""Reconstruction quality of RefTok against its twin, copying the reference, the block-motion warp and x264,
per clip.

GOPs are formed exactly as the live runtime forms them (:mod:`reftok_deploy.base.gop_plan`): a
reference (kept unquantised, stored as PNG), blocks of T frames, a new reference at a scene
cut, the tail block padded with its last frame. Quality is measured on every block frame
(references are shown exactly and never scored), after rounding to uint8.

Per clip: PSNR/SSIM of RefTok, the twin, ``copy_reference`` (showing the reference for every
block frame: zero tokens, the floor a reference-based tokenizer must not fall under), the
``block_motion_warp`` (the reference moved by one half-pel vector per 8x8 block, or coarser, and frame, no residual:
the bound motion alone reaches, its motion bits stated; :mod:`reftok_deploy.quality.block_motion`) and,
where available, x264 at RefTok's tokens-only bits (:mod:`reftok_deploy.quality.x264`); which of those
RefTok beats (``beats``: above by more than ``TIE_DB``, so a tie in the printed table is no win); the worst frame; the
temporal-step statistic (mean absolute change between consecutive frames inside a latent group,
decoded vs original: version 1's 4-frame steps showed as a ratio far below 1); code usage.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.gop_plan import DEFAULT_CUT_THRESHOLD, Gop, plan_gops
from reftok_deploy.quality.metrics import clip_quality, png_bits, psnr, token_bits
from reftok_deploy.model.latent_refinement import refine_tokens
from reftok_deploy.model.reftok import RefTok, crop_to, pad_to_multiple
from reftok_deploy.base.spec import frames_to_tensor_range, tensor_range_to_frames


@torch.no_grad()
def reconstruct(model: RefTok, references: np.ndarray, blocks: np.ndarray, refine_steps: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """(references ``[B,H,W,3]`` uint8, blocks ``[B,T,H,W,3]`` uint8) -> (recon ``[B,T,H,W,3]`` uint8, tokens int32);
    ``refine_steps`` > 0: tokens refined against the decoder (:func:`reftok_deploy.model.latent_refinement.refine_tokens`).

    Any H, W: inputs are replicate-padded to the model's multiple and cropped back.
    """
    ref = torch.from_numpy(frames_to_tensor_range(references))
    frames = torch.from_numpy(np.ascontiguousarray(np.moveaxis(frames_to_tensor_range(blocks), 1, 2)))
    ref, size = pad_to_multiple(ref, model.cfg.spatial_factor)
    frames, _ = pad_to_multiple(frames, model.cfg.spatial_factor)
    tokens = refine_tokens(model, ref, frames, refine_steps) if refine_steps else model.encode(ref, frames)
    recon = crop_to(model.decode(ref, tokens), size)
    return tensor_range_to_frames(recon.permute(0, 2, 1, 3, 4).numpy()), tokens.numpy()


def batched(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def reconstruct_gops(model: RefTok, gops: list[Gop], batch: int = 4, refine_steps: int = 0
                     ) -> tuple[list[np.ndarray], np.ndarray]:
    """Each GOP's real block frames decoded (``[k,H,W,3]`` uint8 each) and all tokens ``[n_gops,G,h,w]``."""
    recons, tokens = [], []
    t = model.cfg.block_frames
    for chunk in batched(gops, batch):
        recon, ids = reconstruct(model, np.stack([g.reference for g in chunk]), np.stack([g.padded(t) for g in chunk]),
                                 refine_steps)
        recons += [r[: len(g.block)] for r, g in zip(recon, chunk)]
        tokens.append(ids)
    return recons, np.concatenate(tokens)


def temporal_change(gops: list[Gop], recons: list[np.ndarray], group: int) -> dict[str, float]:
    """Mean absolute change (8-bit levels) between consecutive frames inside a latent group of ``group``
    frames: decoded, original, and their ratio (1 = as smooth as the source; version 1 measured ~0.25)."""
    decoded, original = [], []
    for gop, recon in zip(gops, recons):
        for p in range(len(gop.block) - 1):
            if p // group == (p + 1) // group:
                decoded.append(np.abs(recon[p + 1].astype(np.float32) - recon[p]).mean())
                original.append(np.abs(gop.block[p + 1].astype(np.float32) - gop.block[p]).mean())
    if not original:
        return {"reftok": 0.0, "original": 0.0, "ratio": 1.0}
    d, o = float(np.mean(decoded)), float(np.mean(original))
    return {"reftok": d, "original": o, "ratio": d / o if o > 0 else (1.0 if d == 0 else math.inf)}


def code_usage(tokens: np.ndarray, codebook_size: int) -> dict[str, float]:
    """Distinct ids and the entropy of their histogram (bits per token)."""
    counts = np.bincount(tokens.reshape(-1).astype(np.int64), minlength=codebook_size)
    p = counts[counts > 0] / counts.sum()
    return {"distinct": int((counts > 0).sum()), "entropy_bits": float(-(p * np.log2(p)).sum())}


def evaluate_frames(name: str, frames: np.ndarray, reftok: RefTok, twin: RefTok | None, batch: int = 4,
                    max_gops: int | None = None, refresh_blocks: int = 1,
                    cut_threshold: float | None = DEFAULT_CUT_THRESHOLD, x264: bool = False,
                    grid: Path | None = None, block_motion: bool = True,
                    block_motion_size: int = 8, refine_steps: int = 0) -> dict[str, Any]:
    """Score a clip ``[N,H,W,3]`` uint8 RGB (see the module docstring); ``grid``: save a PNG there
    (rows: original | RefTok | twin | copy the reference; columns: frames 1, 4, 8 of the first full GOP);
    ``block_motion_size``: pixels per side of the block-motion warp's blocks; ``refine_steps``: RefTok's and the
    twin's tokens refined against their decoders (same tokens and bits, see
    :mod:`reftok_deploy.model.latent_refinement`)."""
    if twin is not None and (twin.cfg.block_frames, twin.cfg.fsq_levels, twin.cfg.temporal_factor) != (
            reftok.cfg.block_frames, reftok.cfg.fsq_levels, reftok.cfg.temporal_factor):
        raise ReftokError("RefTok and twin checkpoints differ in block length or token budget")
    gops = plan_gops(frames, reftok.cfg.block_frames, refresh_blocks, cut_threshold)[:max_gops]
    if not gops:
        raise ReftokError(f"{name}: {len(frames)} frame(s), fewer than one reference + one frame")
    recons, tokens = reconstruct_gops(reftok, gops, batch, refine_steps)
    original = np.concatenate([g.block for g in gops])
    per_frame = [psnr(o, r) for o, r in zip(original, np.concatenate(recons))]
    pixels = frames.shape[1] * frames.shape[2]
    bits_tokens = token_bits(tokens.size, reftok.fsq.codebook_size)
    bits_refs = sum(png_bits(g.reference) for g in gops)
    result: dict[str, Any] = {
        "clip": name,
        "gops": len(gops),
        "cuts": sum(g.cut for g in gops),
        "frames_scored": int(original.shape[0]),
        "size": list(frames.shape[1:3]),
        "tokens": int(tokens.size),
        "refine_steps": refine_steps,
        "bpp_tokens": bits_tokens / (original.shape[0] * pixels),
        "bpp_with_reference_png": (bits_tokens + bits_refs) / ((original.shape[0] + len(gops)) * pixels),
        "reftok": dict(clip_quality(original, np.concatenate(recons)), worst_frame_psnr=float(min(per_frame))),
        "reftok_psnr_per_frame": [round(p, 3) for p in per_frame],
        "copy_reference": clip_quality(original, np.concatenate([np.repeat(g.reference[None], len(g.block), 0)
                                                                for g in gops])),
        "temporal_change": temporal_change(gops, recons, reftok.cfg.temporal_factor),
        "code_usage": code_usage(tokens, reftok.fsq.codebook_size),
    }
    twin_recons = None
    if twin is not None:
        twin_recons, _ = reconstruct_gops(twin, gops, batch, refine_steps)
        result["twin"] = clip_quality(original, np.concatenate(twin_recons))
    if x264:
        from reftok_deploy.quality.x264 import x264_at_bits

        last = gops[-1].index + len(gops[-1].block) + 1
        result["x264"] = x264_at_bits(frames[:last], [g.index for g in gops], bits_tokens)
    if block_motion:
        result["block_motion_warp"] = block_motion_baseline(gops, original, pixels, block_motion_size)
    result["beats"] = [name for name in BASELINES if name in result
                       and result["reftok"]["psnr"] > result[name]["psnr"] + TIE_DB]
    if grid is not None:
        save_grid(grid, gops, recons, twin_recons)
    return result


# PSNR differences at or under this are ties: the table prints two decimals, and a model that decodes the
# reference as it is matches copy_reference only up to float rounding.
TIE_DB = 0.01

# Rows RefTok is compared with, in the order the table prints them -> their column headers.
BASELINE_LABELS = {"twin": "twin", "copy_reference": "copy", "block_motion_warp": "bmw", "x264": "x264"}
BASELINES = tuple(BASELINE_LABELS)


def block_motion_baseline(gops: list[Gop], original: np.ndarray, pixels: int, block: int = 8) -> dict[str, float]:
    """PSNR/SSIM of the block-motion warp (``block`` x ``block`` pixels per vector) over the GOPs' block frames
    (``original`` ``[N,H,W,3]`` uint8, in GOP order), the bits per pixel its vectors would cost (not counted
    against any budget) and the block size."""
    from reftok_deploy.quality.block_motion import block_motion_warp, motion_bits

    warped, bits = [], 0.0
    for gop in gops:
        frames, vectors = block_motion_warp(gop.reference, gop.block, block)
        warped.append(frames)
        bits += motion_bits(vectors)
    return dict(clip_quality(original, np.concatenate(warped)), bpp_motion=bits / (original.shape[0] * pixels),
                block=block)


def save_grid(path: Path, gops: list[Gop], recons: list[np.ndarray], twin_recons: list[np.ndarray] | None,
              frames: tuple[int, ...] = (1, 4, 8)) -> None:
    """PNG: rows original | RefTok | twin | copy the reference; columns the given frames (1-based) of the first
    GOP with a full block."""
    import cv2

    from reftok_deploy.base.files import atomic_write_bytes

    i = next((k for k, g in enumerate(gops) if len(g.block) >= max(frames)), 0)
    cols = [f - 1 for f in frames if f <= len(gops[i].block)]
    rows = [gops[i].block, recons[i]] + ([twin_recons[i]] if twin_recons else []) + [
        np.repeat(gops[i].reference[None], len(gops[i].block), 0)]
    canvas = np.concatenate([np.concatenate([row[c] for c in cols], 1) for row in rows], 0)
    ok, buf = cv2.imencode(".png", canvas[:, :, ::-1])
    if not ok:
        raise ReftokError(f"cannot encode grid {path}")
    atomic_write_bytes(Path(path), buf.tobytes())


def summarize(clips: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over clips of every quality and rate figure, and the RefTok - twin / - copy gaps."""
    summary: dict[str, Any] = {"clips": len(clips)}
    for model in ("reftok", *BASELINES):
        if all(model in c for c in clips):
            summary[model] = {m: float(np.mean([c[model][m] for c in clips])) for m in ("psnr", "ssim")
                              if m in clips[0][model]}
    for key in ("bpp_tokens", "bpp_with_reference_png"):
        summary[key] = float(np.mean([c[key] for c in clips]))
    summary["psnr_over_copy_db"] = summary["reftok"]["psnr"] - summary["copy_reference"]["psnr"]
    if "twin" in summary:
        summary["psnr_gain_db"] = summary["reftok"]["psnr"] - summary["twin"]["psnr"]
        summary["ssim_higher_on_every_clip"] = all(c["reftok"]["ssim"] > c["twin"]["ssim"] for c in clips)
    if "block_motion_warp" in summary:
        summary["block_motion_warp"]["bpp_motion"] = float(np.mean([c["block_motion_warp"]["bpp_motion"] for c in clips]))
        summary["psnr_over_block_motion_db"] = summary["reftok"]["psnr"] - summary["block_motion_warp"]["psnr"]
    if "x264" in summary:
        summary["psnr_gap_to_x264_db"] = summary["x264"]["psnr"] - summary["reftok"]["psnr"]
    return summary
