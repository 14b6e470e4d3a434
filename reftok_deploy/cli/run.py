"""reftok-run: live RefTok on a camera, file or stream: original | reconstruction, bitrate and speed."""

from __future__ import annotations

import json

import click

from reftok_deploy.base.service_api import TOKEN_ENV
from reftok_deploy.base.tokenstream import MAX_PIXELS as MAX_FRAME_PIXELS
from reftok_deploy.base.video import DEFAULT_MAX_PIXELS
from reftok_deploy.cli import OneLineCommand, sigterm_as_interrupt, user_errors
from reftok_deploy.cli.options import (MAX_COUNT, OUTPUT_RULE, FiniteFloatRange, backend_option, checkpoint_option,
                                       device_option, export_option, gop_options, json_option, output_option,
                                       size_option, streams_option, threads_option, verbose_option)
from reftok_deploy.deploy.deployment import Deployment
from reftok_deploy.deploy.live import LiveOptions, run_live


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--camera", type=click.IntRange(0, 9999), default=None, help="Camera index (e.g. 0).")
@click.option("--video", type=click.Path(), default=None, help="Video file.")
@click.option("--source", default=None, help="URI: rtsp://..., file://..., csi://N, v4l2:///dev/videoN, or a GStreamer pipeline.")
@click.option("--demo", is_flag=True, help="Built-in clips (scikit-image photographs under camera motion).")
@checkpoint_option()
@export_option
@backend_option()
@device_option("cpu or cuda (torch / onnxruntime).")
@threads_option
@streams_option
@size_option("Resize the short side to SIZE, then keep the centre SIZE x SIZE (smaller frames are scaled up).")
@gop_options
@output_option("Side-by-side video (.mp4/.avi): original | reconstruction with the figures.",
               type=click.Path(dir_okay=False), default=None)
@click.option("--tokens", "tokens_path", type=click.Path(dir_okay=False), default=None,
              help=f"Token stream (.rtok). {OUTPUT_RULE}")
@click.option("--display/--no-display", default=None, help="Show a window [default: when a display exists].")
@click.option("--max-frames", type=click.IntRange(1, MAX_COUNT), default=None, help="Stop after this many frames.")
@click.option("--max-pixels", type=click.IntRange(64, MAX_FRAME_PIXELS), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Largest frame (H x W, after --size) the model is run on; memory grows with it "
                   "(about 3 GB at 1280x720, 6 GB at 1920x1080).")
@click.option("--open-timeout", type=FiniteFloatRange(0, 3600, min_open=True), default=20.0, show_default=True,
              help="Seconds opening the source may take, at most 3600 (a bad pipeline or a dead server can hang "
                   "OpenCV).")
@click.option("--read-timeout", type=FiniteFloatRange(0, 3600, min_open=True), default=10.0, show_default=True,
              help="Seconds a live source may go without a frame before it is reconnected, at most 3600.")
@click.option("--server", default=None,
              help="A reftok-serve URL (http://HOST:PORT): the model runs there, with its own export and backend; "
                   "--checkpoint, if given, must be the server's.")
@click.option("--token", default=None, envvar=TOKEN_ENV, show_envvar=True, help="The server's bearer token.")
@json_option("Print the run summary as JSON (with per-stage times).")
@verbose_option
@user_errors
@sigterm_as_interrupt()
def main(camera, video, source, demo, checkpoint, export_folder, backend, device, threads, streams, size, refresh_blocks,
         cut_threshold, output, tokens_path, display, max_frames, max_pixels, open_timeout, read_timeout, server,
         token, as_json) -> None:
    """Encode frames into tokens against unquantised references and decode them back, live.

    Shows (or writes with --output) original | reconstruction with fps, block latency,
    token bit rate and PSNR; --tokens saves a .rtok stream that reftok-decode replays.
    """
    deployment = Deployment(checkpoint, export_folder, backend, device, threads, streams, say=say, server=server,
                            token=token)
    options = LiveOptions(camera, video, source, demo, size, refresh_blocks, cut_threshold, output, tokens_path,
                          display, max_frames, max_pixels, open_timeout, read_timeout)
    summary, stats, runner_name = run_live(deployment, options)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{stats.frames} frames ({stats.references} references, {stats.blocks} blocks) "
               f"from {summary['source']} on {runner_name}{f' x {streams} streams' if streams > 1 else ''}: "
               f"PSNR {summary['psnr_db']:.2f} dB, tokens "
               f"{summary['token_kbps']:.1f} kbit/s ({summary['total_kbps']:.0f} kbit/s with the reference "
               f"frames), {summary['fps']:.1f} fps end to end (model alone {summary['model_fps'] or 0:.1f} fps)"
               + (f"; wrote {output}" if output else "") + (f", {tokens_path}" if tokens_path else ""))
    click.echo(f"reconstruction sha256 {summary['reconstruction_sha256']}")


def say(message: str) -> None:
    """Progress and notes on stderr (stdout is the result)."""
    click.echo(message, err=True)
