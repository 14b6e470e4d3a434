"""Reconstruction quality of RefTok and its twin on real clips, at identical token budgets.

A clip is split into GOPs: one reference frame (kept unquantised, stored as PNG)
followed by one block of T frames encoded as tokens. Quality is measured on the
block frames only, after rounding to uint8; the incomplete tail is skipped.
``copy_reference`` scores showing the reference for every block frame (zero tokens):
what the tokens must beat.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from reftok_deploy.errors import ReftokError
from reftok_deploy.metrics import clip_quality, png_bits, token_bits
from reftok_deploy.model import RefTok, crop_to, pad_to_multiple
from reftok_deploy.video import frames_to_tensor_range, read_video, tensor_range_to_frames


def split_gops(frames: np.ndarray, block_frames: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[N,H,W,3]`` -> [(reference ``[H,W,3]``, block ``[T,H,W,3]``)], every GOP T+1 frames long."""
    gop = block_frames + 1
    if len(frames) < gop:
        raise ReftokError(f"clip has {len(frames)} frames, shorter than one reference + block of {block_frames}")
    return [(frames[i], frames[i + 1 : i + gop]) for i in range(0, len(frames) - gop + 1, gop)]


@torch.no_grad()
def reconstruct(model: RefTok, references: np.ndarray, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(references ``[B,H,W,3]`` uint8, blocks ``[B,T,H,W,3]`` uint8) -> (recon ``[B,T,H,W,3]`` uint8, tokens int32).

    Any H, W: inputs are replicate-padded to the model's multiple and cropped back.
    """
    ref = torch.from_numpy(frames_to_tensor_range(references))
    frames = torch.from_numpy(np.ascontiguousarray(np.moveaxis(frames_to_tensor_range(blocks), 1, 2)))
    ref, size = pad_to_multiple(ref, model.cfg.spatial_factor)
    frames, _ = pad_to_multiple(frames, model.cfg.spatial_factor)
    tokens = model.encode(ref, frames)
    recon = crop_to(model.decode(ref, tokens), size)
    return tensor_range_to_frames(recon.permute(0, 2, 1, 3, 4).numpy()), tokens.numpy()


def batched(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def evaluate_clip(path: str | Path, reftok: RefTok, twin: RefTok | None, size: int = 256,
                  batch: int = 4, max_gops: int | None = None) -> dict[str, Any]:
    """Per-clip PSNR/SSIM of RefTok (and the twin) plus bits per pixel; frames centre-cropped to size x size."""
    return evaluate_frames(str(path), read_video(path, size=size), reftok, twin, batch, max_gops)


def evaluate_frames(name: str, frames: np.ndarray, reftok: RefTok, twin: RefTok | None, batch: int = 4,
                    max_gops: int | None = None) -> dict[str, Any]:
    """Score a clip ``[N,S,S,3]`` uint8 RGB (see :func:`evaluate_clip`)."""
    if twin is not None and (twin.cfg.block_frames, twin.cfg.fsq_levels, twin.cfg.temporal_factor) != (
            reftok.cfg.block_frames, reftok.cfg.fsq_levels, reftok.cfg.temporal_factor):
        raise ReftokError("RefTok and twin checkpoints differ in block length or token budget")
    gops = split_gops(frames, reftok.cfg.block_frames)[:max_gops]
    originals, recon_ref, recon_twin, n_tokens = [], [], [], 0
    for chunk in batched(gops, batch):
        refs = np.stack([r for r, _ in chunk])
        blocks = np.stack([b for _, b in chunk])
        recon, tokens = reconstruct(reftok, refs, blocks)
        originals.append(blocks)
        recon_ref.append(recon)
        n_tokens += tokens.size
        if twin is not None:
            recon_twin.append(reconstruct(twin, refs, blocks)[0])
    original = np.concatenate(originals).reshape(-1, *frames.shape[1:])
    block_pixels = original.shape[0] * frames.shape[1] * frames.shape[2]
    bits_tokens = token_bits(n_tokens, reftok.fsq.codebook_size)
    bits_refs = sum(png_bits(r) for r, _ in gops)
    result: dict[str, Any] = {
        "clip": name,
        "gops": len(gops),
        "frames_scored": int(original.shape[0]),
        "size": list(frames.shape[1:3]),
        "tokens": n_tokens,
        "bpp_tokens": bits_tokens / block_pixels,
        "bpp_with_reference_png": (bits_tokens + bits_refs) / (block_pixels + len(gops) * frames.shape[1] * frames.shape[2]),
        "reftok": clip_quality(original, np.concatenate(recon_ref).reshape(original.shape)),
        "copy_reference": clip_quality(original, np.concatenate(
            [np.repeat(r[None], len(b), axis=0) for r, b in gops])),
    }
    if twin is not None:
        result["twin"] = clip_quality(original, np.concatenate(recon_twin).reshape(original.shape))
    return result


def summarize(clips: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over clips of every quality and rate figure, and the RefTok - twin gaps."""
    summary: dict[str, Any] = {"clips": len(clips)}
    for model in ("reftok", "twin", "copy_reference"):
        if all(model in c for c in clips):
            summary[model] = {m: float(np.mean([c[model][m] for c in clips])) for m in ("psnr", "ssim")}
    for key in ("bpp_tokens", "bpp_with_reference_png"):
        summary[key] = float(np.mean([c[key] for c in clips]))
    if "twin" in summary:
        summary["psnr_gain_db"] = summary["reftok"]["psnr"] - summary["twin"]["psnr"]
        summary["ssim_higher_on_every_clip"] = all(c["reftok"]["ssim"] > c["twin"]["ssim"] for c in clips)
    return summary
