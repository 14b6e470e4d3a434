"""Make docs/demo.png, the README's picture: one GOP of a built-in demo clip through the shipped RefTok.

Rows: frames 1, 4 and 8 of the block; columns: original | RefTok reconstruction, with PSNR per frame
(measured at 256x256; cells are shown at 200 px so the PNG stays under 400 KB).
Uses only the package's Python API (shipped checkpoint, built-in clip: no download, no camera).

    .venv/bin/python docs/make_picture.py [--clip demo:astronaut] [--out docs/demo.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from reftok_deploy.model.checkpoint import default_checkpoint, load_checkpoint
from reftok_deploy.model.data import demo_clips
from reftok_deploy.base.files import AtomicFile
from reftok_deploy.quality.metrics import psnr
from reftok_deploy.base.spec import frames_to_tensor_range, tensor_range_to_frames

SIZE = 256        # what the model encodes and PSNR is measured on
CELL = 200        # what the picture shows (INTER_AREA downscale; full size made a 534 KB PNG)
ROWS = (1, 4, 8)  # 1-based frame numbers inside the 8-frame block
HEADER = 28       # height of the column titles
GAP = 4           # pixels between cells


def reconstruct(clip: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """One GOP ``[1+T,S,S,3]`` uint8 (reference first) -> (block ``[T,S,S,3]``, its reconstruction, token shape)."""
    model, _ = load_checkpoint(default_checkpoint())
    block_frames = model.cfg.geometry.block_frames
    reference = torch.from_numpy(frames_to_tensor_range(clip[0]))[None]
    block = clip[1:1 + block_frames]
    frames = torch.from_numpy(frames_to_tensor_range(block)).permute(1, 0, 2, 3)[None]
    with torch.inference_mode():
        tokens = model.encode(reference, frames)
        decoded = model.decode(reference, tokens)
    return block, tensor_range_to_frames(decoded[0].permute(1, 0, 2, 3).numpy()), tuple(tokens.shape)


def label(image: np.ndarray, text: str) -> None:
    """White text on a dark band at the bottom left of ``image`` (in place)."""
    scale, thickness = 0.45, 1
    (width, height), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    y0 = image.shape[0] - height - base - 8
    band = image[y0:, : width + 10]
    band[:] = (band * 0.3).astype(np.uint8)
    cv2.putText(image, text, (5, image.shape[0] - base - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                thickness, cv2.LINE_AA)


def picture(block: np.ndarray, recon: np.ndarray, clip_name: str, token_shape: tuple[int, ...]) -> np.ndarray:
    """``[H,W,3]`` uint8 RGB grid: a title row, then one row per frame of ``ROWS``."""
    size = CELL
    width = 2 * size + GAP
    height = HEADER + len(ROWS) * (size + GAP) - GAP
    canvas = np.full((height, width, 3), 255, np.uint8)
    tokens = "x".join(map(str, token_shape[1:]))
    for col, title in enumerate(("original", f"RefTok ({tokens} tokens)")):
        cv2.putText(canvas, title, (col * (size + GAP) + 6, HEADER - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    for row, number in enumerate(ROWS):
        top = HEADER + row * (size + GAP)
        original, decoded = (cv2.resize(x[number - 1], (size, size), interpolation=cv2.INTER_AREA) for x in (block, recon))
        label(original, f"{clip_name}, frame {number}")
        label(decoded, f"frame {number}: PSNR {psnr(block[number - 1], recon[number - 1]):.2f} dB")
        canvas[top:top + size, :size] = original
        canvas[top:top + size, size + GAP:] = decoded
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default="demo:astronaut", help="a built-in demo clip (reftok_deploy.model.data.demo_clips)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "demo.png")
    args = parser.parse_args()
    clips = demo_clips(size=SIZE, gops=1)
    if args.clip not in clips:
        parser.error(f"--clip must be one of {', '.join(clips)}")
    block, recon, token_shape = reconstruct(clips[args.clip])
    image = picture(block, recon, args.clip, token_shape)
    with AtomicFile(args.out, suffix=".png") as out:
        if not cv2.imwrite(str(out.tmp), image[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9]):
            raise SystemExit(f"error: cannot write {args.out}")
    scores = [psnr(a, b) for a, b in zip(block, recon)]
    print(f"{args.out}: {args.clip}, tokens {token_shape}, PSNR per frame "
          f"{' '.join(f'{s:.2f}' for s in scores)} dB (mean {np.mean(scores):.2f}), {args.out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
