"""TensorRT engine identity, shared by the builder and the runner: shape profiles, cache keys,
engine file names, staleness checks and tool detection. Base layer: imports TensorRT and torch
only inside the detection functions, so CPU boxes never load them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from reftok_deploy.base.errors import ReftokError


@dataclass(frozen=True)
class ShapeProfile:
    """Optimisation profile of frame sizes: (batch, height, width) at min, opt and max (multiples of 8)."""

    min: tuple[int, int, int] = (1, 64, 64)
    opt: tuple[int, int, int] = (1, 256, 256)
    max: tuple[int, int, int] = (4, 1088, 1920)

    @classmethod
    def parse(cls, text: str) -> "ShapeProfile":
        """'1x64x64:1x256x256:4x1088x1920' (BxHxW at min:opt:max)."""
        try:
            parts = [tuple(int(v) for v in p.split("x")) for p in text.split(":")]
            profile = cls(*parts)  # type: ignore[arg-type]
            if any(len(p) != 3 for p in parts) or len(parts) != 3:
                raise ValueError
        except (ValueError, TypeError):
            raise ReftokError(f"bad profile {text!r}: expected BxHxW:BxHxW:BxHxW, e.g. 1x64x64:1x256x256:4x1088x1920") from None
        for shape in parts:
            if shape[1] % 8 or shape[2] % 8 or min(shape) < 1:
                raise ReftokError(f"profile sizes must be positive and H, W multiples of 8: {text}")
        if not all(a <= b <= c for a, b, c in zip(profile.min, profile.opt, profile.max)):
            raise ReftokError(f"profile must satisfy min <= opt <= max per dimension: {text}")
        return profile


def tensorrt_version() -> str | None:
    """Installed TensorRT version, or None (never raises)."""
    try:
        import tensorrt as trt
    except Exception:
        return None
    return str(trt.__version__)


def gpu_name() -> str | None:
    """'<name> sm<major><minor>' of GPU 0, or None without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return f"{torch.cuda.get_device_name(0)} sm{major}{minor}"


def engine_key(onnx_sha256: str, precision: str, profile: ShapeProfile, trt_version: str, gpu: str) -> dict:
    # Lists, not tuples: the key must compare equal after a JSON round trip.
    profile_lists = {k: list(v) for k, v in asdict(profile).items()}
    return {"onnx_sha256": onnx_sha256, "precision": precision, "profile": profile_lists,
            "tensorrt": trt_version, "gpu": gpu}


def engine_path(folder: Path, graph: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return folder / f"{graph}.{key['precision']}.{digest}.engine"


def check_engine(path: Path, key: dict) -> str | None:
    """None if ``path`` is a complete engine built for ``key``; otherwise why it is stale or foreign."""
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        return "no engine built yet"
    try:
        built = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        return f"{sidecar} is unreadable"
    diffs = [k for k in key if built.get(k) != key[k]]
    return f"built for another {', '.join(diffs)}" if diffs else None
