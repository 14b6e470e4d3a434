import numpy as np
import pytest
import torch

from reftok_deploy.quality.evaluate import reconstruct
from tests.conftest import moving_still
from reftok_deploy.model.reftok import MOTION_UNIT_PX, PRESETS, RefTok, RefTokConfig, crop_to, pad_to_multiple
from reftok_deploy.model.warping import warp_reference


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
        parts, ids, latent = tiny_model(ref, frames)
        recon = parts["frames"]
        assert latent.shape == (2, 4, 4, 4)
        assert parts["motion"].shape == (1, 2, 8, 32, 32) and parts["gate"].shape == (1, 1, 8, 32, 32)
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
        RefTokConfig(motion_channels=0)
    assert PRESETS["tiny"].twin().reference is False
    # Configs stored before the group context existed load without it; a non-boolean is refused.
    stored = {k: v for k, v in PRESETS["tiny"].to_dict().items() if k != "group_context"}
    assert RefTokConfig.from_dict(stored).group_context is False
    with pytest.raises(ValueError, match="group_context"):
        RefTokConfig.from_dict({**stored, "group_context": 1})
    # Version 1's motion-warp option is gone: such a config is refused, not silently reinterpreted.
    with pytest.raises(ValueError, match="motion_warp"):
        RefTokConfig.from_dict({**cfg.to_dict(), "motion_warp": True})


def test_warp_reference_moves_pixels_by_the_motion():
    torch.manual_seed(0)
    reference = torch.rand(2, 3, 32, 48) * 2 - 1
    ft = 4
    still = warp_reference(reference, torch.zeros(2, 2 * ft, 32, 48))
    assert torch.allclose(still, reference.repeat(1, ft, 1, 1), atol=1e-5)
    motion = torch.zeros(2, 2 * ft, 32, 48)
    motion[:, 2] = 3.0   # frame 1 samples 3 px to the right
    motion[:, 5] = -2.0  # frame 2 samples 2 px up
    moved = warp_reference(reference, motion)
    assert torch.allclose(moved[:, 3:6, :, :-3], reference[:, :, :, 3:], atol=1e-5)
    assert torch.allclose(moved[:, 6:9, 2:], reference[:, :, :-2], atol=1e-5)
    assert torch.allclose(moved[:, 9:12], reference, atol=1e-5)


def _closed_gate(model: RefTok) -> RefTok:
    """The same model with its gate shut everywhere (logits -1) and its motion head silent."""
    import copy

    closed = copy.deepcopy(model)
    torch.nn.init.zeros_(closed.decoder.to_gate[0].weight)
    torch.nn.init.constant_(closed.decoder.to_gate[0].bias, -1.0)
    torch.nn.init.zeros_(closed.decoder.to_motion.weight)
    torch.nn.init.constant_(closed.decoder.to_motion.bias, 0.05 / MOTION_UNIT_PX)  # inside the dead zone
    return closed.eval()


def test_exact_reference_path(tiny_model, real_clip):
    """Gate shut and motion inside the dead zone: every decoded frame is the reference, bit for bit."""
    closed = _closed_gate(tiny_model)
    clip = real_clip[:9]
    recon, tokens = reconstruct(closed, clip[None, 0], clip[None, 1:])
    assert np.array_equal(recon[0], np.repeat(clip[None, 0], 8, axis=0))
    # And the open model does not (the test would catch a gate or warp that leaks).
    assert not np.array_equal(reconstruct(tiny_model, clip[None, 0], clip[None, 1:])[0][0], recon[0])


def test_one_motion_field_per_output_frame(tiny_model):
    """Motion of frame k moves frame k only: motion is not shared by the 4 frames of a latent group."""
    closed = _closed_gate(tiny_model)
    bias = closed.decoder.to_motion.bias.data
    bias[2] = 3.0 / MOTION_UNIT_PX  # frame 1 (second of its group), x: sample 3 px to the right
    torch.manual_seed(4)
    reference = torch.rand(1, 3, 32, 48) * 2 - 1
    tokens = torch.randint(0, 1000, (1, 2, 4, 6), dtype=torch.int32)
    with torch.no_grad():
        out = closed.decode(reference, tokens)
    moved = 3.0 - 0.1  # the dead zone shrinks motion by its width
    assert torch.allclose(out[:, :, 0], reference, atol=1e-5)
    assert not torch.allclose(out[:, :, 1], reference, atol=1e-2)
    assert torch.allclose(out[:, :, 2], reference, atol=1e-5) and torch.allclose(out[:, :, 5], out[:, :, 1], atol=1e-5)
    # Bilinear: column x samples the reference at x + 2.9.
    want = reference[..., 2:-1] * (3.0 - moved) + reference[..., 3:] * (moved - 2.0)
    assert torch.allclose(out[:, :, 1, :, :-3], want.clamp(-1, 1), atol=1e-4)


def test_pad_and_crop_are_inverse():
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    padded, size = pad_to_multiple(x, 8)
    assert padded.shape == (2, 3, 8, 8) and size == (5, 7)
    assert torch.equal(crop_to(padded, size), x)
    assert torch.equal(padded[..., 7, :7], x[..., 4, :])  # replicate padding


def test_zero_initialised_motion_head_learns():
    """The dead zone must not block gradients in training: a fresh (zero) motion head gets one."""
    torch.manual_seed(2)
    model = RefTok(PRESETS["tiny"]).train()
    assert not model.decoder.to_motion.weight.any()
    reference = torch.rand(1, 3, 32, 32) * 2 - 1
    frames = torch.roll(reference, 2, dims=-1).unsqueeze(2).repeat(1, 1, 8, 1, 1)
    parts, _, _ = model(reference, frames)
    (parts["frames"] - frames).abs().mean().backward()
    assert model.decoder.to_motion.weight.grad.abs().sum() > 0
    assert not parts["motion"].any()  # yet the forward value still is exactly zero motion


