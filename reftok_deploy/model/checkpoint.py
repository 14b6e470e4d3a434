"""Checkpoints: a folder with ``model.safetensors`` (weights) and ``config.json``.

config.json holds ``{"format": "reftok-checkpoint", "model": RefTokConfig,
"weights_sha256": ..., "training": {...}, "metrics": {...}}``. Loading checks
every field, the weights' hash, names, shapes, dtypes and finiteness, and turns
any problem into a one-line :class:`ReftokError`. Nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.files import AtomicFile, atomic_write_bytes, read_json_object, sha256_file
from reftok_deploy.base.spec import MODEL_VERSIONS

if TYPE_CHECKING:  # torch and the model load only where weights are read or written
    import torch

    from reftok_deploy.model.reftok import RefTok, RefTokConfig

FORMAT = "reftok-checkpoint"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MAX_CONFIG_BYTES = 1 << 20


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors ``save_file`` whole or not at all (see :class:`reftok_deploy.base.files.AtomicFile`)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with AtomicFile(path) as out:
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(out.tmp), metadata=metadata)
        except SafetensorError as exc:  # its writer's I/O errors (a full disk) come as this, not as OSError
            raise ReftokError(f"cannot write {path}: {str(exc).splitlines()[0]}; nothing was written there") from None


def save_checkpoint(model: RefTok, folder: str | Path, training: dict[str, Any] | None = None,
                    metrics: dict[str, Any] | None = None) -> Path:
    """Write weights then config (config last, so a folder with a config is complete)."""
    folder = Path(folder)
    weights = folder / WEIGHTS
    atomic_save_tensors(model.state_dict(), weights)
    config = {
        "format": FORMAT,
        "model": model.cfg.to_dict(),
        "weights_sha256": sha256_file(weights),
        "training": training or {},
        "metrics": metrics or {},
    }
    atomic_write_bytes(folder / CONFIG, (json.dumps(config, indent=2) + "\n").encode())
    return folder


def read_config(folder: str | Path) -> dict[str, Any]:
    """Parse and validate ``config.json`` of a checkpoint folder."""
    folder = Path(folder)
    if not folder.exists():
        raise ReftokError(f"checkpoint not found: {folder}")
    if not folder.is_dir():
        raise ReftokError(f"checkpoint must be a folder holding {WEIGHTS} and {CONFIG}: {folder}")
    path = folder / CONFIG
    if not path.is_file():
        raise ReftokError(f"checkpoint {folder} has no {CONFIG}")
    config = read_json_object(path, MAX_CONFIG_BYTES, FORMAT, "RefTok checkpoint config")
    model = config.get("model")
    if not isinstance(model, dict):
        raise ReftokError(f"{path} has no 'model' section")
    version = model.get("model_version")
    if version == 1:
        raise ReftokError(f"{folder} is a version-1 checkpoint; this reftok-deploy runs versions {', '.join(map(str, MODEL_VERSIONS))} (motion-compensated): "
                          f"use the shipped checkpoint, or train one seeded from it with reftok-train --init-from {folder}")
    if version not in MODEL_VERSIONS:
        raise ReftokError(f"{folder} is model version {version!r}; this reftok-deploy reads versions "
                          f"{', '.join(map(str, MODEL_VERSIONS))}")
    return config


def config_from_checkpoint(config: dict[str, Any], where: str | Path) -> RefTokConfig:
    from reftok_deploy.model.reftok import RefTokConfig

    try:
        return RefTokConfig.from_dict(config["model"])
    except (TypeError, ValueError) as exc:
        raise ReftokError(f"{where}: invalid model config: {exc}") from None


def load_checkpoint(folder: str | Path, map_location: str = "cpu") -> tuple[RefTok, dict[str, Any]]:
    """Load and validate a checkpoint folder -> (model in eval mode, parsed config.json)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from reftok_deploy.model.reftok import RefTok

    folder = Path(folder)
    config = read_config(folder)
    cfg = config_from_checkpoint(config, folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ReftokError(f"checkpoint {folder} has no {WEIGHTS}")
    expected = config.get("weights_sha256")
    if expected is not None and sha256_file(weights) != expected:
        raise ReftokError(f"{weights} does not match the sha256 in {CONFIG}: corrupt or replaced weights")
    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ReftokError(f"cannot read {weights}: {exc}") from None
    model = RefTok(cfg)
    wanted = model.state_dict()
    missing, unexpected = set(wanted) - set(state), set(state) - set(wanted)
    if missing or unexpected:
        raise ReftokError(f"{weights} does not fit its config: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    for name, tensor in state.items():
        if tensor.shape != wanted[name].shape or tensor.dtype != wanted[name].dtype:
            raise ReftokError(f"{weights}: tensor {name} is {tuple(tensor.shape)} {tensor.dtype}, "
                              f"expected {tuple(wanted[name].shape)} {wanted[name].dtype}")
        if not torch.isfinite(tensor).all():
            raise ReftokError(f"{weights}: tensor {name} holds NaN or Inf")
    model.load_state_dict(state)
    return model.eval(), config


SHIPPED = Path(__file__).resolve().parents[1] / "weights"  # reftok_deploy/weights


def default_checkpoint(twin: bool = False) -> Path:
    """Folder of the checkpoint shipped inside the package (RefTok, or its twin)."""
    return SHIPPED / ("twin" if twin else "reftok")


def weights_sha256(folder: str | Path) -> str:
    """sha256 of a checkpoint's weights (from config.json, else hashed): identifies the checkpoint everywhere."""
    return read_config(folder).get("weights_sha256") or sha256_file(Path(folder) / WEIGHTS)
