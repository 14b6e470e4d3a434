"""reftok-decode: replay a .rtok token stream into a video."""

from __future__ import annotations

import contextlib
import json

import click
from tqdm import tqdm

from reftok_deploy.cli import OneLineCommand, user_errors
from reftok_deploy.cli.options import (checkpoint_option, device_option, json_option, output_option, threads_option,
                                       verbose_option)


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("stream", type=click.Path())
@click.option("--clip", "clip_id", default=None, help="With a reftok-tokenize dataset folder as STREAM: the clip to decode.")
@output_option("Reconstructed video (.mp4/.avi).", type=click.Path(dir_okay=False), default=None)
@checkpoint_option()
@click.option("--export", "export_folder", type=click.Path(), default=None, help="reftok-export folder.")
@click.option("--backend", default="auto", show_default=True, help="Same choices as reftok-run.")
@device_option("cpu or cuda (torch / onnxruntime).")
@threads_option
@click.option("--salvage", is_flag=True,
              help="Decode a damaged or cut-off stream (no end record, e.g. after a crash) up to its last "
                   "intact record, with a warning, instead of refusing it.")
@json_option("Print the summary as JSON.")
@verbose_option
@user_errors
def main(stream, clip_id, output, checkpoint, export_folder, backend, device, threads, salvage, as_json) -> None:
    """Decode STREAM (written by reftok-run --tokens, or a reftok-tokenize dataset folder with --clip ID) with
    the checkpoint it was made with.
    With --salvage, a damaged stream is decoded up to its damage and the command exits 3.

    Prints reconstruction_sha256: equal to reftok-run's for the same backend when the
    replay is bit-exact. Records are read and decoded one at a time."""
    from reftok_deploy.deploy.backends import auto_backend
    from reftok_deploy.model.checkpoint import config_from_checkpoint, default_checkpoint, read_config, weights_sha256
    from reftok_deploy.base.errors import ReftokError, report_damaged_input
    from reftok_deploy.base.manifest import open_export
    from reftok_deploy.base.paths import OutputPlan
    from reftok_deploy.runtimes.codec import FrameCodec
    from reftok_deploy.runtimes.factory import backend_label, make_runner
    from reftok_deploy.runtimes.output import VideoFile
    from reftok_deploy.runtimes.stream import decode_stream
    from reftok_deploy.base.tokenstream import check_header_matches

    say = (lambda msg: click.echo(msg, err=True))
    damage: list[str] = []
    checkpoint = checkpoint or default_checkpoint()
    plan = OutputPlan()  # every path before any work: the stream is never its own output
    plan.reads(stream, "the token stream")
    plan.reads(checkpoint, "the checkpoint")
    plan.reads(export_folder, "the export folder")
    if output:
        plan.file(output, "--output", opencv=True)
    with plan, _open(stream, clip_id, damage.append if salvage else None) as (header, records):
        if weights_sha256(checkpoint) != header["checkpoint_sha256"]:
            raise ReftokError(f"{stream} was encoded with another checkpoint (weights "
                              f"{header['checkpoint_sha256'][:12]}...): pass --checkpoint")
        check_header_matches(header, config_from_checkpoint(read_config(checkpoint), checkpoint), str(stream))
        export = open_export(export_folder) if export_folder is not None else None
        writer = VideoFile(output, header["fps"], (header["width"], header["height"])) if output else None
        try:
            if backend == "auto":
                backend, export, why = auto_backend(export, checkpoint, device, say, threads=threads,
                                                    size=(header["height"], header["width"]))
                say(f"backend: {backend} ({why})")
            runner = make_runner(backend, export, checkpoint, device=device, threads=threads)
            encoded_with, decoding_with = header.get("backend"), backend_label(backend, device)
            if encoded_with is not None and encoded_with != decoding_with:
                say(f"note: {stream} was encoded with {encoded_with}; decoding with {decoding_with}, so frames may "
                    "differ from reftok-run's by that backend's tolerance")
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
    summary = {"frames": frames, "backend": runner.name, "reconstruction_sha256": digest.hexdigest(), "output": output,
               "salvaged": bool(damage)}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"decoded {frames} frames on {runner.name}" + (f" into {output}" if output else "")
                   + f"; reconstruction sha256 {summary['reconstruction_sha256']}")


@contextlib.contextmanager
def _open(stream: str, clip_id: str | None, on_damage):
    """(header, records) of a .rtok file, or of one clip of a reftok-tokenize dataset folder."""
    from pathlib import Path

    from reftok_deploy.base.errors import ReftokError
    from reftok_deploy.base.tokenstream import open_stream

    if not Path(stream).is_dir():
        if clip_id is not None:
            raise ReftokError("--clip is for a reftok-tokenize dataset folder; STREAM is a file")
        with open_stream(stream, on_damage=on_damage) as opened:
            yield opened
        return
    from reftok_deploy.dataset.token_dataset import clip_header, clip_records, read_manifest

    if clip_id is None:
        raise ReftokError(f"{stream} is a folder: give --clip ID to decode one clip of a reftok-tokenize dataset")
    manifest = read_manifest(stream)
    yield clip_header(stream, clip_id, manifest), clip_records(stream, clip_id, manifest)
