"""Conv building blocks of RefTok: stages of 3x3 convs with ReLU6, convs over pixel-unshuffled inputs written as
strided convs, and convs over concatenated per-group / per-clip inputs computed part by part."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = conv3(ch, ch)
        self.conv2 = conv3(ch, ch)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + self.conv2(F.relu6(self.conv1(x))))


def stage(cin: int, cout: int, blocks: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(conv3(cin, cout, stride), nn.ReLU6(), *[ResBlock(cout) for _ in range(blocks)])


def space_to_depth_weight(weight: torch.Tensor, factor: int) -> torch.Tensor:
    """Weights ``[O,C*f*f,k,k]`` of a conv over ``PixelUnshuffle(f)`` of an input -> ``[O,C,k*f,k*f]``, those of
    the same conv read straight from the input with stride f (see :func:`unshuffled_conv`)."""
    o, channels, k, _ = weight.shape
    c = channels // (factor * factor)
    return weight.reshape(o, c, factor, factor, k, k).permute(0, 1, 4, 2, 5, 3).reshape(o, c, k * factor, k * factor)


def unshuffled_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, factor: int) -> torch.Tensor:
    """``conv2d(PixelUnshuffle(factor)(x), weight, bias, padding=k//2)`` computed as one strided conv on ``x``:
    equal up to float rounding, without the unshuffle's full-resolution transposes (which, with the Concats
    around them, took more of OpenVINO's time at 640x480 than the convs did)."""
    k = weight.shape[-1]
    return F.conv2d(x, space_to_depth_weight(weight, factor), bias, stride=factor, padding=factor * (k // 2))


def stage_on_unshuffled(stage: nn.Sequential, x: torch.Tensor, factor: int) -> torch.Tensor:
    """A stage whose first conv reads ``PixelUnshuffle(factor)(x)``, run on ``x`` through :func:`unshuffled_conv`."""
    return stage[1:](unshuffled_conv(x, stage[0].weight, stage[0].bias, factor))


def add_per_clip(per_group: torch.Tensor, per_clip: torch.Tensor, size: tuple) -> torch.Tensor:
    """``[B*G,C,h,w]`` + ``[B,C,h,w]``: each clip's tensor added to every one of its groups.

    ``size`` (B, G): ints or, in a traced graph, sizes computed from the graph's inputs. Neither map's shape is
    read (a Shape op on a conv's output kept ONNX Runtime from fusing that conv into an int8 kernel) nor
    reshaped to 5-D (OpenVINO's int8 graphs spent 100 ms per 640x480 GOP converting quantised 5-D tensors):
    the clip's map is gathered once per group."""
    b, groups = size
    return per_group + per_clip.index_select(0, torch.arange(b * groups, device=per_clip.device) // groups)


GROUP, CLIP, PIXELS = "group", "clip", "pixels"  # kinds of input of :func:`conv_over_groups`


def conv_over_groups(conv: nn.Conv2d, inputs: list[tuple[torch.Tensor, str, int]], size: tuple) -> torch.Tensor:
    """``conv`` (3x3, stride 1) over the channel concatenation of ``inputs``, in order, without building it.

    Each input is (tensor, kind, the conv's input channels it takes: static, for tracing): GROUP ``[B*G,C,h,w]``; CLIP ``[B,C,h,w]``, one per clip that every group
    reads (the reference's features: convolved once per clip, not once per group); PIXELS ``[B*G,C,2h,2w]``,
    read through a ``PixelUnshuffle(2)`` (the conv's weights take ``4C`` channels). ``size``: (B, G), see
    :func:`add_per_clip`. Returns ``[B*G,O,h,w]``.
    """
    start, group_x, group_w, clip_x, clip_w, pixels = 0, [], [], [], [], []
    for x, kind, width in inputs:
        weight = conv.weight[:, start : start + width]
        start += width
        if kind == PIXELS:
            pixels.append(unshuffled_conv(x, weight, None, 2))
        else:
            (clip_x if kind == CLIP else group_x).append(x)
            (clip_w if kind == CLIP else group_w).append(weight)
    if start != conv.in_channels:
        raise ValueError(f"inputs give {start} channels, the conv takes {conv.in_channels}")
    cat = lambda xs: xs[0] if len(xs) == 1 else torch.cat(xs, 1)  # noqa: E731
    y = F.conv2d(cat(group_x), cat(group_w), None if clip_x else conv.bias, padding=1)
    for p in pixels:
        y = y + p
    return add_per_clip(y, F.conv2d(cat(clip_x), cat(clip_w), conv.bias, padding=1), size) if clip_x else y
