"""Calibration feeds: GOPs of real frames drawn from videos and stills, seeded, shared by every calibrator.

A feed is ``{"reference": [1,3,S,S], "frames": [1,3,T,S,S]}`` float32 in [-1,1] (the
encoder's inputs); decoder feeds add the FP32 model's tokens (see :func:`decoder_feeds`).
Videos give one GOP per window of T+1 frames (scenes and motion as filmed), stills give
GOPs under synthetic pan/zoom/rotation. Draws are spread evenly over the sources.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from reftok_deploy.model.data import camera_motion_clip
from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.gop_plan import plan_gops
from reftok_deploy.base.spec import FRAMES_IN, REFERENCE, Feed, decoder_feed, encoder_feed
from reftok_deploy.base.video import list_media, read_image, read_video

STILL_GOPS = 4  # distinct camera paths drawn per still


def calibration_feeds(paths: list[str | Path], count: int, size: int = 256, block_frames: int = 8,
                      seed: int = 0, progress: bool = True, warn=None) -> list[Feed]:
    """Draw ``count`` encoder feeds from the videos/stills under ``paths`` (files or folders).

    Where the data holds fewer GOPs than ``count``, all of them are used and ``warn`` (if given) is
    told in one line; without ``warn`` that is an error."""
    if size % 8:
        raise ReftokError(f"calibration size must be a multiple of 8, got {size}")
    videos, images = list_media(paths)
    if not videos and not images:
        raise ReftokError(f"no readable video or image in {', '.join(map(str, paths))}")
    rng = np.random.default_rng(seed)
    pool: list[tuple[str, object]] = []
    for path in tqdm(videos, desc="reading calibration videos", unit="video", disable=None if progress else True, leave=False):
        try:
            frames = read_video(path, size=size)
            pool += [("video", (g.reference, g.padded(block_frames))) for g in plan_gops(frames, block_frames)]
        except ReftokError as exc:
            raise ReftokError(f"calibration data: {exc}") from None
    for path in images:
        still = read_image(path)
        pool += [("still", (still, int(rng.integers(1 << 31)))) for _ in range(STILL_GOPS)]
    if count > len(pool):
        message = (f"--calib-size {count} is larger than the {len(pool)} GOPs the calibration data holds "
                   f"(a video gives one GOP per {block_frames + 1} frames, a still {STILL_GOPS})")
        if warn is None:
            raise ReftokError(message)
        warn(f"warning: {message}: calibrating on {len(pool)}")
        count = len(pool)
    chosen = sorted(rng.choice(len(pool), size=count, replace=False).tolist())
    feeds = []
    for index in tqdm(chosen, desc="calibration feeds", unit="GOP", disable=None if progress else True, leave=False):
        kind, item = pool[index]
        if kind == "video":
            ref, block = item
        else:
            still, still_seed = item
            clip = camera_motion_clip(still, block_frames + 1, size, np.random.default_rng(still_seed))
            ref, block = clip[0], clip[1:]
        feeds.append(encoder_feed(ref, block))
    return feeds


def decoder_feeds(encoder_feeds: list[Feed], encode) -> list[Feed]:
    """Decoder feeds: each GOP's reference with the tokens ``encode(reference, frames)`` gives."""
    return [decoder_feed(f[REFERENCE.name], encode(f[REFERENCE.name], f[FRAMES_IN.name])) for f in encoder_feeds]
