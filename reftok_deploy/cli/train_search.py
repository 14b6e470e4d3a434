"""reftok-train-search: train version 3's motion search on its own, against the teacher flow."""

from __future__ import annotations

import json

import click

from reftok_deploy.cli import OneLineCommand, user_errors
from reftok_deploy.cli.options import MAX_COUNT, FiniteFloatRange, json_option, output_option, threads_option, verbose_option
from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.paths import OutputPlan


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("data", nargs=-1, type=click.Path())
@output_option("Run folder (search.safetensors + search_log.jsonl).", required=True, type=click.Path(file_okay=False))
@click.option("--steps", default=6000, show_default=True, type=click.IntRange(1, MAX_COUNT),
              help="Training steps; the learning rate warms up and decays over them (or over --max-minutes).")
@click.option("--batch", default=8, show_default=True, type=click.IntRange(1, 256), help="Clips of 8 frames per step.")
@click.option("--crop", default=128, show_default=True, type=click.IntRange(64, 1024), help="Square crop size (multiple of 8).")
@click.option("--lr", default=1e-3, show_default=True, type=FiniteFloatRange(0, 1, min_open=True, max_open=True),
              help="Peak learning rate, in (0, 1).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1), help="Random seed.")
@click.option("--checkpoint-every", default=500, show_default=True, type=click.IntRange(1, MAX_COUNT),
              help="Save search.safetensors every this many steps (and at the end).")
@click.option("--max-minutes", type=FiniteFloatRange(0, 10**6, min_open=True), default=None,
              help="Stop after this much training time; the learning rate decays by time or steps, whichever is "
                   "further along.")
@threads_option
@json_option("Print the weights file and its training record as JSON.")
@verbose_option
@user_errors
def main(data, output, steps, batch, crop, lr, seed, checkpoint_every, max_minutes, threads, as_json) -> None:
    """Train the motion search (coarse-to-fine feature matching, then Lucas-Kanade per 8x8 block) that
    `reftok-train --motion-search --search-weights OUTPUT/search.safetensors` builds version 3 on. DATA: video files,
    stills, or folders of them; the teacher is OpenCV's DIS flow on video and the true motion of synthetic clips."""
    from reftok_deploy.model.search_training import SEARCH_FILE, SEARCH_LOG, SearchRecipe, train_search  # torch

    if crop % 8:
        raise ReftokError(f"--crop must be a multiple of 8, got {crop}")
    recipe = SearchRecipe(steps=steps, batch=batch, crop=crop, lr=lr, seed=seed, checkpoint_every=checkpoint_every,
                          max_minutes=max_minutes)
    plan = OutputPlan()
    for path in data:
        plan.reads(path, "the training data")
    plan.folder(output, "--output", writes=(SEARCH_FILE, SEARCH_LOG), keep_if=lambda run: (run / SEARCH_FILE).is_file())
    with plan:
        weights = train_search(list(data), output, recipe, threads=threads)
    if as_json:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as fh:
            record = json.loads((fh.metadata() or {})["training"])
        click.echo(json.dumps({"search_weights": str(weights), "training": record}, indent=2))
    else:
        click.echo(f"search weights: {weights}")
