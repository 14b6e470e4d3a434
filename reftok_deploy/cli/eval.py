"""reftok-eval: per-clip quality of RefTok vs its reference-free twin at identical tokens."""

from __future__ import annotations

import json

import click
from tqdm import tqdm

from reftok_deploy.cli import user_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("videos", nargs=-1, type=click.Path())
@click.option("--demo", is_flag=True, help="Also score built-in clips (scikit-image photographs under camera motion).")
@click.option("--checkpoint", type=click.Path(), default=None, help="RefTok checkpoint folder [default: shipped].")
@click.option("--twin", "twin_path", type=click.Path(), default=None, help="Twin checkpoint folder [default: shipped].")
@click.option("--no-twin", is_flag=True, help="Evaluate RefTok alone.")
@click.option("--size", default=256, show_default=True, type=click.IntRange(16), help="Centre square crop size.")
@click.option("--max-gops", type=click.IntRange(1), default=None, help="Score at most this many GOPs per clip.")
@click.option("--batch", default=4, show_default=True, type=click.IntRange(1), help="GOPs per forward pass.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
@user_errors
def main(videos, demo, checkpoint, twin_path, no_twin, size, max_gops, batch, as_json) -> None:
    """Score VIDEO files (and/or --demo clips): GOP = 1 unquantised reference (stored as PNG) + 1 block of tokens.

    PSNR/SSIM are averaged over the block frames (uint8, RGB); bpp counts the
    tokens alone and the tokens plus the PNG reference over all frames.
    """
    from reftok_deploy.checkpoint import default_checkpoint, load_checkpoint
    from reftok_deploy.data import demo_clips
    from reftok_deploy.errors import ReftokError
    from reftok_deploy.evaluate import evaluate_clip, evaluate_frames, summarize

    if not videos and not demo:
        raise ReftokError("give at least one VIDEO, or --demo for the built-in clips")
    reftok, _ = load_checkpoint(checkpoint or default_checkpoint())
    twin = None if no_twin else load_checkpoint(twin_path or default_checkpoint(twin=True))[0]
    clips = [evaluate_clip(v, reftok, twin, size=size, batch=batch, max_gops=max_gops)
             for v in tqdm(videos, desc="evaluating", unit="clip", disable=as_json or len(videos) < 2)]
    if demo:
        clips += [evaluate_frames(name, frames, reftok, twin, batch=batch, max_gops=max_gops)
                  for name, frames in demo_clips(size, block_frames=reftok.cfg.block_frames).items()]
    summary = summarize(clips)
    if as_json:
        click.echo(json.dumps({"clips": clips, "mean": summary}, indent=2))
        return
    head = f"{'clip':<28}{'gops':>5}{'bpp tok':>9}{'bpp+ref':>9}{'PSNR':>8}{'SSIM':>8}"
    head += f"{'twin PSNR':>11}{'twin SSIM':>11}" if twin else ""
    head += f"{'copy PSNR':>11}"
    click.echo(head)
    for c in clips + [dict(summary, clip="mean", gops=sum(c["gops"] for c in clips))]:
        line = (f"{click.format_filename(c['clip'], shorten=True)[:27]:<28}{c['gops']:>5}{c['bpp_tokens']:>9.4f}"
                f"{c['bpp_with_reference_png']:>9.3f}{c['reftok']['psnr']:>8.2f}{c['reftok']['ssim']:>8.4f}")
        if twin:
            line += f"{c['twin']['psnr']:>11.2f}{c['twin']['ssim']:>11.4f}"
        line += f"{c['copy_reference']['psnr']:>11.2f}"
        click.echo(line)
