"""reftok-train: train RefTok (or its reference-free twin) on videos and stills."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import TYPE_CHECKING

import click

from reftok_deploy.cli import OneLineCommand, user_errors
from reftok_deploy.cli.options import (MAX_COUNT, MAX_THREADS, FiniteFloatRange, device_option, json_option,
                                       output_option, threads_option, verbose_option)
from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.paths import OutputPlan
from reftok_deploy.model.checkpoint import read_config

if TYPE_CHECKING:
    from reftok_deploy.model.reftok import RefTokConfig

# The names of reftok_deploy.model.reftok.PRESETS, spelled here so that --help does not import torch
# (tests/test_cli_shape.py checks the two agree).
PRESET_NAMES = ("base", "small", "tiny")


def parse_levels(text: str) -> tuple[int, ...]:
    """'8,5,5,5' -> (8, 5, 5, 5); the codebook must fit the 16-bit ids of .rtok token streams."""
    try:
        levels = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ReftokError(f"--fsq-levels must be comma-separated integers, got {text!r}") from None
    if not levels or min(levels) < 2 or math.prod(levels) > 65536:
        raise ReftokError(f"--fsq-levels {text}: every level must be >= 2 and their product at most 65536")
    return levels


def model_config(preset: str, no_reference: bool, model_version: str, motion_search: bool, block_refinement: bool,
                 fsq_levels: str | None, group_context: bool) -> "RefTokConfig":
    """The RefTokConfig the options ask for; one-line errors for combinations that cannot be."""
    from reftok_deploy.model.reftok import PRESETS  # torch: not for --help

    if (motion_search or block_refinement) and no_reference:
        raise ReftokError("--motion-search and --block-refinement need the reference: the twin has no motion")
    if motion_search and block_refinement:
        raise ReftokError("--motion-search and --block-refinement measure the same motion two ways: pick one")
    cfg = dataclasses.replace(PRESETS[preset], group_context=group_context)
    if no_reference:
        cfg = cfg.twin()
    elif model_version == "3" or motion_search or block_refinement:
        cfg = cfg.version3(aligned_reference=model_version == "3", motion_search=motion_search,
                           block_refinement=block_refinement)
    if fsq_levels is not None:
        cfg = dataclasses.replace(cfg, fsq_levels=parse_levels(fsq_levels))
    return cfg


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("data", nargs=-1, type=click.Path())
@output_option("Run folder (checkpoint/ + resume state).", hidden_aliases=("--out",), required=True,
               type=click.Path(file_okay=False))
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="tiny", show_default=True, help="Model size.")
@click.option("--no-reference", is_flag=True, help="Train the reference-free twin (ablation baseline).")
@click.option("--model-version", type=click.Choice(["2", "3"]), default="2", show_default=True,
              help="3: the decoder also reads the reference features aligned by each group's decoded motion (same "
                   "tokens; a version-2 --init-from starts it decoding exactly as its source). The twin is version 2.")
@click.option("--motion-search", is_flag=True,
              help="Version 3 with the encoder's motion search: each frame's motion found coarse to fine and refined "
                   "per 8x8 block, read by the latent head (same tokens; a version-2 --init-from starts it coding "
                   "exactly as its source). Without --model-version 3 the decoder is version 2's.")
@click.option("--block-refinement", is_flag=True,
              help="Version 3 with the encoder's block refinement: its 1/4 soft-argmax motion moved per 8x8 block by "
                   "Lucas-Kanade steps on the grey pixels, read by the latent head (no new weights; same tokens). "
                   "Cheaper than --motion-search, which it excludes.")
@click.option("--search-weights", type=click.Path(dir_okay=False), default=None,
              help="The motion search's weights from reftok-train-search (search.safetensors); needs --motion-search. "
                   "Default: a fresh search, trained with the rest.")
@click.option("--search-share", default=0.0, show_default=True, type=FiniteFloatRange(0, 1),
              help="With --motion-search or --block-refinement, a fresh run: move this share of the latent head's "
                   "weights on the 1/4 soft-argmax motion onto the searched (refined) motion, so the head reads it "
                   "from the first step "
                   "(0: a version-2 --init-from starts it coding exactly as its source).")
@click.option("--fsq-levels", default=None, metavar="L1,L2,...",
              help="FSQ levels per token dimension (codebook = their product, at most 65536). Default: the preset's.")
@click.option("--group-context/--no-group-context", default=True, show_default=True,
              help="Each 4-frame group's tokens are coded and decoded with its neighbouring groups' in view "
                   "(the shipped checkpoint before it had none).")
@click.option("--init-from", type=click.Path(), default=None,
              help="Start from this checkpoint's weights (same preset; --fsq-levels may append dimensions; "
                   "a version-1 checkpoint seeds every tensor version 2 kept).")
@click.option("--freeze-decoder", is_flag=True,
              help="Train only the encoder (with its motion features) against the --init-from checkpoint's decoder, "
                   "which stays as it is: each token keeps its meaning, so tokens already written decode as before.")
@click.option("--loss", type=click.Choice(["l1", "mse"]), default="l1", show_default=True,
              help="Reconstruction loss (mse optimises PSNR directly).")
@click.option("--steps", default=4000, show_default=True, type=click.IntRange(1, MAX_COUNT),
              help="Training steps (optimiser updates); the learning rate warms up and decays over them.")
@click.option("--batch", default=8, show_default=True, type=click.IntRange(1, 4096),
              help="Clips per step; with --crop, refused when the estimated memory exceeds the device's.")
@click.option("--crop", default=96, show_default=True, type=click.IntRange(32, 4096), help="Square crop size (multiple of 8).")
@click.option("--lr", default=None, type=FiniteFloatRange(0, 1, min_open=True, max_open=True),
              help="Peak learning rate, in (0, 1). Default per preset: tiny 1.5e-3, small/base 5e-4 (small collapsed "
                   "at 1.5e-3).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Random seed of the initial weights, the batches and their synthetic motion.")
@click.option("--reference-dropout", default=0.0, show_default=True, type=FiniteFloatRange(0, 1),
              help="Fraction of RefTok samples trained with a blank reference (version 1 needed 0.25 to keep "
                   "its tokens in use; version 2's flow teacher does that).")
@click.option("--flow-weight", default=0.2, show_default=True, type=FiniteFloatRange(0, 100),
              help="Weight of the flow teacher (decoded motion vs true/DIS flow, L1 in pixels), 0 to 100.")
@click.option("--encoder-flow-weight", default=0.0, show_default=True, type=FiniteFloatRange(0, 100),
              help="Weight of the encoder-flow teacher (the encoder's cost-volume motion vs the true/DIS flow's "
                   "8x8 block means, L1 in pixels), 0 to 100; 0 leaves the encoder's motion to the reconstruction.")
@click.option("--gate-penalty", default=0.002, show_default=True, type=FiniteFloatRange(0, 100),
              help="Weight of the mean residual gate in the loss (keeps static content on the exact reference path).")
@click.option("--checkpoint-every", default=200, show_default=True, type=click.IntRange(1, MAX_COUNT),
              help="Save the checkpoint and the resume state every this many steps.")
@click.option("--no-builtin-stills", is_flag=True, help="Do not add scikit-image's bundled photographs.")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last checkpoint.")
@threads_option
@device_option("Where the model trains: cpu, cuda or cuda:N.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0, MAX_THREADS),
              help=f"Processes making training batches (use several to keep a GPU busy), at most {MAX_THREADS} "
                   "(4x the cores); 0 = in the training process, which makes a run resume exactly.")
@click.option("--max-minutes", type=FiniteFloatRange(0, 10**6, min_open=True), default=None,
              help="Stop with a checkpoint after this much training time; the learning rate then decays "
                   "by time or by --steps, whichever is further along.")
@click.option("--autocast", type=click.Choice(["bf16"]), default=None,
              help="Compute the forward pass in bfloat16 (torch.autocast; about 2x faster on CPUs with AMX and on "
                   "recent GPUs); weights and the saved checkpoint stay float32. Default: float32.")
@json_option("Print the checkpoint folder and its training record as JSON.")
@verbose_option
@user_errors
def main(data, output, preset, no_reference, model_version, motion_search, block_refinement, search_weights, search_share, fsq_levels, group_context, init_from, freeze_decoder, loss, steps, batch, crop, lr, seed, reference_dropout, flow_weight, encoder_flow_weight, gate_penalty, checkpoint_every, no_builtin_stills,
         resume, threads, device, workers, max_minutes, autocast, as_json) -> None:
    """Train on DATA (video files, stills, or folders of them) with synthetic camera motion on stills."""
    from reftok_deploy.model.training import PRESET_LR, STATE, Recipe, check_training_memory, train  # torch: not for --help

    if crop % 8:
        raise ReftokError(f"--crop must be a multiple of 8, got {crop}")
    cfg = model_config(preset, no_reference, model_version, motion_search, block_refinement, fsq_levels, group_context)
    for flag, value, applies, needs in (
            ("--search-weights", search_weights, cfg.motion_search, "--motion-search"),
            ("--search-share", search_share, cfg.motion_search or cfg.block_refinement,
             "--motion-search or --block-refinement")):
        if value and not applies:
            raise ReftokError(f"{flag} needs {needs}")
        if value and resume:
            raise ReftokError(f"{flag} starts a run; a resumed run keeps its own weights")
    check_training_memory(preset, batch, crop, device)
    if lr is None:
        lr = PRESET_LR[preset]
    recipe = Recipe(steps=steps, batch=batch, crop=crop, lr=lr, seed=seed, checkpoint_every=checkpoint_every,
                    reference_dropout=reference_dropout, flow_weight=flow_weight, encoder_flow_weight=encoder_flow_weight,
                    gate_penalty=gate_penalty, loss=loss, search_share=search_share,
                    builtin_stills=not no_builtin_stills, max_minutes=max_minutes,
                    autocast=autocast, freeze_decoder=freeze_decoder)
    plan = OutputPlan()  # every path before any work; a run that fails before its first checkpoint leaves nothing
    for path in data:
        plan.reads(path, "the training data")
    if not resume:  # a resumed run reads its own folder on purpose
        plan.reads(init_from, "the --init-from checkpoint")
        plan.reads(search_weights, "the --search-weights file")
    plan.folder(output, "--output", writes=("checkpoint/model.safetensors", "checkpoint/config.json", STATE,
                                            "train_log.jsonl"),
                keep_if=lambda run: (run / "checkpoint" / "config.json").is_file())
    with plan:
        folder = train(cfg, list(data), output, recipe, resume=resume, threads=threads, init_from=init_from,
                       device=device, workers=workers, search_weights=search_weights)
    if as_json:
        click.echo(json.dumps({"checkpoint": str(folder), "training": read_config(folder).get("training")}, indent=2))
    else:
        click.echo(f"checkpoint: {folder}")
