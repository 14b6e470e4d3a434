"""reftok-eval's work as a library: the clips to score (videos, the built-in suite, the demo clips), the
checks made before any work (x264, memory), and each clip scored against the twin, copying the reference
and x264 with the GOPs reftok-run forms (:func:`reftok_deploy.quality.evaluate.evaluate_frames`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.machine import physical_memory_bytes
from reftok_deploy.base.paths import OutputPlan, utf8_name
from reftok_deploy.quality import x264

# Peak bytes per pixel of one GOP through the model at inference (reftok-run measured about 3 GB at 1280x720
# and 6 GB at 1920x1080, see reftok_deploy.base.video.DEFAULT_MAX_PIXELS); --batch GOPs run together.
INFERENCE_BYTES_PER_PIXEL = 3_500
# With --refine-steps the decoder runs backwards too: the shipped model's peak (ru_maxrss) at 256x256 was 4.1 KB
# per pixel at --batch 4 and 8.4 KB at --batch 1 (the process's own share), so about training's 7 KB.
REFINE_BYTES_PER_PIXEL = 7_000


def grid_names(sources: list[str]) -> list[str]:
    """A picture name per clip: its stem, with a counter where two clips share one (a/clip.mp4, b/clip.mp4)."""
    stems = [Path(name).stem.replace(":", "-") for name in sources]
    names, seen = [], {}
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if stems.count(stem) == 1 else f"{stem}-{seen[stem]}")
    return names


@dataclass
class EvalJob:
    """What reftok-eval scores, how, and where its grid pictures go."""

    checkpoint: str
    twin: str | None
    videos: tuple[str, ...] = ()
    suite: bool = False
    demo: bool = False
    size: int = 256
    batch: int = 4
    max_gops: int | None = None
    refresh_blocks: int = 1
    cut_threshold: float | None = None
    with_x264: bool | None = None
    grid_dir: str | None = None
    block_motion: bool = True
    block_motion_size: int = 8
    refine_steps: int = 0


def check_eval_job(job: EvalJob, note: Callable[[str], None]) -> EvalJob:
    """Every check before any work (one error line each); resolves --x264's default (on where imageio-ffmpeg
    is installed, with a note where it is not)."""
    if not job.videos and not job.demo and not job.suite:
        raise ReftokError("give at least one --video PATH, or --suite / --demo for the built-in clips")
    if job.with_x264 and not x264.available():
        raise ReftokError("--x264 needs imageio-ffmpeg: pip install imageio-ffmpeg")
    if job.with_x264 is None:
        job.with_x264 = x264.available()
        if not job.with_x264:
            note("note: imageio-ffmpeg not installed: no x264 baseline (pip install imageio-ffmpeg)")
    per_pixel = REFINE_BYTES_PER_PIXEL if job.refine_steps else INFERENCE_BYTES_PER_PIXEL
    need = job.batch * job.size * job.size * per_pixel
    if need > physical_memory_bytes():
        refining = " with --refine-steps" if job.refine_steps else ""
        raise ReftokError(f"--batch {job.batch} at --size {job.size}{refining} needs about {need / 1e9:.0f} GB; this machine "
                          f"has {physical_memory_bytes() / 1e9:.0f} GB: lower --batch or --size")
    for video in job.videos:
        utf8_name(video, "--video")
    return job


def score(job: EvalJob) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every path checked first (a failed run leaves no grid behind), then each clip scored -> (per-clip
    results, their mean)."""
    from reftok_deploy.base.video import read_video
    from reftok_deploy.model.checkpoint import load_checkpoint
    from reftok_deploy.model.data import demo_clips
    from reftok_deploy.quality.evaluate import evaluate_frames, summarize
    from reftok_deploy.quality.suite import suite_clips

    plan = OutputPlan()
    for video in job.videos:
        plan.reads(video, "the video")
    plan.reads(job.checkpoint, "the checkpoint")
    plan.reads(job.twin, "the twin")
    if job.grid_dir:
        utf8_name(job.grid_dir, "--grid")
        plan.folder(job.grid_dir, "--grid")
    with plan:
        reftok, _ = load_checkpoint(job.checkpoint)
        twin = None if job.twin is None else load_checkpoint(job.twin)[0]
        sources = [(v, None) for v in job.videos]
        if job.suite:
            sources += list(suite_clips(job.size, reftok.cfg.block_frames).items())
        if job.demo:
            sources += list(demo_clips(job.size, block_frames=reftok.cfg.block_frames).items())
        grids = [plan.file(Path(job.grid_dir) / f"{stem}.png", f"--grid picture of {name}") if job.grid_dir else None
                 for stem, (name, _) in zip(grid_names([name for name, _ in sources]), sources)]
        clips = []
        for (name, frames), grid in tqdm(list(zip(sources, grids)), desc="evaluating", unit="clip",
                                         disable=None):  # a bar on a terminal only
            if frames is None:
                frames = read_video(name, size=job.size)
            clips.append(evaluate_frames(str(name), frames, reftok, twin, batch=job.batch, max_gops=job.max_gops,
                                         refresh_blocks=job.refresh_blocks, cut_threshold=job.cut_threshold or None,
                                         x264=job.with_x264, grid=grid, block_motion=job.block_motion,
                                         block_motion_size=job.block_motion_size, refine_steps=job.refine_steps))
    return clips, summarize(clips)
