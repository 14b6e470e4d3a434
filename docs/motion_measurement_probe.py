"""How precisely can the encoder measure motion? The shipped encoder's cost volumes read several ways, against a
plain correlation of grey 5x5 patches at 1/2 and 1/4 resolution and (``--search``) a trained motion search
(reftok-train-search), each scored two ways: its error (px) against DIS optical flow's 8x8 block means on the
blocks that move more than 1 px, and the PSNR of the reference warped by its vectors, one per 8x8 block, with no
residual (as the block-motion baseline of reftok-eval warps DIS's). The block refinement is version 3's
(``reftok-train --block-refinement``): the 1/4 soft-argmax moved by Lucas-Kanade steps per block. "zero" (no
motion) is the floor to beat, "DIS block means" the block-motion warp itself. 256x256, 6 GOPs of 8 frames spread over each clip.

    .venv/bin/python docs/motion_measurement_probe.py DIR_WITH_box.mp4_tree.avi_carphone.mp4 [--search search.safetensors]
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from reftok_deploy.model.checkpoint import default_checkpoint, load_checkpoint
from reftok_deploy.model.matching import SOFT_ARGMAX_TEMPERATURE, correlation, soft_argmax
from reftok_deploy.model.reftok import CORRELATION_RADII, block_refined_motion
from reftok_deploy.model.motion_search import SEARCH_CHANNELS, MotionSearch
from reftok_deploy.model.warm_start import read_search_weights
from reftok_deploy.quality.block_motion import block_flow, warp_by_blocks

GOPS, SIZE = 6, 256


def clip_frames(path: str) -> np.ndarray:
    """Every frame, short side resized to SIZE and centre-cropped: ``[F,SIZE,SIZE,3]`` uint8 RGB."""
    capture, frames = cv2.VideoCapture(path), []
    while True:
        ok, frame = capture.read()
        if not ok:
            return np.stack(frames)
        h, w = frame.shape[:2]
        scale = SIZE / min(h, w)
        frame = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        h, w = frame.shape[:2]
        y, x = (h - SIZE) // 2, (w - SIZE) // 2
        frames.append(cv2.cvtColor(frame[y : y + SIZE, x : x + SIZE], cv2.COLOR_BGR2RGB))


def offsets(radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dy) of each channel of a :func:`correlation` volume, in cells."""
    cells = torch.arange(2 * radius + 1, dtype=torch.float32) - radius
    return cells.repeat(2 * radius + 1), cells.repeat_interleave(2 * radius + 1)


def hard_argmax(volume: torch.Tensor, radius: int) -> torch.Tensor:
    """``[N,K,h,w]`` -> the best cell's (x, y) ``[N,2,h,w]``."""
    dx, dy = offsets(radius)
    best = volume.argmax(1)
    return torch.stack([dx[best], dy[best]], 1)


def local_soft_argmax(volume: torch.Tensor, radius: int) -> torch.Tensor:
    """The soft-argmax over the 3x3 cells around the best one (the global one averages distant matches in)."""
    dx, dy = offsets(radius)
    cells = torch.stack([dx, dy], 0).view(1, 2, -1, 1, 1)
    near = ((cells - hard_argmax(volume, radius).unsqueeze(2)).abs() <= 1).all(1)
    weights = torch.softmax(volume.masked_fill(~near, -1e9) / SOFT_ARGMAX_TEMPERATURE, 1)
    return torch.stack([(weights * dx.view(1, -1, 1, 1)).sum(1), (weights * dy.view(1, -1, 1, 1)).sum(1)], 1)


def grey_patches(x: torch.Tensor, scale: int) -> torch.Tensor:
    """``[N,3,H,W]`` -> zero-mean unit-norm 5x5 patches of the grey image at 1/scale ``[N,25,H/s,W/s]``."""
    grey = F.avg_pool2d(x.mean(1, keepdim=True), scale)
    patches = F.unfold(F.pad(grey, (2, 2, 2, 2), mode="replicate"), 5).view(x.shape[0], 25, *grey.shape[-2:])
    patches = patches - patches.mean(1, keepdim=True)
    return patches / (patches.norm(dim=1, keepdim=True) + 1e-3)


