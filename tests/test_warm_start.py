"""Warm start from another checkpoint, with FSQ dimensions appended."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from reftok_deploy.errors import ReftokError
from reftok_deploy.model import PRESETS, RefTok
from reftok_deploy.warm_start import warm_start_state


def widened(source: RefTok, levels: tuple[int, ...]) -> RefTok:
    torch.manual_seed(1)
    target = RefTok(dataclasses.replace(source.cfg, fsq_levels=levels))
    target.load_state_dict(warm_start_state(source, target))
    return target.eval()


@pytest.mark.parametrize("reference", [True, False])
def test_widened_model_decodes_like_its_source(tiny_model, reference):
    source = tiny_model if reference else tiny_model_twin()
    target = widened(source, (*source.cfg.fsq_levels, 8, 8))
    torch.manual_seed(2)
    ref = torch.rand(2, 3, 32, 48) * 2 - 1
    tokens = torch.randint(0, target.fsq.codebook_size, (2, 2, 4, 6), dtype=torch.int32)
    # The source's id is the widened id modulo the source codebook; the new code channels start ignored.
    expected = source.decode(ref, tokens % source.fsq.codebook_size)
    assert torch.allclose(target.decode(ref, tokens), expected, atol=1e-6)
    frames = torch.rand(2, 3, 8, 32, 48) * 2 - 1
    ids = target.encode(ref, frames)
    assert torch.equal(ids % source.fsq.codebook_size, source.encode(ref, frames))
    assert ids.max() >= source.fsq.codebook_size  # the new dimensions do emit digits


def tiny_model_twin() -> RefTok:
    torch.manual_seed(0)
    model = RefTok(PRESETS["tiny"].twin())
    for p in model.decoder.to_pixels.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def test_warm_start_refuses_other_architectures(tiny_model):
    other_levels = RefTok(dataclasses.replace(tiny_model.cfg, fsq_levels=(5, 5, 5, 8, 8)))
    with pytest.raises(ReftokError, match="must start with"):
        warm_start_state(tiny_model, other_levels)
    with pytest.raises(ReftokError, match="channels"):
        warm_start_state(tiny_model, RefTok(PRESETS["small"]))
    with pytest.raises(ReftokError, match="reference"):
        warm_start_state(tiny_model, RefTok(tiny_model.cfg.twin()))
