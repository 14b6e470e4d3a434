"""Backend specs ('torch', 'onnxruntime:fp32', 'tensorrt:fp16', ...) -> Runner instances."""

from __future__ import annotations

from pathlib import Path

from reftok_deploy.errors import ReftokError
from reftok_deploy.runtimes.base import Runner

ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch"}
BACKENDS = ("torch", "onnxruntime", "tensorrt")


def parse_spec(spec: str) -> tuple[str, str]:
    """'onnxruntime:fp16' -> ('onnxruntime', 'fp16'); 'torch' -> ('torch', 'fp32')."""
    backend, _, precision = spec.partition(":")
    backend = ALIASES.get(backend, backend)
    precision = precision or ("fp32" if backend != "tensorrt" else "fp16")
    if backend not in BACKENDS or precision not in ("fp32", "fp16", "int8") or (backend == "torch" and precision != "fp32"):
        raise ReftokError(f"unknown backend {spec!r}: use torch, onnxruntime:fp32|fp16|int8 or tensorrt:fp32|fp16|int8")
    return backend, precision


def _same_checkpoint(manifest: dict, folder: Path, checkpoint: str | Path | None) -> None:
    """Refuse an export made from another checkpoint than the one the run is labelled with."""
    if checkpoint is None:
        return
    from reftok_deploy.checkpoint import weights_sha256

    if manifest["checkpoint"]["weights_sha256"] != weights_sha256(checkpoint):
        raise ReftokError(f"{folder} was exported from another checkpoint than {checkpoint}: re-export, or pass "
                          "the matching --checkpoint")


def make_runner(spec: str, export_folder: str | Path | None, checkpoint: str | Path | None,
                device: str = "cpu", threads: int | None = None) -> Runner:
    """Build (not load) the runner for ``spec``; ONNX artefacts are checked against their manifest."""
    backend, precision = parse_spec(spec)
    if backend == "torch":
        from reftok_deploy.runtimes.torch_runner import TorchRunner

        if checkpoint is None:
            raise ReftokError("the torch backend needs a checkpoint")
        return TorchRunner(checkpoint, device=device)
    if export_folder is None:
        raise ReftokError(f"backend {spec} needs an export folder (run reftok-export first)")
    from reftok_deploy.export.manifest import onnx_model_version, read_manifest
    from reftok_deploy.model import MODEL_VERSION

    folder = Path(export_folder)
    manifest = read_manifest(folder)
    _same_checkpoint(manifest, folder, checkpoint)
    if backend == "tensorrt":
        from reftok_deploy.runtimes.tensorrt_runner import TensorRTRunner

        return TensorRTRunner(folder, precision)
    from reftok_deploy.runtimes.onnxruntime_runner import OnnxRuntimeRunner

    files = {}
    for graph in ("encoder", "decoder"):
        entry = manifest["artifacts"].get(f"{graph}.{precision}")
        if entry is None:
            flag = {"fp16": "--fp16", "int8": "--int8 --calib-data ..."}.get(precision, "")
            raise ReftokError(f"{folder} has no {precision} {graph}: re-run reftok-export {flag}".rstrip())
        files[graph] = folder / entry["file"]
        version = onnx_model_version(files[graph])
        if version != MODEL_VERSION:
            raise ReftokError(f"{files[graph]} is an ONNX of model version {version}; this reftok-deploy runs "
                              f"version {MODEL_VERSION}: re-export it")
    # --device cuda / tensorrt select onnxruntime's CUDA or TensorRT execution provider.
    provider = {"cuda": "cuda", "tensorrt": "tensorrt"}.get(device.split(":")[0], "cpu")
    runner = OnnxRuntimeRunner(files, provider=provider, threads=threads, name=f"onnxruntime-{precision}")
    cfg = manifest["model"]
    runner.block_frames, runner.temporal_factor = cfg["block_frames"], cfg["temporal_factor"]
    return runner


def cached_export(checkpoint: str | Path, say=lambda _: None) -> Path:
    """An FP32 ONNX export of ``checkpoint`` in the user cache, made once (TorchScript exporter, seconds)."""
    import os

    from reftok_deploy.checkpoint import weights_sha256
    from reftok_deploy.export.manifest import read_manifest

    sha = weights_sha256(checkpoint)
    root = Path(os.environ.get("REFTOK_CACHE", Path.home() / ".cache" / "reftok-deploy"))
    folder = root / "exports" / sha[:16]
    try:
        read_manifest(folder)
        return folder
    except ReftokError:
        pass
    from reftok_deploy.export.pipeline import ExportOptions, run_export

    say(f"exporting ONNX for onnxruntime into {folder} (once per checkpoint)")
    run_export(checkpoint, folder, ExportOptions(dynamo=False, validate=False, tensorrt="skip"))
    return folder


def auto_backend(export_folder: str | Path | None, checkpoint: str | Path, device: str, say=lambda _: None) -> tuple[str, Path | None, str]:
    """Pick the fastest backend available here -> (spec, export folder, reason).

    Order: TensorRT engines > onnxruntime CUDA > onnxruntime CPU > PyTorch eager (measured on
    the 2-core CPU with reftok-bench: onnxruntime FP32 1.38x PyTorch eager at 2 threads, 1.30x at 1).
    """
    import onnxruntime as ort

    from reftok_deploy.export.manifest import read_manifest
    from reftok_deploy.export.tensorrt_build import gpu_name, tensorrt_version

    if export_folder is not None:
        manifest = read_manifest(export_folder)
        engines = manifest.get("tensorrt", {}).get("engines", {})
        if tensorrt_version() and gpu_name():
            for precision in ("int8", "fp16", "fp32"):
                if f"encoder.{precision}" in engines and f"decoder.{precision}" in engines:
                    return f"tensorrt:{precision}", Path(export_folder), f"TensorRT {precision} engines on {gpu_name()}"
    providers = ort.get_available_providers()
    folder = Path(export_folder) if export_folder is not None else None
    if device.startswith("cuda") and "CUDAExecutionProvider" in providers:
        folder = folder or cached_export(checkpoint, say)
        return "onnxruntime:fp32", folder, "onnxruntime CUDA execution provider"
    try:
        folder = folder or cached_export(checkpoint, say)
    except (ReftokError, OSError) as exc:
        return "torch", None, f"PyTorch eager (no ONNX export available: {exc})"
    return "onnxruntime:fp32", folder, "onnxruntime CPU (faster than PyTorch eager here)"