def estimates(model, block: torch.Tensor, reference: torch.Tensor, search: MotionSearch | None
              ) -> dict[str, torch.Tensor]:
    """Every estimator's motion per 8x8 block ``[8,2,h/8,w/8]`` px (frame -> reference)."""
    radius4, radius8 = CORRELATION_RADII
    m4, m8 = model.motion_features(block)
    r4, r8 = model.motion_features(reference)
    v4, v8 = correlation(m4, r4, radius4), correlation(m8, r8, radius8)
    soft_argmax4 = F.avg_pool2d(soft_argmax(v4, radius4) * 4, 2)
    found = {
        "encoder 1/8 soft-argmax (shipped)": soft_argmax(v8, radius8) * 8,
        "encoder 1/4 soft-argmax (shipped)": soft_argmax4,
        "encoder 1/4 + block refinement (version 3)": block_refined_motion(reference, block, soft_argmax4, 1),
        "encoder 1/8 argmax": hard_argmax(v8, radius8) * 8,
        "encoder 1/8 local soft-argmax": local_soft_argmax(v8, radius8) * 8,
        "encoder 1/4 local soft-argmax": F.avg_pool2d(local_soft_argmax(v4, radius4) * 4, 2),
    }
    for scale, radius in ((2, 4), (4, 3)):
        volume = correlation(grey_patches(block, scale), grey_patches(reference, scale), radius)
        found[f"grey patches 1/{scale} (+-{scale * radius} px) soft-argmax"] = F.avg_pool2d(
            soft_argmax(volume, radius) * scale, 8 // scale)
    if search is not None:
        coarse, matched, refined = search(reference, block, 1)
        found["search: coarse 1/8 (+-32 px)"] = coarse
        found["search: refined at 1/4 (+-8 px)"] = matched
        found["search: + Lucas-Kanade per block"] = refined
    found["zero"] = torch.zeros_like(found["encoder 1/8 argmax"])
    return found


def load_search(path: str) -> MotionSearch:
    search = MotionSearch(SEARCH_CHANNELS)
    read_search_weights(search, path)
    return search.eval()


def warp_psnr(reference: np.ndarray, block: np.ndarray, vectors: torch.Tensor) -> float:
    """Mean squared error of the reference warped by one vector per 8x8 block ``[T,2,h,w]`` against the frames."""
    warped = np.stack([warp_by_blocks(reference, v.permute(1, 2, 0).numpy()) for v in vectors])
    return float(((warped.astype(np.float64) - block) ** 2).mean())


def main(folder: str, search_path: str | None = None) -> None:
    torch.set_num_threads(2)
    model, _ = load_checkpoint(default_checkpoint())
    model.eval()
    search = None if search_path is None else load_search(search_path)
    table: dict[str, dict[str, float]] = {}
    psnr: dict[str, dict[str, float]] = {}
    for clip in ("box.mp4", "tree.avi", "carphone.mp4"):
        frames = clip_frames(f"{folder}/{clip}")
        errors: dict[str, list[torch.Tensor]] = {}
        squared: dict[str, list[float]] = {}
        for start in np.linspace(0, len(frames) - 9, GOPS).astype(int):
            reference, block = frames[start], frames[start + 1 : start + 9]
            teacher = torch.from_numpy(np.stack([block_flow(reference, f, precision=1e-6) for f in block]))
            teacher = teacher.permute(0, 3, 1, 2)
            moving = teacher.norm(dim=1) > 1
            pixels = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1  # noqa: E731
            with torch.no_grad():
                found = estimates(model, pixels(block), pixels(reference[None]), search)
                for name, motion in {**found, "DIS block means": teacher}.items():
                    errors.setdefault(name, []).append((motion - teacher).norm(dim=1)[moving])
                    squared.setdefault(name, []).append(warp_psnr(reference, block, motion))
        table[clip] = {name: float(torch.cat(e).mean()) for name, e in errors.items()}
        table[clip]["(moving blocks)"] = sum(e.numel() for e in errors["zero"])
        psnr[clip] = {name: 10 * np.log10(255.0**2 / np.mean(v)) for name, v in squared.items()}
    print("px off DIS on moving 8x8 blocks".ljust(46), *[c.rjust(13) for c in table])
    for name in table["box.mp4"]:
        print(name.ljust(46), *[f"{table[c][name]:13.2f}" for c in table])
    print()
    print("PSNR (dB) of the reference warped per 8x8 block".ljust(46), *[c.rjust(13) for c in psnr])
    for name in psnr["box.mp4"]:
        print(name.ljust(46), *[f"{psnr[c][name]:13.2f}" for c in psnr])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="folder holding box.mp4, tree.avi and carphone.mp4")
    parser.add_argument("--search", help="a trained motion search (reftok-train-search's search.safetensors)")
    args = parser.parse_args()
    main(args.folder, args.search)
