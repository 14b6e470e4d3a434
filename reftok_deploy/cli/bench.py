"""reftok-bench: encode/decode throughput and latency per backend and precision, side by side."""

from __future__ import annotations

import json

import click

from reftok_deploy.cli import OneLineCommand, user_errors


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("export_folder", type=click.Path())
@click.option("--backends", default=None,
              help="Comma list, first is the baseline [default: torch + every onnxruntime precision exported].")
@click.option("--checkpoint", type=click.Path(), default=None, help="For torch [default: the manifest's].")
@click.option("--video", "videos", multiple=True, type=click.Path(), help="Real videos [default: built-in clips].")
@click.option("--size", default=256, show_default=True, type=click.IntRange(8, 4096), help="Centre crop (multiple of 8).")
@click.option("--gops", default=2, show_default=True, type=click.IntRange(1), help="GOPs per clip.")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1))
@click.option("--threads", default=None, type=click.IntRange(1), help="CPU threads for torch and onnxruntime.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--json", "as_json", is_flag=True)
@user_errors
def main(export_folder, backends, checkpoint, videos, size, gops, repeats, threads, device, as_json) -> None:
    """Time encode and decode of each backend on the same real GOPs in one run (round-robin,
    medians) and print ms per GOP, frames/s and speed-ups against the first backend."""
    import os

    # PyTorch's OpenMP threads otherwise spin after each call and slow the backend timed next.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from reftok_deploy.bench import bench
    from reftok_deploy.data import demo_clips
    from reftok_deploy.errors import ReftokError
    from reftok_deploy.manifest import open_export
    from reftok_deploy.parity import gop_feeds
    from reftok_deploy.runtimes.factory import make_runner
    from reftok_deploy.video import read_video

    if size % 8:
        raise ReftokError(f"--size must be a multiple of 8, got {size}")
    export = open_export(export_folder)
    manifest = export.manifest
    if threads:
        torch.set_num_threads(threads)
    specs = backends.split(",") if backends else ["torch"] + [f"onnxruntime:{p}" for p in export.precisions]
    checkpoint = checkpoint or manifest["checkpoint"].get("path")
    if not isinstance(checkpoint, str):
        raise ReftokError(f"{export_folder}: its manifest records no checkpoint path: pass --checkpoint")
    block = export.geometry.block_frames
    clips = {str(v): read_video(v, size=size) for v in videos} or demo_clips(size, block_frames=block)
    feeds = [f for _, f in gop_feeds(clips, block, gops)]
    runners = [make_runner(s.strip(), export, checkpoint, device=device, threads=threads) for s in specs]
    for runner in runners:
        runner.load()
    try:
        result = bench(runners, feeds, repeats=repeats)
    finally:
        for runner in runners:
            runner.close()
    result.update(size=size, threads=threads or torch.get_num_threads(), clips=sorted(clips))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{result['gops']} GOPs of {result['frames_per_gop']} frames at {size}x{size}, "
               f"{repeats} repeats, {result['threads']} thread(s); ratios vs {result['baseline']}")
    click.echo(f"{'backend':<22}{'enc ms':>9}{'dec ms':>9}{'fps':>8}{'enc x':>8}{'dec x':>8}{'total x':>9}{'PSNR':>8}")
    for name, r in result["backends"].items():
        click.echo(f"{name:<22}{r['encode_ms']:>9.1f}{r['decode_ms']:>9.1f}{r['fps_encode_decode']:>8.1f}"
                   f"{r['speedup_encode']:>8.2f}{r['speedup_decode']:>8.2f}{r['speedup_total']:>9.2f}{r['psnr_db']:>8.2f}")
