"""reftok-eval: per-clip quality of RefTok against its twin, copying the reference, the block-motion warp and x264."""

from __future__ import annotations

import json
import math

import click

from reftok_deploy.cli import OneLineCommand, user_errors
from reftok_deploy.cli.options import (OUTPUT_RULE, checkpoint_option, gop_options, json_option, max_gops_option,
                                       resolve_checkpoint, size_option, threads_option, verbose_option, videos_option)
from reftok_deploy.deploy.deployment import shipped_checkpoint
from reftok_deploy.quality.scoring import EvalJob, check_eval_job, score


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
@click.option("--block-motion/--no-block-motion", "block_motion", default=True, show_default=True,
              help="The block-motion warp baseline: the reference moved by one half-pel vector per 8x8 block and frame "
                   "(--block-motion-size) "
                   "(OpenCV DIS flow averaged per block), no residual; its motion bits are printed, not matched.")
@click.option("--block-motion-size", type=click.Choice(["8", "16", "32"]), default="8", show_default=True,
              help="Pixels per side of the block-motion warp's blocks: coarser blocks cost fewer motion bits "
                   "(at 16 a fifth to a quarter of 8's).")
@click.option("--refine-steps", default=0, show_default=True, type=click.IntRange(0, 100_000),
              help="Refine each GOP's tokens by this many gradient steps against the decoder (RefTok's and the "
                   "twin's): same token format, bits and decoder, better tokens; offline speed (a decoder pass "
                   "forward and back per step; 60 steps ~12 s per 256x256 GOP on 2 CPU cores). 0: the encoder's.")
@size_option("Frames are resized (short side) and centre-cropped to SIZE x SIZE.", default=256)
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
def main(legacy_videos, videos, suite, demo, checkpoint, twin_path, no_twin, with_x264, block_motion, block_motion_size,
         refine_steps, size, max_gops, refresh_blocks, cut_threshold,
         grid_dir, batch, threads, as_json) -> None:
    """Score --video files (and/or --suite / --demo clips) with the GOPs reftok-run forms.

    PSNR/SSIM are averaged over the block frames (uint8, RGB; references are exact and not
    scored); bpp counts the tokens alone and the tokens plus the PNG references.
    """
    checkpoint = checkpoint or shipped_checkpoint()
    twin_path = None if no_twin else twin_path or shipped_checkpoint(twin=True)
    job = check_eval_job(EvalJob(checkpoint, twin_path, tuple(videos) + tuple(legacy_videos), suite, demo, size, batch,
                                 max_gops, refresh_blocks, cut_threshold, with_x264, grid_dir, block_motion,
                                 int(block_motion_size), refine_steps),
                         note=lambda line: click.echo(line, err=True))
    clips, summary = score(job)
    if as_json:
        click.echo(json.dumps({"clips": clips, "mean": summary}, indent=2))
        return
    for line in table_lines(clips, summary):
        click.echo(line)


def table_lines(clips: list[dict], summary: dict) -> list[str]:
    """The per-clip table, the mean row and the legend."""
    from reftok_deploy.quality.evaluate import BASELINE_LABELS

    shown = [key for key in BASELINE_LABELS if all(key in c for c in clips)]  # a column where every clip has it
    head = f"{'clip':<22}{'gops':>5}{'cuts':>5}{'bpp tok':>9}{'bpp all':>9}{'PSNR':>7}{'SSIM':>7}{'worst':>7}"
    head += "".join(f"{BASELINE_LABELS[key]:>7}" for key in shown) + f"{'step':>6}{'codes':>6}{'bits':>6}  beats"
    lines = [head]
    for c in clips:
        line = (f"{click.format_filename(c['clip'], shorten=True)[:21]:<22}{c['gops']:>5}{c['cuts']:>5}"
                f"{c['bpp_tokens']:>9.4f}{c['bpp_with_reference_png']:>9.4f}{c['reftok']['psnr']:>7.2f}"
                f"{c['reftok']['ssim']:>7.3f}{c['reftok']['worst_frame_psnr']:>7.2f}")
        line += "".join(f"{c[key]['psnr']:>7.2f}" for key in shown)
        ratio = c["temporal_change"]["ratio"]  # inf where the original does not change (a static clip)
        line += (f"{ratio:>6.2f}" if math.isfinite(ratio) else f"{'-':>6}") + (f"{c['code_usage']['distinct']:>6}"
                 f"{c['code_usage']['entropy_bits']:>6.2f}  " + (",".join(BASELINE_LABELS[k] for k in c["beats"]) or "-"))
        lines.append(line)
    mean = (f"{'mean':<22}{'':>10}{summary['bpp_tokens']:>9.4f}{summary['bpp_with_reference_png']:>9.4f}"
            f"{summary['reftok']['psnr']:>7.2f}{summary['reftok']['ssim']:>7.3f}{'':>7}")
    lines.append(mean + "".join(f"{summary[key]['psnr']:>7.2f}" for key in shown))
    legend = ("bpp tok: the block tokens alone; bpp all: with the reference frames as PNG (most of the bits); "
              "PSNR/SSIM: block frames; worst: lowest frame PSNR; twin: reference-free twin; copy: the reference "
              "shown for every frame (zero tokens); ")
    if clips and clips[0].get("refine_steps"):
        legend += f"tokens (RefTok's and the twin's) refined by {clips[0]['refine_steps']} steps against the decoder; "
    if "block_motion_warp" in shown:
        bpp, side = summary["block_motion_warp"]["bpp_motion"], clips[0]["block_motion_warp"]["block"]
        legend += (f"bmw: the reference warped by one half-pel vector per {side}x{side} block and frame, no residual (its "
                   f"motion alone would cost about {bpp:.4f} bpp, not counted); ")
    legend += ("x264: at the tokens' bits, references free; step: within-group frame change, decoded / original "
               "(1 = smooth); codes/bits: distinct token ids, entropy per token; beats: the baselines RefTok's PSNR is "
               "above by more than 0.01 dB (a tie is no win).")
    return lines + [legend]
