"""Version 3's block refinement: the encoder's 1/4 soft-argmax moved per 8x8 block by Lucas-Kanade steps, read by
the latent head (no new weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reftok_deploy.base.spec import frames_to_tensor_range
from reftok_deploy.model.motion_search import refine_blocks
from reftok_deploy.model.reftok import PRESETS, REFINEMENT_ITERATIONS, RefTok, RefTokConfig
from reftok_deploy.model.warm_start import hand_motion_to_search, warm_start_state
from tests.conftest import invoke, moving_still, randomised


def refinement_model(source: RefTok, share: float = 0.0) -> RefTok:
    """``source`` (version 2) warm-started into version 3 with the block refinement, ``share`` of the head's
    soft-argmax weights handed to the refined motion."""
    model = RefTok(source.cfg.version3(aligned_reference=False, block_refinement=True))
    model.load_state_dict(warm_start_state(source, model))
    hand_motion_to_search(model, share)
    return model.eval()


def astronaut_clip(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    clip = torch.from_numpy(frames_to_tensor_range(moving_still("astronaut", 9, size)))
    return clip[:1], clip[1:].permute(1, 0, 2, 3)[None]


def test_refinement_configs_are_version_3_exclude_the_search_and_parse_back():
    cfg = PRESETS["tiny"].version3(aligned_reference=False, block_refinement=True)
    assert cfg.model_version == 3 and cfg.block_refinement and not cfg.motion_search
    assert RefTokConfig.from_dict(cfg.to_dict()) == cfg
    assert not cfg.twin().block_refinement and cfg.twin().model_version == 2
    with pytest.raises(ValueError, match="pick one"):
        PRESETS["tiny"].version3(motion_search=True, block_refinement=True)
    with pytest.raises(ValueError, match="block_refinement must be true or false"):
        RefTokConfig.from_dict({**cfg.to_dict(), "block_refinement": "yes"})
    older = PRESETS["tiny"].version3().to_dict()
    del older["block_refinement"]  # written before the refinement existed
    assert RefTokConfig.from_dict(older).block_refinement is False
    assert not any(name.startswith("motion_search.") for name in RefTok(cfg).state_dict())  # no new weights


def test_refinement_warm_starts_exactly_and_measures_the_refined_soft_argmax(tiny_model):
    model = refinement_model(tiny_model)
    reference, frames = astronaut_clip()
    with torch.no_grad():
        tokens = tiny_model.encode(reference, frames)
        assert torch.equal(model.encode(reference, frames), tokens)
        assert torch.equal(model.decode(reference, tokens), tiny_model.decode(reference, tokens))
        _, measured = model._encode(reference, frames)
        per_frame = frames[0].permute(1, 0, 2, 3)  # [T,3,H,W]
        soft_argmax4 = measured[0, 0].permute(1, 0, 2, 3)  # [T,2,h,w] px
        expected = refine_blocks(reference, per_frame, soft_argmax4, 1, REFINEMENT_ITERATIONS)
    assert measured.shape == (1, 3, 2, 8, 8, 8)
    assert torch.allclose(measured[0, 2].permute(1, 0, 2, 3), expected, atol=1e-4)
    assert not torch.allclose(measured[0, 2], measured[0, 0], atol=1e-2)  # the steps moved it


def test_handing_motion_to_the_refinement_changes_the_latents(tiny_model):
    torch.manual_seed(5)
    source = randomised(RefTok(tiny_model.cfg)).eval()
    reference, frames = astronaut_clip()
    with torch.no_grad():
        kept = refinement_model(source, 0.0).encode_latent(reference, frames)
        handed = refinement_model(source, 1.0).encode_latent(reference, frames)
    assert torch.allclose(kept, source.encode_latent(reference, frames), atol=1e-6)
    assert not torch.allclose(handed, kept, atol=1e-4)


def test_train_with_the_block_refinement_via_the_cli(tmp_path, video_file):
    from reftok_deploy.cli.train import main as train
    from reftok_deploy.model.checkpoint import load_checkpoint

    run = tmp_path / "run"
    result = invoke(train, [video_file, "-o", run, "--block-refinement", "--search-share", 0.5, "--steps", 1,
                            "--batch", 1, "--crop", 32, "--no-builtin-stills", "--threads", 1])
    assert result.exit_code == 0, result.output
    model, config = load_checkpoint(run / "checkpoint")
    assert model.cfg.model_version == 3 and model.cfg.block_refinement and not model.cfg.motion_search
    assert config["training"]["recipe"]["search_share"] == 0.5


def test_the_refinement_exports_and_both_runtimes_agree_with_pytorch(tmp_path, tiny_model):
    from reftok_deploy.base.manifest import open_export
    from reftok_deploy.export.job import ExportOptions, run_export
    from reftok_deploy.model.checkpoint import save_checkpoint
    from reftok_deploy.runtimes.codec import FrameCodec
    from reftok_deploy.runtimes.factory import make_runner

    checkpoint = save_checkpoint(refinement_model(tiny_model, 1.0), tmp_path / "v3r")  # tokens depend on it
    manifest = run_export(checkpoint, tmp_path / "export", ExportOptions(dynamo=False, tensorrt="skip"))
    assert manifest["model"]["block_refinement"] is True
    assert all(report["ok"] for report in manifest["preflight"].values())
    export = open_export(tmp_path / "export")
    clip = moving_still("astronaut", 9, 48)
    with make_runner("torch", None, checkpoint) as torch_runner:
        expected = FrameCodec(torch_runner).encode(clip[0], clip[1:])
    for spec in ("onnxruntime:fp32", "openvino:fp32"):
        with make_runner(spec, export, checkpoint) as runner:
            assert (FrameCodec(runner).encode(clip[0], clip[1:]) == expected).mean() >= 0.999, spec
    assert np.unique(expected).size > 1
