import dataclasses

import numpy as np
import pytest
import torch

from reftok_deploy.evaluate import reconstruct
from tests.conftest import moving_still
from reftok_deploy.model import PRESETS, RefTok, RefTokConfig, crop_to, pad_to_multiple, warp_reference


@pytest.mark.parametrize("height,width", [(64, 64), (37, 50), (8, 8), (71, 29)])
def test_reconstruct_handles_any_size(tiny_model, height, width):
    clip = moving_still("camera", 9, max(height, width))[:, :height, :width]
    recon, tokens = reconstruct(tiny_model, clip[None, 0], clip[None, 1:])
    assert recon.shape == (1, 8, height, width, 3) and recon.dtype == np.uint8
    assert tokens.dtype == np.int32
    assert tokens.shape == (1, 2, -(-height // 8), -(-width // 8))


def test_encode_decode_shapes_and_ranges(tiny_model):
    ref = torch.rand(2, 3, 40, 24) * 2 - 1
    frames = torch.rand(2, 3, 8, 40, 24) * 2 - 1
    with torch.no_grad():
        tokens = tiny_model.encode(ref, frames)
        out = tiny_model.decode(ref, tokens)
    assert tokens.shape == (2, 2, 5, 3) and tokens.dtype == torch.int32
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 1000
    assert out.shape == frames.shape and out.min() >= -1 and out.max() <= 1


def test_forward_matches_encode_then_decode(tiny_model):
    ref = torch.rand(1, 3, 32, 32) * 2 - 1
    frames = torch.rand(1, 3, 8, 32, 32) * 2 - 1
    with torch.no_grad():
        recon, ids, latent = tiny_model(ref, frames)
        assert latent.shape == (2, 4, 4, 4)
        tokens = tiny_model.encode(ref, frames)
        assert torch.equal(ids, tokens)
        assert torch.allclose(recon.clamp(-1, 1), tiny_model.decode(ref, tokens), atol=1e-5)


def test_the_reference_changes_the_decode(tiny_model, real_clip):
    ref = torch.from_numpy(real_clip[0]).permute(2, 0, 1)[None].float() / 127.5 - 1
    other = torch.from_numpy(real_clip[-1][::-1].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    tokens = torch.randint(0, 1000, (1, 2, 8, 8), dtype=torch.int32)
    with torch.no_grad():
        a, b = tiny_model.decode(ref, tokens), tiny_model.decode(other, tokens)
    assert (a - b).abs().mean() > 0.05


def test_twin_ignores_the_reference():
    torch.manual_seed(1)
    twin = RefTok(PRESETS["tiny"].twin()).eval()
    for p in twin.decoder.to_pixels.parameters():
        torch.nn.init.normal_(p, std=0.05)
    tokens = torch.randint(0, 1000, (1, 2, 4, 4), dtype=torch.int32)
    with torch.no_grad():
        a = twin.decode(torch.zeros(1, 3, 32, 32), tokens)
        b = twin.decode(torch.ones(1, 3, 32, 32), tokens)
    assert twin.reference_encoder is None
    assert torch.equal(a, b)
    assert sum(p.numel() for p in twin.parameters()) < sum(p.numel() for p in RefTok(PRESETS["tiny"]).parameters())


def test_config_round_trip_and_validation():
    cfg = RefTokConfig(channels=(8, 16, 24), res_blocks=2, fsq_levels=(5, 5, 5))
    assert RefTokConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        RefTokConfig.from_dict({**cfg.to_dict(), "surprise": 1})
    with pytest.raises(ValueError):
        RefTokConfig(block_frames=6, temporal_factor=4)
    with pytest.raises(ValueError):
        RefTokConfig(reference=False, motion_warp=True)
    # Checkpoints written before motion_warp existed load as the unwarped model.
    old = {k: v for k, v in cfg.to_dict().items() if k != "motion_warp"}
    assert RefTokConfig.from_dict(old).motion_warp is False
    assert PRESETS["tiny"].twin().motion_warp is False


def test_warp_reference_moves_pixels_by_the_motion():
    torch.manual_seed(0)
    reference = torch.rand(2, 3, 32, 48) * 2 - 1
    ft = 4
    still = warp_reference(reference, torch.zeros(2, 2 * ft, 16, 24))
    assert torch.allclose(still, reference.repeat(1, ft, 1, 1), atol=1e-5)
    motion = torch.zeros(2, 2 * ft, 16, 24)
    motion[:, 2] = 3.0   # frame 1 samples 3 px to the right
    motion[:, 5] = -2.0  # frame 2 samples 2 px up
    moved = warp_reference(reference, motion)
    assert torch.allclose(moved[:, 3:6, :, :-3], reference[:, :, :, 3:], atol=1e-5)
    assert torch.allclose(moved[:, 6:9, 2:], reference[:, :, :-2], atol=1e-5)
    assert torch.allclose(moved[:, 9:12], reference, atol=1e-5)


def test_zero_motion_head_equals_the_unwarped_model():
    torch.manual_seed(1)
    warped = RefTok(dataclasses.replace(PRESETS["tiny"], motion_warp=True)).eval()
    plain = RefTok(PRESETS["tiny"]).eval()
    plain.load_state_dict({k: v for k, v in warped.state_dict().items() if "to_motion" not in k})
    reference, frames = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 8, 32, 32) * 2 - 1
    with torch.no_grad():
        tokens = warped.encode(reference, frames)
        assert torch.allclose(warped.decode(reference, tokens), plain.decode(reference, tokens), atol=1e-5)


def test_pad_and_crop_are_inverse():
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    padded, size = pad_to_multiple(x, 8)
    assert padded.shape == (2, 3, 8, 8) and size == (5, 7)
    assert torch.equal(crop_to(padded, size), x)
    assert torch.equal(padded[..., 7, :7], x[..., 4, :])  # replicate padding
