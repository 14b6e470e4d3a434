"""reftok-decode: replay a .rtok token stream into a video."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.paths import OutputPlan
from reftok_deploy.base.tokenstream import open_stream
from reftok_deploy.cli import OneLineCommand, user_errors
from reftok_deploy.cli.options import (backend_option, checkpoint_option, device_option, export_option, json_option,
                                       output_option, threads_option, verbose_option)
from reftok_deploy.dataset.token_dataset import clip_header, clip_records, read_manifest
from reftok_deploy.deploy.deployment import Deployment
from reftok_deploy.deploy.replay import replay


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("stream", type=click.Path())
@click.option("--clip", "clip_id", default=None, help="With a reftok-tokenize dataset folder as STREAM: the clip to decode.")
@output_option("Reconstructed video (.mp4/.avi).", type=click.Path(dir_okay=False), default=None)
@checkpoint_option()
@export_option
@backend_option()
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
    deployment = Deployment(checkpoint, export_folder, backend, device, threads, say=say).with_shipped_checkpoint()
    damage: list[str] = []
    plan = OutputPlan()  # every path before any work: the stream is never its own output
    plan.reads(stream, "the token stream")
    plan.reads(deployment.checkpoint, "the checkpoint")
    plan.reads(export_folder, "the export folder")
    if output:
        plan.file(output, "--output", opencv=True)
    with plan, _open(stream, clip_id, damage.append if salvage else None) as (header, records):
        summary = replay(deployment, stream, header, records, output, damage)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo("decoded {frames} frames on {backend}".format(**summary) + (f" into {output}" if output else "")
                   + f"; reconstruction sha256 {summary['reconstruction_sha256']}")


def say(message: str) -> None:
    """Progress and notes on stderr (stdout is the result)."""
    click.echo(message, err=True)


@contextlib.contextmanager
def _open(stream: str, clip_id: str | None, on_damage):
    """(header, records) of a .rtok file, or of one clip of a reftok-tokenize dataset folder."""
    if not Path(stream).is_dir():
        if clip_id is not None:
            raise ReftokError("--clip is for a reftok-tokenize dataset folder; STREAM is a file")
        with open_stream(stream, on_damage=on_damage) as opened:
            yield opened
        return
    if clip_id is None:
        raise ReftokError(f"{stream} is a folder: give --clip ID to decode one clip of a reftok-tokenize dataset")
    manifest = read_manifest(stream)
    yield clip_header(stream, clip_id, manifest), clip_records(stream, clip_id, manifest)
