"""Shared fixtures: real stills from scikit-image under synthetic camera motion, written as video files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from reftok_deploy.model.data import camera_motion_clip
from reftok_deploy.model.reftok import PRESETS, RefTok


def moving_still(name: str, frames: int, size: int, seed: int = 0) -> np.ndarray:
    """``[frames,size,size,3]`` uint8 RGB: a scikit-image photograph under pan/zoom/rotation."""
    import skimage.data

    from reftok_deploy.base.video import to_rgb

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
    from reftok_deploy.model.checkpoint import save_checkpoint

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


def one_error_line(result, fragment: str = "", exit_code: int = 2) -> str:
    """Assert a CliRunner result is exit ``exit_code`` with exactly one stderr line, starting ``error:`` and
    holding ``fragment``, and no traceback -> that line."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is a failure, shown whole
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == exit_code, (result.exit_code, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.stderr
    return lines[0]


def tree_listing(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file and folder under ``folder`` -> (size, content hash): compare two listings to prove a command
    changed nothing and left nothing."""
    import hashlib

    listing = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        listing[key] = (-1, b"") if path.is_dir() else (path.stat().st_size, hashlib.sha256(path.read_bytes()).digest())
    return listing


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_checkpoint) -> Path:
    """An FP32 export folder of the tiny checkpoint (torchscript exporter, no validation); copy before editing."""
    from reftok_deploy.export.job import ExportOptions, run_export

    folder = tmp_path_factory.mktemp("tiny-export") / "export"
    run_export(tiny_checkpoint, folder, ExportOptions(dynamo=False, tensorrt="skip"))
    return folder


@pytest.fixture(scope="session")
def users_files(tmp_path_factory, tiny_checkpoint, tiny_export) -> dict:
    """The user's files: a video, a folder of videos, a token stream, links to them, a run folder; the tiny
    checkpoint and export. Tests prove with :func:`tree_listing` of ``root`` that a command left them as they were."""
    import os
    import shutil

    root = tmp_path_factory.mktemp("users-files")
    video = write_video(root / "in.avi", moving_still("chelsea", 18, 64, seed=3))
    (root / "data").mkdir()
    shutil.copy(video, root / "data" / "clip.avi")
    (root / "other").mkdir()
    shutil.copy(video, root / "other" / "clip.avi")
    stream = root / "s.rtok"
    from click.testing import CliRunner

    from reftok_deploy.cli.run import main as run_main

    result = CliRunner().invoke(run_main, ["--video", str(video), "--checkpoint", str(tiny_checkpoint), "--backend",
                                           "torch", "--tokens", str(stream)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    os.link(video, root / "hardlink.avi")
    (root / "symlink.avi").symlink_to(video)
    os.link(stream, root / "stream-link.mp4")
    run = root / "run"
    shutil.copytree(tiny_checkpoint, run / "checkpoint")
    return {"root": root, "video": video, "stream": stream, "ck": tiny_checkpoint, "export": tiny_export, "run": run}
