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

import json
import shutil
from pathlib import Path

from reftok_deploy.base.engines import ShapeProfile, check_engine, engine_key, engine_path, gpu_name
from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.files import atomic_write_bytes
from reftok_deploy.base.spec import INPUTS, Geometry


def _profiles(graph: str, profile: ShapeProfile, geometry: Geometry):
    from polygraphy.backend.trt import Profile

    def shapes(b: int, h: int, w: int) -> dict[str, tuple[int, ...]]:
        return {spec.name: spec.shape(b, h, w, geometry) for spec in INPUTS[graph]}

    lo, mid, hi = shapes(*profile.min), shapes(*profile.opt), shapes(*profile.max)
    built = Profile()
    for name in lo:
        built.add(name, min=lo[name], opt=mid[name], max=hi[name])
    return [built]


def build_engine(onnx_path: Path, graph: str, precision: str, out_folder: Path, profile: ShapeProfile,
                 geometry: Geometry, fp32_nodes: list[str] | None = None,
                 previous: Path | None = None, say=print, calibrator=None) -> Path:
    """Build the engine of one ONNX graph into ``out_folder``, or reuse a matching one from ``previous``.

    Engines in ``previous`` for the same graph and precision whose key differs are reported as
    stale and not used.
    """
    import tensorrt as trt
    from polygraphy.backend.trt import (CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath,
                                        SetLayerPrecisions)

    from reftok_deploy.base.files import sha256_file

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
    config_args: dict = {"profiles": _profiles(graph, profile, geometry)}
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
    atomic_write_bytes(path, bytes(engine_bytes))
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(key, indent=2).encode())
    return path
