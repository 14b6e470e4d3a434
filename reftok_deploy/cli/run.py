"""reftok-run: live RefTok on a camera, file or stream: original | reconstruction, bitrate and speed."""

from __future__ import annotations

import json

import click

from reftok_deploy.cli import OneLineCommand, sigterm_as_interrupt, user_errors
from reftok_deploy.cli.options import (MAX_COUNT, OUTPUT_RULE, FiniteFloatRange, checkpoint_option, device_option,
                                       gop_options, json_option, output_option, streams_option, threads_option,
                                       verbose_option)
from reftok_deploy.base.tokenstream import MAX_PIXELS as MAX_FRAME_PIXELS
from reftok_deploy.base.video import DEFAULT_MAX_PIXELS


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--camera", type=click.IntRange(0, 9999), default=None, help="Camera index (e.g. 0).")
@click.option("--video", type=click.Path(), default=None, help="Video file.")
@click.option("--source", default=None, help="URI: rtsp://..., file://..., csi://N, v4l2:///dev/videoN, or a GStreamer pipeline.")
@click.option("--demo", is_flag=True, help="Built-in clips (scikit-image photographs under camera motion).")
@checkpoint_option()
@click.option("--export", "export_folder", type=click.Path(), default=None, help="reftok-export folder (ONNX/engines).")
@click.option("--backend", default="auto", show_default=True,
              help="auto | torch | onnxruntime[:fp32|fp16|int8] | openvino[:fp32|fp16|int8|bf16] | tensorrt[:fp16|int8|fp32].")
@device_option("cpu or cuda (torch / onnxruntime).")
@threads_option
@streams_option
@click.option("--size", type=click.IntRange(8, 4096), default=None,
              help="Resize the short side to SIZE, then keep the centre SIZE x SIZE (smaller frames are scaled up).")
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
@json_option("Print the run summary as JSON (with per-stage times).")
@verbose_option
@user_errors
@sigterm_as_interrupt()
def main(camera, video, source, demo, checkpoint, export_folder, backend, device, threads, streams, size, refresh_blocks,
         cut_threshold, output, tokens_path, display, max_frames, max_pixels, open_timeout, read_timeout,
         as_json) -> None:
    """Encode frames into tokens against unquantised references and decode them back, live.

    Shows (or writes with --output) original | reconstruction with fps, block latency,
    token bit rate and PSNR; --tokens saves a .rtok stream that reftok-decode replays.
    """
    from pathlib import Path

    from reftok_deploy.model.checkpoint import default_checkpoint
    from reftok_deploy.base.errors import ReftokError
    from reftok_deploy.base.paths import OutputPlan, utf8_name
    from reftok_deploy.runtimes.capture import parse_source
    from reftok_deploy.runtimes.factory import check_streams

    chosen = [s for s in (camera, video, source) if s is not None] + (["demo"] if demo else [])
    if len(chosen) != 1:
        raise ReftokError("give exactly one of --camera N, --video PATH, --source URI or --demo")
    if video is not None:
        utf8_name(video, "--video")
        if not Path(video).is_file():
            raise ReftokError(f"video not found: {video}")
    check_streams(streams, backend, device, threads)
    checkpoint = checkpoint or default_checkpoint()
    say = (lambda msg: click.echo(msg, err=True))
    source_spec = None if demo else parse_source(str(camera) if camera is not None else (video or source))
    utf8_name(_source_file(source_spec) or "", "--source")
    # Every path first: an output that is an input, or that cannot be written, fails before any source or model.
    plan = OutputPlan()
    plan.reads(_source_file(source_spec), "the video")
    plan.reads(checkpoint, "the checkpoint")
    plan.reads(export_folder, "the export folder")
    if output:
        plan.file(output, "--output", opencv=True)
    if tokens_path:
        plan.file(tokens_path, "--tokens")
    with plan:
        summary, stats, runner = _run(plan, source_spec, demo, checkpoint, export_folder, backend, device, threads,
                                      streams, size, refresh_blocks, cut_threshold, output, tokens_path, display,
                                      max_frames, max_pixels, open_timeout, read_timeout, say)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"{stats.frames} frames ({stats.references} references, {stats.blocks} blocks) "
                   f"from {summary['source']} on {runner.name}{f' x {streams} streams' if streams > 1 else ''}: "
                   f"PSNR {summary['psnr_db']:.2f} dB, tokens "
                   f"{summary['token_kbps']:.1f} kbit/s ({summary['total_kbps']:.0f} kbit/s with the reference "
                   f"frames), {summary['fps']:.1f} fps end to end (model alone {summary['model_fps'] or 0:.1f} fps)"
                   + (f"; wrote {output}" if output else "") + (f", {tokens_path}" if tokens_path else ""))
        click.echo(f"reconstruction sha256 {summary['reconstruction_sha256']}")


def _source_file(spec) -> str | None:
    """The file a source spec reads (a video path or file:// URI), None for cameras, streams and pipelines."""
    if spec is None or spec.live or not isinstance(spec.target, str) or "!" in spec.target:
        return None
    return spec.target


