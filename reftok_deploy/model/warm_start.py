"""Start a training run from another checkpoint's weights, optionally with a wider FSQ codebook.

Widening appends FSQ dimensions after the source's (``(8,5,5,5)`` -> ``(8,5,5,5,8,8)``).
Because ids are packed with the first level as the fastest digit, the source's id
is the new id modulo the source's codebook size. The decoder's weights for the new
code channels start at zero, so the widened model decodes exactly like the source
until training teaches it to use the extra dimensions.

A version-1 checkpoint can seed a version-2 model of the same preset (:func:`upgrade_v1_state`):
every tensor of the same name and shape is copied; the convs that gained inputs in version 2
(cost volumes in the encoder, the warped reference in the decoder; always appended after the
version-1 inputs) keep their version-1 weights for the old inputs and start at zero for the new ones.
Everything new (motion features, cost-volume squeezes, motion and gate heads) keeps its fresh init.

A version-2 checkpoint without the group context can seed one with it: the three convs that read the
neighbouring groups (the encoder's latent head, the decoder's first conv and its motion head; the
context is always appended last) keep their weights for the old inputs and start at zero for the
context, so the new model starts out coding and decoding exactly like its source.

A version-2 checkpoint can seed a version-3 model (the same preset with ``aligned_reference`` and/or
``motion_search`` or ``block_refinement``): the two decoder convs that read the aligned reference features, and the encoder's latent
head that reads the searched motion (each appended after the version-2 inputs), keep their weights for the old
inputs and start at zero for the new ones; the version-3 model starts out coding and decoding exactly like its
source. The motion search's own weights keep their fresh init, or come from a search trained on its own
(:func:`load_search_weights`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from reftok_deploy.base.spec import MODEL_VERSIONS
from reftok_deploy.base.errors import ReftokError
from reftok_deploy.model.motion_search import MotionSearch
from reftok_deploy.model.reftok import RefTok, RefTokConfig, measured_scales

# Decoder convs version 3 gives the aligned reference features (appended after every version-2 input).
_ALIGNED_INPUTS = ("decoder.s2.0.weight", "decoder.s1.0.weight")
# Tensors whose output channels are the FSQ dimensions D.
_ENCODER_HEAD = ("encoder.to_latent.weight", "encoder.to_latent.bias")
# New encoder outputs start smaller than a fresh head's (which is scaled x10 for a cold start):
# the warm decoder ignores them at first, so they only need to sit inside tanh's linear range.
_NEW_LATENT_SCALE = 0.3


def _input_segments(name: str, cfg: RefTokConfig) -> list[tuple[str, int]] | None:
    """The named blocks of input channels of a conv whose inputs depend on D or on the group
    context, in order (see :class:`reftok_deploy.model.reftok.BlockDecoder`); None for any other tensor."""
    d = len(cfg.fsq_levels)
    if name == "encoder.to_latent.weight":
        head = cfg.channels[2] + 2 * measured_scales(cfg) * cfg.temporal_factor
        first = [("features", head)]
        side = head
    elif name == "decoder.s3.0.weight":
        first = [("codes", d)] + ([("reference", cfg.channels[2])] if cfg.reference else [])
        side = d
    elif name == "decoder.to_motion.weight":
        first = [("features", cfg.channels[2]), ("codes", d)]
        side = d
    else:
        return None
    context = [("previous", side), ("previous flag", 1), ("next", side), ("next flag", 1)]
    return first + (context if cfg.group_context else [])


def _regroup_inputs(value: torch.Tensor, source: list[tuple[str, int]], target: list[tuple[str, int]]) -> torch.Tensor:
    """Conv weight ``[out,in,k,k]`` laid out by ``source`` segments -> laid out by ``target``'s:
    each block keeps its weights for the channels both have, and new channels start at zero."""
    offsets, at = {}, 0
    for key, size in source:
        offsets[key] = (at, size)
        at += size
    out = value.new_zeros(value.shape[0], sum(size for _, size in target), *value.shape[2:])
    at = 0
    for key, size in target:
        if key in offsets:
            start, have = offsets[key]
            keep = min(size, have)
            out[:, at: at + keep] = value[:, start: start + keep]
        at += size
    return out


def warm_start_state(source: RefTok, target: RefTok) -> dict[str, torch.Tensor]:
    """State dict for ``target`` holding ``source``'s weights.

    ``target.cfg`` may differ from ``source.cfg`` by extra FSQ levels appended after the source's,
    by the group context switched on and by version 3's aligned reference features (version 2 -> 3);
    anything else is a :class:`ReftokError`. New inputs start at zero: the target decodes as its source.
    """
    src_levels, dst_levels = source.cfg.fsq_levels, target.cfg.fsq_levels
    if dst_levels[: len(src_levels)] != src_levels:
        raise ReftokError(f"--init-from checkpoint has FSQ levels {list(src_levels)}; the new levels "
                          f"{list(dst_levels)} must start with them")
    if source.cfg.group_context and not target.cfg.group_context:
        raise ReftokError("--init-from checkpoint uses the group context; the model being trained does not")
    if source.cfg.aligned_reference and not target.cfg.aligned_reference:
        raise ReftokError("--init-from checkpoint is model version 3 (aligned reference features); the model being "
                          "trained is version 2")
    for key, what in (("motion_search", "the motion search"), ("block_refinement", "the block refinement")):
        if getattr(source.cfg, key) and not getattr(target.cfg, key):
            raise ReftokError(f"--init-from checkpoint is model version 3 with {what}; the model being trained "
                              "has none")
    src_cfg, dst_cfg = source.cfg.to_dict(), target.cfg.to_dict()
    for key in ("fsq_levels", "group_context", "aligned_reference", "motion_search", "block_refinement",
                "model_version"):
        src_cfg.pop(key), dst_cfg.pop(key)
    if src_cfg != dst_cfg:
        differ = sorted(k for k in dst_cfg if src_cfg.get(k) != dst_cfg[k])
        raise ReftokError(f"--init-from checkpoint differs from the model being trained in {differ}")
    d_src = len(src_levels)
    state = target.state_dict()
    for name, value in source.state_dict().items():
        fresh = state[name]
        segments = _input_segments(name, source.cfg)
        if segments is not None:
            value = _regroup_inputs(value, segments, _input_segments(name, target.cfg))
        if name in _ALIGNED_INPUTS and value.shape[1] < fresh.shape[1] and value.shape[2:] == fresh.shape[2:]:
            grown = torch.zeros_like(fresh)
            grown[:, : value.shape[1]] = value
            value = grown
        if name in _ENCODER_HEAD:
            fresh = fresh.clone()
            fresh[d_src:] *= _NEW_LATENT_SCALE
            fresh[:d_src] = value
            state[name] = fresh
        elif value.shape == fresh.shape:
            state[name] = value.clone()
        else:  # a new shape-dependent tensor the mapping above does not know: refuse, never guess
            raise ReftokError(f"cannot warm-start tensor {name}: {tuple(value.shape)} -> {tuple(fresh.shape)}")
    return state


# Config fields a version-1 source must share with the version-2 target.
_V1_SHARED = ("channels", "res_blocks", "fsq_levels", "temporal_factor", "block_frames", "reference")


def upgrade_v1_state(source_config: dict, source_state: dict[str, torch.Tensor], target: RefTok) -> dict[str, torch.Tensor]:
    """State dict for a version-2 or -3 ``target`` seeded from version-1 weights (see the module docstring)."""
    differ = [k for k in _V1_SHARED if source_config.get(k) != target.cfg.to_dict()[k]]
    if differ:
        raise ReftokError(f"--init-from version-1 checkpoint differs from the model being trained in {differ}")
    state = target.state_dict()
    for name, value in source_state.items():
        fresh = state.get(name)
        if fresh is None:
            continue  # a version-1 option (its motion-warp head) that version 2 replaced
        if value.shape == fresh.shape:
            state[name] = value.clone()
        elif value.dim() == 4 and value.shape[0] == fresh.shape[0] and value.shape[1] < fresh.shape[1]:
            grown = torch.zeros_like(fresh)
            grown[:, : value.shape[1]] = value
            state[name] = grown
        else:
            raise ReftokError(f"cannot warm-start tensor {name}: {tuple(value.shape)} -> {tuple(fresh.shape)}")
    return state


def load_source_weights(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(model config dict, weights) of a checkpoint of model version 1, 2 or 3, hash-checked, for warm starts."""
    from safetensors.torch import load_file

    from reftok_deploy.model.checkpoint import CONFIG, FORMAT, MAX_CONFIG_BYTES, WEIGHTS
    from reftok_deploy.base.files import read_json_object, sha256_file

    folder = Path(folder)
    if not folder.exists():
        raise ReftokError(f"--init-from: checkpoint not found: {folder}")
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise ReftokError(f"--init-from {folder}: not a checkpoint folder ({CONFIG} + {WEIGHTS})")
    config = read_json_object(folder / CONFIG, MAX_CONFIG_BYTES, FORMAT, "RefTok checkpoint config")
    model = config.get("model")
    if not isinstance(model, dict) or model.get("model_version") not in (1, *MODEL_VERSIONS):
        raise ReftokError(f"--init-from {folder}: model version must be one of {', '.join(map(str, (1, *MODEL_VERSIONS)))}")
    if config.get("weights_sha256") != sha256_file(folder / WEIGHTS):
        raise ReftokError(f"--init-from {folder}: weights do not match the sha256 in {CONFIG}")
    return model, load_file(str(folder / WEIGHTS))


