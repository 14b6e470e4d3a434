"""Shared fixtures: real stills from scikit-image under synthetic camera motion, written as video files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from reftok_deploy.data import camera_motion_clip
from reftok_deploy.model import PRESETS, RefTok


def moving_still(name: str, frames: int, size: int, seed: int = 0) -> np.ndarray:
    """``[frames,size,size,3]`` uint8 RGB: a scikit-image photograph under pan/zoom/rotation."""
    import skimage.data

    from reftok_deploy.video import to_rgb

    image = to_rgb(getattr(skimage.data, name)(), "RGB")
    return camera_motion_clip(image, frames, size, np.random.default_rng(seed))


def write_video(path: Path, frames: np.ndarray, fps: float = 10.0) -> Path:
    """Write ``[N,H,W,3]`` uint8 RGB as an MJPG .avi."""
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return path


@pytest.fixture(scope="session")
def real_clip() -> np.ndarray:
    """19 frames (two GOPs + 1) of the astronaut photograph under camera motion, 64x64."""
    return moving_still("astronaut", 19, 64)


@pytest.fixture(scope="session")
def video_file(tmp_path_factory, real_clip) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "astronaut.avi", real_clip)


def randomised(model: RefTok) -> RefTok:
    """Give the zero-initialised heads (pixels, motion) random weights so decodes depend on everything
    and the warp moves pixels; returns the model in eval mode."""
    heads = [model.decoder.to_pixels] + ([model.decoder.to_motion] if model.decoder.to_motion is not None else [])
    for head in heads:
        for p in head.parameters():
            torch.nn.init.normal_(p, std=0.05)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model() -> RefTok:
    """A randomly initialised RefTok (version 2: motion, gate, residual) with non-zero heads."""
    torch.manual_seed(0)
    return randomised(RefTok(PRESETS["tiny"]))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model) -> Path:
    from reftok_deploy.checkpoint import save_checkpoint

    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("ck") / "tiny")


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_model):
    """Encoder/decoder FP32 ONNX of the tiny model per exporter, exported once per session."""
    from reftok_deploy.export.onnx_export import export_graph

    cache: dict[str, dict[str, Path]] = {}

    def get(exporter: str) -> dict[str, Path]:
        if exporter not in cache:
            folder = tmp_path_factory.mktemp(exporter)
            cache[exporter] = {g: export_graph(tiny_model, g, folder / f"{g}.onnx", dynamo=exporter == "dynamo")
                               for g in ("encoder", "decoder")}
        return cache[exporter]

    return get
