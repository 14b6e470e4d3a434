"""reftok-run's pipeline as a library: a source (camera, file, stream or the built-in clips) encoded into tokens
and decoded back live by the runners of a :class:`~reftok_deploy.deploy.deployment.Deployment`, shown, written
as a side-by-side video and/or a .rtok token stream, with a summary of quality and speed.

OpenCV (through :mod:`reftok_deploy.runtimes.capture`) is imported when a run starts, not with this module.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.files import commit_together
from reftok_deploy.base.paths import OutputPlan, utf8_name
from reftok_deploy.base.tokenstream import TokenStreamWriter, stream_header
from reftok_deploy.base.video import center_square
from reftok_deploy.deploy.deployment import Deployment


@dataclass
class LiveOptions:
    """What reftok-run does besides choosing the model: its source, frame size, GOPs and outputs."""

    camera: int | None = None
    video: str | None = None
    source: str | None = None
    demo: bool = False
    size: int | None = None
    refresh_blocks: int = 1
    cut_threshold: float | None = None
    output: str | None = None
    tokens_path: str | None = None
    display: bool | None = None
    max_frames: int | None = None
    max_pixels: int = 0
    open_timeout: float = 20.0
    read_timeout: float = 10.0


def source_file(spec) -> str | None:
    """The file a source spec reads (a video path or file:// URI), None for cameras, streams and pipelines."""
    if spec is None or spec.live or not isinstance(spec.target, str) or "!" in spec.target:
        return None
    return spec.target


def parse_live_source(options: LiveOptions, deployment: Deployment):
    """The one source of ``options`` -> its SourceSpec (None for --demo); one error line when there is not
    exactly one, the video is missing, or the deployment cannot run its --streams."""
    from reftok_deploy.runtimes.capture import parse_source

    chosen = [s for s in (options.camera, options.video, options.source) if s is not None]
    if len(chosen) + options.demo != 1:
        raise ReftokError("give exactly one of --camera N, --video PATH, --source URI or --demo")
    if options.video is not None:
        utf8_name(options.video, "--video")
        if not Path(options.video).is_file():
            raise ReftokError(f"video not found: {options.video}")
    deployment.check_streams()
    if options.demo:
        spec = None
    else:
        spec = parse_source(str(options.camera) if options.camera is not None else (options.video or options.source))
    utf8_name(source_file(spec) or "", "--source")
    return spec


def run_live(deployment: Deployment, options: LiveOptions) -> tuple[dict[str, Any], Any, str]:
    """reftok-run: every path checked first (an output that is an input, or that cannot be written, fails
    before any source or model), then the run -> (summary dict, StreamStats, the first runner's name)."""
    spec = parse_live_source(options, deployment)
    deployment.with_shipped_checkpoint()
    plan = OutputPlan()
    plan.reads(source_file(spec), "the video")
    plan.reads(deployment.checkpoint, "the checkpoint")
    plan.reads(deployment.export_folder, "the export folder")
    if options.output:
        plan.file(options.output, "--output", opencv=True)
    if options.tokens_path:
        plan.file(options.tokens_path, "--tokens")
    with plan:
        return _run(plan, spec, deployment, options)


def _open_source(spec, options: LiveOptions):
    from reftok_deploy.runtimes.capture import ArraySource, FrameSource
    from reftok_deploy.runtimes import capture

    if spec is None:
        from reftok_deploy.model.data import demo_clips

        return ArraySource("built-in demo clips", [f for clip in demo_clips(256).values() for f in clip])
    return FrameSource(spec, opener=lambda s: capture.open_capture(s, options.open_timeout),
                       read_timeout=options.read_timeout)


def _check_display(display: bool | None) -> bool:
    from reftok_deploy.runtimes.capture import opencv_summary
    from reftok_deploy.runtimes.output import display_available

    show = display_available() if display is None else display
    if show and not display_available():
        raise ReftokError(f"--display needs a display and an OpenCV with a GUI; this is {opencv_summary()}: "
                          "use the system OpenCV (apt install python3-opencv) or pip install opencv-python "
                          "instead of opencv-python-headless, or drop --display")
    return show


def _run(plan: OutputPlan, source_spec, deployment: Deployment, options: LiveOptions):
    from reftok_deploy.runtimes.gop_encoder import GopEncoder
    from reftok_deploy.runtimes.stream import StreamStats

    # Open the source first: a missing camera fails in a second, before any model work.
    frames_source = _open_source(source_spec, options)
    spec = frames_source.spec
    try:
        deployment.opened_export()
        cfg = deployment.config()
    except BaseException:
        frames_source.close()
        raise
    with frames_source as frames, contextlib.ExitStack() as held:
        show = _check_display(options.display)
        captured = iter(frames)
        stream = itertools.islice(captured, options.max_frames)
        first = next(stream, None)
        if first is None:
            raise ReftokError(f"{spec.label} delivered no frame")
        height, width = (center_square(first, options.size) if options.size is not None else first).shape[:2]
        if height * width > options.max_pixels:
            raise ReftokError(f"{spec.label} delivers {width}x{height} frames ({height * width} pixels), more than "
                              f"--max-pixels {options.max_pixels}: pass --size N to crop, or raise --max-pixels if "
                              "memory allows")
        # The backend is chosen once the frame size is known: backends rank differently at 256x256 and 640x480.
        measured = deployment.backend == "auto"
        deployment.choose_backend((height, width))
        if measured and spec.live:  # the reader kept capturing while backends were measured: start afresh
            frames.skip_backlog()  # dropped, not counted against --max-frames
            fresh = next(captured, None)
            if fresh is not None:
                frames.count_dropped(1)  # the frame read before the measurement
                first = fresh
        codecs, name = deployment.codecs(held)
        gop = GopEncoder(codecs, cfg.block_frames, options.refresh_blocks, options.cut_threshold or None)
        stats = StreamStats(fps_source=frames.fps, codebook_size=math.prod(cfg.fsq_levels))
        outputs = _open_outputs(options, cfg, frames.fps, width, height, deployment)
        _encode(frames, itertools.chain([first], stream), gop, stats, options, outputs, show, name,
                deployment.say)
        commit_together([h for h in outputs if h is not None])
        plan.keep(options.output, options.tokens_path)  # published: closing the source or runners must not undo them
        stats.capture_seconds = float(getattr(frames, "read_seconds", 0.0))
        summary = dict(stats.summary(), backend=name, streams=deployment.streams, source=spec.label,
                       size=[height, width], scene_changes=gop.scene_changes, dropped=frames.dropped,
                       reconnects=frames.reconnects, output=options.output, tokens=options.tokens_path)
    return summary, stats, name


def _open_outputs(options: LiveOptions, cfg, fps: float, width: int, height: int, deployment: Deployment) -> list:
    """[video writer or None, token stream writer or None]; both or neither opened."""
    from reftok_deploy.runtimes.output import VideoFile

    outputs: list = []
    try:
        outputs.append(VideoFile(options.output, fps, (2 * width, height)) if options.output else None)
        header = stream_header(cfg, width, height, fps, deployment.weights_sha256(), deployment.label)
        outputs.append(TokenStreamWriter(options.tokens_path, header) if options.tokens_path else None)
    except BaseException:
        for handle in outputs:
            if handle is not None:
                handle.abort()
        raise
    return outputs


def _encode(frames, stream, gop, stats, options: LiveOptions, outputs: list, show: bool, label: str,
            say: Callable[[str], None]) -> None:
    """Encode and decode ``stream`` into the outputs, shown in a window if ``show``; Ctrl-C (or q in the
    window) stops and keeps what was written; any other failure discards the outputs."""
    import cv2

    from reftok_deploy.runtimes.capture import opencv_summary
    from reftok_deploy.runtimes.output import side_by_side
    from reftok_deploy.runtimes.stream import encode_stream

    writer, tokens = outputs
    say(f"capture: {frames.spec.label} at {frames.fps:g} fps through {opencv_summary()}")

    def sink(original, recon, lines, labels):
        canvas = side_by_side(original, recon, lines, labels)
        if writer:
            writer.write(canvas)
        if show:
            cv2.imshow("reftok-run: original | reconstruction", canvas[:, :, ::-1])
            if cv2.waitKey(1) & 0xFF == ord("q"):
                raise KeyboardInterrupt

    try:
        encode_stream(stream, gop, stats, size=options.size, tokens=tokens, sink=sink if writer or show else None,
                      label=label, interrupt=getattr(frames, "interrupt", None))
    except KeyboardInterrupt:
        say("stopped; keeping what was written")
    except BaseException:
        for handle in outputs:
            if handle is not None:
                handle.abort()
        raise
