"""Training loop: one model (RefTok or its twin) on a seeded stream of (reference, block) samples.

A run folder holds ``checkpoint/`` (the model, loadable by every command) and
``train_state.safetensors`` (optimizer moments, RNG states, step) for resume.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from reftok_deploy.model.checkpoint import WEIGHTS, atomic_save_tensors, load_checkpoint, save_checkpoint
from reftok_deploy.base.files import check_writable_folder, sha256_file
from reftok_deploy.model.data import TrainingSampler, batch_stream
from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.machine import physical_memory_bytes
from reftok_deploy.model.reftok import RefTok, RefTokConfig, measured_reaches
from reftok_deploy.model.teacher import block_error, block_targets, teacher_mask
from reftok_deploy.base.video import list_media
from reftok_deploy.model.warm_start import (hand_motion_to_search, load_search_weights, load_source_weights, upgrade_v1_state,
                                            warm_start_state)

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
    reference_dropout: float = 0.0
    # Weight of the flow teacher (L1 in pixels between decoded motion and the true/DIS flow, where
    # that flow explains the frame) and of the gate's mean (keeps the exact reference path open).
    # At 0.02 the L1 loss kept motion at zero (copying is safe while motion is imprecise): after 200
    # steps the decoded pan motion was 0.0 px against 2.5-20 true; at 0.2 it follows the teacher.
    flow_weight: float = 0.2
    gate_penalty: float = 0.002
    # Weight of the encoder-flow teacher: L1 in pixels between the encoder's measured motion (its cost
    # volumes' soft-argmax, see RefTok._encode) and the teacher flow's 8x8 block means, on trusted blocks.
    # The decoded motion can only be as good as what the encoder measures; learned from the reconstruction
    # alone the soft-argmax of the shipped version 2 was 3.2-5.5 px off DIS on moving blocks (box, tree,
    # carphone) and its decoded motion 1.1-2.6 px, the whole of its gap to the block-motion warp.
    encoder_flow_weight: float = 0.0
    loss: str = "l1"
    # Weights of another checkpoint the run started from (folder name + weights sha256), or None.
    init_from: str | None = None
    # The motion search's weights the run started from (file name + sha256; reftok-train-search), or None.
    search_weights: str | None = None
    # Share of the latent head's weights on the 1/4 soft-argmax motion moved onto the searched motion at the start
    # of a fresh run (see warm_start.hand_motion_to_search).
    search_share: float = 0.0
    # Wall-time budget of one training call: it stops with a checkpoint when spent, and the
    # learning rate decays by time or by steps, whichever is further along.
    max_minutes: float | None = None
    # "bf16": the model's forward pass under torch.autocast in bfloat16 (AMX CPUs, recent GPUs); losses,
    # weights, optimizer and the exported model stay float32. None: float32 throughout.
    autocast: str | None = None
    # Train only the encoder's side (RefTok.encoder_side_parameters) against the decoder of --init-from: each token
    # keeps its meaning, so tokens already written decode as before. Latent refinement (reftok-eval --refine-steps)
    # showed the shipped decoder reaching 1-4 dB more than the encoder's one pass asks of it.
    freeze_decoder: bool = False


# Peak learning rate per preset. Measured on the 2-core machine: `small` at tiny's 1.5e-3 had
# 2 codes in use and 13.9 dB running PSNR at step 400 (encoder collapsed); at 5e-4 it had 66 codes,
# 15.1 dB and rising. `base` was not trained here and gets the lower value too.
PRESET_LR = {"tiny": 1.5e-3, "small": 5e-4, "base": 5e-4}

LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}

AUTOCAST_DTYPES = {"bf16": torch.bfloat16}


def learning_rate(recipe: Recipe, step: int, time_fraction: float = 0.0, floor: float = 0.01) -> float:
    """Linear warm-up then cosine decay to ``floor`` (a share) of the peak; ``recipe``: anything with ``lr``,
    ``warmup`` and ``steps`` (also reftok-train-search's recipe).

    ``time_fraction``: share of a wall-time budget spent; the decay follows whichever of steps and
    time is further along, so a run stopped by its budget still ends at the low learning rate.
    """
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = max((step - recipe.warmup) / max(1, recipe.steps - recipe.warmup), time_fraction)
    return recipe.lr * (floor + (1.0 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


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


def usage_of_counts(counts: torch.Tensor) -> dict[str, float]:
    """A histogram of ids ``[codebook]`` -> distinct ids and the entropy (bits per token)."""
    counts = counts.double()
    p = counts[counts > 0] / counts.sum().clamp(min=1.0)
    return {"distinct": int((counts > 0).sum()), "entropy_bits": float(-(p * p.log2()).sum())}


def code_usage(ids: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Distinct ids and the entropy (bits per token) of their histogram, for int ids of any shape."""
    return usage_of_counts(torch.bincount(ids.reshape(-1).long(), minlength=codebook_size))


def group_code_usage(counts: torch.Tensor) -> list[dict[str, float]]:
    """Per latent group (frames 1-4, 5-8, ... of a block): distinct ids and entropy (bits per token) of
    ``counts [G,codebook]``, the ids counted since the last checkpoint. A group whose tokens collapse to a
    handful of codes (and decodes by copying the reference) shows here first."""
    return [{"distinct": u["distinct"], "entropy_bits": round(u["entropy_bits"], 3)}
            for u in map(usage_of_counts, counts)]


def encoder_flow_error(measured: torch.Tensor, flow: torch.Tensor, trusted: torch.Tensor,
                       reaches: tuple[float, ...]) -> torch.Tensor:
    """Mean L1 (pixels, x + y) of the encoder's measured motion ``[B,S,2,T,H/8,W/8]`` (S scales) against the
    teacher ``flow [B,2,T,H,W]`` averaged over 8x8 blocks, on blocks ``trusted [B,1,T,H,W]`` (0/1) enough.

    Each scale's target is clamped to the displacement it can express, ``reaches`` (pixels, one per scale:
    :func:`~reftok_deploy.model.reftok.measured_reaches`)."""
    target, weight = block_targets(flow, trusted, flow.shape[-2] // measured.shape[-2])
    scales = measured.shape[1]
    if len(reaches) != scales:
        raise ValueError(f"{scales} measured scales but {len(reaches)} reaches")
    return sum(block_error(measured[:, s], target, weight, float(reaches[s])) for s in range(scales)) / scales


def log_line(run: Path, record: dict) -> None:
    """Append one JSON line to ``run/train_log.jsonl`` (progress a user can plot or tail)."""
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "train_log.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


# Peak bytes of one training step per pixel of crop per clip (forward + backward, float32), measured with
# ru_maxrss at batch 2-4, crops 128-256: tiny 6.3-6.7 KB, small 9.2 KB, base 13.8 KB; rounded up.
TRAIN_BYTES_PER_PIXEL = {"tiny": 7_000, "small": 10_000, "base": 15_000}


def device_memory_bytes(device: str) -> int:
    """Memory a training step can use: the GPU's for a CUDA device, else the machine's physical memory."""
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        if index >= torch.cuda.device_count():
            raise ReftokError(f"--device {device}: PyTorch sees {torch.cuda.device_count()} CUDA GPU(s)")
        return torch.cuda.get_device_properties(index).total_memory
    return physical_memory_bytes()


def check_training_memory(preset: str, batch: int, crop: int, device: str) -> None:
    """Refuse (one line) a --batch x --crop whose estimated peak memory exceeds the device's, before any
    work: a huge batch otherwise hangs the machine allocating."""
    need = batch * crop * crop * TRAIN_BYTES_PER_PIXEL.get(preset, max(TRAIN_BYTES_PER_PIXEL.values()))
    have = device_memory_bytes(device)
    if need > have:
        raise ReftokError(f"--batch {batch} at --crop {crop} needs about {need / 1e9:.0f} GB for one {preset} training "
                          f"step; {device} has {have / 1e9:.0f} GB: lower --batch or --crop")


def train(cfg: RefTokConfig, data: list[str], run: str | Path, recipe: Recipe, resume: bool = False,
          threads: int | None = None, progress: bool = True, init_from: str | Path | None = None,
          device: str = "cpu", workers: int = 0, search_weights: str | Path | None = None) -> Path:
    """Train ``cfg`` on the videos/stills under ``data``; returns the checkpoint folder.

    ``init_from``: a checkpoint whose weights a fresh run starts from (see :mod:`reftok_deploy.model.warm_start`);
    ignored when resuming, where the run's own state wins. ``device``: 'cpu' or a CUDA device;
    ``workers``: data processes (see :func:`reftok_deploy.model.data.batch_stream`); ``search_weights``: a trained
    motion search (:func:`reftok_deploy.model.warm_start.load_search_weights`) a fresh run starts from.
    """
    if recipe.loss not in LOSSES:
        raise ReftokError(f"unknown loss {recipe.loss!r}; choose one of {sorted(LOSSES)}")
    if recipe.autocast is not None and recipe.autocast not in AUTOCAST_DTYPES:
        raise ReftokError(f"unknown autocast {recipe.autocast!r}; choose one of {sorted(AUTOCAST_DTYPES)}")
    if recipe.autocast == "bf16" and device.startswith("cuda") and torch.cuda.is_available() \
            and not torch.cuda.is_bf16_supported():
        raise ReftokError(f"--autocast bf16: {torch.cuda.get_device_name(device)} has no bfloat16; train without it")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ReftokError(f"--device {device} asked for, but PyTorch sees no CUDA GPU")
    try:
        torch.device(device)
    except RuntimeError:
        raise ReftokError(f"unknown --device {device!r}; use cpu, cuda or cuda:N") from None
    if recipe.freeze_decoder and not resume and init_from is None:
        raise ReftokError("--freeze-decoder keeps the decoder of --init-from: name the checkpoint to start from")
    run = Path(run)
    check_writable_folder(run)  # before loading data or training a single step
    if threads:
        torch.set_num_threads(threads)
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    source = None if resume or init_from is None else load_source_weights(init_from)  # a bad one fails before the data
    videos, images = list_media(data) if data else ([], [])
    sampler = TrainingSampler(videos, images, cfg.block_frames, recipe.crop, recipe.seed,
                              use_builtin_stills=recipe.builtin_stills)
    model = RefTok(cfg)
    trained = model.encoder_side_parameters() if recipe.freeze_decoder else list(model.parameters())
    model.requires_grad_(False)
    for parameter in trained:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(trained, lr=recipe.lr, weight_decay=0.0)
    step = 0
    if resume and (run / STATE).is_file():
        loaded, config = load_checkpoint(run / "checkpoint")
        if loaded.cfg != cfg:
            raise ReftokError(f"{run} holds a different model config; resume with the same --preset, --no-reference, --model-version and --group-context/--no-group-context")
        saved_recipe = config.get("training", {}).get("recipe", {})
        if saved_recipe.get("autocast") != recipe.autocast:
            raise ReftokError(f"{run} was trained with --autocast {saved_recipe.get('autocast') or 'off (float32)'}: "
                              "resume with the same setting")
        if bool(saved_recipe.get("freeze_decoder")) != recipe.freeze_decoder:
            raise ReftokError(f"{run} was trained {'with' if saved_recipe.get('freeze_decoder') else 'without'} "
                              "--freeze-decoder: resume with the same setting")
        model.load_state_dict(loaded.state_dict())
        step = _load_state(run, optimizer, sampler)
        saved = config.get("training", {}).get("step")
        if saved != step:
            raise ReftokError(f"{run}: its checkpoint is at step {saved} but its resume state at step {step} "
                              "(interrupted between the two saves): resuming would mix them; restart the run, or "
                              "start a new one with --init-from on its checkpoint")
        elapsed = float(config.get("training", {}).get("wall_seconds", 0.0))
        recipe = replace(recipe, init_from=config.get("training", {}).get("recipe", {}).get("init_from"))
    else:
        elapsed = 0.0
        if source is not None:
            source_config, source_state = source
            if source_config.get("model_version") == 1:
                model.load_state_dict(upgrade_v1_state(source_config, source_state, model))
            else:
                source, _ = load_checkpoint(init_from)
                model.load_state_dict(warm_start_state(source, model))
            recipe = replace(recipe, init_from=f"{Path(init_from).name} (model version {source_config.get('model_version')}) "
                                              f"sha256:{sha256_file(Path(init_from) / WEIGHTS)}")
        if search_weights is not None:
            digest = load_search_weights(model, search_weights)
            recipe = replace(recipe, search_weights=f"{Path(search_weights).name} sha256:{digest}")
        if recipe.search_share:
            hand_motion_to_search(model, recipe.search_share)
    model.to(device).train()
    for state in optimizer.state.values():  # moments restored on the CPU follow the model
        for key, value in state.items():
            if torch.is_tensor(value) and key != "step":
                state[key] = value.to(device)
    training = {
        "recipe": asdict(recipe),
        "data": [p.name for p in videos + images] + (["skimage.data stills"] if recipe.builtin_stills else []),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "data_workers": workers,
    }
    started = time.perf_counter()
    running = None
    stream = batch_stream(sampler, recipe.batch, workers, recipe.seed, step)
    first = next(stream)  # bad data fails here, before a progress bar is drawn
    batches = itertools.chain([first], stream)
    bar = tqdm(total=recipe.steps, initial=step, desc="training " + ("RefTok" if cfg.reference else "twin"),
               unit="step", disable=None if progress else True, dynamic_ncols=True)  # terminals only
    saved_step = step if resume else None

    def diverged(what: str, value: float) -> None:
        """Stop with one line, before the step could reach the weights or a checkpoint."""
        bar.close()
        stream.close()
        kept = f"the checkpoint of step {saved_step} is kept" if saved_step else "no checkpoint was written"
        raise ReftokError(f"training diverged: the {what} is {value} at step {step + 1}; {kept}; lower --lr or "
                          "check the data")
    stop_at = recipe.steps
    group_counts = torch.zeros(cfg.block_frames // cfg.temporal_factor, model.fsq.codebook_size, dtype=torch.long)
    autocast = torch.autocast(torch.device(device).type, dtype=AUTOCAST_DTYPES.get(recipe.autocast, torch.float32),
                              enabled=recipe.autocast is not None)
    max_seconds = None if recipe.max_minutes is None else 60.0 * recipe.max_minutes
    while step < stop_at:
        reference, frames, flow = (t.to(device, non_blocking=True) for t in next(batches))
        time_fraction = 0.0 if max_seconds is None else (time.perf_counter() - started) / max_seconds
        lr = learning_rate(recipe, step, time_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if cfg.reference and recipe.reference_dropout > 0:
            keep = (torch.rand(reference.shape[0]) >= recipe.reference_dropout).to(device)
            reference = reference * keep.view(-1, 1, 1, 1).to(reference.dtype)
        with autocast:
            parts, ids, latent = model(reference, frames)
        # Losses in float32 (a bf16 difference of nearly equal frames would be mostly rounding).
        recon = parts["frames"].float()
        # Keep latents out of tanh saturation: a saturated encoder emits one constant token and
        # gets no gradient back (seen here: version 1 collapsed to a single id and copied the reference).
        saturation = F.relu(latent.float().abs() - 2.0).pow(2).mean()
        loss = LOSSES[recipe.loss](recon, frames) + recipe.latent_penalty * saturation
        motion_error = measured_error = float("nan")
        if "motion" in parts:
            trusted = teacher_mask(reference, frames, flow)
            flow_l1 = ((parts["motion"].float() - flow).abs().sum(1, keepdim=True) * trusted).sum() / trusted.sum().clamp(min=1.0)
            loss = loss + recipe.flow_weight * flow_l1 + recipe.gate_penalty * parts["gate"].float().mean()
            motion_error = flow_l1.item()
            with torch.set_grad_enabled(recipe.encoder_flow_weight > 0):
                measured = encoder_flow_error(parts["measured_motion"], flow, trusted, measured_reaches(cfg))
            loss = loss + recipe.encoder_flow_weight * measured if recipe.encoder_flow_weight > 0 else loss
            measured_error = measured.item()
        if not torch.isfinite(loss):
            diverged("loss", loss.item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trained, 1.0)
        if not torch.isfinite(grad_norm):  # a finite loss can still have nan/inf gradients: never step on them
            diverged("gradient", grad_norm.item())
        optimizer.step()
        step += 1
        with torch.no_grad():
            mse = F.mse_loss(recon.clamp(-1, 1), frames).item()
        psnr = 10 * math.log10(4.0 / max(mse, 1e-10))
        running = psnr if running is None else 0.98 * running + 0.02 * psnr
        usage = code_usage(ids, model.fsq.codebook_size)
        for g in range(group_counts.shape[0]):
            group_counts[g] += torch.bincount(ids[:, g].reshape(-1).long().cpu(), minlength=model.fsq.codebook_size)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{running:.2f}", codes=usage["distinct"],
                        bits=f"{usage['entropy_bits']:.2f}", epe=f"{motion_error:.2f}")
        if time_fraction >= 1.0:
            stop_at = step  # time budget spent: checkpoint now and stop
            training["stopped_by"] = "max_minutes"
        at_checkpoint = step % recipe.checkpoint_every == 0 or step == stop_at
        per_group = None
        if at_checkpoint:
            per_group = group_code_usage(group_counts)
            group_counts.zero_()
        if step % 50 == 0 or at_checkpoint:
            record = {"step": step, "loss": round(loss.item(), 5), "psnr_running": round(running, 3),
                      "codes": usage["distinct"], "entropy_bits": round(usage["entropy_bits"], 3),
                      "motion_epe_px": None if math.isnan(motion_error) else round(motion_error, 3),
                      "measured_motion_epe_px": None if math.isnan(measured_error) else round(measured_error, 3), "lr": lr}
            log_line(run, record if per_group is None else {**record, "checkpoint": True, "codes_per_group": per_group})
        if at_checkpoint:
            training.update(step=step, wall_seconds=round(elapsed + time.perf_counter() - started, 1),
                            train_psnr_running=round(running, 3), codes_used_last_batch=usage["distinct"],
                            entropy_bits_last_batch=round(usage["entropy_bits"], 3),
                            codes_per_group_since_last_checkpoint=per_group)
            # State first, checkpoint (its config last) second: a crash between them leaves a
            # checkpoint older than the state, which resume detects by their steps.
            _save_state(run, step, optimizer, sampler)
            save_checkpoint(model, run / "checkpoint", training=training)
            saved_step = step
    stream.close()
    bar.close()
    return run / "checkpoint"
