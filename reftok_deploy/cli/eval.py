"""reftok-eval: per-clip quality of RefTok against its twin, copying the reference and x264."""

from __future__ import annotations

import json
from pathlib import Path

import click
from tqdm import tqdm

from reftok_deploy.cli import OneLineCommand, user_errors
from reftok_deploy.cli.options import (OUTPUT_RULE, checkpoint_option, gop_options, json_option, max_gops_option,
                                       resolve_checkpoint, threads_option, verbose_option, videos_option)


# Peak bytes per pixel of one GOP through the model at inference (reftok-run measured about 3 GB at 1280x720
# and 6 GB at 1920x1080, see reftok_deploy.base.video.DEFAULT_MAX_PIXELS); --batch GOPs run together.
INFERENCE_BYTES_PER_PIXEL = 3_500


def grid_names(sources: list[str]) -> list[str]:
    """A picture name per clip: its stem, with a counter where two clips share one (a/clip.mp4, b/clip.mp4)."""
    stems = [Path(name).stem.replace(":", "-") for name in sources]
    names, seen = [], {}
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if stems.count(stem) == 1 else f"{stem}-{seen[stem]}")
    return names


class _LegacyVideos(click.Argument):
    """Videos given as plain arguments (the spelling before --video): accepted, not shown in usage."""

    def get_usage_pieces(self, ctx: click.Context) -> list[str]:
        return []


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("legacy_videos", nargs=-1, type=click.Path(), cls=_LegacyVideos)
@videos_option("A video to score; repeat for several.")
@click.option("--suite", is_flag=True,
              help="Also score the built-in suite: static (noiseless, noisy), local motion, screen text, pan, "
                   "zoom, fast object, cut; generated from scikit-image stills training never sees.")
@click.option("--demo", is_flag=True, help="Also score built-in clips (scikit-image photographs under camera motion).")
@checkpoint_option("RefTok checkpoint folder, or a reftok-train run folder [default: shipped].")
@click.option("--twin", "twin_path", type=click.Path(), default=None, callback=resolve_checkpoint,
              help="Twin checkpoint folder, or a reftok-train run folder [default: shipped].")
@click.option("--no-twin", is_flag=True, help="Evaluate RefTok alone.")
@click.option("--x264/--no-x264", "with_x264", default=None,
              help="x264 at RefTok's tokens-only bits (references free) [default: on where imageio-ffmpeg is installed].")
@click.option("--size", default=256, show_default=True, type=click.IntRange(16, 4096),
              help="Frames are resized (short side) and centre-cropped to SIZE x SIZE.")
@max_gops_option(None, "Score at most this many GOPs per clip [default: all].")
@gop_options
@click.option("--grid", "grid_dir", type=click.Path(file_okay=False), default=None,
              help=f"Save a PNG per clip: original | RefTok | twin | copy the reference, frames 1, 4, 8. {OUTPUT_RULE}")
@click.option("--batch", default=4, show_default=True, type=click.IntRange(1, 4096),
              help="GOPs per forward pass; refused when its estimated memory at --size exceeds the machine's.")