def test_group_context_gives_each_group_its_neighbours():
    from reftok_deploy.model.reftok import group_context

    x = torch.arange(3 * 2 * 1 * 1, dtype=torch.float32).reshape(3 * 2, 1, 1, 1) + 1  # B=2, G=3
    ctx = group_context(x, batch=2).reshape(2, 3, 4)  # [previous, flag, next, flag]
    assert ctx[0].tolist() == [[0, 0, 2, 1], [1, 1, 3, 1], [2, 1, 0, 0]]
    assert ctx[1].tolist() == [[0, 0, 5, 1], [4, 1, 6, 1], [5, 1, 0, 0]]


def test_with_the_group_context_a_group_decodes_from_its_neighbours_tokens():
    torch.manual_seed(0)
    model = RefTok(PRESETS["tiny"])
    for p in model.parameters():
        if p.dim() == 4 and not p.abs().sum():
            torch.nn.init.normal_(p, std=0.05)  # the zero-initialised heads
    model.eval()
    ref = torch.rand(1, 3, 32, 32) * 2 - 1
    tokens = torch.randint(0, model.fsq.codebook_size, (1, 2, 4, 4), dtype=torch.int32)
    other = tokens.clone()
    other[:, 1] = (other[:, 1] + 1) % model.fsq.codebook_size  # change the second group only
    with torch.no_grad():
        a, b = model.decode(ref, tokens), model.decode(ref, other)
    assert not torch.allclose(a[:, :, :4], b[:, :, :4])  # the first group's frames see the change


@pytest.mark.parametrize("radius", [1, 3, 4])
@pytest.mark.parametrize("height,width", [(5, 16), (7, 13), (3, 1), (12, 30)])
def test_correlation_is_the_local_dot_product_at_every_offset(radius, height, width):
    """Channel (dy, dx) of the cost volume is <a(p), b(p + (dy - r, dx - r))>, zero outside ``b``, for any
    width (tiles padded and cropped) -- checked against the definition, one offset at a time."""
    from reftok_deploy.model.matching import correlation

    generator = torch.Generator().manual_seed(height * 100 + width + radius)
    a = torch.randn(6, 5, height, width, generator=generator)  # 2 clips of 3 frames
    b = torch.randn(2, 5, height, width, generator=generator)  # their 2 references
    volume = correlation(a, b, radius)
    size = 2 * radius + 1
    assert volume.shape == (6, size * size, height, width)
    padded = torch.nn.functional.pad(b.repeat_interleave(3, 0), (radius,) * 4)
    for dy in range(size):
        for dx in range(size):
            want = (a * padded[:, :, dy: dy + height, dx: dx + width]).sum(1)
            torch.testing.assert_close(volume[:, dy * size + dx], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(correlation(a, b.repeat_interleave(3, 0), radius), volume)  # one b per a item


def test_correlation_refuses_a_radius_wider_than_its_tile():
    from reftok_deploy.model.matching import CORRELATION_TILE, correlation

    a = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="CORRELATION_TILE"):
        correlation(a, a, CORRELATION_TILE // 2 + 1)


def test_flops_count_convolutions_and_the_cost_volume_once(tiny_model):
    """gop_flops: the encoder's figure is its convolutions only; the cost volume is its dot products, not the
    tiled matrix products that compute them (which PyTorch's counter sees, about 1.9x as many)."""
    from torch.utils.flop_counter import FlopCounterMode

    from reftok_deploy.model.flops import gop_flops
    from reftok_deploy.model.matching import CORRELATION_TILE
    from reftok_deploy.model.reftok import CORRELATION_RADII

    cfg, size = tiny_model.cfg, 64
    counted = gop_flops(tiny_model, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        tiny_model.encode(torch.zeros(1, 3, size, size), torch.zeros(1, 3, cfg.block_frames, size, size))
    t, m = cfg.block_frames, cfg.motion_channels
    tiled = sum(2 * t * m * (size // s) * (size // s) * (CORRELATION_TILE + 2 * r) * (2 * r + 1)
                for s, r in zip((4, 8), CORRELATION_RADII))
    assert counter.get_total_flops() / 1e9 == pytest.approx(counted["encoder"] + tiled / 1e9)
    products = sum(2 * t * m * (2 * r + 1) ** 2 * (size // s) ** 2 for s, r in zip((4, 8), CORRELATION_RADII))
    assert counted["cost_volume"] == pytest.approx(products / 1e9)
    assert counted["total"] == pytest.approx(counted["encoder"] + counted["decoder"] + counted["cost_volume"])


def test_a_batch_of_clips_encodes_each_clip_against_its_own_reference(tiny_model):
    """The cost volume matches each clip's frames with that clip's reference only (frames ordered clip-major)."""
    generator = torch.Generator().manual_seed(7)
    reference = torch.rand(2, 3, 32, 40, generator=generator) * 2 - 1
    frames = (reference.unsqueeze(2) + 0.2 * torch.randn(2, 3, 8, 32, 40, generator=generator)).clamp(-1, 1)
    with torch.no_grad():
        together = tiny_model.encode_latent(reference, frames)
        alone = torch.cat([tiny_model.encode_latent(reference[i: i + 1], frames[i: i + 1]) for i in range(2)])
        swapped = tiny_model.encode_latent(reference.flip(0), frames)
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
    assert (swapped - together).abs().max() > 1e-2  # the reference does matter
