"""reftok-decode's work as a library: a token stream (a .rtok file's or a dataset clip's header and records)
decoded by the runner of a :class:`~reftok_deploy.deploy.deployment.Deployment` into frames, a video and the
reconstruction sha256 that reftok-run printed for the same backend."""

from __future__ import annotations

from typing import Any, Iterable

from tqdm import tqdm

from reftok_deploy.base.errors import ReftokError, report_damaged_input
from reftok_deploy.base.tokenstream import check_header_matches
from reftok_deploy.deploy.deployment import Deployment


def replay(deployment: Deployment, stream: str, header: dict[str, Any], records: Iterable, output: str | None,
           damage: list[str]) -> dict[str, Any]:
    """Decode ``records`` (of ``stream``, whose ``header`` was read) with the checkpoint it was made with,
    into ``output`` (a video, or None) -> the summary. ``damage`` collects what a salvaging reader skipped:
    the frames before it are kept and the input is reported damaged (exit 3)."""
    from reftok_deploy.runtimes.codec import FrameCodec
    from reftok_deploy.runtimes.output import VideoFile
    from reftok_deploy.runtimes.stream import decode_stream

    if deployment.weights_sha256() != header["checkpoint_sha256"]:
        raise ReftokError(f"{stream} was encoded with another checkpoint (weights "
                          f"{header['checkpoint_sha256'][:12]}...): pass --checkpoint")
    check_header_matches(header, deployment.config(), str(stream))
    deployment.opened_export()
    writer = VideoFile(output, header["fps"], (header["width"], header["height"])) if output else None
    try:
        deployment.choose_backend((header["height"], header["width"]))
        runner = deployment.runner()
        encoded_with, decoding_with = header.get("backend"), deployment.label
        if encoded_with is not None and encoded_with != decoding_with:
            deployment.say(f"note: {stream} was encoded with {encoded_with}; decoding with {decoding_with}, so "
                           "frames may differ from reftok-run's by that backend's tolerance")
        frames = 0
        bar = tqdm(desc="decoding", unit="frame", disable=None, leave=False)  # on a terminal only

        def on_frame(frame):
            nonlocal frames
            frames += 1
            bar.update()
            if writer:
                writer.write(frame)

        try:
            with runner:
                digest = decode_stream(records, FrameCodec(runner), on_frame)
        finally:
            bar.close()
        if damage and frames == 0:
            raise ReftokError(f"nothing to salvage: {damage[0]}")
        if writer:
            writer.finish()
    except BaseException:
        if writer:
            writer.abort()
        raise
    if damage:
        report_damaged_input(f"{damage[0]}; decoded the {frames} frames before it")
    if writer:
        writer.commit()
    return {"frames": frames, "backend": runner.name, "reconstruction_sha256": digest.hexdigest(), "output": output,
            "salvaged": bool(damage)}
