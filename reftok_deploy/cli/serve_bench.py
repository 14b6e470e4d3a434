"""reftok-serve-bench: load test of a reftok-serve server beside the model alone, in one run."""

from __future__ import annotations

import json

import click

from reftok_deploy.base.service_api import TOKEN_ENV
from reftok_deploy.cli import OneLineCommand, user_errors
from reftok_deploy.cli.options import (checkpoint_option, export_option, json_option, size_option, threads_option,
                                       verbose_option, videos_option)


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("server")
@click.option("--clients", type=click.IntRange(1, 1024), default=8, show_default=True,
              help="Concurrent client streams, each encoding and then decoding its clip's GOPs in order.")
@click.option("--rounds", type=click.IntRange(1, 10_000), default=2, show_default=True,
              help="Times each client streams its clip.")
@videos_option("Real videos the clients stream (client i: video i mod N) [default: built-in clips]; repeat for several.")
@size_option("Short side resized to SIZE, then the centre SIZE x SIZE.", default=256, multiple_of_8=True)
@checkpoint_option("The server's checkpoint, for the model-only row [default: shipped RefTok].")
@export_option
@threads_option
@click.option("--token", default=None, envvar=TOKEN_ENV, show_envvar=True, help="The server's bearer token.")
@json_option()
@verbose_option
@user_errors
def main(server, clients, rounds, videos, size, checkpoint, export_folder, threads, token, as_json) -> None:
    """Drive SERVER (http://HOST:PORT of reftok-serve) with concurrent streams of real GOPs; print aggregate
    frames/s, per-GOP latency p50/p95/p99 and the batches the replicas formed, beside the same backend's
    model-only row in this process (measured before and after the load) and their ratio."""
    from reftok_deploy.base.video import read_video
    from reftok_deploy.deploy.deployment import Deployment
    from reftok_deploy.model.data import demo_clips
    from reftok_deploy.serve.load_test import load_test, load_test_lines

    clips = {v: read_video(v, size=size) for v in videos} if videos else demo_clips(size)
    deployment = Deployment(checkpoint, export_folder, threads=threads)
    report = load_test(server, deployment, clips, clients, rounds, token)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for line in load_test_lines(report, threads):
        click.echo(line)
