"""reftok-decode: replay a .rtok token stream into a video."""

from __future__ import annotations

import json

import click

from reftok_deploy.cli import user_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("stream", type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Reconstructed video (.mp4/.avi).")
@click.option("--checkpoint", type=click.Path(), default=None, help="Checkpoint folder [default: shipped RefTok].")
@click.option("--export", "export_folder", type=click.Path(), default=None, help="reftok-export folder.")
@click.option("--backend", default="auto", show_default=True, help="Same choices as reftok-run.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@user_errors
def main(stream, output, checkpoint, export_folder, backend, device, as_json) -> None:
    """Decode STREAM (written by reftok-run --tokens) with the checkpoint it was made with.

    Prints reconstruction_sha256: equal to reftok-run's for the same backend when the
    replay is bit-exact."""
    from reftok_deploy.checkpoint import default_checkpoint, weights_sha256
    from reftok_deploy.errors import ReftokError
    from reftok_deploy.runtimes.codec import FrameCodec
    from reftok_deploy.backends import auto_backend
    from reftok_deploy.manifest import open_export
    from reftok_deploy.runtimes.factory import make_runner
    from reftok_deploy.runtimes.output import VideoFile
    from reftok_deploy.runtimes.stream import decode_stream
    from reftok_deploy.tokenstream import read_stream

    header, records = read_stream(stream)
    checkpoint = checkpoint or default_checkpoint()
    if weights_sha256(checkpoint) != header["checkpoint_sha256"]:
        raise ReftokError(f"{stream} was encoded with another checkpoint (weights {header['checkpoint_sha256'][:12]}...): "
                          "pass --checkpoint")
    say = (lambda msg: click.echo(msg, err=True))
    export = open_export(export_folder) if export_folder is not None else None
    if backend == "auto":
        backend, export, why = auto_backend(export, checkpoint, device, say)
        say(f"backend: {backend} ({why})")
    writer = VideoFile(output, header["fps"], (header["width"], header["height"])) if output else None
    frames = 0

    def on_frame(frame):
        nonlocal frames
        frames += 1
        if writer:
            writer.write(frame)

    try:
        with make_runner(backend, export, checkpoint, device=device) as runner:
            digest = decode_stream(records, FrameCodec(runner), on_frame)
    except BaseException:
        if writer:
            writer.abort()
        raise
    if writer:
        writer.close()
    summary = {"frames": frames, "backend": runner.name, "reconstruction_sha256": digest.hexdigest(), "output": output}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"decoded {frames} frames on {runner.name}" + (f" into {output}" if output else "")
                   + f"; reconstruction sha256 {summary['reconstruction_sha256'][:16]}...")
