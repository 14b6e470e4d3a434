"""reftok-train: train RefTok (or its reference-free twin) on videos and stills."""

from __future__ import annotations

import dataclasses

import click

from reftok_deploy.cli import user_errors
from reftok_deploy.model import PRESETS


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("data", nargs=-1, type=click.Path())
@click.option("--out", "run", required=True, type=click.Path(file_okay=False), help="Run folder (checkpoint/ + resume state).")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="tiny", show_default=True, help="Model size.")
@click.option("--no-reference", is_flag=True, help="Train the reference-free twin (ablation baseline).")
@click.option("--motion-warp", is_flag=True,
              help="Decoder warps the reference by predicted motion (measured +0.23 dB on held-out video; "
                   "costs a GridSample, slow in onnxruntime on CPU).")
@click.option("--steps", default=4000, show_default=True, type=click.IntRange(1))
@click.option("--batch", default=8, show_default=True, type=click.IntRange(1))
@click.option("--crop", default=96, show_default=True, type=click.IntRange(32), help="Square crop size (multiple of 8).")
@click.option("--lr", default=1.5e-3, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--reference-dropout", default=0.25, show_default=True, type=click.FloatRange(0, 1),
              help="Fraction of RefTok samples trained with a blank reference (keeps tokens in use).")
@click.option("--checkpoint-every", default=200, show_default=True, type=click.IntRange(1))
@click.option("--no-builtin-stills", is_flag=True, help="Do not add scikit-image's bundled photographs.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch CPU threads.")
@user_errors
def main(data, run, preset, no_reference, motion_warp, steps, batch, crop, lr, seed, reference_dropout, checkpoint_every, no_builtin_stills,
         resume, threads) -> None:
    """Train on DATA (video files, stills, or folders of them) with synthetic camera motion on stills."""
    from reftok_deploy.errors import ReftokError
    from reftok_deploy.train import Recipe, train

    if crop % 8:
        raise ReftokError(f"--crop must be a multiple of 8, got {crop}")
    if motion_warp and no_reference:
        raise ReftokError("--motion-warp warps the reference; the twin (--no-reference) has none")
    cfg = PRESETS[preset].twin() if no_reference else dataclasses.replace(PRESETS[preset], motion_warp=motion_warp)
    recipe = Recipe(steps=steps, batch=batch, crop=crop, lr=lr, seed=seed, checkpoint_every=checkpoint_every,
                    reference_dropout=reference_dropout,
                    builtin_stills=not no_builtin_stills)
    folder = train(cfg, list(data), run, recipe, resume=resume, threads=threads)
    click.echo(f"checkpoint: {folder}")