def hand_motion_to_search(model: RefTok, share: float) -> None:
    """Move ``share`` (0 to 1) of the latent head's weights on each frame's 1/4 soft-argmax motion onto that frame's
    searched motion, in the head's own inputs and in the neighbouring groups' (version 3 with the motion search).

    Both are (x, y) in MOTION_UNIT_PX per frame, so the head reads the search, which finds motion more precisely,
    the way it learned to read the soft-argmax: a warm start that uses the search from its first step, where new
    inputs at zero wait for training to grow their weights (600 CPU steps moved them to 7 % of the soft-argmax's).
    With share 0 nothing changes."""
    if not 0.0 <= share <= 1.0:
        raise ReftokError(f"the share of motion handed to the search must be in [0, 1], got {share}")
    if measured_scales(model.cfg) < 3:
        raise ReftokError("handing motion to the search needs a model with the motion search or the block refinement "
                          "(--motion-search or --block-refinement)")
    ft, c3 = model.cfg.temporal_factor, model.cfg.channels[2]
    starts, at = {}, 0
    for key, size in _input_segments("encoder.to_latent.weight", model.cfg):
        starts[key], at = at, at + size
    blocks = [starts[key] for key in ("features", "previous", "next") if key in starts]  # own, neighbours' groups
    with torch.no_grad():
        weight = model.encoder.to_latent.weight
        for start in blocks:
            for frame in range(ft):
                soft_argmax4 = start + c3 + 4 * frame  # the frame's (x, y) at 1/4, then its (x, y) at 1/8
                searched = start + c3 + 4 * ft + 2 * frame
                weight[:, searched : searched + 2] += share * weight[:, soft_argmax4 : soft_argmax4 + 2]
                weight[:, soft_argmax4 : soft_argmax4 + 2] *= 1.0 - share