def _run(plan, source_spec, demo, checkpoint, export_folder, backend, device, threads, streams, size, refresh_blocks,
         cut_threshold, output, tokens_path, display, max_frames, max_pixels, open_timeout, read_timeout, say):
    """reftok-run's pipeline once every path is checked -> (summary dict, StreamStats, the first runner)."""
    import contextlib
    import itertools
    import math

    import cv2

    from reftok_deploy.deploy.backends import auto_backend
    from reftok_deploy.model.checkpoint import config_from_checkpoint, read_config, weights_sha256
    from reftok_deploy.base.errors import ReftokError
    from reftok_deploy.base.manifest import open_export
    from reftok_deploy.runtimes.capture import ArraySource, FrameSource, open_capture, opencv_summary
    from reftok_deploy.runtimes.codec import FrameCodec
    from reftok_deploy.runtimes.factory import backend_label, make_runners
    from reftok_deploy.runtimes.gop_encoder import GopEncoder
    from reftok_deploy.base.files import commit_together
    from reftok_deploy.runtimes.output import VideoFile, display_available, side_by_side
    from reftok_deploy.runtimes.stream import StreamStats, encode_stream
    from reftok_deploy.base.tokenstream import TokenStreamWriter, stream_header
    from reftok_deploy.base.video import center_square

    # Open the source first: a missing camera fails in a second, before any model work.
    if demo:
        from reftok_deploy.model.data import demo_clips

        frames_source = ArraySource("built-in demo clips", [f for clip in demo_clips(256).values() for f in clip])
    else:
        frames_source = FrameSource(source_spec, opener=lambda spec: open_capture(spec, open_timeout),
                                    read_timeout=read_timeout)
    spec = frames_source.spec
    try:
        export = open_export(export_folder) if export_folder is not None else None
        cfg = config_from_checkpoint(read_config(checkpoint), checkpoint)
    except BaseException:
        frames_source.close()
        raise
    with frames_source as frames, contextlib.ExitStack() as held:
        show = display_available() if display is None else display
        if show and not display_available():
            raise ReftokError(f"--display needs a display and an OpenCV with a GUI; this is {opencv_summary()}: "
                              "use the system OpenCV (apt install python3-opencv) or pip install opencv-python "
                              "instead of opencv-python-headless, or drop --display")
        captured = iter(frames)
        stream = itertools.islice(captured, max_frames)
        first = next(stream, None)
        if first is None:
            raise ReftokError(f"{spec.label} delivered no frame")
        height, width = (center_square(first, size) if size is not None else first).shape[:2]
        if height * width > max_pixels:
            raise ReftokError(f"{spec.label} delivers {width}x{height} frames ({height * width} pixels), more than "
                              f"--max-pixels {max_pixels}: pass --size N to crop, or raise --max-pixels if memory allows")
        # The backend is chosen once the frame size is known: backends rank differently at 256x256 and 640x480.
        if backend == "auto":
            backend, export, why = auto_backend(export, checkpoint, device, say, threads=threads, size=(height, width))
            say(f"backend: {backend} ({why})")
            if spec.live:  # the reader kept capturing while backends were measured: start from a fresh frame
                frames.skip_backlog()  # dropped, not counted against --max-frames
                fresh = next(captured, None)
                if fresh is not None:
                    frames.count_dropped(1)  # the frame read before the measurement
                    first = fresh
        runners = [held.enter_context(r) for r in make_runners(backend, export, checkpoint, device=device,
                                                               threads=threads, streams=streams)]
        runner = runners[0]
        gop = GopEncoder([FrameCodec(r) for r in runners], cfg.block_frames, refresh_blocks, cut_threshold or None)
        stats = StreamStats(fps_source=frames.fps, codebook_size=math.prod(cfg.fsq_levels))
        outputs = []
        try:
            writer = VideoFile(output, frames.fps, (2 * width, height)) if output else None
            outputs += [writer] if writer else []
            header = stream_header(cfg, width, height, frames.fps, weights_sha256(checkpoint), backend_label(backend, device))
            tokens = TokenStreamWriter(tokens_path, header) if tokens_path else None
            outputs += [tokens] if tokens else []
        except BaseException:
            for handle in outputs:
                handle.abort()
            raise
        say(f"capture: {spec.label} at {frames.fps:g} fps through {opencv_summary()}")

        def sink(original, recon, lines, labels):
            canvas = side_by_side(original, recon, lines, labels)
            if writer:
                writer.write(canvas)
            if show:
                cv2.imshow("reftok-run: original | reconstruction", canvas[:, :, ::-1])
                if cv2.waitKey(1) & 0xFF == ord("q"):
                    raise KeyboardInterrupt

        try:
            encode_stream(itertools.chain([first], stream), gop, stats, size=size, tokens=tokens,
                          sink=sink if writer or show else None,
                          label=runner.name, interrupt=getattr(frames, "interrupt", None))
        except KeyboardInterrupt:
            say("stopped; keeping what was written")
        except BaseException:
            for handle in outputs:
                handle.abort()
            raise
        commit_together(outputs)
        plan.keep(output, tokens_path)  # published: closing the source or the runners must not undo them
        stats.capture_seconds = float(getattr(frames, "read_seconds", 0.0))
        summary = dict(stats.summary(), backend=runner.name, streams=streams, source=spec.label, size=[height, width],
                       scene_changes=gop.scene_changes, dropped=frames.dropped, reconnects=frames.reconnects,
                       output=output, tokens=tokens_path)
    return summary, stats, runner
