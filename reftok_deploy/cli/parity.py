"""reftok-parity: compare two backends (PyTorch, onnxruntime FP32/FP16/INT8, TensorRT) on real frames."""

from __future__ import annotations

import json
import sys

import click

from reftok_deploy.cli import OneLineCommand, user_errors
from reftok_deploy.cli.options import (BACKEND_CHOICES, checkpoint_option, device_option, json_option, max_gops_option,
                                       size_option, threads_option, verbose_option, videos_option)
from reftok_deploy.deploy.deployment import Deployment
from reftok_deploy.deploy.parity_check import parity_report


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("export_folder", type=click.Path())
@click.option("--a", "baseline", default="torch", show_default=True, help=f"Baseline: {BACKEND_CHOICES}.")
@click.option("--b", "candidate", default="onnxruntime:fp32", show_default=True, help=f"Candidate: {BACKEND_CHOICES}.")
@checkpoint_option("Checkpoint (or reftok-train run folder) for the torch backend [default: the one recorded in "
                   "the manifest].")
@videos_option("Real videos [default: built-in clips]; repeat for several.")
@size_option("Short side resized to SIZE, then the centre SIZE x SIZE.", default=256, multiple_of_8=True)
@max_gops_option(4, "GOPs per clip.")
@device_option("cpu or cuda (torch and onnxruntime backends).")
@threads_option
@json_option("Print the report as JSON.")
@verbose_option
@user_errors
def main(export_folder, baseline, candidate, checkpoint, videos, size, max_gops, device, threads, as_json) -> None:
    """Compare backend --b against --a on EXPORT_FOLDER: token agreement, decoder error
    (both decoders on --a's tokens) and end-to-end PSNR against the source frames,
    with the tolerances of --b's precision. Exit 1 when a tolerance is exceeded."""
    deployment = Deployment(checkpoint, export_folder, device=device, threads=threads)
    deployment.opened_export()
    deployment.with_recorded_checkpoint(verify=True)
    report, clips = parity_report(deployment, baseline, candidate, videos, size, max_gops)
    result = report.to_dict()
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"{result['candidate']} vs {result['baseline']} on {result['feeds']} GOPs of {clips} clip(s):")
        click.echo(f"  tokens equal        {100 * result['token_agreement']:.3f} %")
        click.echo(f"  decoder max abs     {result['decoder_max_abs']:.3e} (mean {result['decoder_mean_abs']:.3e})")
        click.echo(f"  PSNR vs source      {result['psnr_baseline_db']:.3f} dB -> {result['psnr_candidate_db']:.3f} dB "
                   f"({result['psnr_delta_db']:+.3f} dB)")
        click.echo("  " + ("ok" if report.ok else "FAILED: " + "; ".join(report.failures)))
    if not report.ok:
        sys.exit(1)