SEARCH_PREFIX = "motion_search."  # the motion search's tensors inside a RefTok state dict


def read_search_weights(search: MotionSearch, path: str | Path) -> str:
    """Put a trained search's weights (reftok-train-search's ``search.safetensors``) into ``search``; returns the
    file's sha256. Every tensor must be there with its shape: anything else is one clear error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from reftok_deploy.base.files import sha256_file

    path = Path(path)
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise ReftokError(f"--search-weights {path}: cannot read it as safetensors ({str(exc).splitlines()[0]})") from None
    expected = {SEARCH_PREFIX + k: v for k, v in search.state_dict().items()}
    if set(tensors) != set(expected) or any(tensors[k].shape != v.shape for k, v in expected.items()):
        raise ReftokError(f"--search-weights {path}: not the weights of this motion search (tensor names or shapes "
                          "differ); train one with reftok-train-search")
    search.load_state_dict({k[len(SEARCH_PREFIX):]: v for k, v in tensors.items()})
    return sha256_file(path)


def load_search_weights(model: RefTok, path: str | Path) -> str:
    """:func:`read_search_weights` into ``model``'s motion search (version 3 with ``motion_search``)."""
    if model.motion_search is None:
        raise ReftokError("--search-weights needs a model with the motion search (--motion-search)")
    return read_search_weights(model.motion_search, path)
