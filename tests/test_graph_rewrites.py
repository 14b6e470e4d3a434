"""The model's forward computes convs over concatenated inputs per part, unshuffles inside strided convs and the
warp's grid at 1/8 (less data movement in exported graphs): each against the plain formulation it replaces."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reftok_deploy.model.layers import CLIP, GROUP, PIXELS, conv_over_groups, unshuffled_conv
from reftok_deploy.model.matching import soft_argmax
from reftok_deploy.model.reftok import PRESETS, BlockEncoder
from reftok_deploy.model.warping import sample_per_clip, sampling_grid

B, G = 2, 3  # clips, groups per clip: group g of clip b is item b*G + g


def per_group(x: torch.Tensor) -> torch.Tensor:
    """``[B,...]`` -> ``[B*G,...]``, each clip's tensor repeated for its groups."""
    return x.repeat_interleave(G, 0)


@pytest.mark.parametrize("factor", [2, 4])
def test_unshuffled_conv_is_a_conv_over_the_unshuffled_input(factor):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 3, 32, 24), torch.randn(8, 3 * factor * factor, 3, 3), torch.randn(8)
    plain = F.conv2d(F.pixel_unshuffle(x, factor), weight, bias, padding=1)
    assert torch.allclose(unshuffled_conv(x, weight, bias, factor), plain, atol=1e-4)
    assert not torch.allclose(unshuffled_conv(x.flip(-1), weight, bias, factor), plain, atol=1e-2)


def test_conv_over_groups_is_a_conv_over_the_concatenation():
    torch.manual_seed(0)
    conv = nn.Conv2d(5 + 4 + 4 * 3 + 2, 7, 3, padding=1)
    group, clip = torch.randn(B * G, 5, 8, 10), torch.randn(B, 4, 8, 10)
    pixels, other = torch.randn(B * G, 3, 16, 20), torch.randn(B * G, 2, 8, 10)
    plain = conv(torch.cat([group, per_group(clip), F.pixel_unshuffle(pixels, 2), other], 1))
    parts = conv_over_groups(conv, [(group, GROUP, 5), (clip, CLIP, 4), (pixels, PIXELS, 3 * 4), (other, GROUP, 2)],
                             (B, G))
    assert torch.allclose(parts, plain, atol=1e-5)
    swapped = conv_over_groups(conv, [(group, GROUP, 5), (clip.flip(0), CLIP, 4), (pixels, PIXELS, 12),
                                      (other, GROUP, 2)], (B, G))
    assert not torch.allclose(swapped, plain, atol=1e-2)  # each clip's part goes to its own groups
    with pytest.raises(ValueError, match="inputs give 11 channels"):
        conv_over_groups(conv, [(group, GROUP, 5), (clip, CLIP, 4), (other, GROUP, 2)], (B, G))


@pytest.mark.parametrize("temporal_factor", [1, 4])
def test_the_encoders_first_conv_is_the_conv_over_frames_their_difference_and_the_features(temporal_factor):
    """As trained: a conv over (frames, frames - reference, the reference's 1/2 features), all unshuffled."""
    torch.manual_seed(0)
    cfg = PRESETS["tiny"]
    cfg = dataclasses.replace(cfg, temporal_factor=temporal_factor)
    encoder = BlockEncoder(cfg, 4)
    ft, c1 = temporal_factor, cfg.channels[0]
    frames, reference = torch.rand(B * G, 3 * ft, 16, 24) * 2 - 1, torch.rand(B, 3, 16, 24) * 2 - 1
    features = torch.randn(B, c1, 8, 12)
    difference = frames - per_group(reference.repeat(1, ft, 1, 1))
    plain = encoder.s1[0](torch.cat([F.pixel_unshuffle(frames, 2), F.pixel_unshuffle(difference, 2),
                                     per_group(features)], 1))
    assert torch.allclose(encoder._first_conv(frames, reference, features, (B, G)), plain, atol=1e-4)


def test_sampling_per_clip_and_the_coarse_grid_match_the_plain_warp():
    torch.manual_seed(0)
    images, k = torch.randn(B, 3, 16, 20), 4
    offsets = torch.randn(B * k, 2, 2, 3) * 3  # px, one vector per 8x8 cell of a 16x24 map
    fine = F.interpolate(offsets, scale_factor=8.0, mode="bilinear", align_corners=False)
    h, w = fine.shape[-2:]
    xs = (torch.arange(w) + 0.5) * (2.0 / w) - 1.0
    ys = (torch.arange(h) + 0.5) * (2.0 / h) - 1.0
    plain_grid = torch.stack([xs.view(1, 1, w) + fine[:, 0] * (2.0 / w), ys.view(1, h, 1) + fine[:, 1] * (2.0 / h)], -1)
    grid = sampling_grid(offsets, 8)
    assert torch.allclose(grid, plain_grid, atol=1e-6)
    plain = F.grid_sample(images.repeat_interleave(k, 0), plain_grid, mode="bilinear", padding_mode="border",
                          align_corners=False)
    assert torch.allclose(sample_per_clip(images, grid), plain, atol=1e-5)
    assert torch.allclose(sample_per_clip(images, grid, batch=B), plain, atol=1e-5)


def test_soft_argmax_is_the_expected_offset_under_a_softmax():
    torch.manual_seed(0)
    radius = 3
    volume = torch.rand(2, (2 * radius + 1) ** 2, 5, 6) * 2 - 1
    weights = torch.softmax(volume / 0.05, 1)
    cells = torch.arange(2 * radius + 1, dtype=torch.float32) - radius
    dx, dy = cells.repeat(2 * radius + 1).view(1, -1, 1, 1), cells.repeat_interleave(2 * radius + 1).view(1, -1, 1, 1)
    plain = torch.cat([(weights * dx).sum(1, keepdim=True), (weights * dy).sum(1, keepdim=True)], 1)
    assert torch.allclose(soft_argmax(volume, radius), plain, atol=1e-5)
    far = torch.full_like(volume, -1.0)  # no match anywhere: finite, centred (FP16 too)
    assert torch.equal(soft_argmax(far, radius), torch.zeros(2, 2, 5, 6))
    assert torch.isfinite(soft_argmax(far.half(), radius)).all()
