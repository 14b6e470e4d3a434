"""Backend choice for the commands: an export of the checkpoint made on demand, and ``--backend auto``.

Application layer: it uses both the exporter and the runtimes (neither imports the other).
"""

from __future__ import annotations

from pathlib import Path

from reftok_deploy.errors import ReftokError
from reftok_deploy.manifest import ExportFolder, open_export


def cached_export(checkpoint: str | Path, say=lambda _: None) -> ExportFolder:
    """An FP32 ONNX export of ``checkpoint`` in the user cache (``$REFTOK_CACHE`` or
    ``~/.cache/reftok-deploy``), made once (TorchScript exporter, seconds), opened once."""
    import os

    from reftok_deploy.checkpoint import weights_sha256

    sha = weights_sha256(checkpoint)
    root = Path(os.environ.get("REFTOK_CACHE", Path.home() / ".cache" / "reftok-deploy"))
    folder = root / "exports" / sha[:16]
    try:
        return open_export(folder)
    except ReftokError:
        pass
    from reftok_deploy.export.pipeline import ExportOptions, run_export

    say(f"exporting ONNX for onnxruntime into {folder} (once per checkpoint)")
    run_export(checkpoint, folder, ExportOptions(dynamo=False, tensorrt="skip"))
    return open_export(folder)


def auto_backend(export: ExportFolder | None, checkpoint: str | Path, device: str,
                 say=lambda _: None) -> tuple[str, ExportFolder | None, str]:
    """Pick the fastest backend available here -> (spec, opened export folder, reason).

    Order: TensorRT engines > onnxruntime CUDA > onnxruntime CPU > PyTorch eager (measured on
    the 2-core CPU with reftok-bench: onnxruntime FP32 1.38x PyTorch eager at 2 threads, 1.30x at 1).
    """
    import onnxruntime as ort

    from reftok_deploy.engines import check_engine, gpu_name, tensorrt_version

    if export is not None and tensorrt_version() and gpu_name():
        engines = export.engines()
        here = {"tensorrt": tensorrt_version(), "gpu": gpu_name()}

        def usable(entry) -> bool:  # listed, and built for this GPU and TensorRT
            return (isinstance(entry, dict) and isinstance(entry.get("key"), dict) and isinstance(entry.get("file"), str)
                    and check_engine(export.path / entry["file"], dict(entry["key"], **here)) is None)

        for precision in ("int8", "fp16", "fp32"):
            if usable(engines.get(f"encoder.{precision}")) and usable(engines.get(f"decoder.{precision}")):
                return f"tensorrt:{precision}", export, f"TensorRT {precision} engines on {gpu_name()}"
    providers = ort.get_available_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" in providers:
        try:
            return "onnxruntime:fp32", export or cached_export(checkpoint, say), "onnxruntime CUDA execution provider"
        except (ReftokError, OSError) as exc:
            return "torch", None, f"PyTorch eager (no ONNX export available: {exc})"
    try:
        export = export or cached_export(checkpoint, say)
    except (ReftokError, OSError) as exc:
        return "torch", None, f"PyTorch eager (no ONNX export available: {exc})"
    return "onnxruntime:fp32", export, "onnxruntime CPU (faster than PyTorch eager here)"
