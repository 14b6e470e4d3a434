"""Tokens refined against the decoder: same format, never decoding worse than the encoder's, the model untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reftok_deploy.base.spec import frames_to_tensor_range
from reftok_deploy.model.latent_refinement import refine_tokens
from reftok_deploy.model.reftok import PRESETS, RefTok
from tests.conftest import invoke, moving_still, randomised


def clip(batch: int = 2, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """(references ``[B,3,H,W]``, frames ``[B,3,8,H,W]``) of two different moving stills."""
    clips = [torch.from_numpy(frames_to_tensor_range(moving_still(name, 9, size)))
             for name in ("astronaut", "coffee")[:batch]]
    return torch.stack([c[0] for c in clips]), torch.stack([c[1:].permute(1, 0, 2, 3) for c in clips])


def decoded_error(model: RefTok, reference: torch.Tensor, frames: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ((model.decode(reference, tokens) - frames) ** 2).flatten(1).mean(1)


@pytest.fixture(scope="module")
def model() -> RefTok:
    torch.manual_seed(3)
    return randomised(RefTok(PRESETS["tiny"]))


def test_zero_steps_are_the_encoders_tokens(model):
    reference, frames = clip()
    with torch.no_grad():
        assert torch.equal(refine_tokens(model, reference, frames, 0), model.encode(reference, frames))


def test_refined_tokens_decode_better_per_gop_and_leave_the_model_as_it_was(model):
    reference, frames = clip()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    encoded = model.encode(reference, frames)
    refined = refine_tokens(model, reference, frames, 30)
    assert refined.shape == encoded.shape and refined.dtype == torch.int32
    assert 0 <= int(refined.min()) and int(refined.max()) < model.fsq.codebook_size
    start, end = decoded_error(model, reference, frames, encoded), decoded_error(model, reference, frames, refined)
    assert (end <= start).all(), (start, end)  # never worse, per GOP
    assert (end < 0.95 * start).any(), (start, end)  # and the steps found better tokens
    assert not torch.equal(refined, encoded)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters()) and not model.training


def test_refinement_refuses_a_model_in_training_mode():
    reference, frames = clip(1, 32)
    with pytest.raises(ValueError, match="eval mode"):
        refine_tokens(RefTok(PRESETS["tiny"]).train(), reference, frames, 1)


def test_eval_refine_steps_scores_the_refined_tokens(tiny_checkpoint, video_file):
    from reftok_deploy.cli.eval import main as eval_main

    scores = {}
    for steps in (0, 10):
        result = invoke(eval_main, [video_file, "--checkpoint", tiny_checkpoint, "--no-twin", "--no-x264",
                                    "--no-block-motion", "--size", "48", "--max-gops", "1", "--refine-steps", steps,
                                    "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)["clips"][0]
        assert report["refine_steps"] == steps
        scores[steps] = report["reftok"]["psnr"]
    assert scores[10] > scores[0] + 0.1, scores
    assert np.isfinite(list(scores.values())).all()


def test_refinement_computes_the_reference_features_once_and_decodes_as_without_them(model, monkeypatch):
    reference, frames = clip()
    with torch.no_grad():
        feats = model.reference_features(reference)
        codes = model.fsq.quantize(model.encode_latent(reference, frames))
        assert torch.equal(model.decode_codes(reference, codes, 2, feats), model.decode_codes(reference, codes, 2))
        assert torch.equal(model.encode_latent(reference, frames, feats), model.encode_latent(reference, frames))
    calls = []
    original = model.reference_features
    monkeypatch.setattr(model, "reference_features", lambda ref: calls.append(1) or original(ref))
    refine_tokens(model, reference, frames, 12)
    assert len(calls) == 1  # the encoder's pass, all 12 steps and the checks share one computation
