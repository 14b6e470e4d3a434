"""Warm start from another checkpoint, with FSQ dimensions appended."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.model.reftok import PRESETS, RefTok
from reftok_deploy.model.warm_start import upgrade_v1_state, warm_start_state


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
    assert torch.allclose(target.decode(ref, tokens), expected, atol=1e-5)
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


def version1_state(model: RefTok) -> tuple[dict, dict[str, torch.Tensor]]:
    """A version-1 config and state of the same preset: no motion/gate/cost-volume tensors, and the
    convs that gained inputs in version 2 at their version-1 widths."""
    grown = {"encoder.s2.0.weight": 128, "encoder.s3.0.weight": 192, "decoder.s1.0.weight": 64}
    state = {}
    for name, value in model.state_dict().items():
        if name.startswith(("motion_features.", "squeeze", "decoder.to_motion", "decoder.to_gate")):
            continue
        state[name] = value[:, : grown[name]].clone() if name in grown else value.clone()
    config = {k: v for k, v in model.cfg.to_dict().items() if k != "motion_channels"}
    return dict(config, model_version=1, motion_warp=False), state


def test_version1_weights_seed_version2(tiny_model):
    config, state = version1_state(tiny_model)
    torch.manual_seed(5)
    target = RefTok(PRESETS["tiny"])
    upgraded = upgrade_v1_state(config, state, target)
    assert torch.equal(upgraded["decoder.to_pixels.0.weight"], state["decoder.to_pixels.0.weight"])
    for name, old_inputs in (("encoder.s2.0.weight", 128), ("decoder.s1.0.weight", 64)):
        assert torch.equal(upgraded[name][:, :old_inputs], state[name])
        assert not upgraded[name][:, old_inputs:].any()  # new inputs (cost volumes, warped reference) start ignored
    # Tensors version 1 did not have keep their fresh initialisation.
    assert torch.equal(upgraded["decoder.to_gate.0.bias"], target.state_dict()["decoder.to_gate.0.bias"])
    target.load_state_dict(upgraded)
    with pytest.raises(ReftokError, match="channels"):
        upgrade_v1_state(dict(config, channels=[8, 8, 8]), state, target)


@pytest.mark.parametrize("levels", [None, (8, 5, 5, 5, 8)])
def test_group_context_starts_out_coding_like_its_source(levels):
    """A checkpoint without the group context seeds one with it (and, at once, wider FSQ levels):
    the context's weights start at zero, so tokens and decoded frames are the source's."""
    torch.manual_seed(0)
    source = RefTok(dataclasses.replace(PRESETS["tiny"], group_context=False))
    for p in (*source.decoder.to_pixels.parameters(), *source.decoder.to_motion.parameters()):
        torch.nn.init.normal_(p, std=0.05)
    source.eval()
    cfg = dataclasses.replace(source.cfg, group_context=True, fsq_levels=levels or source.cfg.fsq_levels)
    target = RefTok(cfg)
    target.load_state_dict(warm_start_state(source, target))
    target.eval()
    ref = torch.rand(2, 3, 32, 48) * 2 - 1
    frames = torch.rand(2, 3, 8, 32, 48) * 2 - 1
    with torch.no_grad():
        ids = target.encode(ref, frames)
        assert torch.equal(ids % source.fsq.codebook_size, source.encode(ref, frames))
        tokens = torch.randint(0, target.fsq.codebook_size, (2, 2, 4, 6), dtype=torch.int32)
        expected = source.decode(ref, tokens % source.fsq.codebook_size)
        # Equal up to float rounding: the zero context weights join the codes' conv, which sums in another order.
        assert torch.allclose(target.decode(ref, tokens), expected, atol=5e-5)
    with pytest.raises(ReftokError, match="group context"):
        warm_start_state(target, RefTok(dataclasses.replace(cfg, group_context=False)))
