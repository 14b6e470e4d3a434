"""Version 3's motion search: coarse-to-fine matching, Lucas-Kanade per block, its training, and the model that reads it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.spec import frames_to_tensor_range
from reftok_deploy.model.motion_search import SEARCH_CHANNELS, MotionSearch, refine_blocks
from reftok_deploy.model.reftok import PRESETS, RefTok, RefTokConfig
from reftok_deploy.model.search_training import SEARCH_FILE, save_search, search_loss
from reftok_deploy.model.warm_start import load_search_weights, warm_start_state
from reftok_deploy.model.warping import warp_reference
from tests.conftest import invoke, moving_still, randomised


def smooth_texture(size: int, seed: int = 0) -> torch.Tensor:
    """``[1,3,size,size]`` in [-1,1]: random noise blurred to features a few pixels wide (LK's linearisation holds)."""
    torch.manual_seed(seed)
    noise = torch.rand(1, 3, size, size) * 2 - 1
    kernel = torch.ones(3, 1, 5, 5) / 25
    return (F.conv2d(F.conv2d(noise, kernel, padding=2, groups=3), kernel, padding=2, groups=3) * 4).clamp(-1, 1)


def shifted(reference: torch.Tensor, dx: float, dy: float, frames: int = 1) -> torch.Tensor:
    """Frames ``[frames,3,H,W]`` that sample ``reference`` at (x + dx, y + dy): backward motion (dx, dy) everywhere."""
    h, w = reference.shape[-2:]
    motion = torch.tensor([dx, dy]).view(1, 2, 1, 1).repeat(1, frames, h, w)
    return warp_reference(reference, motion).reshape(frames, 3, h, w)


def test_lucas_kanade_finds_a_subpixel_shift_from_a_whole_pixel_start():
    reference = smooth_texture(64)
    frame = shifted(reference, 1.3, -0.6)
    start = torch.zeros(1, 2, 8, 8)
    start[:, 0] = 1.0  # a search that found the right pixel, not the fraction
    refined = refine_blocks(reference, frame, start, batch=1)
    inner = refined[..., 1:-1, 1:-1]  # blocks at the border see pixels the edge repeats
    error = (inner - torch.tensor([1.3, -0.6]).view(1, 2, 1, 1)).abs()  # it started 0.3 and 0.6 px off
    assert error.mean() < 0.05 and error.max() < 0.2, error


def test_lucas_kanade_leaves_flat_blocks_and_static_content_where_they_are():
    reference = smooth_texture(64)
    reference[..., :32, :] = 0.2  # the top half is flat: nothing to match, damping keeps it still
    start = torch.full((1, 2, 8, 8), 0.5)
    refined = refine_blocks(reference, reference.clone(), start, batch=1)
    assert torch.allclose(refined[..., :3, :], start[..., :3, :], atol=1e-4)
    assert refined[..., 5:-1, 1:-1].abs().max() < 0.1  # textured and unmoved: back to zero


def test_the_search_reaches_motion_beyond_its_fine_radius_after_training():
    """A pan of 4 px per frame up to 16 px: a few dozen steps of the teacher bring the search's final motion near it."""
    torch.manual_seed(0)
    reference = smooth_texture(64, seed=1)
    shifts = [4.0, 8.0, 12.0, 16.0]
    frames = torch.cat([shifted(reference, -s, 0.0) for s in shifts]).transpose(0, 1)[None]  # [1,3,4,64,64]
    flow = torch.zeros(1, 2, 4, 64, 64)
    flow[:, 0] = -torch.tensor(shifts).view(4, 1, 1)
    search = MotionSearch(SEARCH_CHANNELS).train()
    optimizer = torch.optim.Adam(search.parameters(), lr=3e-3)
    errors = []
    for _ in range(40):
        loss, per_output = search_loss(search, reference, frames, flow)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        errors.append(per_output[-1])
    assert errors[0] > 3.0 and min(errors[-5:]) < 0.5 * errors[0], errors


def test_version3_with_the_search_warm_starts_exactly_as_its_source(tiny_model):
    torch.manual_seed(5)
    target = RefTok(tiny_model.cfg.version3(aligned_reference=False, motion_search=True))
    target.load_state_dict(warm_start_state(tiny_model, target))
    target.eval()
    clip = torch.from_numpy(frames_to_tensor_range(moving_still("astronaut", 9, 64)))
    reference, frames = clip[:1], clip[1:].permute(1, 0, 2, 3)[None]
    with torch.no_grad():
        tokens = tiny_model.encode(reference, frames)
        assert torch.equal(target.encode(reference, frames), tokens)
        assert torch.equal(target.decode(reference, tokens), tiny_model.decode(reference, tokens))
        _, measured = target._encode(reference, frames)
    assert measured.shape == (1, 3, 2, 8, 8, 8)  # soft-argmax at 1/4 and 1/8, then the search


def test_the_latent_head_reads_the_searched_motion(tiny_model):
    torch.manual_seed(5)
    model = randomised(RefTok(tiny_model.cfg.version3(aligned_reference=False, motion_search=True)))
    clip = torch.from_numpy(frames_to_tensor_range(moving_still("astronaut", 9, 64)))
    reference, frames = clip[:1], clip[1:].permute(1, 0, 2, 3)[None]
    with torch.no_grad():
        before = model.encode_latent(reference, frames)
        model.motion_search.features.s8[-1].weight.mul_(-1.0)  # another coarse match, nothing else changed
        assert not torch.allclose(model.encode_latent(reference, frames), before)


def test_search_configs_are_version_3_and_parse_back():
    cfg = PRESETS["tiny"].version3(aligned_reference=False, motion_search=True)
    assert cfg.model_version == 3 and cfg.motion_search and not cfg.aligned_reference
    assert RefTokConfig.from_dict(cfg.to_dict()) == cfg
    assert not cfg.twin().motion_search and cfg.twin().model_version == 2
    stored = cfg.to_dict()
    with pytest.raises(ValueError, match="version 3"):
        RefTokConfig.from_dict({**stored, "model_version": 2})
    with pytest.raises(ValueError, match="motion_search must be true or false"):
        RefTokConfig.from_dict({**stored, "motion_search": 1})
    older = PRESETS["tiny"].version3().to_dict()
    del older["motion_search"]  # a version-3 checkpoint written before the search existed
    assert RefTokConfig.from_dict(older).motion_search is False


def test_search_weights_load_and_bad_ones_are_refused(tmp_path, tiny_model):
    torch.manual_seed(7)
    trained = MotionSearch(SEARCH_CHANNELS)
    save_search(trained, tmp_path / SEARCH_FILE, {"step": 0})
    model = RefTok(tiny_model.cfg.version3(aligned_reference=False, motion_search=True))
    digest = load_search_weights(model, tmp_path / SEARCH_FILE)
    assert len(digest) == 64
    for name, value in trained.state_dict().items():
        assert torch.equal(model.motion_search.state_dict()[name], value)
    with pytest.raises(ReftokError, match="needs a model with the motion search"):
        load_search_weights(tiny_model, tmp_path / SEARCH_FILE)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(ReftokError, match="cannot read it as safetensors"):
        load_search_weights(model, tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"motion_search.features.s4.0.weight": torch.zeros(3, 3, 3, 3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ReftokError, match="not the weights of this motion search"):
        load_search_weights(model, tmp_path / "other.safetensors")


def test_train_search_then_train_version3_on_it(tmp_path, video_file):
    from reftok_deploy.cli.train import main as train
    from reftok_deploy.cli.train_search import main as train_search
    from reftok_deploy.model.checkpoint import load_checkpoint

    result = invoke(train_search, [video_file, "-o", tmp_path / "search", "--steps", 3, "--batch", 1, "--crop", 64,
                                   "--threads", 1, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    weights = tmp_path / "search" / SEARCH_FILE
    assert report["search_weights"] == str(weights) and report["training"]["step"] == 3
    run = tmp_path / "run"
    result = invoke(train, [video_file, "-o", run, "--motion-search", "--search-weights", weights, "--steps", 1,
                            "--batch", 1, "--crop", 32, "--no-builtin-stills", "--threads", 1, "--lr", 1e-12,
                            "--search-share", 0.5])
    assert result.exit_code == 0, result.output
    model, config = load_checkpoint(run / "checkpoint")
    assert model.cfg.model_version == 3 and model.cfg.motion_search and not model.cfg.aligned_reference
    assert config["training"]["recipe"]["search_weights"].startswith(f"{SEARCH_FILE} sha256:")
    assert config["training"]["recipe"]["search_share"] == 0.5
    from safetensors.torch import load_file

    saved = load_file(str(weights))
    # lr 1e-12 (one step): the search in the checkpoint is the one trained on its own
    assert all(torch.allclose(model.state_dict()[k], v, atol=1e-9) for k, v in saved.items())


@pytest.mark.parametrize("args, message", [
    (["--search-weights", "x.safetensors"], "--search-weights needs --motion-search"),
    (["--motion-search", "--no-reference"], "need the reference"),
    (["--search-share", "0.5"], "--search-share needs --motion-search"),
    (["--block-refinement", "--motion-search"], "pick one"),
    (["--block-refinement", "--search-weights", "x.safetensors"], "--search-weights needs --motion-search"),
    (["--block-refinement", "--no-reference"], "need the reference"),
])
def test_train_refuses_search_options_that_cannot_apply(tmp_path, video_file, args, message):
    from reftok_deploy.cli.train import main as train

    result = invoke(train, [video_file, "-o", tmp_path / "run", "--steps", 1, *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_the_search_exports_and_onnxruntime_agrees_with_pytorch(tmp_path, tiny_model):
    from reftok_deploy.base.manifest import open_export
    from reftok_deploy.export.job import ExportOptions, run_export
    from reftok_deploy.model.checkpoint import save_checkpoint
    from reftok_deploy.runtimes.codec import FrameCodec
    from reftok_deploy.runtimes.factory import make_runner

    torch.manual_seed(5)
    model = RefTok(tiny_model.cfg.version3(aligned_reference=False, motion_search=True))
    model.load_state_dict(warm_start_state(tiny_model, model))
    with torch.no_grad():  # the head reads the search: tokens depend on it
        model.encoder.to_latent.weight.normal_(std=0.05)
    checkpoint = save_checkpoint(model.eval(), tmp_path / "v3s")
    manifest = run_export(checkpoint, tmp_path / "export", ExportOptions(dynamo=False, tensorrt="skip"))
    assert manifest["model"]["motion_search"] is True
    assert all(report["ok"] for report in manifest["preflight"].values())
    export = open_export(tmp_path / "export")
    clip = moving_still("astronaut", 9, 48)
    with make_runner("torch", None, checkpoint) as torch_runner:
        expected = FrameCodec(torch_runner).encode(clip[0], clip[1:])
    for spec in ("onnxruntime:fp32", "openvino:fp32"):
        with make_runner(spec, export, checkpoint) as runner:
            assert (FrameCodec(runner).encode(clip[0], clip[1:]) == expected).mean() >= 0.999, spec
    assert np.unique(expected).size > 1


def test_handing_motion_to_the_search_moves_the_heads_weights_and_share_0_changes_nothing(tiny_model):
    from reftok_deploy.model.warm_start import hand_motion_to_search

    torch.manual_seed(5)
    model = RefTok(tiny_model.cfg.version3(aligned_reference=False, motion_search=True))
    model.load_state_dict(warm_start_state(tiny_model, model))
    before = model.encoder.to_latent.weight.clone()
    hand_motion_to_search(model, 0.0)
    assert torch.equal(model.encoder.to_latent.weight, before)
    hand_motion_to_search(model, 0.25)
    after = model.encoder.to_latent.weight
    ft, c3 = model.cfg.temporal_factor, model.cfg.channels[2]
    head = c3 + 6 * ft
    for start in (0, head, 2 * head + 1):  # the group's own inputs, the previous group's, the next group's
        for frame in range(ft):
            soft4, searched = start + c3 + 4 * frame, start + c3 + 4 * ft + 2 * frame
            assert torch.allclose(after[:, searched:searched + 2], 0.25 * before[:, soft4:soft4 + 2])
            assert torch.allclose(after[:, soft4:soft4 + 2], 0.75 * before[:, soft4:soft4 + 2])
            assert torch.equal(after[:, soft4 + 2:soft4 + 4], before[:, soft4 + 2:soft4 + 4])  # the 1/8 one stays
    assert before[:, c3 + 4 * ft:head].abs().max() == 0  # the warm start left the searched inputs at zero
    with pytest.raises(ReftokError, match="needs a model with the motion search"):
        hand_motion_to_search(tiny_model, 0.5)
    with pytest.raises(ReftokError, match=r"in \[0, 1\]"):
        hand_motion_to_search(model, 1.5)