@threads_option
@json_option("Print one JSON document instead of a table.")
@verbose_option
@user_errors
def main(legacy_videos, videos, suite, demo, checkpoint, twin_path, no_twin, with_x264, size, max_gops, refresh_blocks, cut_threshold,
         grid_dir, batch, threads, as_json) -> None:
    """Score --video files (and/or --suite / --demo clips) with the GOPs reftok-run forms.

    PSNR/SSIM are averaged over the block frames (uint8, RGB; references are exact and not
    scored); bpp counts the tokens alone and the tokens plus the PNG references.
    """

    from reftok_deploy.model.checkpoint import default_checkpoint, load_checkpoint
    from reftok_deploy.model.data import demo_clips
    from reftok_deploy.base.errors import ReftokError
    from reftok_deploy.quality.evaluate import evaluate_frames, summarize
    from reftok_deploy.base.machine import physical_memory_bytes
    from reftok_deploy.base.paths import OutputPlan, utf8_name
    from reftok_deploy.quality.suite import suite_clips
    from reftok_deploy.base.video import read_video
    from reftok_deploy.quality import x264

    videos = tuple(videos) + tuple(legacy_videos)
    if not videos and not demo and not suite:
        raise ReftokError("give at least one --video PATH, or --suite / --demo for the built-in clips")
    if with_x264 and not x264.available():
        raise ReftokError("--x264 needs imageio-ffmpeg: pip install imageio-ffmpeg")
    if with_x264 is None:
        with_x264 = x264.available()
        if not with_x264:
            click.echo("note: imageio-ffmpeg not installed: no x264 baseline (pip install imageio-ffmpeg)", err=True)
    need = batch * size * size * INFERENCE_BYTES_PER_PIXEL
    if need > physical_memory_bytes():
        raise ReftokError(f"--batch {batch} at --size {size} needs about {need / 1e9:.0f} GB; this machine has "
                          f"{physical_memory_bytes() / 1e9:.0f} GB: lower --batch or --size")
    for video in videos:
        utf8_name(video, "--video")
    checkpoint = checkpoint or default_checkpoint()
    twin_path = None if no_twin else twin_path or default_checkpoint(twin=True)
    plan = OutputPlan()  # every path before any work; a failed run leaves no grid behind
    for video in videos:
        plan.reads(video, "the video")
    plan.reads(checkpoint, "the checkpoint")
    plan.reads(twin_path, "the twin")
    if grid_dir:
        utf8_name(grid_dir, "--grid")
        plan.folder(grid_dir, "--grid")
    with plan:
        reftok, _ = load_checkpoint(checkpoint)
        twin = None if no_twin else load_checkpoint(twin_path)[0]
        sources = [(v, None) for v in videos]
        if suite:
            sources += list(suite_clips(size, reftok.cfg.block_frames).items())
        if demo:
            sources += list(demo_clips(size, block_frames=reftok.cfg.block_frames).items())
        grids = [plan.file(Path(grid_dir) / f"{stem}.png", f"--grid picture of {name}") if grid_dir else None
                 for stem, (name, _) in zip(grid_names([name for name, _ in sources]), sources)]
        clips = []
        for (name, frames), grid in tqdm(list(zip(sources, grids)), desc="evaluating", unit="clip",
                                         disable=None):  # a bar on a terminal only
            if frames is None:
                frames = read_video(name, size=size)
            clips.append(evaluate_frames(str(name), frames, reftok, twin, batch=batch, max_gops=max_gops,
                                         refresh_blocks=refresh_blocks, cut_threshold=cut_threshold or None,
                                         x264=with_x264, grid=grid))
    summary = summarize(clips)
    if as_json:
        click.echo(json.dumps({"clips": clips, "mean": summary}, indent=2))
        return
    head = f"{'clip':<22}{'gops':>5}{'cuts':>5}{'bpp tok':>9}{'bpp all':>9}{'PSNR':>7}{'SSIM':>7}{'worst':>7}"
    head += f"{'twin':>7}" if twin else ""
    head += f"{'copy':>7}" + (f"{'x264':>7}" if with_x264 else "") + f"{'step':>6}{'codes':>6}{'bits':>6}"
    click.echo(head)
    for c in clips:
        line = (f"{click.format_filename(c['clip'], shorten=True)[:21]:<22}{c['gops']:>5}{c['cuts']:>5}"
                f"{c['bpp_tokens']:>9.4f}{c['bpp_with_reference_png']:>9.4f}{c['reftok']['psnr']:>7.2f}{c['reftok']['ssim']:>7.3f}"
                f"{c['reftok']['worst_frame_psnr']:>7.2f}")
        line += f"{c['twin']['psnr']:>7.2f}" if twin else ""
        line += f"{c['copy_reference']['psnr']:>7.2f}" + (f"{c['x264']['psnr']:>7.2f}" if with_x264 else "")
        line += (f"{c['temporal_change']['ratio']:>6.2f}{c['code_usage']['distinct']:>6}"
                 f"{c['code_usage']['entropy_bits']:>6.2f}")
        click.echo(line)
    line = f"{'mean':<22}{'':>10}{summary['bpp_tokens']:>9.4f}{summary['bpp_with_reference_png']:>9.4f}{summary['reftok']['psnr']:>7.2f}{summary['reftok']['ssim']:>7.3f}{'':>7}"
    line += f"{summary['twin']['psnr']:>7.2f}" if twin else ""
    line += f"{summary['copy_reference']['psnr']:>7.2f}" + (f"{summary['x264']['psnr']:>7.2f}" if with_x264 else "")
    click.echo(line)
    click.echo("bpp tok: the block tokens alone; bpp all: with the reference frames as PNG (most of the bits); "
               "PSNR/SSIM: block frames; worst: lowest frame PSNR; step: within-group frame change, decoded / "
               "original (1 = smooth); codes/bits: distinct token ids, entropy per token.")
