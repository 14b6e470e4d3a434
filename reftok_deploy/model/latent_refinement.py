"""Tokens chosen by the decoder: each GOP's latents refined by gradient steps on its reconstruction error.

The encoder proposes latents in one forward pass; the decoder, fixed, then tells how each latent should move to
decode the GOP better. A few dozen Adam steps on the squared error of the decoded frames (rounding passed straight
through, as in training) move the latents to tokens the encoder did not find: the same token format, bits and
decoder, so every runtime decodes them unchanged. This is encode-time search (learned codecs call it latent
refinement), for offline work: each step is a decoder pass forward and back, in PyTorch.

Per GOP the tokens kept are those that decoded best at any check (the encoder's own tokens are the first), so a
refined GOP never decodes worse than the encoder's, measured in the squared error over the block's frames.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from reftok_deploy.model.reftok import RefTok

# Adam's step on the pre-tanh latents: 0.05 and 0.15 gave the same gain after 60 steps on carphone; 0.05 is steadier.
REFINE_LR = 0.05
CHECK_EVERY = 10  # steps between decodes of the rounded tokens (each is one more decoder pass)


@contextlib.contextmanager
def _frozen(model: RefTok) -> Iterator[None]:
    """No gradients for ``model``'s weights (only the latents move), the flags restored after."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def _decode(model: RefTok, reference: torch.Tensor, feats: tuple[torch.Tensor, ...] | None, latent: torch.Tensor,
            batch: int, straight_through: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents ``[B*G,D,h,w]`` -> (frames ``[B,3,T,H,W]``, normalised codes ``[B*G,D,h,w]``): rounded for
    real, or with the rounding's gradient passed straight through. ``feats``: the reference's features,
    computed once per call of :func:`refine_tokens` for the encoder and every step (the weights are frozen)."""
    codes = model.fsq.quantize(latent, straight_through)
    return model.decode_codes(reference, codes, batch, feats), codes


def _per_gop_error(decoded: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Squared error per GOP ``[B]`` of decoded frames (clamped as decode clamps) against the originals."""
    return ((decoded.clamp(-1.0, 1.0) - frames) ** 2).flatten(1).mean(1)


def refine_tokens(model: RefTok, reference: torch.Tensor, frames: torch.Tensor, steps: int,
                  lr: float = REFINE_LR) -> torch.Tensor:
    """(reference ``[B,3,H,W]``, frames ``[B,3,T,H,W]``, both float32 in [-1,1]) -> int32 tokens ``[B,G,h,w]``:
    the encoder's latents after ``steps`` Adam steps on the decoded frames' squared error, the best-decoding
    tokens of each GOP (checked every CHECK_EVERY steps and at the end; the encoder's own count). ``steps`` 0
    gives :meth:`RefTok.encode`'s tokens. ``model`` must be in eval mode (its exported behaviour)."""
    if model.training:
        raise ValueError("refine_tokens needs the model in eval mode (model.eval())")
    b = frames.shape[0]
    with _frozen(model):
        with torch.no_grad():
            feats = model.reference_features(reference)
            start = model.encode_latent(reference, frames, feats)
            decoded, codes = _decode(model, reference, feats, start, b, straight_through=False)
            best_error = _per_gop_error(decoded, frames)
            best_codes = codes.clone()
        latent = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([latent], lr=lr)
        for step in range(1, steps + 1):
            with torch.enable_grad():
                decoded, _ = _decode(model, reference, feats, latent, b, straight_through=True)
                loss = ((decoded - frames) ** 2).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            if step % CHECK_EVERY == 0 or step == steps:
                with torch.no_grad():
                    decoded, codes = _decode(model, reference, feats, latent, b, straight_through=False)
                    error = _per_gop_error(decoded, frames)
                    better = error < best_error
                    best_error = torch.where(better, error, best_error)
                    per_group = better.repeat_interleave(codes.shape[0] // b).view(-1, 1, 1, 1)
                    best_codes = torch.where(per_group, codes, best_codes)
    ids = model.fsq.codes_to_ids(best_codes)
    return ids.reshape(b, -1, ids.shape[-2], ids.shape[-1])
