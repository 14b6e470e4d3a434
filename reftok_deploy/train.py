"""Training loop: one model (RefTok or its twin) on a seeded stream of (reference, block) samples.

A run folder holds ``checkpoint/`` (the model, loadable by every command) and
``train_state.safetensors`` (optimizer moments, RNG states, step) for resume.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from reftok_deploy.checkpoint import atomic_save_tensors, load_checkpoint, save_checkpoint, weights_sha256
from reftok_deploy.data import TrainingSampler
from reftok_deploy.errors import ReftokError
from reftok_deploy.model import RefTok, RefTokConfig
from reftok_deploy.video import list_media
from reftok_deploy.warm_start import warm_start_state

STATE = "train_state.safetensors"


@dataclass
class Recipe:
    steps: int = 4000
    batch: int = 8
    crop: int = 96
    lr: float = 1.5e-3
    warmup: int = 200
    seed: int = 0
    checkpoint_every: int = 200
    builtin_stills: bool = True
    latent_penalty: float = 0.01
    reference_dropout: float = 0.25
    loss: str = "l1"
    # Weights of another checkpoint the run started from (folder name + weights sha256), or None.
    init_from: str | None = None


# Peak learning rate per preset. Measured on the 2-core machine: `small` at tiny's 1.5e-3 had
# 2 codes in use and 13.9 dB running PSNR at step 400 (encoder collapsed); at 5e-4 it had 66 codes,
# 15.1 dB and rising. `base` was not trained here and gets the lower value too.
PRESET_LR = {"tiny": 1.5e-3, "small": 5e-4, "base": 5e-4}

LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}


def learning_rate(recipe: Recipe, step: int) -> float:
    """Linear warm-up then cosine decay to 1 % of the peak."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _save_state(run: Path, step: int, optimizer: torch.optim.Optimizer, sampler: TrainingSampler) -> None:
    opt = optimizer.state_dict()
    tensors = {"rng.torch": torch.get_rng_state()}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"opt.{idx}.{key}"] = torch.as_tensor(value)
    metadata = {"step": str(step), "param_groups": json.dumps(opt["param_groups"]),
                "rng.numpy": json.dumps(sampler.rng.bit_generator.state)}
    atomic_save_tensors(tensors, run / STATE, metadata)


def _load_state(run: Path, optimizer: torch.optim.Optimizer, sampler: TrainingSampler) -> int:
    from safetensors import safe_open

    try:
        with safe_open(str(run / STATE), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        step = int(metadata["step"])
        groups = json.loads(metadata["param_groups"])
        sampler.rng.bit_generator.state = json.loads(metadata["rng.numpy"])
    except Exception as exc:  # any corruption of the resume file is one clear error
        raise ReftokError(f"cannot resume from {run / STATE}: {exc}") from None
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    return step


def train(cfg: RefTokConfig, data: list[str], run: str | Path, recipe: Recipe, resume: bool = False,
          threads: int | None = None, progress: bool = True, init_from: str | Path | None = None) -> Path:
    """Train ``cfg`` on the videos/stills under ``data``; returns the checkpoint folder.

    ``init_from``: a checkpoint whose weights a fresh run starts from (see :mod:`reftok_deploy.warm_start`);
    ignored when resuming, where the run's own state wins.
    """
    if recipe.loss not in LOSSES:
        raise ReftokError(f"unknown loss {recipe.loss!r}; choose one of {sorted(LOSSES)}")
    run = Path(run)
    if threads:
        torch.set_num_threads(threads)
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    videos, images = list_media(data) if data else ([], [])
    sampler = TrainingSampler(videos, images, cfg.block_frames, recipe.crop, recipe.seed,
                              use_builtin_stills=recipe.builtin_stills)
    model = RefTok(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    step = 0
    if resume and (run / STATE).is_file():
        loaded, config = load_checkpoint(run / "checkpoint")
        if loaded.cfg != cfg:
            raise ReftokError(f"{run} holds a different model config; resume with the same --preset/--no-reference")
        model.load_state_dict(loaded.state_dict())
        step = _load_state(run, optimizer, sampler)
        elapsed = float(config.get("training", {}).get("wall_seconds", 0.0))
        recipe = replace(recipe, init_from=config.get("training", {}).get("recipe", {}).get("init_from"))
    else:
        elapsed = 0.0
        if init_from is not None:
            source, _ = load_checkpoint(init_from)
            model.load_state_dict(warm_start_state(source, model))
            recipe = replace(recipe, init_from=f"{Path(init_from).name} sha256:{weights_sha256(init_from)}")
    model.train()
    training = {
        "recipe": asdict(recipe),
        "data": [p.name for p in videos + images] + (["skimage.data stills"] if recipe.builtin_stills else []),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    started = time.perf_counter()
    bar = tqdm(total=recipe.steps, initial=step, desc="training " + ("RefTok" if cfg.reference else "twin"),
               unit="step", disable=not progress, dynamic_ncols=True)
    running = None
    while step < recipe.steps:
        reference, frames = sampler.batch(recipe.batch)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(recipe, step)
        if cfg.reference and recipe.reference_dropout > 0:
            # Some samples get a blank reference, so the tokens alone must carry the block: without this
            # the decoder settled on copying the reference and the encoder collapsed to one token.
            keep = torch.rand(reference.shape[0]) >= recipe.reference_dropout
            reference = reference * keep.view(-1, 1, 1, 1).to(reference.dtype)
        recon, ids, latent = model(reference, frames)
        # Keep latents out of tanh saturation: a saturated encoder emits one constant token and
        # gets no gradient back (seen here: RefTok collapsed to a single id and copied the reference).
        saturation = F.relu(latent.abs() - 2.0).pow(2).mean()
        loss = LOSSES[recipe.loss](recon, frames) + recipe.latent_penalty * saturation
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        with torch.no_grad():
            mse = F.mse_loss(recon.clamp(-1, 1), frames).item()
        psnr = 10 * math.log10(4.0 / max(mse, 1e-10))
        running = psnr if running is None else 0.98 * running + 0.02 * psnr
        bar.update(1)
        used = int(torch.unique(ids).numel())
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{running:.2f}", codes=used)
        if step % recipe.checkpoint_every == 0 or step == recipe.steps:
            training.update(step=step, wall_seconds=round(elapsed + time.perf_counter() - started, 1),
                            train_psnr_running=round(running, 3), codes_used_last_batch=used)
            save_checkpoint(model, run / "checkpoint", training=training)
            _save_state(run, step, optimizer, sampler)
    bar.close()
    return run / "checkpoint"
