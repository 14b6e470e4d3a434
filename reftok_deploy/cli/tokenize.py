"""reftok-tokenize: a whole video corpus tokenized on Ray Data into a Parquet dataset, resumable."""

from __future__ import annotations

import json
import math

import click

from reftok_deploy.cli import OneLineCommand, user_errors
from reftok_deploy.cli.options import (MAX_THREADS, FiniteFloatRange, checkpoint_option, device_option,
                                       gop_options, json_option, output_option, verbose_option)
from reftok_deploy.base.tokenstream import MAX_PIXELS as MAX_FRAME_PIXELS
from reftok_deploy.base.video import DEFAULT_MAX_PIXELS


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@output_option("Dataset folder: shards/*.parquet, manifest.json, errors.parquet (new or empty, or this command's "
               "earlier dataset of the same settings, which is continued).", required=True,
               type=click.Path(file_okay=False))
@checkpoint_option()
@click.option("--export", "export_folder", type=click.Path(), default=None, help="reftok-export folder (ONNX/engines).")
@click.option("--backend", default="auto", show_default=True,
              help="auto (measured once, before the job) | torch | onnxruntime[:fp32|fp16|int8] | "
                   "openvino[:fp32|fp16|int8|bf16] | tensorrt[:fp16|int8|fp32].")
@device_option()
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=1, show_default=True,
              help="CPU threads of each worker's model.")
@click.option("--workers", type=click.IntRange(1, 4096), default=None,
              help="Workers (Ray actors), each with one copy of the model [default: the local cores / --threads; "
                   "on a cluster, the cluster's CPUs / --threads].")
@click.option("--num-gpus", type=FiniteFloatRange(0, 64), default=0.0, show_default=True,
              help="GPUs per worker, fractions allowed (e.g. 0.25: four workers share one GPU).")
@click.option("--address", envvar="RAY_ADDRESS", default=None,
              help="Ray cluster to run on (host:port, ray://...) [default: $RAY_ADDRESS, else an embedded local Ray].")
@click.option("--size", type=click.IntRange(8, 4096), default=None,
              help="Resize the short side to SIZE, then keep the centre SIZE x SIZE (as reftok-run).")
