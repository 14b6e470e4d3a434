"""The encoder-flow teacher: the encoder's measured motion (its cost volumes' soft-argmax) against block flow."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from reftok_deploy.base.spec import frames_to_tensor_range
from reftok_deploy.model.reftok import PRESETS, RefTok, measured_reaches
from reftok_deploy.model.training import encoder_flow_error


V2_REACHES = measured_reaches(PRESETS["tiny"])  # the 1/4 and 1/8 cost volumes: 12 and 32 px


def block_flow_field(vectors: torch.Tensor, cell: int = 8) -> torch.Tensor:
    """Per-block vectors ``[B,2,T,h,w]`` -> the per-pixel flow ``[B,2,T,h*cell,w*cell]`` they are the means of."""
    return vectors.repeat_interleave(cell, -2).repeat_interleave(cell, -1)


def test_the_error_is_zero_on_the_block_means_and_counts_pixels_per_scale():
    torch.manual_seed(0)
    blocks = torch.randn(1, 2, 4, 3, 3) * 3
    flow = block_flow_field(blocks)
    trusted = torch.ones(1, 1, 4, 24, 24)
    exact = blocks[:, None].repeat(1, 2, 1, 1, 1, 1)  # [B,S,2,T,h,w]
    assert encoder_flow_error(exact, flow, trusted, V2_REACHES).item() == pytest.approx(0.0, abs=1e-5)
    off = exact.clone()
    off[:, 0, 0] += 1.0  # 1 px too far right at 1/4, right at 1/8: the mean of the scales is 0.5
    assert encoder_flow_error(off, flow, trusted, V2_REACHES).item() == pytest.approx(0.5, abs=1e-5)


def test_untrusted_blocks_are_ignored_and_targets_clamped_to_each_scales_reach():
    flow = block_flow_field(torch.zeros(1, 2, 4, 2, 2))
    flow[:, 0, :, :8, :8] = 40.0  # the top-left block moves further than either cost volume reaches
    measured = torch.zeros(1, 2, 2, 4, 2, 2)
    measured[:, 0, 0, :, 0, 0] = 12.0  # radius 3 x 4 px
    measured[:, 1, 0, :, 0, 0] = 32.0  # radius 4 x 8 px
    trusted = torch.ones(1, 1, 4, 16, 16)
    assert encoder_flow_error(measured, flow, trusted, V2_REACHES).item() == pytest.approx(0.0, abs=1e-6)
    measured[:, :, 1, :, 1, 1] = 5.0  # wrong on the bottom-right block ...
    trusted[..., 8:, 8:] = 0.0  # ... which the teacher does not explain
    assert encoder_flow_error(measured, flow, trusted, V2_REACHES).item() == pytest.approx(0.0, abs=1e-6)
    trusted[..., 8:, 8:] = 1.0
    assert encoder_flow_error(measured, flow, trusted, V2_REACHES).item() == pytest.approx(5.0 / 4, abs=1e-5)


def test_each_measurement_is_clamped_to_its_own_reach():
    tiny = PRESETS["tiny"]
    assert V2_REACHES == (12.0, 32.0)
    assert measured_reaches(tiny.version3(motion_search=True)) == (12.0, 32.0, 44.0)
    # the block refinement starts at the 1/4 soft-argmax (12 px) and moves 1 px per Lucas-Kanade step (3 steps)
    assert measured_reaches(tiny.version3(block_refinement=True)) == (12.0, 32.0, 15.0)
    assert measured_reaches(dataclasses.replace(tiny, reference=False)) == ()
    flow = block_flow_field(torch.full((1, 2, 4, 1, 1), 30.0))
    measured = torch.full((1, 3, 2, 4, 1, 1), 15.0)
    measured[:, :2] = torch.tensor([12.0, 30.0]).view(1, 2, 1, 1, 1, 1)
    refined = measured_reaches(tiny.version3(block_refinement=True))
    assert encoder_flow_error(measured, flow, torch.ones(1, 1, 4, 8, 8), refined).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="3 measured scales but 2 reaches"):
        encoder_flow_error(measured, flow, torch.ones(1, 1, 4, 8, 8), V2_REACHES)


def test_the_training_pass_exposes_the_measured_motion_and_the_twin_has_none(tiny_model, real_clip):
    clip = torch.from_numpy(frames_to_tensor_range(real_clip[:9]))
    reference, frames = clip[:1], clip[1:].permute(1, 0, 2, 3)[None]
    parts, _, _ = tiny_model(reference, frames)
    assert parts["measured_motion"].shape == (1, 2, 2, 8, 8, 8)
    assert parts["measured_motion"][:, 0].abs().max() <= 12.0 + 1e-4  # soft-argmax stays inside the radius
    torch.manual_seed(0)
    twin_parts, _, _ = RefTok(PRESETS["tiny"].twin()).eval()(reference, frames)
    assert "measured_motion" not in twin_parts


def test_the_teacher_trains_the_encoders_motion_features():
    """A pan of 4 px per frame: a few steps of the teacher alone move the soft-argmax toward it."""
    rng = np.random.default_rng(0)
    texture = (rng.random((40, 40, 3)) * 255).astype(np.uint8).repeat(2, 0).repeat(2, 1)  # 80x80, 2-px cells
    shots = np.stack([texture[8:72, 8 - 2 * k : 72 - 2 * k] for k in range(5)])  # frame k = reference moved 2k px right
    clip = torch.from_numpy(frames_to_tensor_range(shots))
    reference, frames = clip[:1], clip[1:].permute(1, 0, 2, 3)[None]
    flow = torch.zeros(1, 2, 4, 64, 64)
    flow[:, 0] = torch.tensor([-2.0, -4.0, -6.0, -8.0]).view(4, 1, 1)  # each frame samples the reference to its left
    trusted = torch.ones(1, 1, 4, 64, 64)
    torch.manual_seed(0)
    model = RefTok(dataclasses.replace(PRESETS["tiny"], block_frames=4)).train()
    optimizer = torch.optim.Adam(model.motion_features.parameters(), lr=5e-3)
    errors = []
    for _ in range(20):
        parts, _, _ = model(reference, frames)
        loss = encoder_flow_error(parts["measured_motion"], flow, trusted, measured_reaches(model.cfg))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        errors.append(loss.item())
    assert min(errors[-3:]) < 0.5 * errors[0], errors
