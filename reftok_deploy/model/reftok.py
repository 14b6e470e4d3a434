"""RefTok versions 2 and 3: a block video tokenizer conditioned on an unquantised reference frame.

Layout conventions (every public method states its own):
- reference: ``[B,3,H,W]`` float32 in [-1,1], RGB, never quantised.
- frames:    ``[B,3,T,H,W]`` float32 in [-1,1], T a multiple of ``temporal_factor``.
- tokens:    ``[B,T/ft,H/fs,W/fs]`` int32 ids in ``[0, prod(fsq_levels))``.

Time is folded into channels (ft frames stacked -> one latent frame); every learned op is
a Conv2d with ReLU6 (bounded activations for FP16 and INT8), pixel (un)shuffle or an
elementwise op. Version 2 decodes, per output frame:

    frame_t = warp(reference, motion_t) + gate_t * residual_t

- ``motion_t`` is decoded from the tokens at 1/8 resolution, one field per output frame
  (so motion is smooth inside a 4-frame group), passed through a dead zone (|m| < 0.1 px
  is exactly 0) and upsampled bilinearly; ``warp`` is a bilinear GridSample.
- ``gate_t`` is a Clip to [0, 1]: where it is 0 and the motion is 0 the output *is* the
  reference, bit for bit (the exact path for static content).
- The encoder sees the frames, frames - reference, and a local correlation (cost volume)
  between every frame's and the reference's motion features at 1/4 (+-3 cells) and 1/8
  (+-4 cells) resolution, whose soft-argmax displacements also go straight to the latent head,
  so it can measure motion instead of guessing it.

Version 3 (``aligned_reference``) also aligns the reference *features* the decoder reads at 1/4 and 1/2
with each group's decoded motion (the mean of its frames' fields, bilinear GridSample): the features of
the reference where the content now is, beside the unaligned ones (as in learned video codecs' temporal
context). Its decoder convs gain those inputs (zero-initialised from a version-2 warm start, which
therefore decodes exactly as its source at first); the tokens and their budget are unchanged.

``reference=False`` gives the twin: no reference path, no motion, no gate, same token budget.

``encode``/``decode`` need H and W to be multiples of ``spatial_factor``;
:func:`pad_to_multiple` and :func:`crop_to` handle arbitrary sizes outside the exported graphs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from reftok_deploy.model.fsq import FSQ
from reftok_deploy.model.layers import (CLIP, GROUP, PIXELS, add_per_clip, conv3, conv_over_groups, stage,
                                        stage_on_unshuffled, unshuffled_conv)
from reftok_deploy.model.matching import correlation, soft_argmax, unit_norm
from reftok_deploy.model.motion_search import LK_STEP_PX, SEARCH_CHANNELS, SEARCH_REACH_PX, MotionSearch, refine_blocks
from reftok_deploy.model.warping import warp_features, warp_reference
from reftok_deploy.base.spec import MODEL_VERSION, SPATIAL_FACTOR, Geometry

# Motion below this many pixels is exactly zero: static content decodes to the reference itself.
MOTION_DEAD_ZONE_PX = 0.1
# Largest sizes a stored config may ask for (the base preset uses 256 channels, 3 residual blocks).
CONFIG_LIMITS = {"channels": 1024, "res_blocks": 16}
# The motion head's unit, in pixels. Decoder features are ~0.03 on average: unscaled, the head needed
# weights in the hundreds to express tens of pixels and had moved 0.005 after 200 steps (seen here).
MOTION_UNIT_PX = 16.0
CORRELATION_RADII = (3, 4)  # cells at 1/4 and 1/8 resolution: +-12 px and +-32 px
# Config keys added after version 2 shipped; a stored config without them means False.
OPTIONAL_CONFIG_KEYS = ("group_context", "aligned_reference", "motion_search", "block_refinement")


@dataclass(frozen=True)
class RefTokConfig:
    """Architecture hyper-parameters; stored verbatim in every checkpoint."""

    channels: tuple[int, int, int] = (32, 64, 96)
    res_blocks: int = 1
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)
    temporal_factor: int = 4
    block_frames: int = 8
    reference: bool = True
    motion_channels: int = 16
    # Each group's latent and decoder also see the previous and next group's (see :func:`group_context`).
    group_context: bool = False
    # Version 3: the decoder also reads the reference features aligned by each group's motion.
    aligned_reference: bool = False
    # Version 3: the encoder also searches each frame's motion coarse to fine (see motion_search.py) and its
    # latent head reads that motion.
    motion_search: bool = False
    # Version 3: the encoder also moves its 1/4 soft-argmax motion per 8x8 block to where the grey reference
    # matches best (Lucas-Kanade steps, :func:`block_refined_motion`) and its latent head reads that motion.
    block_refinement: bool = False
    model_version: int = MODEL_VERSION
    spatial_factor: int = field(default=SPATIAL_FACTOR, init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "fsq_levels", tuple(int(v) for v in self.fsq_levels))
        if len(self.channels) != 3 or min(self.channels) < 1:
            raise ValueError(f"channels must be three positive ints, got {self.channels}")
        if self.temporal_factor < 1 or self.block_frames % self.temporal_factor:
            raise ValueError("block_frames must be a positive multiple of temporal_factor")
        if self.res_blocks < 0:
            raise ValueError("res_blocks must be >= 0")
        if self.motion_channels < 1:
            raise ValueError("motion_channels must be >= 1")
        version3 = self.aligned_reference or self.motion_search or self.block_refinement
        if self.model_version != (3 if version3 else 2) and self.model_version != 1:
            raise ValueError("aligned_reference, motion_search and block_refinement are model version 3, and version 3 "
                             f"has one of them: got version {self.model_version} with aligned_reference="
                             f"{self.aligned_reference}, motion_search={self.motion_search}, "
                             f"block_refinement={self.block_refinement}")
        if version3 and not self.reference:
            raise ValueError("aligned_reference, motion_search and block_refinement need the reference path")
        if self.motion_search and self.block_refinement:
            raise ValueError("motion_search and block_refinement are two ways to measure the same motion: pick one")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("spatial_factor")
        data["channels"] = list(self.channels)
        data["fsq_levels"] = list(self.fsq_levels)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "RefTokConfig":
        """Strict parse of a stored config: every field present, of its exact type, within limits,
        checked before any model is built (a config can otherwise ask for gigabytes)."""
        if not isinstance(data, dict):
            raise ValueError("model config is not an object")
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown, missing = set(data) - known, known - set(data) - set(OPTIONAL_CONFIG_KEYS)
        if unknown or missing:
            raise ValueError(f"unknown config keys {sorted(unknown)}" if unknown else f"missing config keys {sorted(missing)}")

        def ints(key: str, low: int, high: int, count: int | None = None) -> None:
            value = data[key]
            values = value if isinstance(value, list) else [value]
            if count is not None and (not isinstance(value, list) or len(value) != count):
                raise ValueError(f"{key} must be a list of {count} integers")
            if not all(type(v) is int and low <= v <= high for v in values):
                raise ValueError(f"{key} must be integers in [{low}, {high}], got {value!r}")

        ints("channels", 1, CONFIG_LIMITS["channels"], 3)
        ints("res_blocks", 0, CONFIG_LIMITS["res_blocks"])
        ints("motion_channels", 1, CONFIG_LIMITS["channels"])
        ints("temporal_factor", 1, 64)
        ints("block_frames", 1, 256)
        ints("model_version", 1, 1000)
        levels = data["fsq_levels"]
        if not isinstance(levels, list) or not 1 <= len(levels) <= 16:
            raise ValueError("fsq_levels must be a list of 1 to 16 integers")
        ints("fsq_levels", 2, 65536, len(levels))
        if math.prod(levels) > 65536:
            raise ValueError(f"fsq_levels {levels} give more than 65536 codes")
        for key in ("reference", *OPTIONAL_CONFIG_KEYS):
            if key in data and type(data[key]) is not bool:
                raise ValueError(f"{key} must be true or false")
        return cls(**data)

    @property
    def geometry(self) -> Geometry:
        """Frames-to-tokens geometry of the exported graphs (see :mod:`reftok_deploy.base.spec`)."""
        return Geometry(self.block_frames, self.temporal_factor, self.spatial_factor)

    def twin(self) -> "RefTokConfig":
        """The reference-free twin of this config (version 2's: a twin has no reference to align or search)."""
        return dataclasses.replace(self, reference=False, aligned_reference=False, motion_search=False,
                                   block_refinement=False, model_version=2)

    def version3(self, aligned_reference: bool = True, motion_search: bool = False,
                 block_refinement: bool = False) -> "RefTokConfig":
        """This config as version 3, with the aligned reference features and/or a third motion measurement (the
        motion search or the block refinement)."""
        return dataclasses.replace(self, aligned_reference=aligned_reference, motion_search=motion_search,
                                   block_refinement=block_refinement, model_version=3)


PRESETS: dict[str, RefTokConfig] = {
    "tiny": RefTokConfig(channels=(32, 64, 96), res_blocks=1, group_context=True),
    "small": RefTokConfig(channels=(48, 96, 160), res_blocks=2, motion_channels=24, group_context=True),
    "base": RefTokConfig(channels=(64, 128, 256), res_blocks=3, motion_channels=32, group_context=True),
}


def measured_scales(cfg: RefTokConfig) -> int:
    """How many motion measurements per frame the encoder makes and its latent head reads: the soft-argmax at
    1/4 and at 1/8, and version 3's motion search or block refinement; none for the twin."""
    return 0 if not cfg.reference else 3 if cfg.motion_search or cfg.block_refinement else 2


# Lucas-Kanade steps of the block refinement. Measured by docs/motion_measurement_probe.py (reference warped per
# 8x8 block, box / tree / carphone): 2 steps 31.53 / 22.63 / 30.31 dB, 3 31.92 / 22.79 / 30.46, 4 32.07 / 22.90 /
# 30.50; each step costs ~25 ms of OpenVINO's bf16 encoder at 640x480 on 2 cores.
REFINEMENT_ITERATIONS = 3


def measured_reaches(cfg: RefTokConfig) -> tuple[float, ...]:
    """Per measurement of :func:`measured_scales`, the largest displacement (pixels) it can express: a cost
    volume's radius x cell, the motion search's SEARCH_REACH_PX, or the 1/4 cost volume's reach plus the block
    refinement's Lucas-Kanade steps (what the encoder-flow teacher clamps its targets to)."""
    quarter, eighth = (radius * cell for radius, cell in zip(CORRELATION_RADII, (4, 8)))
    third = (float(SEARCH_REACH_PX),) if cfg.motion_search else \
        (quarter + REFINEMENT_ITERATIONS * LK_STEP_PX,) if cfg.block_refinement else ()
    return (float(quarter), float(eighth), *third)[:measured_scales(cfg)]


def block_refined_motion(reference: torch.Tensor, frames: torch.Tensor, motion: torch.Tensor, batch: int) -> torch.Tensor:
    """Version 3's block refinement: reference ``[B,3,H,W]``, frames ``[B*K,3,H,W]`` in [-1,1] and their motion
    ``[B*K,2,H/8,W/8]`` in px (the encoder's 1/4 soft-argmax, pooled to 8x8 blocks) -> the same moved by
    REFINEMENT_ITERATIONS Lucas-Kanade steps per block (:func:`refine_blocks`). No weights: the cost volume finds
    the match to a 4-pixel cell, the pixels take it to a fraction of one."""
    return refine_blocks(reference, frames, motion, batch, REFINEMENT_ITERATIONS)


def context_channels(channels: int) -> int:
    """Channels :func:`group_context` adds for an input of ``channels``."""
    return 2 * (channels + 1)


def group_context(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Per-group tensors ``[B*G,C,h,w]`` -> their neighbours ``[B*G,2*(C+1),h,w]``.

    For group g: group g-1's channels and a plane of ones, then group g+1's and a plane of ones;
    a missing neighbour (first or last group) is all zeros, flag included. Two tokens describe
    the motion of one position over the whole block (8 frames), where one token held 4 frames:
    smooth motion is coded by both, and each group decodes it from both.
    """
    n, c, h, w = x.shape
    groups = n // batch
    x = x.reshape(batch, groups, c, h, w)
    x = torch.cat([x, torch.ones_like(x[:, :, :1])], 2)
    none = torch.zeros_like(x[:, :1])
    previous = torch.cat([none, x[:, :-1]], 1)
    following = torch.cat([x[:, 1:], none], 1)
    return torch.cat([previous, following], 2).reshape(n, 2 * (c + 1), h, w)


class ReferenceEncoder(nn.Module):
    """Reference ``[B,3,H,W]`` in [-1,1] -> features at 1/2, 1/4, 1/8 resolution."""

    def __init__(self, cfg: RefTokConfig) -> None:
        super().__init__()
        c1, c2, c3 = cfg.channels
        self.s1 = stage(12, c1, 0)  # over the reference unshuffled to 1/2
        self.s2 = stage(c1, c2, cfg.res_blocks, stride=2)
        self.s3 = stage(c2, c3, cfg.res_blocks, stride=2)

    def forward(self, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f1 = stage_on_unshuffled(self.s1, reference, 2)
        f2 = self.s2(f1)
        f3 = self.s3(f2)
        return f1, f2, f3



class MotionFeatures(nn.Module):
    """Frames ``[N,3,H,W]`` in [-1,1] -> unit-norm features at 1/4 and 1/8 (for correlation)."""

    def __init__(self, cfg: RefTokConfig) -> None:
        super().__init__()
        m = cfg.motion_channels
        self.s4 = nn.Sequential(nn.Conv2d(48, m, 3, padding=1), nn.ReLU6(), nn.Conv2d(m, m, 3, padding=1))
        self.s8 = nn.Sequential(nn.ReLU6(), nn.Conv2d(m, m, 3, stride=2, padding=1), nn.ReLU6(), nn.Conv2d(m, m, 3, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f4 = stage_on_unshuffled(self.s4, x, 4)  # over x unshuffled to 1/4
        f8 = self.s8(f4)
        return unit_norm(f4), unit_norm(f8)


class BlockEncoder(nn.Module):
    """Folded frames ``[N,3*ft,H,W]`` (+ the reference and its features, + per-group cost volumes) -> latents
    ``[N,D,H/8,W/8]``."""

    COST4, COST8 = 16, 24  # per-frame channels the cost volumes are squeezed to

    def __init__(self, cfg: RefTokConfig, latent_dim: int) -> None:
        super().__init__()
        c1, c2, c3 = cfg.channels
        ft = cfg.temporal_factor
        r = cfg.channels if cfg.reference else (0, 0, 0)
        cost4 = self.COST4 * ft if cfg.reference else 0
        cost8 = self.COST8 * ft if cfg.reference else 0
        # RefTok's encoder also sees frames - reference, so its tokens start from what the reference lacks
        # (both unshuffled to 1/2: the first conv's weights are laid out for that; see forward).
        self.temporal_factor = ft
        pixels = 12 * ft * (2 if cfg.reference else 1)
        self.s1 = stage(pixels + r[0], c1, 0)
        self.down2 = nn.Sequential(conv3(c1, c2, stride=2), nn.ReLU6())
        self.s2 = stage(c2 + r[1] + cost4, c2, cfg.res_blocks)
        self.widths = (c2, c3, *r, cost4, cost8)  # of the parts the stages read, for conv_over_groups
        self.down3 = nn.Sequential(conv3(c2, c3, stride=2), nn.ReLU6())
        self.s3 = stage(c3 + r[2] + cost8, c3, cfg.res_blocks)
        # RefTok: the cost volumes' soft-argmax displacements (x, y per frame, at 1/4 pooled to 1/8 and at
        # 1/8, in MOTION_UNIT_PX; version 3's searched or refined motion after them) reach the latent head
        # directly: a short path from measured motion to tokens.
        self.flow_channels = 2 * measured_scales(cfg) * ft
        head = c3 + self.flow_channels
        self.group_context = cfg.group_context
        self.to_latent = conv3(head + (context_channels(head) if cfg.group_context else 0), latent_dim)
        # Latents must start spread over several FSQ levels: at the default init they were ~0.03 +- 0.005,
        # every position rounded to one code, and the tokens were never used.
        self.to_latent.weight.data.mul_(10.0)

    def forward(self, x: torch.Tensor, reference: torch.Tensor | None, ref_feats: tuple[torch.Tensor, ...] | None,
                costs: tuple[torch.Tensor, ...] | None, batch: int) -> torch.Tensor:
        """``x`` folded frames ``[B*G,3*ft,H,W]``; RefTok only: ``reference [B,3,H,W]``, its features (one per
        clip), ``costs`` (squeezed cost volume at 1/4, at 1/8, soft-argmax flows at 1/8, per group);
        ``batch``: B (for the group context)."""
        if ref_feats is None:
            x = stage_on_unshuffled(self.s1, x, 2)
            x = self.s3(self.down3(self.s2(self.down2(x))))
        else:
            c2, c3, _, r2, r3, cost4, cost8 = self.widths
            size = (batch, x.shape[0] // batch)  # x: the folded frames, from the graph's input (see add_per_clip)
            x = self.down2(self.s1[1:](self._first_conv(x, reference, ref_feats[0], size)))
            x = self.down3(self.s2[1:](conv_over_groups(
                self.s2[0], [(x, GROUP, c2), (ref_feats[1], CLIP, r2), (costs[0], GROUP, cost4)], size)))
            x = self.s3[1:](conv_over_groups(
                self.s3[0], [(x, GROUP, c3), (ref_feats[2], CLIP, r3), (costs[1], GROUP, cost8)], size))
            x = torch.cat([x, costs[2]], 1)
        return self.to_latent(torch.cat([x, group_context(x, batch)], 1) if self.group_context else x)

    def _first_conv(self, frames: torch.Tensor, reference: torch.Tensor, features: torch.Tensor, size: tuple
                    ) -> torch.Tensor:
        """The first conv over (frames, frames - reference, the reference's 1/2 features), as trained, computed
        as conv_{a+b}(frames) + (features' conv - conv_b(reference repeated ft times)): the reference's parts
        once per clip, and no frames - reference or Concat at full resolution."""
        conv, ft = self.s1[0], self.temporal_factor
        pixels = 12 * ft
        on_frames, on_difference = conv.weight[:, :pixels], conv.weight[:, pixels : 2 * pixels]
        per_group = unshuffled_conv(frames, on_frames + on_difference, None, 2)
        # The reference repeated ft times, unshuffled: channel (f*3 + c)*4 + i is the reference's c*4 + i.
        on_reference = on_difference.reshape(conv.out_channels, ft, 12, 3, 3).sum(1)
        per_clip = (F.conv2d(features, conv.weight[:, 2 * pixels :], conv.bias, padding=1)
                    - unshuffled_conv(reference, on_reference, None, 2))
        return add_per_clip(per_group, per_clip, size)


class BlockDecoder(nn.Module):
    """Codes ``[N,D,H/8,W/8]`` (+ reference features) -> the parts of ft output frames.

    RefTok: motion ``[N,2*ft,H/8,W/8]`` (x, y per frame, full-resolution pixels, before the dead zone),
    then, given the warped reference, residual ``[N,3*ft,H,W]`` and gate logits ``[N,ft,H,W]``.
    Twin: frames ``[N,3*ft,H,W]`` directly.
    """

    def __init__(self, cfg: RefTokConfig, latent_dim: int) -> None:
        super().__init__()
        c1, c2, c3 = cfg.channels
        ft = cfg.temporal_factor
        r = cfg.channels if cfg.reference else (0, 0, 0)
        warped = 12 * ft if cfg.reference else 0  # the warped reference frames, unshuffled to 1/2
        # Version 3: the reference features at 1/4 and 1/2 again, aligned by the group's motion (appended last).
        aligned = cfg.channels if cfg.aligned_reference else (0, 0, 0)
        self.group_context = cfg.group_context
        context = context_channels(latent_dim) if cfg.group_context else 0
        self.s3 = stage(latent_dim + r[2] + context, c3, cfg.res_blocks + 1)
        # Channels of the parts the stages read, for conv_over_groups.
        self.widths = dict(codes=latent_dim, context=context, up=(c1, c2), reference=r, warped=warped, aligned=aligned)
        self.up2 = nn.Sequential(conv3(c3, c2 * 4), nn.PixelShuffle(2), nn.ReLU6())
        self.s2 = stage(c2 + r[1] + aligned[1], c2, cfg.res_blocks)
        self.up1 = nn.Sequential(conv3(c2, c1 * 4), nn.PixelShuffle(2), nn.ReLU6())
        self.s1 = stage(c1 + r[0] + warped + aligned[0], c1, 1)
        if cfg.aligned_reference:  # a fresh version-3 model starts by ignoring the aligned features, as a warm one does
            for conv in (self.s2[0], self.s1[0]):
                nn.init.zeros_(conv.weight[:, -aligned[1 if conv is self.s2[0] else 0]:])
        self.to_pixels = nn.Sequential(conv3(c1, 12 * ft), nn.PixelShuffle(2))
        self.to_pixels[0].weight.data.mul_(0.1)
        nn.init.zeros_(self.to_pixels[0].bias)
        self.to_motion = self.to_gate = None
        if cfg.reference:
            # Zero motion at init: training starts from "residual over the reference".
            self.to_motion = conv3(c3 + latent_dim + context, 2 * ft)
            nn.init.zeros_(self.to_motion.weight)
            nn.init.zeros_(self.to_motion.bias)
            # Gate starts open (inside Clip's linear range, so gradients flow both ways).
            self.to_gate = nn.Sequential(conv3(c1, 4 * ft), nn.PixelShuffle(2))
            self.to_gate[0].weight.data.mul_(0.1)
            nn.init.constant_(self.to_gate[0].bias, 0.8)

    def trunk(self, codes: torch.Tensor, ref_feats: tuple[torch.Tensor, ...] | None, batch: int
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Codes ``[B*G,D,H/8,W/8]`` (+ the reference's features, one per clip) -> (features at 1/8
        ``[N,c3,H/8,W/8]``, motion ``[N,2*ft,H/8,W/8]`` in pixels or None).

        Motion is read at 1/8 from the codes themselves (and the neighbouring groups' codes) and the
        first stage: a short path, so the flow teacher's gradient reaches the encoder quickly."""
        context = [group_context(codes, batch)] if self.group_context else []
        if ref_feats is None:
            x = self.s3(torch.cat([codes, *context], 1))
        else:
            widths = self.widths
            x = self.s3[1:](conv_over_groups(self.s3[0], [(codes, GROUP, widths["codes"]),
                                                           (ref_feats[2], CLIP, widths["reference"][2]),
                                                           *[(c, GROUP, widths["context"]) for c in context]],
                                             (batch, codes.shape[0] // batch)))
        motion = None if self.to_motion is None else self.to_motion(torch.cat([x, codes, *context], 1)) * MOTION_UNIT_PX
        return x, motion

    def middle(self, x: torch.Tensor, ref_feats: tuple[torch.Tensor, ...] | None,
               aligned: torch.Tensor | None = None, size: tuple = ()) -> torch.Tensor:
        """1/8 features -> 1/4 features ``[N,c2,H/4,W/4]`` (+ the reference's, + version 3's aligned ones).
        ``size``: (B, G) with reference features, see :func:`add_per_clip`."""
        x = self.up2(x)
        if ref_feats is None:
            return self.s2(x)
        widths = self.widths
        aligned_input = [] if aligned is None else [(aligned, GROUP, widths["aligned"][1])]
        return self.s2[1:](conv_over_groups(self.s2[0], [(x, GROUP, widths["up"][1]),
                                                         (ref_feats[1], CLIP, widths["reference"][1]), *aligned_input],
                                            size))

    def head(self, x: torch.Tensor, ref_feats: tuple[torch.Tensor, ...] | None, warped: torch.Tensor | None,
             aligned: torch.Tensor | None = None, size: tuple = ()) -> tuple[torch.Tensor, torch.Tensor | None]:
        """1/4 features (+ the reference's features, one per clip, + warped reference ``[N,3*ft,H,W]``, + version
        3's aligned 1/2 features) -> (pixels or residual ``[N,3*ft,H,W]``, gate logits ``[N,ft,H,W]`` or None).
        ``size`` as for :meth:`middle`."""
        x = self.up1(x)
        if ref_feats is None:
            x = self.s1(x)
        else:
            widths = self.widths
            aligned_input = [] if aligned is None else [(aligned, GROUP, widths["aligned"][0])]
            x = self.s1[1:](conv_over_groups(self.s1[0], [(x, GROUP, widths["up"][0]),
                                                          (ref_feats[0], CLIP, widths["reference"][0]),
                                                          (warped, PIXELS, widths["warped"]), *aligned_input], size))
        return self.to_pixels(x), (None if self.to_gate is None else self.to_gate(x))


def dead_zone(x: torch.Tensor, width: float, straight_through: bool = False) -> torch.Tensor:
    """Soft-shrink written with two ReLUs (exported as Relu, not Shrink): |x| <= width -> exactly 0.

    ``straight_through`` (training): the forward value is the same, the gradient is the identity's.
    Without it a zero-initialised motion head sits inside the dead zone, gets no gradient and never
    learns (seen here: 1000 steps with motion exactly 0 everywhere).
    """
    shrunk = F.relu(x - width) - F.relu(-x - width)
    return x + (shrunk - x).detach() if straight_through else shrunk


class RefTok(nn.Module):
    """Reference-conditioned block tokenizer (or its reference-free twin)."""

    def __init__(self, cfg: RefTokConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.fsq = FSQ(cfg.fsq_levels)
        self.reference_encoder = ReferenceEncoder(cfg) if cfg.reference else None
        self.motion_features = MotionFeatures(cfg) if cfg.reference else None
        self.motion_search = MotionSearch(SEARCH_CHANNELS) if cfg.motion_search else None
        if cfg.reference:
            n4, n8 = ((2 * r + 1) ** 2 for r in CORRELATION_RADII)
            self.squeeze4 = nn.Sequential(nn.Conv2d(n4, BlockEncoder.COST4, 1), nn.ReLU6())
            self.squeeze8 = nn.Sequential(nn.Conv2d(n8, BlockEncoder.COST8, 1), nn.ReLU6())
        self.encoder = BlockEncoder(cfg, self.fsq.dim)
        self.decoder = BlockDecoder(cfg, self.fsq.dim)

    def encoder_side_parameters(self) -> list[nn.Parameter]:
        """The weights only the encoder reads (its trunk, motion features, cost squeezes, motion search): what moves
        when the decoder (with the reference encoder both sides share) is held fixed, so a token keeps its meaning."""
        parts = (self.encoder, self.motion_features, self.motion_search, getattr(self, "squeeze4", None),
                 getattr(self, "squeeze8", None))
        return [p for part in parts if part is not None for p in part.parameters()]

    # ---- shape helpers -------------------------------------------------
    def _fold(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B,3,T,H,W]`` -> ``[B*G,ft*3,H,W]`` with G = T/ft groups."""
        b, c, t, h, w = frames.shape
        ft = self.cfg.temporal_factor
        x = frames.reshape(b, c, t // ft, ft, h, w).permute(0, 2, 3, 1, 4, 5)
        return x.reshape(b * (t // ft), ft * c, h, w)

    def _unfold(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """``[B*G,ft*C,H,W]`` -> ``[B,C,G*ft,H,W]``."""
        n, ch, h, w = x.shape
        ft = self.cfg.temporal_factor
        groups = n // batch
        c = ch // ft
        x = x.reshape(batch, groups, ft, c, h, w).permute(0, 3, 1, 2, 4, 5)
        return x.reshape(batch, c, groups * ft, h, w)

    def reference_features(self, reference: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """Reference ``[B,3,H,W]`` in [-1,1] -> features at 1/2, 1/4, 1/8, one per clip (None for the twin)."""
        return None if self.reference_encoder is None else self.reference_encoder(reference)

    def _costs(self, reference: torch.Tensor, folded: torch.Tensor, batch: int) -> tuple[torch.Tensor, ...]:
        """Folded frames ``[B*G,ft*3,H,W]`` -> per-group cost volumes ``[B*G,16*ft,H/4,W/4]`` and
        ``[B*G,24*ft,H/8,W/8]``, and the measured motion ``[B*G,2*S*ft,H/8,W/8]`` (MOTION_UNIT_PX, x and y each):
        per frame the soft-argmaxes at 1/4 and 1/8, then (version 3) per frame the searched or block-refined
        motion, so a version-2 head's inputs come first."""
        n, c, h, w = folded.shape
        per_frame = folded.reshape(n * c // 3, 3, h, w)  # folded frames are frame-major: no copy
        m4, m8 = self.motion_features(per_frame)
        r4, r8 = self.motion_features(reference)  # one per clip, matched with each of its t frames
        v4 = correlation(m4, r4, CORRELATION_RADII[0])
        v8 = correlation(m8, r8, CORRELATION_RADII[1])
        flow4 = F.avg_pool2d(soft_argmax(v4, CORRELATION_RADII[0]) * (4.0 / MOTION_UNIT_PX), 2)
        flow8 = soft_argmax(v8, CORRELATION_RADII[1]) * (8.0 / MOTION_UNIT_PX)
        flows = [torch.cat([flow4, flow8], 1)]
        if self.motion_search is not None:
            flows.append(self.motion_search(reference, per_frame, batch)[-1] * (1.0 / MOTION_UNIT_PX))
        elif self.cfg.block_refinement:
            refined = block_refined_motion(reference, per_frame, flow4 * MOTION_UNIT_PX, batch)
            flows.append(refined * (1.0 / MOTION_UNIT_PX))
        # [B*T,C,h,w] -> [B*G,ft*C,h,w], frame-major like folded pixels.
        per_group = lambda x: x.reshape(n, c // 3 * x.shape[1], *x.shape[-2:])  # noqa: E731
        return per_group(self.squeeze4(v4)), per_group(self.squeeze8(v8)), torch.cat([per_group(f) for f in flows], 1)

    # ---- public API ----------------------------------------------------
    def encode_latent(self, reference: torch.Tensor, frames: torch.Tensor,
                      feats: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """Unquantised latents ``[B*G,D,H/8,W/8]`` for frames ``[B,3,T,H,W]`` in [-1,1]; ``feats`` as in
        :meth:`decode_parts`."""
        return self._encode(reference, frames, feats)[0]

    def _encode(self, reference: torch.Tensor, frames: torch.Tensor, feats: tuple[torch.Tensor, ...] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(latents ``[B*G,D,H/8,W/8]``, the encoder's measured motion ``[B,S,2,T,H/8,W/8]`` or None for the twin).

        The measured motion is, per frame, the cost volumes' soft-argmax at 1/4 (pooled to 1/8) and at 1/8 and
        version 3's searched or block-refined motion (dim 1, S = :func:`measured_scales`), x and y (dim 2), in
        pixels of the reference seen from the frame: what the training's encoder-flow teacher supervises."""
        b, _, t, h, w = frames.shape
        if feats is None:
            feats = self.reference_features(reference)
        folded = self._fold(frames)
        if feats is None:
            return self.encoder(folded, None, None, None, b), None
        costs = self._costs(reference, folded, b)
        split = 4 * self.cfg.temporal_factor  # the soft-argmaxes' channels, then the searched motion's (if any)
        per_frame = lambda x, scales: x.reshape(b, t, scales, 2, h // 8, w // 8)  # noqa: E731
        measured = torch.cat([per_frame(costs[2][:, :split], 2), per_frame(costs[2][:, split:], measured_scales(self.cfg) - 2)],
                             2).permute(0, 2, 3, 1, 4, 5) * MOTION_UNIT_PX
        return self.encoder(folded, reference, feats, costs, b), measured

    def decode_parts(self, reference: torch.Tensor, codes: torch.Tensor, batch: int,
                     feats: tuple[torch.Tensor, ...] | None = None) -> dict[str, torch.Tensor]:
        """Codes ``[B*G,D,h,w]`` -> ``frames [B,3,G*ft,8h,8w]`` (unclamped) and, for RefTok, the parts:
        ``motion [B,2,T,8h,8w]`` (pixels, after the dead zone), ``gate [B,1,T,8h,8w]`` in [0,1],
        ``warped [B,3,T,8h,8w]``. ``feats``: :meth:`reference_features` of ``reference`` when the caller has them
        (they depend on the reference only), else computed here."""
        if feats is None:
            feats = self.reference_features(reference)
        x, motion = self.decoder.trunk(codes, feats, batch)
        if motion is None:
            pixels, _ = self.decoder.head(self.decoder.middle(x, None), None, None)
            return {"frames": self._unfold(pixels, batch)}
        motion = dead_zone(motion, MOTION_DEAD_ZONE_PX, straight_through=self.training)
        aligned4 = aligned2 = None
        if self.cfg.aligned_reference:
            group_motion = motion.reshape(motion.shape[0], -1, 2, *motion.shape[-2:]).mean(1)  # [N,2,H/8,W/8] px
            aligned4 = warp_features(feats[1], group_motion, 4, reference.dtype, batch)
            aligned2 = warp_features(feats[0], group_motion, 2, reference.dtype, batch)
        size = (batch, codes.shape[0] // batch)  # from the decoder's input, see add_per_clip
        x = self.decoder.middle(x, feats, aligned4, size)
        warped = warp_reference(reference, motion, SPATIAL_FACTOR)
        residual, gate = self.decoder.head(x, feats, warped, aligned2, size)
        gate = gate.clamp(0.0, 1.0)
        ft = self.cfg.temporal_factor
        h, w = reference.shape[-2:]  # sizes from the graph's inputs (see add_per_clip)
        gated = (residual.reshape(-1, ft, 3, h, w) * gate.unsqueeze(2)).reshape(-1, 3 * ft, h, w)
        out = warped + gated
        motion = F.interpolate(motion, scale_factor=8.0, mode="bilinear", align_corners=False)  # for training's losses
        return {"frames": self._unfold(out, batch), "motion": self._unfold(motion, batch),
                "gate": self._unfold(gate, batch), "warped": self._unfold(warped, batch)}

    def decode_codes(self, reference: torch.Tensor, codes: torch.Tensor, batch: int,
                     feats: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """Codes ``[B*G,D,h,w]`` -> frames ``[B,3,G*ft,8h,8w]`` (unclamped, ~[-1,1]); ``feats`` as in
        :meth:`decode_parts`."""
        return self.decode_parts(reference, codes, batch, feats)["frames"]

    def encode(self, reference: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """(reference ``[B,3,H,W]``, frames ``[B,3,T,H,W]``, both in [-1,1]) -> int32 ``[B,T/ft,H/8,W/8]``."""
        b = frames.shape[0]
        z = self.encode_latent(reference, frames)
        ids = self.fsq.codes_to_ids(self.fsq.quantize(z))
        return ids.reshape(b, -1, ids.shape[-2], ids.shape[-1])

    def decode(self, reference: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(reference ``[B,3,H,W]`` in [-1,1], tokens int32 ``[B,G,h,w]``) -> frames ``[B,3,G*ft,8h,8w]`` in [-1,1]."""
        b, g, h, w = tokens.shape
        codes = self.fsq.ids_to_codes(tokens.reshape(b * g, h, w))
        return self.decode_codes(reference, codes, b).clamp(-1.0, 1.0)

    def forward(self, reference: torch.Tensor, frames: torch.Tensor
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Training pass: (decoded parts, see :meth:`decode_parts`, plus RefTok's ``measured_motion``, see
        :meth:`_encode`; ids ``[B,G,h,w]`` int32; pre-quantisation latents ``[B*G,D,h,w]`` for the saturation
        penalty)."""
        b = frames.shape[0]
        latent, measured = self._encode(reference, frames)
        codes, ids = self.fsq(latent)
        parts = self.decode_parts(reference, codes, b)
        if measured is not None:
            parts["measured_motion"] = measured
        return parts, ids.reshape(b, -1, ids.shape[-2], ids.shape[-1]), latent



def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Replicate-pad the last two dims of ``x`` up to a multiple; returns (padded, original (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        lead = x.shape[:-2]
        flat = x.reshape(-1, 1, h, w) if x.dim() != 4 else x
        flat = F.pad(flat, (0, pw, 0, ph), mode="replicate")
        x = flat.reshape(*lead, h + ph, w + pw)
    return x, (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the last two dims of ``x`` back to ``size`` = (H, W)."""
    return x[..., : size[0], : size[1]]
