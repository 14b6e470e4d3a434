"""Truncated or damaged videos: read as far as they decode, reported once (exit code 3); intact ones never.

Clips are a scikit-image photograph under camera motion, written by ffmpeg (imageio-ffmpeg) and by
OpenCV, then cut short. Intact files whose frame count is not what decodes (an MP4 with an edit
list, an AVI with empty repeat-frame chunks) must stay quiet.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from reftok_deploy.base.errors import damaged_inputs, forget_damaged_inputs
from reftok_deploy.runtimes.capture import FrameSource, parse_source
from reftok_deploy.base.video import iter_video, read_video
from reftok_deploy.base.video_integrity import inspect_container
from tests.conftest import moving_still, write_video

FRAMES, SIZE, FPS = 30, 64, 10


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return moving_still("astronaut", FRAMES, SIZE)


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:
        pytest.skip(f"imageio-ffmpeg has no ffmpeg binary: {exc}")


@pytest.fixture(autouse=True)
def no_damage_on_record():
    forget_damaged_inputs()
    yield
    forget_damaged_inputs()


def encode(ffmpeg: str, frames: np.ndarray, path: Path, *options: str, vf: str | None = None) -> Path:
    """Write ``[N,H,W,3]`` RGB with ffmpeg (libx264 unless ``options`` say otherwise)."""
    h, w = frames.shape[1:3]
    command = [ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
               "-r", str(FPS), "-i", "-", *(["-vf", vf] if vf else []), *options, str(path)]
    subprocess.run(command, input=frames.tobytes(), check=True, timeout=60)
    return path


def x264(ffmpeg: str, frames: np.ndarray, path: Path, *options: str) -> Path:
    return encode(ffmpeg, frames, path, "-c:v", "libx264", "-pix_fmt", "yuv420p", *options)


def cut(path: Path, fraction: float) -> Path:
    """A copy of ``path`` holding only its first ``fraction`` of bytes, as an interrupted copy leaves it."""
    data = path.read_bytes()
    out = path.with_name(f"{path.stem}-cut{round(fraction * 100)}{path.suffix}")
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


@pytest.fixture(scope="module")
def faststart(tmp_path_factory, ffmpeg, clip) -> Path:
    """An intact MP4 with its index (moov) first: a cut copy still opens and stops early."""
    return x264(ffmpeg, clip, tmp_path_factory.mktemp("mp4") / "clip.mp4", "-movflags", "+faststart")


def test_truncated_mp4_is_read_as_far_as_it_goes_and_reported_once(faststart):
    truncated = cut(faststart, 0.8)  # the index takes a third of so small a file: 0.8 keeps about half the frames
    frames = read_video(truncated)
    assert 0 < len(frames) < FRAMES
    assert np.array_equal(frames, read_video(faststart)[: len(frames)])  # what it has, decoded as the intact file
    warnings = damaged_inputs()
    assert warnings == [f"{truncated}: read {len(frames)} of the {FRAMES} frames its container lists "
                        f"(truncated or damaged); used those {len(frames)}"]
    assert "\n" not in warnings[0]


def test_intact_mp4_and_a_caller_that_stops_early_report_nothing(faststart):
    assert len(read_video(faststart)) == FRAMES
    assert len(read_video(cut(faststart, 0.9), max_frames=2)) == 2  # stopped by the caller, not by the file
    frames = iter_video(cut(faststart, 0.9))
    next(frames)
    frames.close()
    assert damaged_inputs() == []


def test_unopenable_truncated_mp4_says_truncated(tmp_path, ffmpeg, clip):
    from reftok_deploy.base.errors import ReftokError

    moov_last = x264(ffmpeg, clip, tmp_path / "clip.mp4")  # ffmpeg's default: the index after the frames
    with pytest.raises(ReftokError, match="truncated"):
        read_video(cut(moov_last, 0.5))
    assert damaged_inputs() == []


def test_frame_source_reports_a_truncated_file_once_when_it_ends(faststart):
    truncated = cut(faststart, 0.8)
    expected = len(read_video(truncated))
    forget_damaged_inputs()
    with FrameSource(parse_source(str(truncated))) as source:
        frames = list(source)
    assert len(frames) == expected
    assert len(damaged_inputs()) == 1 and f"read {expected} of the {FRAMES} frames" in damaged_inputs()[0]
    forget_damaged_inputs()
    with FrameSource(parse_source(f"file://{faststart}")) as source:
        assert len(list(source)) == FRAMES
    assert damaged_inputs() == []


def test_cut_avi_and_mkv_are_reported(tmp_path, ffmpeg, clip):
    avi = write_video(tmp_path / "clip.avi", clip, FPS)  # OpenCV's MJPG writer
    mkv = x264(ffmpeg, clip, tmp_path / "clip.mkv")
    for intact in (avi, mkv):
        assert len(read_video(intact)) == FRAMES
    assert damaged_inputs() == []
    read_video(cut(avi, 0.5))
    read_video(cut(mkv, 0.5))
    avi_warning, mkv_warning = damaged_inputs()
    assert f"of the {FRAMES} frames its container lists" in avi_warning
    assert f"of the ~{FRAMES} frames its container's duration implies" in mkv_warning  # Matroska: duration x fps


def test_intact_files_whose_count_is_not_what_decodes_stay_quiet(tmp_path, ffmpeg, clip, faststart):
    # A stream copy from 1 s keeps every sample and an edit list that hides the first second.
    trimmed = tmp_path / "trimmed.mp4"
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-ss", "1", "-i", str(faststart), "-c", "copy", str(trimmed)],
                   check=True, timeout=60)
    assert len(read_video(trimmed)) < FRAMES and not inspect_container(trimmed).lists_frames
    # Frames every 3rd slot: the AVI muxer fills the gaps with empty chunks, which the count includes.
    gaps = encode(ffmpeg, clip[:10], tmp_path / "gaps.avi", "-fps_mode", "passthrough", "-c:v", "mjpeg",
                  vf="setpts=N*3")
    assert len(read_video(gaps)) == 10
    # A sound track longer than the video: Matroska's count (duration x fps) includes it.
    h, w = clip.shape[1:3]
    sound = tmp_path / "sound.mkv"
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
                    "-r", str(FPS), "-i", "-", "-f", "lavfi", "-i", "sine=duration=5", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", str(sound)], input=clip.tobytes(), check=True, timeout=60)
    assert len(read_video(sound)) == FRAMES
    assert damaged_inputs() == []
