"""Start a training run from another checkpoint's weights, optionally with a wider FSQ codebook.

Widening appends FSQ dimensions after the source's (``(8,5,5,5)`` -> ``(8,5,5,5,8,8)``).
Because ids are packed with the first level as the fastest digit, the source's id
is the new id modulo the source's codebook size. The decoder's weights for the new
code channels start at zero, so the widened model decodes exactly like the source
until training teaches it to use the extra dimensions.
"""

from __future__ import annotations

import torch

from reftok_deploy.errors import ReftokError
from reftok_deploy.model import RefTok

# Tensors whose shape depends on the number of FSQ dimensions D.
_ENCODER_HEAD = ("encoder.to_latent.weight", "encoder.to_latent.bias")  # output channels = D
_DECODER_INPUT = "decoder.s3.0.weight"  # input channels = [D codes | reference features]
# New encoder outputs start smaller than a fresh head's (which is scaled x10 for a cold start):
# the warm decoder ignores them at first, so they only need to sit inside tanh's linear range.
_NEW_LATENT_SCALE = 0.3


def warm_start_state(source: RefTok, target: RefTok) -> dict[str, torch.Tensor]:
    """State dict for ``target`` holding ``source``'s weights.

    ``target.cfg`` may differ from ``source.cfg`` only by extra FSQ levels appended after the
    source's; anything else is a :class:`ReftokError`.
    """
    src_levels, dst_levels = source.cfg.fsq_levels, target.cfg.fsq_levels
    if dst_levels[: len(src_levels)] != src_levels:
        raise ReftokError(f"--init-from checkpoint has FSQ levels {list(src_levels)}; the new levels "
                          f"{list(dst_levels)} must start with them")
    src_cfg = source.cfg.to_dict()
    dst_cfg = target.cfg.to_dict()
    src_cfg.pop("fsq_levels"), dst_cfg.pop("fsq_levels")
    if src_cfg != dst_cfg:
        differ = sorted(k for k in dst_cfg if src_cfg.get(k) != dst_cfg[k])
        raise ReftokError(f"--init-from checkpoint differs from the model being trained in {differ}")
    d_src, d_dst = len(src_levels), len(dst_levels)
    state = target.state_dict()
    for name, value in source.state_dict().items():
        fresh = state[name]
        if name in _ENCODER_HEAD:
            fresh = fresh.clone()
            fresh[d_src:] *= _NEW_LATENT_SCALE
            fresh[:d_src] = value
            state[name] = fresh
        elif name == _DECODER_INPUT:
            widened = torch.zeros_like(fresh)
            widened[:, :d_src] = value[:, :d_src]
            widened[:, d_dst:] = value[:, d_src:]
            state[name] = widened
        elif value.shape == fresh.shape:
            state[name] = value.clone()
        else:  # a new shape-dependent tensor the mapping above does not know: refuse, never guess
            raise ReftokError(f"cannot warm-start tensor {name}: {tuple(value.shape)} -> {tuple(fresh.shape)}")
    return state
