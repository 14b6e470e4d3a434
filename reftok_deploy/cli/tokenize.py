"""reftok-tokenize: a whole video corpus tokenized on Ray Data into a Parquet dataset, resumable."""

from __future__ import annotations

import json

import click
from tqdm import tqdm

from reftok_deploy.base.errors import EXIT_DAMAGED_INPUT
from reftok_deploy.base.tokenstream import MAX_PIXELS as MAX_FRAME_PIXELS
from reftok_deploy.base.video import DEFAULT_MAX_PIXELS
from reftok_deploy.cli import OneLineCommand, user_errors
from reftok_deploy.cli.options import (AUTO_BACKEND, BACKEND_CHOICES, MAX_THREADS, FiniteFloatRange, backend_option,
                                       checkpoint_option, device_option, export_option, gop_options, json_option,
                                       output_option, size_option, verbose_option)
from reftok_deploy.dataset.tokenize_job import TokenizeJob, run_tokenize
from reftok_deploy.deploy.deployment import Deployment


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@output_option("Dataset folder: shards/*.parquet, manifest.json, errors.parquet (new or empty, or this command's "
               "earlier dataset of the same settings, which is continued).", required=True,
               type=click.Path(file_okay=False))
@checkpoint_option()
@export_option
@backend_option(f"{AUTO_BACKEND}, chosen once before the job | {BACKEND_CHOICES}.")
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
@size_option("Resize the short side to SIZE, then keep the centre SIZE x SIZE (as reftok-run).")
@gop_options
@click.option("--max-pixels", type=click.IntRange(64, MAX_FRAME_PIXELS), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Largest frame (H x W, after --size) a clip may have; larger clips fail with a reason.")
@click.option("--rows-per-shard", type=click.IntRange(1, 100_000), default=256, show_default=True,
              help="Most rows (GOPs) in one Parquet shard: bounds a shard's size and each worker's memory.")
@click.option("--refine-steps", type=click.IntRange(0, 100_000), default=0, show_default=True,
              help="Search each GOP's tokens by this many gradient steps against the decoder (offline: about 0.2 s "
                   "per step and GOP at 256x256 on 2 CPU cores; 60 gave +1 to +4 dB). Same tokens, bits and decoder. "
                   "Runs on the torch backend (chosen by auto).")
@click.option("--overwrite", is_flag=True, help="Replace a dataset made with other settings in --output.")
@json_option("Print the summary as JSON (clips, skipped, failed, gops, frames, seconds, frames_per_second, ...).")
@verbose_option
@user_errors
def main(inputs, output, checkpoint, export_folder, backend, device, threads, workers, num_gpus, address, size,
         refresh_blocks, cut_threshold, max_pixels, rows_per_shard, refine_steps, overwrite, as_json) -> None:
    """Tokenize every clip of INPUT... (video files, folders searched recursively, globs, manifests: a .txt
    of paths or a .parquet/.csv with a 'path' and optional 'clip_id' column; local paths, file:// or any
    URI pyarrow opens) on Ray Data into --output.

    One Parquet row per GOP (tokens, the lossless reference PNG, frame indices and timestamps); rerun the
    same command after an interruption and finished clips are skipped. Exit 0: every clip tokenized;
    3: some clip failed or was damaged (listed in manifest.json and errors.parquet); 2: bad input.
    """
    deployment = Deployment(checkpoint, export_folder, backend, device, threads, say=say)
    job = TokenizeJob(list(inputs), output, workers, num_gpus, address, size, refresh_blocks, cut_threshold, max_pixels,
                      rows_per_shard, overwrite, refine_steps)
    with ClipBar() as bar:
        manifest = run_tokenize(deployment, job, on_clip=bar.update, clip_count=bar.start)
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


def say(message: str) -> None:
    """Progress and notes on stderr (stdout is the result)."""
    click.echo(message, err=True)


class ClipBar:
    """A progress bar of the clips (on a terminal only), started once the clips are counted."""

    def __init__(self) -> None:
        self.bar = None

    def start(self, clips: int) -> None:
        self.bar = tqdm(total=clips, desc="tokenizing", unit="clip", disable=None)

    def update(self, _row=None) -> None:
        if self.bar is not None:
            self.bar.update()

    def __enter__(self) -> "ClipBar":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
