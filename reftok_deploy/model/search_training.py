"""Train version 3's motion search (:mod:`reftok_deploy.model.motion_search`) on its own, against the teacher flow.

The search is a matcher, not a coder: its only target is where each 8x8 block finds its content in the
reference, so it trains on the teacher flow alone, in minutes on a CPU, before the tokenizer that reads it
(``reftok-train --motion-search --search-weights``, :func:`reftok_deploy.model.warm_start.load_search_weights`). A run folder holds ``search.safetensors`` (the search's
weights, saved whole every ``checkpoint_every`` steps and at the end) and ``search_log.jsonl``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.files import check_writable_folder
from reftok_deploy.base.video import list_media
from reftok_deploy.model.checkpoint import atomic_save_tensors
from reftok_deploy.model.data import TrainingSampler, batch_stream
from reftok_deploy.model.motion_search import (COARSE_CELL, COARSE_RADIUS, FINE_CELL, FINE_RADIUS, SEARCH_CHANNELS,
                                               SEARCH_REACH_PX, MotionSearch)
from reftok_deploy.model.teacher import block_error, block_targets, teacher_mask
from reftok_deploy.model.training import learning_rate
from reftok_deploy.model.warm_start import SEARCH_PREFIX

SEARCH_FILE = "search.safetensors"
SEARCH_LOG = "search_log.jsonl"
# Weights of the three outputs in the loss: the coarse match (its own target, so it learns to find large motion
# early), the match refined at 1/4, and the final motion after the Lucas-Kanade steps.
OUTPUT_WEIGHTS = (0.5, 0.5, 1.0)
LR_FLOOR = 0.02  # the learning rate decays to this share of its peak


@dataclass
class SearchRecipe:
    steps: int = 6000
    batch: int = 8
    crop: int = 128
    lr: float = 1e-3
    warmup: int = 100
    seed: int = 0
    checkpoint_every: int = 500
    max_minutes: float | None = None
    block_frames: int = 8


def search_loss(search: MotionSearch, reference: torch.Tensor, frames: torch.Tensor, flow: torch.Tensor
                ) -> tuple[torch.Tensor, list[float]]:
    """(weighted loss, per-output errors in px) of the search on a batch: reference ``[B,3,S,S]``, frames
    ``[B,3,T,S,S]`` in [-1,1], teacher ``flow [B,2,T,S,S]`` px; each output against the teacher's 8x8 block means
    on trusted blocks, clamped to what that output can reach."""
    b, _, t, h, w = frames.shape
    target, weight = block_targets(flow, teacher_mask(reference, frames, flow), COARSE_CELL)
    per_frame = frames.transpose(1, 2).reshape(b * t, 3, h, w)
    outputs = search(reference, per_frame, b)
    reaches = (COARSE_RADIUS * COARSE_CELL, COARSE_RADIUS * COARSE_CELL + FINE_RADIUS * FINE_CELL, SEARCH_REACH_PX)
    errors = [block_error(motion.reshape(b, t, 2, h // 8, w // 8).transpose(1, 2), target, weight, float(reach))
              for motion, reach in zip(outputs, reaches)]
    return sum(k * e for k, e in zip(OUTPUT_WEIGHTS, errors)), [e.item() for e in errors]


def save_search(search: MotionSearch, path: Path, record: dict) -> None:
    """The search's weights (as named inside a RefTok: ``motion_search.*``) and its training record."""
    tensors = {SEARCH_PREFIX + k: v for k, v in search.state_dict().items()}
    atomic_save_tensors(tensors, path, {"training": json.dumps(record), "channels": str(SEARCH_CHANNELS)})


def train_search(data: list[str], run: str | Path, recipe: SearchRecipe, threads: int | None = None,
                 progress: bool = True) -> Path:
    """Train a fresh search on the videos/stills under ``data`` (teacher: DIS flow on video, true flow on the
    synthetic clips); returns the path of ``search.safetensors``."""
    run = Path(run)
    check_writable_folder(run)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(recipe.seed)
    videos, images = list_media(data) if data else ([], [])
    sampler = TrainingSampler(videos, images, recipe.block_frames, recipe.crop, recipe.seed)
    search = MotionSearch(SEARCH_CHANNELS).train()
    optimizer = torch.optim.AdamW(search.parameters(), lr=recipe.lr, weight_decay=0.0)
    record = {"recipe": asdict(recipe), "data": [p.name for p in videos + images] + ["skimage.data stills"],
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    budget = None if recipe.max_minutes is None else recipe.max_minutes * 60
    started, step, stream = time.perf_counter(), 0, batch_stream(sampler, recipe.batch)
    bar = tqdm(total=recipe.steps, desc="training the motion search", unit="step", disable=None if progress else True)
    run.mkdir(parents=True, exist_ok=True)
    with open(run / SEARCH_LOG, "a", encoding="utf-8") as log:
        while step < recipe.steps:
            elapsed = time.perf_counter() - started
            if budget is not None and elapsed >= budget:
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(recipe, step, 0.0 if budget is None else elapsed / budget, LR_FLOOR)
            loss, errors = search_loss(search, *next(stream))
            if not math.isfinite(loss.item()):
                raise ReftokError(f"the motion search's loss is {loss.item()} at step {step + 1}: stopped before it "
                                  "reached the weights; lower --lr")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            bar.update()
            if step % 50 == 0:
                log.write(json.dumps({"step": step, "seconds": round(elapsed, 1), "coarse_px": round(errors[0], 3),
                                      "matched_px": round(errors[1], 3), "refined_px": round(errors[2], 3)}) + "\n")
                log.flush()
            if step % recipe.checkpoint_every == 0:
                save_search(search, run / SEARCH_FILE, {**record, "step": step})
    bar.close()
    save_search(search, run / SEARCH_FILE, {**record, "step": step,
                                            "wall_seconds": round(time.perf_counter() - started, 1)})
    return run / SEARCH_FILE
