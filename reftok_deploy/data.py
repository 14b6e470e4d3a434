"""Training samples: (reference, block) pairs from real videos and from stills under synthetic camera motion.

Each sample is ``reference [3,S,S]`` and ``frames [3,T,S,S]``, float32 in [-1,1],
where S is the crop size and T the block length; the reference is the frame
just before the block (it is never quantised by the model).
"""

from __future__ import annotations

import math
from pathlib import Path
import cv2
import numpy as np
import torch
from tqdm import tqdm

from reftok_deploy.errors import ReftokError
from reftok_deploy.video import frames_to_tensor_range, read_image, read_video, resize_short_side

# Frames are stored at this short side: the scale evaluation runs at (256x256 centre crops).
WORKING_SHORT_SIDE = 256
BUILTIN_STILLS = ("astronaut", "camera", "chelsea", "coffee", "coins", "page", "rocket", "text",
                  "brick", "gravel", "clock", "immunohistochemistry", "colorwheel", "stereo_motorcycle")


def builtin_stills() -> list[np.ndarray]:
    """scikit-image's bundled real photographs (faces, text, textures) as RGB uint8."""
    import skimage.data

    from reftok_deploy.video import to_rgb

    stills = []
    for name in BUILTIN_STILLS:
        image = getattr(skimage.data, name)()
        image = image[0] if isinstance(image, tuple) else image
        stills.append(to_rgb(image, "RGB"))
    return stills


def camera_motion_clip(image: np.ndarray, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render ``n`` frames ``[n,size,size,3]`` uint8 of a pan/zoom/rotation path over a still."""
    image = resize_short_side(image, int(rng.integers(size + 32, max(size + 33, 2 * size))))
    h, w = image.shape[:2]
    cx, cy = rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2)
    # Per-frame motion of a hand-held or panning camera at this scale (a few px/frame).
    vx, vy = rng.normal(0, 1.5, size=2)
    zoom_rate = rng.normal(0, 0.006)
    spin = rng.normal(0, 0.3)
    frames = []
    for k in range(n):
        scale = math.exp(zoom_rate * k)
        matrix = cv2.getRotationMatrix2D((cx + vx * k, cy + vy * k), spin * k, scale)
        matrix[:, 2] += (size / 2 - (cx + vx * k), size / 2 - (cy + vy * k))
        frames.append(cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REFLECT101))
    return np.stack(frames)


class TrainingSampler:
    """Seeded infinite source of (reference, frames) batches from videos and stills."""

    def __init__(self, videos: list[Path], images: list[Path], block_frames: int, crop: int,
                 seed: int, use_builtin_stills: bool = True, still_fraction: float = 0.4) -> None:
        self.block_frames = block_frames
        self.crop = crop
        self.rng = np.random.default_rng(seed)
        if not videos and not images and not use_builtin_stills:
            raise ReftokError("no training data: give video or image files/folders")
        self.clips = []
        for path in tqdm(videos, desc="loading videos", unit="video", leave=False):
            clip = read_video(path, short_side=WORKING_SHORT_SIDE)
            if len(clip) < block_frames + 1:
                raise ReftokError(f"{path}: {len(clip)} frames, shorter than one reference + block ({block_frames + 1})")
            self.clips.append(clip)
        self.stills = [read_image(p) for p in images]
        if use_builtin_stills:
            self.stills += builtin_stills()
        self.still_fraction = still_fraction if self.clips and self.stills else (1.0 if self.stills else 0.0)

    def _video_sample(self) -> np.ndarray:
        clip = self.clips[int(self.rng.integers(len(self.clips)))]
        n = self.block_frames + 1
        stride = int(self.rng.integers(1, 3)) if len(clip) >= 2 * n else 1
        start = int(self.rng.integers(0, len(clip) - stride * (n - 1)))
        frames = clip[start : start + stride * n : stride]
        h, w = frames.shape[1:3]
        top = int(self.rng.integers(0, h - self.crop + 1))
        left = int(self.rng.integers(0, w - self.crop + 1))
        return frames[:, top : top + self.crop, left : left + self.crop]

    def _still_sample(self) -> np.ndarray:
        image = self.stills[int(self.rng.integers(len(self.stills)))]
        return camera_motion_clip(image, self.block_frames + 1, self.crop, self.rng)

    def sample(self) -> np.ndarray:
        """One clip ``[T+1,S,S,3]`` uint8 RGB: reference then block."""
        clip = self._still_sample() if self.rng.random() < self.still_fraction else self._video_sample()
        if self.rng.random() < 0.5:
            clip = clip[:, :, ::-1]
        return clip

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(reference ``[B,3,S,S]``, frames ``[B,3,T,S,S]``), float32 in [-1,1]."""
        clips = frames_to_tensor_range(np.stack([self.sample() for _ in range(size)]))  # [B,T+1,3,S,S]
        clips = torch.from_numpy(np.ascontiguousarray(clips))
        return clips[:, 0], clips[:, 1:].permute(0, 2, 1, 3, 4).contiguous()



DEMO_STILLS = ("astronaut", "coffee", "text")


def demo_clips(size: int = 256, gops: int = 2, block_frames: int = 8, seed: int = 1) -> dict[str, np.ndarray]:
    """Built-in evaluation clips, no download: scikit-image photographs (a face, objects, text) under
    camera motion, each ``[gops*(T+1),size,size,3]`` uint8 RGB."""
    import skimage.data

    from reftok_deploy.video import to_rgb

    rng = np.random.default_rng(seed)
    return {f"demo:{name}": camera_motion_clip(to_rgb(getattr(skimage.data, name)(), "RGB"),
                                              gops * (block_frames + 1), size, rng)
            for name in DEMO_STILLS}
