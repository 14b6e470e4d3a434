"""Finite scalar quantisation (FSQ) with int32 token ids.

A latent vector of ``len(levels)`` channels is bounded with tanh, rounded to an
integer grid per channel and packed into one id in ``[0, prod(levels))``.
Ids are packed with integer arithmetic and unpacked by a lookup in a constant codebook
table (a Gather), so no runtime that lowers float precision on its own (OpenVINO's bf16,
for one) can change a token's meaning: before, unpacking was Cast -> Div -> Floor in
float, and bf16 cannot hold ids >= 256 (decoded codes off by up to 1.9).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class FSQ(nn.Module):
    """Quantise ``[N, D, h, w]`` latents (D = len(levels)) to int32 ids ``[N, h, w]``."""

    def __init__(self, levels: Sequence[int]) -> None:
        super().__init__()
        levels = [int(v) for v in levels]
        if not levels or any(v < 2 for v in levels):
            raise ValueError(f"FSQ levels must be integers >= 2, got {levels}")
        if math.prod(levels) > 65536:
            raise ValueError("FSQ codebook must stay at most 65536 entries (16-bit ids in .rtok; one lookup table)")
        self.levels = tuple(levels)
        self.codebook_size = math.prod(levels)
        basis = [math.prod(levels[:i]) for i in range(len(levels))]
        shape = (1, len(levels), 1, 1)
        # Derived constants: non-persistent so checkpoints hold weights only.
        half_width = torch.tensor([v // 2 for v in levels], dtype=torch.float32).view(shape)
        self.register_buffer("_half_width", half_width, persistent=False)
        eps = 1e-3
        half_l = (torch.tensor(levels, dtype=torch.float32) - 1) * (1 + eps) / 2
        offset = torch.tensor([0.5 if v % 2 == 0 else 0.0 for v in levels])
        self.register_buffer("_half_l", half_l.view(shape), persistent=False)
        self.register_buffer("_offset", offset.view(shape), persistent=False)
        self.register_buffer("_shift", torch.atanh(offset / half_l).view(shape), persistent=False)
        self.register_buffer("_basis_int", torch.tensor(basis, dtype=torch.int32).view(shape), persistent=False)
        ids = torch.arange(self.codebook_size, dtype=torch.int64).unsqueeze(1)
        digits = (ids // torch.tensor(basis)) % torch.tensor(levels)  # [codebook, D]
        half = torch.tensor([v // 2 for v in levels], dtype=torch.float32)
        self.register_buffer("_codebook", (digits.to(torch.float32) - half) / half, persistent=False)

    @property
    def dim(self) -> int:
        return len(self.levels)

    @property
    def bits_per_token(self) -> float:
        return math.log2(self.codebook_size)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash latents so rounding lands on ``levels`` integer values per channel."""
        return torch.tanh(z + self._shift) * self._half_l - self._offset

    def quantize(self, z: torch.Tensor, straight_through: bool | None = None) -> torch.Tensor:
        """Latent ``[N,D,h,w]`` -> normalised codes in ``[-1,1]``; with a straight-through gradient for the
        rounding when ``straight_through`` (default: in training mode)."""
        bounded = self.bound(z)
        if self.training if straight_through is None else straight_through:
            bounded = bounded + (torch.round(bounded) - bounded).detach()
        else:  # inference graphs (and exports) hold a plain Round
            bounded = torch.round(bounded)
        return bounded / self._half_width

    def codes_to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Normalised codes ``[N,D,h,w]`` -> int32 ids ``[N,h,w]`` (integer packing)."""
        digits = (torch.round(codes * self._half_width) + self._half_width).to(torch.int32)
        return (digits * self._basis_int).sum(dim=1, dtype=torch.int32)

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """int32 ids ``[N,h,w]`` in ``[0, codebook_size)`` -> normalised codes ``[N,D,h,w]`` (table lookup)."""
        # embedding exports as one Gather in both exporters (plain indexing becomes GatherND in dynamo)
        return F.embedding(ids.long(), self._codebook).permute(0, 3, 1, 2)

    @property
    def codebook(self) -> torch.Tensor:
        """``[codebook_size, D]`` float32: the normalised code of every id."""
        return self._codebook

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (codes ``[N,D,h,w]`` float32 in [-1,1], ids ``[N,h,w]`` int32)."""
        codes = self.quantize(z)
        return codes, self.codes_to_ids(codes)
