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


# torch's dynamo exporter logs its "torchvision is not installed" notices here (tests/test_quiet_export.py)
EXPORTER_NOTICE_LOGGER = "torch.onnx._internal.exporter._registration"


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_model):
    """Encoder/decoder FP32 ONNX of the tiny model per exporter ("dynamo", "torchscript"), exported once per
    session (a dynamo export takes half a minute on 2 cores). ``exported.logged[exporter]``: what the exporter's
    registration logger emitted at WARNING and above while exporting (as a console would show it)."""
    import logging

    from reftok_deploy.export.onnx_export import export_graph

    cache: dict[str, dict[str, Path]] = {}

    class Catch(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    def get(exporter: str) -> dict[str, Path]:
        if exporter not in cache:
            folder = tmp_path_factory.mktemp(exporter)
            logger, catch = logging.getLogger(EXPORTER_NOTICE_LOGGER), Catch()
            level = logger.level
            logger.setLevel(logging.WARNING)  # as on a console; an in-process command may have quietened it
            logger.addHandler(catch)
            try:
                cache[exporter] = {g: export_graph(tiny_model, g, folder / f"{g}.onnx", dynamo=exporter == "dynamo")
                                   for g in ("encoder", "decoder")}
            finally:
                logger.removeHandler(catch)
                logger.setLevel(level)
            get.logged[exporter] = catch.messages
        return cache[exporter]

    get.logged = {}
    return get


def invoke(command, args):
    """Run a click command in-process with ``args`` (paths and numbers made strings); exceptions propagate."""
    from click.testing import CliRunner

    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, fragment: str, code: int = 2) -> None:
    """Assert a CliRunner result is exit ``code`` with exactly one error line (``error:`` ... ``fragment``) and no
    traceback; other lines (progress, warnings) may come with it (see :func:`one_error_line` for the strict form)."""
    assert result.exit_code == code, (result.exit_code, result.output)
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith("error:") and fragment in errors[0], result.stderr


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
def shipped_checkpoint() -> Path:
    """The checkpoint shipped in the package (the tiny preset's architecture, trained): FP16 and INT8 validation
    measure something on it, where a random net's noisy outputs may legitimately miss the FP16 tolerance."""
    from reftok_deploy.model.checkpoint import default_checkpoint

    return default_checkpoint()


@pytest.fixture(scope="session")
def export_fast(video_file) -> list:
    """reftok-export options that keep an export quick and its validation real: the torchscript exporter (seconds,
    where dynamo takes a minute), validation on the 2 GOPs of :func:`video_file` (a real photograph under camera
    motion, 64x64) instead of 3 GOPs of the built-in clips at 256x256."""
    return ["--exporter", "torchscript", "--validate-data", video_file, "--validate-size", "64", "--max-gops", "2"]


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory) -> Path:
    """INT8 calibration data: a video of 19 frames (2 GOPs) and a still (4 camera paths over it): 6 GOPs."""
    folder = tmp_path_factory.mktemp("calib")
    write_video(folder / "a.avi", moving_still("coffee", 19, 64))
    cv2.imwrite(str(folder / "still.png"), moving_still("text", 1, 96)[0][:, :, ::-1])
    return folder


def validation_passed(folder: Path, precision: str, clip: Path) -> dict:
    """Assert that the export in ``folder`` validated ``precision`` against PyTorch on the real clip ``clip`` and
    passed, held to the named tolerance ``TOLERANCES[precision]`` -> that precision's report."""
    import json

    from reftok_deploy.base.spec import TOLERANCES

    validation = json.loads((folder / "manifest.json").read_text())["validation"]
    report, tolerance = validation["reports"][precision], TOLERANCES[precision]
    assert report["tolerance"] == vars(tolerance), (precision, report["tolerance"])
    assert validation["clips"] == [str(clip)] and report["feeds"] == 2, validation
    assert validation["ok"] and report["ok"] and not report["failures"], validation["failures"]
    assert report["token_agreement"] >= tolerance.min_token_agreement
    assert report["decoder_max_abs"] <= tolerance.max_abs_frames
    assert report["decoder_mean_abs"] <= tolerance.max_mean_abs_frames
    assert abs(report["psnr_delta_db"]) <= tolerance.max_psnr_delta_db
    return report