@gop_options
@click.option("--max-pixels", type=click.IntRange(64, MAX_FRAME_PIXELS), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Largest frame (H x W, after --size) a clip may have; larger clips fail with a reason.")
@click.option("--rows-per-shard", type=click.IntRange(1, 100_000), default=256, show_default=True,
              help="Most rows (GOPs) in one Parquet shard: bounds a shard's size and each worker's memory.")
@click.option("--overwrite", is_flag=True, help="Replace a dataset made with other settings in --output.")
@json_option("Print the summary as JSON (clips, skipped, failed, gops, frames, seconds, frames_per_second, ...).")
@verbose_option
@user_errors
def main(inputs, output, checkpoint, export_folder, backend, device, threads, workers, num_gpus, address, size,
         refresh_blocks, cut_threshold, max_pixels, rows_per_shard, overwrite, as_json) -> None:
    """Tokenize every clip of INPUT... (video files, folders searched recursively, globs, manifests: a .txt
    of paths or a .parquet/.csv with a 'path' and optional 'clip_id' column; local paths, file:// or any
    URI pyarrow opens) on Ray Data into --output.

    One Parquet row per GOP (tokens, the lossless reference PNG, frame indices and timestamps); rerun the
    same command after an interruption and finished clips are skipped. Exit 0: every clip tokenized;
    3: some clip failed or was damaged (listed in manifest.json and errors.parquet); 2: bad input.
    """
    from reftok_deploy.base.errors import ReftokError

    try:
        import pyarrow  # noqa: F401
        import ray  # noqa: F401
    except ImportError as exc:
        raise ReftokError(f"reftok-tokenize needs Ray Data and pyarrow ({exc.name} is missing): "
                          "pip install 'reftok-deploy[ray]'") from None
    from tqdm import tqdm

    from reftok_deploy.deploy.backends import auto_backend
    from reftok_deploy.model.checkpoint import config_from_checkpoint, default_checkpoint, read_config, weights_sha256
    from reftok_deploy.dataset.clip_tokenizer import TokenizeSettings
    from reftok_deploy.dataset.corpus import expand_inputs
    from reftok_deploy.base.errors import EXIT_DAMAGED_INPUT
    from reftok_deploy.base.manifest import open_export
    from reftok_deploy.base.paths import OutputPlan
    from reftok_deploy.dataset.ray_tokenize import check_address, tokenize_corpus
    from reftok_deploy.runtimes.factory import backend_label, make_runner

    say = (lambda msg: click.echo(msg, err=True))
    check_address(address)
    checkpoint = str(checkpoint or default_checkpoint())
    clips = expand_inputs(list(inputs))
    plan = OutputPlan()
    for clip in clips:
        plan.reads(clip.source if "://" not in clip.source else None, "the input")
    plan.reads(checkpoint, "the checkpoint")
    plan.reads(export_folder, "the export folder")
    # a job stopped part way (Ctrl-C, a lost cluster) keeps what it finished: the same command resumes it
    plan.folder(output, "--output", keep_if=lambda folder: any((folder / "done").glob("*.json")))
    with plan:
        cfg = config_from_checkpoint(read_config(checkpoint), checkpoint)
        export = open_export(export_folder) if export_folder is not None else None
        if backend == "auto":
            backend, export, why = auto_backend(export, checkpoint, device, say, threads=threads,
                                                size=(size or 256, size or 256))
            say(f"backend: {backend} ({why})")
        make_runner(backend, export, checkpoint, device=device, threads=threads)  # a bad spec fails here, not in Ray
        settings = TokenizeSettings(out=str(output), checkpoint=checkpoint,
                                    export_folder=None if export is None else str(export.path), backend=backend,
                                    device=device, threads=threads, size=size, refresh_blocks=refresh_blocks,
                                    cut_threshold=cut_threshold or None, rows_per_shard=rows_per_shard,
                                    max_pixels=max_pixels, block_frames=cfg.block_frames)
        job = {"format": "reftok-tokens", "checkpoint": {"path": checkpoint, "weights_sha256": weights_sha256(checkpoint)},
               "model": {"model_version": cfg.model_version, "fsq_levels": list(cfg.fsq_levels),
                         "codebook_size": math.prod(cfg.fsq_levels), "block_frames": cfg.block_frames,
                         "temporal_factor": cfg.temporal_factor, "spatial_factor": cfg.spatial_factor},
               "geometry": {"size": None if size is None else [size, size], "max_pixels": max_pixels,
                            "refresh_blocks": refresh_blocks, "cut_threshold": cut_threshold or None},
               "backend": backend_label(backend, device), "rows_per_shard": rows_per_shard}
        bar = tqdm(total=len(clips), desc="tokenizing", unit="clip", disable=None)
        try:
            manifest = tokenize_corpus(clips, settings, job, workers, address=address, overwrite=overwrite,
                                       num_gpus=num_gpus, on_clip=lambda row: bar.update())
        finally:
            bar.close()
    summary = manifest["summary"]
    failed = {k: v["reason"] for k, v in manifest["clips"].items() if v["status"] == "failed"}
    if as_json:
        click.echo(json.dumps(dict(summary, failed_clips=failed, output=str(output)), indent=2))
    else:
        for clip_id, reason in failed.items():
            say(f"failed: {clip_id}: {reason}")
        click.echo(f"{summary['clips']} clips tokenized ({summary['skipped']} skipped as already done, "
                   f"{summary['failed']} failed), {summary['gops']} GOPs, {summary.get('frames', 0)} frames; this run "
                   f"{summary['frames_per_second']:.1f} frames/s after {summary['ray_start_seconds']:.1f} s of Ray "
                   f"start-up on {len(summary['nodes'])} node(s); tokens {summary['token_bytes'] / 1e6:.2f} MB, "
                   f"references {summary['reference_bytes'] / 1e6:.2f} MB; wrote {output}")
    if summary["failed"] or summary["damaged"]:
        raise SystemExit(EXIT_DAMAGED_INPUT)
