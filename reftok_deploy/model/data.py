"""Training samples: (reference, block) pairs from real videos and from stills under synthetic camera motion.

Each sample is ``reference [3,S,S]`` and ``frames [3,T,S,S]``, float32 in [-1,1],
where S is the crop size and T the block length; the reference is the frame
just before the block (it is never quantised by the model).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from reftok_deploy.model import synthetic
from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.spec import frames_to_tensor_range
from reftok_deploy.base.video import read_image, read_video

# Frames are stored at this short side: the scale evaluation runs at (256x256 centre crops).
WORKING_SHORT_SIDE = 256
BUILTIN_STILLS = ("astronaut", "camera", "chelsea", "coffee", "coins", "page", "rocket", "text",
                  "brick", "gravel", "clock", "immunohistochemistry", "colorwheel", "stereo_motorcycle")


def builtin_stills() -> list[np.ndarray]:
    """scikit-image's bundled real photographs (faces, text, textures) as RGB uint8."""
    import skimage.data

    from reftok_deploy.base.video import to_rgb

    stills = []
    for name in BUILTIN_STILLS:
        image = getattr(skimage.data, name)()
        image = image[0] if isinstance(image, tuple) else image
        stills.append(to_rgb(image, "RGB"))
    return stills


def camera_motion_clip(image: np.ndarray, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render ``n`` frames ``[n,size,size,3]`` uint8 of a pan/zoom/rotation path over a still."""
    return synthetic.camera_clip(image, n, size, rng)[0]


# Share of training samples per kind of source (see reftok_deploy.model.synthetic). Static and
# partly-static sources are the most common live inputs (a webcam at a desk, a fixed camera,
# a screen): the model must learn that "nothing changed" decodes to the reference itself.
SOURCE_MIX = {"video": 0.25, "camera": 0.22, "static": 0.12, "objects": 0.2, "screen": 0.12, "cut": 0.05,
              "static_video": 0.04}
NOISE_FRACTION = 0.25  # samples with sensor-like noise (sigma 1-4 levels per frame)


class TrainingSampler:
    """Seeded infinite source of (reference, frames, teacher flow) batches from videos and stills."""

    def __init__(self, videos: list[Path], images: list[Path], block_frames: int, crop: int,
                 seed: int, use_builtin_stills: bool = True, progress: bool = True) -> None:
        self._args = (list(videos), list(images), block_frames, crop, seed, use_builtin_stills)
        self.block_frames = block_frames
        self.crop = crop
        self.rng = np.random.default_rng(seed)
        if not videos and not images and not use_builtin_stills:
            raise ReftokError("no training data: give video or image files/folders")
        self.clips = []
        for path in tqdm(videos, desc="loading videos", unit="video", leave=False, disable=None if progress else True):
            clip = read_video(path, short_side=WORKING_SHORT_SIDE)
            if len(clip) < block_frames + 1:
                raise ReftokError(f"{path}: {len(clip)} frames, shorter than one reference + block ({block_frames + 1})")
            self.clips.append(clip)
        self.stills = [read_image(p) for p in images]
        if use_builtin_stills:
            self.stills += builtin_stills()
        mix = {k: v for k, v in SOURCE_MIX.items()
               if (self.clips or k not in ("video", "static_video")) and (self.stills or k in ("video", "static_video", "screen"))}
        total = sum(mix.values())
        self.kinds = list(mix)
        self.weights = np.array([mix[k] / total for k in self.kinds])

    def __reduce__(self):
        # A pickled sampler (sent to a spawned data worker) carries its sources, not their pixels:
        # the worker reads them again, quietly.
        return (TrainingSampler, (*self._args, False))

    def _video_frames(self) -> np.ndarray:
        clip = self.clips[int(self.rng.integers(len(self.clips)))]
        n = self.block_frames + 1
        stride = int(self.rng.integers(1, 4)) if len(clip) >= 3 * n else 1
        start = int(self.rng.integers(0, len(clip) - stride * (n - 1)))
        frames = clip[start : start + stride * n : stride]
        h, w = frames.shape[1:3]
        top = int(self.rng.integers(0, h - self.crop + 1))
        left = int(self.rng.integers(0, w - self.crop + 1))
        return np.ascontiguousarray(frames[:, top : top + self.crop, left : left + self.crop])

    def _still(self) -> np.ndarray:
        return self.stills[int(self.rng.integers(len(self.stills)))]

    def _clip(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        n, s, rng = self.block_frames + 1, self.crop, self.rng
        if kind == "video":
            frames = self._video_frames()
            return frames, synthetic.dis_flow(frames)
        if kind == "static_video":
            frame = self._video_frames()[0]
            return np.repeat(frame[None], n, axis=0), np.zeros((n, s, s, 2), np.float32)
        if kind == "camera":
            return synthetic.camera_clip(self._still(), n, s, rng, speed=float(rng.choice([0.3, 1.5, 4.0])))
        if kind == "static":
            return synthetic.static_clip(self._still(), n, s, rng)
        if kind == "objects":
            return synthetic.objects_clip(self._still(), self.stills, n, s, rng,
                                          speed=float(rng.choice([1.0, 3.0, 8.0])))
        if kind == "screen":
            return synthetic.screen_clip(n, s, rng)
        if kind == "cut":
            first = self._clip(str(rng.choice(["video", "camera", "objects"] if self.clips else ["camera", "objects"])))
            return synthetic.cut_clip(first, self._clip("camera" if self.stills else "video"), rng)
        raise ValueError(kind)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One clip ``[T+1,S,S,3]`` uint8 RGB (reference then block) and its flow ``[T+1,S,S,2]`` float32."""
        frames, flow = self._clip(str(self.rng.choice(self.kinds, p=self.weights)))
        if self.rng.random() < NOISE_FRACTION:
            frames = synthetic.add_sensor_noise(frames, float(self.rng.uniform(1.0, 4.0)), self.rng)
        if self.rng.random() < 0.5:
            frames = frames[:, :, ::-1]
            flow = flow[:, :, ::-1] * np.array([-1.0, 1.0], np.float32)
        return frames, flow

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reference ``[B,3,S,S]``, frames ``[B,3,T,S,S]`` float32 in [-1,1], flow ``[B,2,T,S,S]`` pixels)."""
        samples = [self.sample() for _ in range(size)]
        clips = frames_to_tensor_range(np.stack([f for f, _ in samples]))  # [B,T+1,3,S,S]
        clips = torch.from_numpy(np.ascontiguousarray(clips))
        flow = torch.from_numpy(np.ascontiguousarray(np.stack([f[1:] for _, f in samples]).transpose(0, 4, 1, 2, 3)))
        return clips[:, 0], clips[:, 1:].permute(0, 2, 1, 3, 4).contiguous(), flow


class _WorkerBatches(torch.utils.data.IterableDataset):
    """Endless batches from a copy of ``sampler`` in each DataLoader worker, each worker seeded apart."""

    def __init__(self, sampler: TrainingSampler, size: int, seed: int, start_step: int) -> None:
        self.sampler, self.size, self.seed, self.start_step = sampler, size, seed, start_step

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        worker = torch.utils.data.get_worker_info()
        cv2.setNumThreads(1)  # one DIS flow per worker process; the workers are the parallelism
        self.sampler.rng = np.random.default_rng([self.seed, self.start_step, worker.id if worker else 0])
        while True:
            yield self.sampler.batch(self.size)


def _exit_without_static_destructors(_worker_id: int) -> None:
    """DataLoader worker start: end the process with ``os._exit`` once Python has finished with it.

    A worker told to stop while its thread pools were still starting aborted in C++ static
    destructors ("terminate called without an active exception", SIGABRT). The DataLoader reports
    that as a failed worker while shutting down, and the main process once crashed there. Workers
    hold nothing to flush at that point (the DataLoader has stopped reading their queues)."""
    import atexit
    import os

    atexit.register(os._exit, 0)  # runs first (last registered), after the worker's own Python code


def batch_stream(sampler: TrainingSampler, size: int, workers: int = 0, seed: int = 0,
                 start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Endless ``sampler.batch(size)`` results; with ``workers`` > 0 made in that many processes.

    ``workers=0`` draws from ``sampler`` itself, so a run is reproducible and resumes exactly
    (its RNG state is saved). With workers (to keep a GPU fed) each worker's RNG is seeded from
    (seed, start step, worker id): reproducible for a given start, but not the single-process stream.
    """
    if workers <= 0:
        while True:
            yield sampler.batch(size)
    # spawn, not fork: a forked child inherits OpenCV's and OpenMP's thread pools without their
    # threads and hangs in its first parallel call (seen here in the first DIS flow).
    loader = torch.utils.data.DataLoader(_WorkerBatches(sampler, size, seed, start_step), batch_size=None,
                                         num_workers=workers, prefetch_factor=4, multiprocessing_context="spawn",
                                         worker_init_fn=_exit_without_static_destructors,
                                         pin_memory=torch.cuda.is_available())
    workers_iter = iter(loader)
    try:
        yield from workers_iter
    finally:
        del workers_iter  # stop the workers now, not during interpreter shutdown (which aborts them)


DEMO_STILLS = ("astronaut", "coffee", "text")


def demo_clips(size: int = 256, gops: int = 2, block_frames: int = 8, seed: int = 1) -> dict[str, np.ndarray]:
    """Built-in evaluation clips, no download: scikit-image photographs (a face, objects, text) under
    camera motion, each ``[gops*(T+1),size,size,3]`` uint8 RGB."""
    import skimage.data

    from reftok_deploy.base.video import to_rgb

    rng = np.random.default_rng(seed)
    return {f"demo:{name}": camera_motion_clip(to_rgb(getattr(skimage.data, name)(), "RGB"),
                                              gops * (block_frames + 1), size, rng)
            for name in DEMO_STILLS}
