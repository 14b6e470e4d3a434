"""reftok-bench: encode/decode speed per backend and precision at the sizes users run, side by side."""

from __future__ import annotations

import json

import click

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.cli import OneLineCommand, user_errors
from reftok_deploy.cli.options import (BACKEND_CHOICES, checkpoint_option, device_option, json_option, max_gops_option,
                                       streams_option, threads_option, verbose_option, videos_option)
from reftok_deploy.deploy.benchmark import bench_lines, bench_report, bench_specs
from reftok_deploy.deploy.deployment import Deployment
from reftok_deploy.deploy.throughput import parse_size


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("export_folder", type=click.Path())
@click.option("--backends", default=None,
              help=f"Comma list of {BACKEND_CHOICES}; the first is the baseline [default: torch + every "
                   "onnxruntime precision exported]. A backend that cannot open here is a skipped row.")
@checkpoint_option("For the torch backend [default: the one recorded in the manifest].")
@videos_option("Real videos [default: built-in clips]; repeat for several.")
@click.option("--size", "sizes", multiple=True, default=("256",), show_default=True, metavar="N|WxH",
              help="Frame size: N (short side resized to N, centre N x N) or WIDTHxHEIGHT (resized to cover, "
                   "centre crop), multiples of 8 from 16 to 4096; repeat for several, e.g. --size 256 --size 640x480 --size 1280x720.")
@max_gops_option(2, "GOPs per clip.", hidden_aliases=("--gops",))
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1, 10_000), help="Timed rounds (medians).")
@click.option("--end-to-end/--model-only", default=True, show_default=True,
              help="Also run the fastest backend whose PSNR is within its precision's tolerance of the "
                   "baseline's through reftok-run's whole path (GOPs, overlay, MP4 writing).")
@threads_option
@streams_option
@device_option("cpu or cuda.")
@json_option()
@verbose_option
@user_errors
def main(export_folder, backends, checkpoint, videos, sizes, max_gops, repeats, end_to_end, threads, streams, device,
         as_json) -> None:
    """Time encode and decode of each backend on the same real GOPs in one run (round-robin,
    medians) and print ms per GOP, frames/s, GFLOP/s against this machine's measured matrix-multiply
    rate, speed-ups against the first backend (only for backends whose PSNR is within their precision's
    tolerance of its: the others are marked "fails parity" with their loss) and, with --end-to-end, reftok-run's fps beside the
    model-only fps (--streams applies to that end-to-end run; the model-only rows run one block at a time)."""
    if streams > 1 and not end_to_end:
        raise ReftokError("--streams applies to the end-to-end row: drop --model-only or --streams")
    deployment = Deployment(checkpoint, export_folder, device=device, threads=threads, streams=streams, say=say)
    deployment.check_streams("auto")
    shapes = [parse_size(s) for s in sizes]
    export = deployment.opened_export()
    specs = bench_specs(backends, export.precisions)
    deployment.with_recorded_checkpoint()
    report = bench_report(deployment, specs, shapes, videos, max_gops, repeats, end_to_end)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for line in bench_lines(report, repeats):
        click.echo(line)


def say(message: str) -> None:
    """Progress and notes on stderr (stdout is the result)."""
    click.echo(message, err=True)
