"""Whether TensorRT engines can be built here, asked before any work (torch is imported only where TensorRT
is installed: ``reftok-export --tensorrt require`` fails in about a second on a machine without it)."""

from __future__ import annotations

from reftok_deploy.base.engines import gpu_name, tensorrt_version
from reftok_deploy.base.errors import ReftokError


def tensorrt_missing() -> str | None:
    """What stops TensorRT engines from being built here ("TensorRT", "a CUDA GPU"), or None."""
    if tensorrt_version() is None:
        return "TensorRT"
    return "a CUDA GPU" if gpu_name() is None else None


def check_tensorrt(mode: str) -> None:
    """``--tensorrt require`` where TensorRT or a GPU is missing: one error line, before any work."""
    missing = tensorrt_missing() if mode == "require" else None
    if missing is not None:
        raise ReftokError(f"--tensorrt require: {missing} not found on this machine")