@pytest.fixture(scope="session")
def fp16_export(tmp_path_factory, shipped_checkpoint, export_fast, video_file) -> Path:
    """The shipped checkpoint exported once per session to FP32 + mixed FP16 by reftok-export, validated (exit 0);
    copy it (shutil.copytree into tmp_path) before changing anything in it."""
    from reftok_deploy.cli.export import main as export_main

    out = tmp_path_factory.mktemp("fp16-export") / "export"
    result = invoke(export_main, ["--checkpoint", shipped_checkpoint, "-o", out, "--fp16", *export_fast])
    assert result.exit_code == 0, result.output
    validation_passed(out, "fp16", video_file)
    return out


@pytest.fixture(scope="session")
def int8_export_run(tmp_path_factory, shipped_checkpoint, export_fast, video_file, calib_dir):
    """The shipped checkpoint exported once per session to FP32 + INT8 by reftok-export as README shows it (several
    paths after one --calib-data; more GOPs asked for than the data holds: clamped to its 6, one warning),
    validated (exit 0) -> (folder, the command's result). Copy the folder before changing anything in it."""
    from reftok_deploy.cli.export import main as export_main

    out = tmp_path_factory.mktemp("int8-export") / "export"
    result = invoke(export_main, ["--checkpoint", shipped_checkpoint, "--output", out, "--int8", "--calib-data",
                                  calib_dir / "a.avi", calib_dir / "still.png", "--calib-size", "32", *export_fast])
    assert result.exit_code == 0, result.output
    validation_passed(out, "int8", video_file)
    return out, result


@pytest.fixture(scope="session")
def int8_export(int8_export_run) -> Path:
    """The folder of :func:`int8_export_run`; copy before changing anything in it."""
    return int8_export_run[0]


def perturbed_copy(export: Path, dest: Path, file: str, initializer: str, change) -> Path:
    """A copy of ``export`` whose graph ``file`` has the initializer ``initializer`` replaced by ``change(array)``
    (same dtype), its manifest hash updated so the folder still opens: a wrong weight, not a damaged file."""
    import hashlib
    import json
    import shutil

    import onnx
    from onnx import numpy_helper

    shutil.copytree(export, dest)
    model = onnx.load(str(dest / file))
    for init in model.graph.initializer:
        if init.name == initializer:
            array = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(np.asarray(change(array)).astype(array.dtype), init.name))
            break
    else:
        raise AssertionError(f"{file} has no initializer {initializer}")
    onnx.save(model, str(dest / file))
    manifest = json.loads((dest / "manifest.json").read_text())
    entry = next(e for e in manifest["artifacts"].values() if e["file"] == file)
    entry["sha256"] = hashlib.sha256((dest / file).read_bytes()).hexdigest()
    entry["bytes"] = (dest / file).stat().st_size
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dest


def export_validation(folder: Path, precision: str, clip: Path, checkpoint: Path) -> dict:
    """reftok-export's validation of ``precision``, as :func:`export_fast` sets it up (``clip`` at 64x64, 2 GOPs),
    run again on the export in ``folder`` -> its verdict (``ok``, ``failures``, ``reports``)."""
    import json

    from reftok_deploy.base.video import read_video
    from reftok_deploy.deploy.validation import validate_folder
    from reftok_deploy.export.job import ExportOptions

    artifacts = json.loads((folder / "manifest.json").read_text())["artifacts"]
    options = ExportOptions(precisions=(precision,), validation_clips={str(clip): read_video(clip, size=64)},
                            max_gops=2)
    return validate_folder(folder, artifacts, checkpoint, options, lambda _: None)


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
