"""reftok-parity: compare two backends (PyTorch, onnxruntime FP32/FP16/INT8, TensorRT) on real frames."""

from __future__ import annotations

import json
import sys

import click

from reftok_deploy.cli import OneLineCommand, user_errors
from reftok_deploy.cli.options import (checkpoint_option, device_option, json_option, max_gops_option, threads_option,
                                       verbose_option, videos_option)


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("export_folder", type=click.Path())
@click.option("--a", "baseline", default="torch", show_default=True, help="Baseline backend.")
@click.option("--b", "candidate", default="onnxruntime:fp32", show_default=True,
              help="Candidate: torch | onnxruntime:fp32|fp16|int8 | openvino:fp32|fp16|int8|bf16 | tensorrt:fp32|fp16|int8.")
@checkpoint_option("Checkpoint (or reftok-train run folder) for the torch backend [default: the one recorded in "
                   "the manifest].")
@videos_option("Real videos [default: built-in clips]; repeat for several.")
@click.option("--size", default=256, show_default=True, type=click.IntRange(8, 4096),
              help="Short side resized to SIZE, then the centre SIZE x SIZE (a multiple of 8).")
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
    from reftok_deploy.base.files import sha256_file
    from reftok_deploy.model.data import demo_clips
    from reftok_deploy.base.errors import ReftokError
    from reftok_deploy.base.manifest import open_export
    from reftok_deploy.base.spec import TOLERANCES
    from reftok_deploy.deploy.parity_check import compare, gop_feeds
    from reftok_deploy.runtimes.factory import make_runner, parse_spec
    from reftok_deploy.base.video import read_video

    if size % 8:
        raise ReftokError(f"--size must be a multiple of 8, got {size}")
    export = open_export(export_folder)
    manifest = export.manifest
    if checkpoint is None:
        checkpoint = manifest["checkpoint"].get("path")
        if not isinstance(checkpoint, str):
            raise ReftokError(f"{export_folder}: its manifest records no checkpoint path: pass --checkpoint")
        weights = f"{checkpoint}/model.safetensors"
        try:
            matches = sha256_file(weights) == manifest["checkpoint"]["weights_sha256"]
        except OSError:
            raise ReftokError(f"the checkpoint recorded in the manifest is gone ({checkpoint}): pass --checkpoint") from None
        if not matches:
            raise ReftokError(f"{checkpoint} changed since the export: pass --checkpoint or re-export")
    runners = [make_runner(spec, export, checkpoint, device=device, threads=threads) for spec in (baseline, candidate)]
    block = export.geometry.block_frames
    clips = {str(v): read_video(v, size=size) for v in videos} or demo_clips(size, block_frames=block)
    with runners[0] as a, runners[1] as b:
        report = compare(a, b, gop_feeds(clips, block, max_gops), TOLERANCES[parse_spec(candidate)[1]])
    result = report.to_dict()
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"{b.name} vs {a.name} on {result['feeds']} GOPs of {len(clips)} clip(s):")
        click.echo(f"  tokens equal        {100 * result['token_agreement']:.3f} %")
        click.echo(f"  decoder max abs     {result['decoder_max_abs']:.3e} (mean {result['decoder_mean_abs']:.3e})")
        click.echo(f"  PSNR vs source      {result['psnr_baseline_db']:.3f} dB -> {result['psnr_candidate_db']:.3f} dB "
                   f"({result['psnr_delta_db']:+.3f} dB)")
        click.echo("  " + ("ok" if report.ok else "FAILED: " + "; ".join(report.failures)))
    if not report.ok:
        sys.exit(1)
