"""RefTok: a block video tokenizer conditioned on an unquantised reference frame.

Layout conventions (every public method states its own):
- reference: ``[B,3,H,W]`` float32 in [-1,1], RGB, never quantised.
- frames:    ``[B,3,T,H,W]`` float32 in [-1,1], T a multiple of ``temporal_factor``.
- tokens:    ``[B,T/ft,H/fs,W/fs]`` int32 ids in ``[0, prod(fsq_levels))``.

Time is folded into channels (ft frames stacked -> one latent frame) and every
op is a Conv2d, ReLU6, pixel (un)shuffle or elementwise op, which TensorRT and
ONNX Runtime quantise and fuse well. ReLU6 bounds every activation to [0, 6]:
without normalisation layers an unbounded ReLU net trained here grew activations
past 1e6, which overflows FP16 and wrecks INT8 ranges. The reference enters the encoder and the
decoder at 1/2, 1/4 and 1/8 resolution by concatenation (residual blocks sit
at 1/4 and 1/8, where they are cheap); the decoder predicts a
residual over the reference. ``reference=False`` gives the twin with every
reference path removed, the ablation baseline at the same token budget.

``encode``/``decode`` need H and W to be multiples of ``spatial_factor``;
:func:`pad_to_multiple` and :func:`crop_to` handle arbitrary sizes outside the
exported graphs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from reftok_deploy.fsq import FSQ

MODEL_VERSION = 1


@dataclass(frozen=True)
class RefTokConfig:
    """Architecture hyper-parameters; stored verbatim in every checkpoint."""

    channels: tuple[int, int, int] = (32, 64, 96)
    res_blocks: int = 1
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)
    temporal_factor: int = 4
    block_frames: int = 8
    reference: bool = True
    motion_warp: bool = False
    model_version: int = MODEL_VERSION
    spatial_factor: int = field(default=8, init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "fsq_levels", tuple(int(v) for v in self.fsq_levels))
        if len(self.channels) != 3 or min(self.channels) < 1:
            raise ValueError(f"channels must be three positive ints, got {self.channels}")
        if self.temporal_factor < 1 or self.block_frames % self.temporal_factor:
            raise ValueError("block_frames must be a positive multiple of temporal_factor")
        if self.res_blocks < 0:
            raise ValueError("res_blocks must be >= 0")
        if self.motion_warp and not self.reference:
            raise ValueError("motion_warp needs reference=True (it warps the reference frame)")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("spatial_factor")
        data["channels"] = list(self.channels)
        data["fsq_levels"] = list(self.fsq_levels)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "RefTokConfig":
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**data)

    def twin(self) -> "RefTokConfig":
        """The reference-free twin of this config (no reference, so nothing to warp)."""
        return dataclasses.replace(self, reference=False, motion_warp=False)


PRESETS: dict[str, RefTokConfig] = {
    "tiny": RefTokConfig(channels=(32, 64, 96), res_blocks=1),
    "small": RefTokConfig(channels=(48, 96, 160), res_blocks=2),
    "base": RefTokConfig(channels=(64, 128, 256), res_blocks=3),
}


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


class ReferenceEncoder(nn.Module):
    """Reference ``[B,3,H,W]`` in [-1,1] -> features at 1/2, 1/4, 1/8 resolution."""

    def __init__(self, cfg: RefTokConfig) -> None:
        super().__init__()
        c1, c2, c3 = cfg.channels
        self.unshuffle = nn.PixelUnshuffle(2)
        self.s1 = stage(12, c1, 0)
        self.s2 = stage(c1, c2, cfg.res_blocks, stride=2)
        self.s3 = stage(c2, c3, cfg.res_blocks, stride=2)

    def forward(self, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f1 = self.s1(self.unshuffle(reference))
        f2 = self.s2(f1)
        f3 = self.s3(f2)
        return f1, f2, f3


class BlockEncoder(nn.Module):
    """Folded frames ``[N,3*ft,H,W]`` (+ reference features) -> latents ``[N,D,H/8,W/8]``."""

    def __init__(self, cfg: RefTokConfig, latent_dim: int) -> None:
        super().__init__()
        c1, c2, c3 = cfg.channels
        r = cfg.channels if cfg.reference else (0, 0, 0)
        self.unshuffle = nn.PixelUnshuffle(2)
        # RefTok's encoder also sees frames - reference, so its tokens start from what the reference lacks.
        pixels = 12 * cfg.temporal_factor * (2 if cfg.reference else 1)
        self.s1 = stage(pixels + r[0], c1, 0)
        self.down2 = nn.Sequential(conv3(c1, c2, stride=2), nn.ReLU6())
        self.s2 = stage(c2 + r[1], c2, cfg.res_blocks)
        self.down3 = nn.Sequential(conv3(c2, c3, stride=2), nn.ReLU6())
        self.s3 = stage(c3 + r[2], c3, cfg.res_blocks)
        self.to_latent = conv3(c3, latent_dim)
        # Latents must start spread over several FSQ levels: at the default init they were ~0.03 +- 0.005,
        # every position rounded to one code, and RefTok never learned to use its tokens.
        self.to_latent.weight.data.mul_(10.0)

    def forward(self, x: torch.Tensor, ref_feats: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
        x = self.unshuffle(x)
        x = self.s1(x if ref_feats is None else torch.cat([x, ref_feats[0]], 1))
        x = self.down2(x)
        x = self.s2(x if ref_feats is None else torch.cat([x, ref_feats[1]], 1))
        x = self.down3(x)
        x = self.s3(x if ref_feats is None else torch.cat([x, ref_feats[2]], 1))
        return self.to_latent(x)


class BlockDecoder(nn.Module):
    """Codes ``[N,D,H/8,W/8]`` (+ reference features) -> (folded frames ``[N,3*ft,H,W]``,
    motion ``[N,2*ft,H/2,W/2]`` in full-resolution pixels (x, y per frame) or None without motion_warp)."""

    def __init__(self, cfg: RefTokConfig, latent_dim: int) -> None:
        super().__init__()
        c1, c2, c3 = cfg.channels
        r = cfg.channels if cfg.reference else (0, 0, 0)
        self.s3 = stage(latent_dim + r[2], c3, cfg.res_blocks + 1)
        self.up2 = nn.Sequential(conv3(c3, c2 * 4), nn.PixelShuffle(2), nn.ReLU6())
        self.s2 = stage(c2 + r[1], c2, cfg.res_blocks)
        self.up1 = nn.Sequential(conv3(c2, c1 * 4), nn.PixelShuffle(2), nn.ReLU6())
        self.s1 = stage(c1 + r[0], c1, 1)
        self.to_pixels = nn.Sequential(conv3(c1, 12 * cfg.temporal_factor), nn.PixelShuffle(2))
        # Start RefTok near "copy the reference" and the twin near mid-grey, with gradients flowing upstream.
        self.to_pixels[0].weight.data.mul_(0.1)
        nn.init.zeros_(self.to_pixels[0].bias)
        self.to_motion = None
        if cfg.motion_warp:
            # Zero motion at init: training starts from "residual over the unwarped reference".
            self.to_motion = conv3(c1, 2 * cfg.temporal_factor)
            nn.init.zeros_(self.to_motion.weight)
            nn.init.zeros_(self.to_motion.bias)

    def forward(self, codes: torch.Tensor, ref_feats: tuple[torch.Tensor, ...] | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.s3(codes if ref_feats is None else torch.cat([codes, ref_feats[2]], 1))
        x = self.up2(x)
        x = self.s2(x if ref_feats is None else torch.cat([x, ref_feats[1]], 1))
        x = self.up1(x)
        x = self.s1(x if ref_feats is None else torch.cat([x, ref_feats[0]], 1))
        motion = None if self.to_motion is None else self.to_motion(x)
        return self.to_pixels(x), motion


class RefTok(nn.Module):
    """Reference-conditioned block tokenizer (or its reference-free twin)."""

    def __init__(self, cfg: RefTokConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.fsq = FSQ(cfg.fsq_levels)
        self.reference_encoder = ReferenceEncoder(cfg) if cfg.reference else None
        self.encoder = BlockEncoder(cfg, self.fsq.dim)
        self.decoder = BlockDecoder(cfg, self.fsq.dim)

    # ---- shape helpers -------------------------------------------------
    def _fold(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B,3,T,H,W]`` -> ``[B*G,ft*3,H,W]`` with G = T/ft groups."""
        b, c, t, h, w = frames.shape
        ft = self.cfg.temporal_factor
        x = frames.reshape(b, c, t // ft, ft, h, w).permute(0, 2, 3, 1, 4, 5)
        return x.reshape(b * (t // ft), ft * c, h, w)

    def _unfold(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """``[B*G,ft*3,H,W]`` -> ``[B,3,G*ft,H,W]``."""
        n, _, h, w = x.shape
        ft = self.cfg.temporal_factor
        groups = n // batch
        x = x.reshape(batch, groups, ft, 3, h, w).permute(0, 3, 1, 2, 4, 5)
        return x.reshape(batch, 3, groups * ft, h, w)

    @staticmethod
    def _per_group(feats: tuple[torch.Tensor, ...], groups: int) -> tuple[torch.Tensor, ...]:
        """Repeat per-clip reference features ``[B,C,h,w]`` for each of G groups -> ``[B*G,C,h,w]``."""
        out = []
        for f in feats:
            b, c, h, w = f.shape
            out.append(f.unsqueeze(1).expand(b, groups, c, h, w).reshape(b * groups, c, h, w))
        return tuple(out)

    def reference_features(self, reference: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """Reference ``[B,3,H,W]`` in [-1,1] -> features at 1/2, 1/4, 1/8 (None for the twin)."""
        return None if self.reference_encoder is None else self.reference_encoder(reference)

    # ---- public API ----------------------------------------------------
    def encode_latent(self, reference: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Unquantised latents ``[B*G,D,H/8,W/8]`` for frames ``[B,3,T,H,W]`` in [-1,1]."""
        groups = frames.shape[2] // self.cfg.temporal_factor
        feats = self.reference_features(reference)
        folded = self._fold(frames)
        if feats is not None:
            feats = self._per_group(feats, groups)
            folded = torch.cat([folded, folded - self._reference_pixels(reference, groups)], 1)
        return self.encoder(folded, feats)

    def _reference_pixels(self, reference: torch.Tensor, groups: int) -> torch.Tensor:
        """Reference ``[B,3,H,W]`` laid out like folded frames: ``[B*G,ft*3,H,W]``."""
        (pixels,) = self._per_group((reference.repeat(1, self.cfg.temporal_factor, 1, 1),), groups)
        return pixels

    def encode(self, reference: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """(reference ``[B,3,H,W]``, frames ``[B,3,T,H,W]``, both in [-1,1]) -> int32 ``[B,T/ft,H/8,W/8]``."""
        b = frames.shape[0]
        z = self.encode_latent(reference, frames)
        ids = self.fsq.codes_to_ids(self.fsq.quantize(z))
        return ids.reshape(b, -1, ids.shape[-2], ids.shape[-1])

    def decode_codes(self, reference: torch.Tensor, codes: torch.Tensor, batch: int) -> torch.Tensor:
        """Codes ``[B*G,D,h,w]`` -> frames ``[B,3,G*ft,8h,8w]`` (unclamped, ~[-1,1])."""
        groups = codes.shape[0] // batch
        feats = self.reference_features(reference)
        feats = None if feats is None else self._per_group(feats, groups)
        x, motion = self.decoder(codes, feats)
        if self.cfg.reference:
            # Residual over the (motion-compensated) reference: static or moved content costs few tokens.
            base = self._reference_pixels(reference, groups) if motion is None else warp_reference(reference, motion)
            x = x + base
        return self._unfold(x, batch)

    def decode(self, reference: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(reference ``[B,3,H,W]`` in [-1,1], tokens int32 ``[B,G,h,w]``) -> frames ``[B,3,G*ft,8h,8w]`` in [-1,1]."""
        b, g, h, w = tokens.shape
        codes = self.fsq.ids_to_codes(tokens.reshape(b * g, h, w))
        return self.decode_codes(reference, codes, b).clamp(-1.0, 1.0)

    def forward(self, reference: torch.Tensor, frames: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction ``[B,3,T,H,W]`` unclamped, ids ``[B,G,h,w]`` int32,
        pre-quantisation latents ``[B*G,D,h,w]`` for the saturation penalty)."""
        b = frames.shape[0]
        latent = self.encode_latent(reference, frames)
        codes, ids = self.fsq(latent)
        recon = self.decode_codes(reference, codes, b)
        return recon, ids.reshape(b, -1, ids.shape[-2], ids.shape[-1]), latent


def warp_reference(reference: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """Backward-warp the reference once per frame.

    reference ``[B,3,H,W]`` in [-1,1]; motion ``[B*G,2*ft,H/2,W/2]``, per frame the (x, y) offset in
    full-resolution pixels at which each output pixel samples the reference.
    Returns ``[B*G,3*ft,H,W]`` laid out like folded frames (frame-major, then RGB).
    """
    b, _, h, w = reference.shape
    n, c, _, _ = motion.shape
    ft = c // 2
    motion = F.interpolate(motion, scale_factor=2.0, mode="bilinear", align_corners=False)
    motion = motion.reshape(n * ft, 2, h, w)
    # Pixel centres in grid_sample's normalised [-1,1] coordinates (align_corners=False).
    # Integer ranges, cast after: TensorRT parses a float Range only when its bounds are constants.
    xs = (torch.arange(w, device=motion.device).to(motion.dtype) + 0.5) * (2.0 / w) - 1.0
    ys = (torch.arange(h, device=motion.device).to(motion.dtype) + 0.5) * (2.0 / h) - 1.0
    gx = xs.view(1, 1, w) + motion[:, 0] * (2.0 / w)
    gy = ys.view(1, h, 1) + motion[:, 1] * (2.0 / h)
    grid = torch.stack([gx, gy], dim=-1)  # [N*ft,H,W,2]
    per_frame = n * ft // b
    ref = reference.unsqueeze(1).expand(b, per_frame, 3, h, w).reshape(n * ft, 3, h, w)
    warped = F.grid_sample(ref, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return warped.reshape(n, ft * 3, h, w)


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
