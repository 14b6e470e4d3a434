"""The export seams: torch modules whose forward is exactly one exported ONNX graph.

- encoder: (reference ``[B,3,H,W]`` f32 in [-1,1], frames ``[B,3,T,H,W]`` f32 in [-1,1]) -> tokens ``[B,T/ft,H/8,W/8]`` int32
- decoder: (reference ``[B,3,H,W]`` f32 in [-1,1], tokens ``[B,T/ft,H/8,W/8]`` int32) -> frames ``[B,3,T,H,W]`` f32 in [-1,1]

H and W must be multiples of 8 (the runtimes pad and crop); T is fixed by the checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from reftok_deploy.model.reftok import RefTok


class EncoderGraph(nn.Module):
    def __init__(self, model: RefTok) -> None:
        super().__init__()
        self.model = model

    def forward(self, reference: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        return self.model.encode(reference, frames)


class DecoderGraph(nn.Module):
    def __init__(self, model: RefTok) -> None:
        super().__init__()
        self.model = model

    def forward(self, reference: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.decode(reference, tokens)


GRAPHS = {"encoder": EncoderGraph, "decoder": DecoderGraph}
