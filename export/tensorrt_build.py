"""TensorRT engines from the exported ONNX, through Polygraphy's loaders (imported lazily).

- TensorRT >= 11: precision lives in the graph. FP16 engines are built from the mixed
  FP16 ONNX and INT8 engines from the Q/DQ ONNX, as strongly typed networks.
- TensorRT <= 10: FP16 engines come from the FP32 ONNX with the FP16 builder flag, the
  token-arithmetic layers pinned to FP32 (precision constraints 'obey').
- One optimisation profile over batch/height/width; a timing cache shared by builds.
- Engines are cached by ONNX sha256 + TensorRT version + GPU + precision + profile: the
  key sits in a JSON file beside the engine, and an engine whose key differs (stale ONNX,
  other GPU or TensorRT) is refused and rebuilt.
This module runs only where TensorRT and a GPU exist; CPU machines never import tensorrt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from reftok_deploy.files import atomic_write_bytes
from reftok_deploy.errors import ReftokError


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


def _profiles(graph: str, profile: ShapeProfile, block_frames: int, groups: int):
    from polygraphy.backend.trt import Profile

    def shapes(b: int, h: int, w: int) -> dict[str, tuple[int, ...]]:
        second = ("frames", (b, 3, block_frames, h, w)) if graph == "encoder" else ("tokens", (b, groups, h // 8, w // 8))
        return {"reference": (b, 3, h, w), second[0]: second[1]}

    lo, mid, hi = shapes(*profile.min), shapes(*profile.opt), shapes(*profile.max)
    built = Profile()
    for name in lo:
        built.add(name, min=lo[name], opt=mid[name], max=hi[name])
    return [built]


def build_engine(onnx_path: Path, graph: str, precision: str, out_folder: Path, profile: ShapeProfile,
                 block_frames: int, groups: int, fp32_nodes: list[str] | None = None,
                 previous: Path | None = None, say=print, calibrator=None) -> Path:
    """Build the engine of one ONNX graph into ``out_folder``, or reuse a matching one from ``previous``.

    Engines in ``previous`` for the same graph and precision whose key differs are reported as
    stale and not used.
    """
    import tensorrt as trt
    from polygraphy.backend.trt import (CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath,
                                        SetLayerPrecisions)

    from reftok_deploy.files import sha256_file

    version = str(trt.__version__)
    gpu = gpu_name() or "unknown-gpu"
    key = engine_key(sha256_file(onnx_path), precision, profile, version, gpu)
    path = engine_path(out_folder, graph, key)
    if previous is not None:
        cached = engine_path(previous, graph, key)
        if check_engine(cached, key) is None:
            shutil.copy2(cached, path)
            shutil.copy2(cached.with_suffix(".json"), path.with_suffix(".json"))
            say(f"reusing cached engine {cached.name}")
            return path
        for other in sorted(previous.glob(f"{graph}.{precision}.*.engine")):
            try:
                old = json.loads(other.with_suffix(".json").read_text())
            except (OSError, json.JSONDecodeError):
                old = {}
            diffs = [k for k in key if old.get(k) != key[k]] or ["unknown key"]
            say(f"refusing stale engine {other.name} (built for another {', '.join(diffs)}); rebuilding")
        if (previous / "timing.cache").is_file() and not (out_folder / "timing.cache").exists():
            shutil.copy2(previous / "timing.cache", out_folder / "timing.cache")
    # Q/DQ graphs and TensorRT 11 are strongly typed; a legacy calibrator means implicit INT8 (TRT <= 10).
    strongly_typed = calibrator is None and (int(version.split(".")[0]) >= 11 or precision == "int8")
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=strongly_typed)
    config_args: dict = {"profiles": _profiles(graph, profile, block_frames, groups)}
    if not strongly_typed and precision in ("fp16", "int8"):
        config_args.update(fp16=True, precision_constraints="obey")
        if precision == "int8":
            config_args.update(int8=True, calibrator=calibrator)
        if fp32_nodes:
            network = SetLayerPrecisions(network, {name: trt.float32 for name in fp32_nodes})
    cache = out_folder / "timing.cache"
    config = CreateConfig(load_timing_cache=str(cache) if cache.is_file() else None, **config_args)
    engine_bytes = EngineBytesFromNetwork(network, config=config, save_timing_cache=str(cache))()
    if engine_bytes is None:
        raise ReftokError(f"TensorRT could not build {graph} ({precision}) from {onnx_path}")
    out_folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(bytes(engine_bytes))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(key, indent=2).encode())
    return path
