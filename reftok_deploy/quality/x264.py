"""The x264 baseline at RefTok's tokens-only bits: what a user would pick for a bitstream instead.

x264 gets the same GOP structure and the same free references: every frame RefTok sends as a
reference is forced to an I-frame at QP 0 (4:4:4, near-lossless; its bits are not counted), and
the other frames are P/B frames at one constant QP. The QP is searched so the P/B frames' bits
match the target (RefTok's token bits for the same frames); PSNR is interpolated between the two
QPs that bracket the target, linearly in log(bits). Uses the ffmpeg binary of ``imageio-ffmpeg``
(an optional dependency: ``pip install reftok-deploy[eval]``); :func:`available` tells.
"""

from __future__ import annotations

import math
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.quality.metrics import psnr

_FRAME_LINE = re.compile(r"frame=\s*(\d+).*?f_size=\s*(\d+).*?type=\s*([IPB])")


def ffmpeg_exe() -> str | None:
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return None


def available() -> bool:
    return ffmpeg_exe() is not None


def encode_at_qp(frames: np.ndarray, reference_indices: list[int], qp: int, workdir: Path
                 ) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Encode ``[N,H,W,3]`` uint8 RGB with x264 (refs as QP-0 I-frames, others at ``qp``); returns
    (decoded ``[N,H,W,3]`` uint8 RGB in display order, per-frame (type, bits) in coding order)."""
    exe = ffmpeg_exe()
    if exe is None:
        raise ReftokError("x264 baseline needs imageio-ffmpeg: pip install imageio-ffmpeg")
    n, h, w, _ = frames.shape
    stream, stats = workdir / "out.mkv", workdir / "vstats.txt"
    keyframes = ",".join(f"{i / 25:.4f}" for i in reference_indices)
    encode = [exe, "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", "25",
              "-i", "-", "-c:v", "libx264", "-pix_fmt", "yuv444p", "-preset", "medium", "-qp", str(qp),
              "-force_key_frames", keyframes,
              # I-frames at QP 0 (ipratio's offset clamps there): the references come free, as RefTok's do.
              "-x264-params", f"ipratio=1000:keyint={n + 1}:min-keyint={n + 1}:scenecut=0:bframes=3",
              "-vstats_file", str(stats), str(stream)]
    done = subprocess.run(encode, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
    if done.returncode:
        raise ReftokError(f"x264 encode failed: {done.stderr.decode(errors='replace').strip()[-200:]}")
    decode = [exe, "-v", "error", "-i", str(stream), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    out = subprocess.run(decode, capture_output=True)
    if out.returncode or len(out.stdout) != frames.nbytes:
        raise ReftokError("x264 decode failed or returned a different number of frames")
    decoded = np.frombuffer(out.stdout, np.uint8).reshape(frames.shape)
    sizes = [(m.group(3), 8 * int(m.group(2))) for m in map(_FRAME_LINE.search, stats.read_text().splitlines()) if m]
    if len(sizes) != n:
        raise ReftokError(f"x264 stats list {len(sizes)} frames, expected {n}")
    return decoded, sizes


def x264_at_bits(frames: np.ndarray, reference_indices: list[int], target_bits: float) -> dict[str, float]:
    """PSNR/bits of x264's P/B frames (the non-reference frames) at ``target_bits`` for them all."""
    scored = [i for i in range(len(frames)) if i not in set(reference_indices)]
    with tempfile.TemporaryDirectory(prefix="reftok-x264-") as tmp:
        cache: dict[int, tuple[float, float]] = {}

        def measure(qp: int) -> tuple[float, float]:
            if qp not in cache:
                decoded, sizes = encode_at_qp(frames, reference_indices, qp, Path(tmp))
                if sum(kind == "I" for kind, _ in sizes) != len(reference_indices):
                    raise ReftokError("x264 made other I-frames than the references")
                bits = float(sum(b for kind, b in sizes if kind != "I"))
                cache[qp] = (bits, float(np.mean([psnr(frames[i], decoded[i]) for i in scored])))
            return cache[qp]

        lo, hi = 0, 51  # bits fall as QP rises; find the smallest QP whose bits fit the target
        if measure(hi)[0] > target_bits:
            bits, quality = measure(hi)
            return {"psnr": quality, "bits": bits, "qp": float(hi), "target_bits": target_bits, "over_target": True}
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if measure(mid)[0] > target_bits:
                lo = mid
            else:
                hi = mid
        (b_hi, p_hi), (b_lo, p_lo) = measure(hi), measure(lo)
        if b_lo <= target_bits or b_lo == b_hi:
            quality, qp = p_hi, float(hi)
        else:  # interpolate between the bracketing QPs in log(bits)
            t = (math.log(target_bits) - math.log(b_hi)) / (math.log(b_lo) - math.log(b_hi))
            quality, qp = p_hi + t * (p_lo - p_hi), hi - t
        return {"psnr": quality, "bits": target_bits if b_lo > target_bits else b_hi, "qp": qp,
                "target_bits": target_bits, "over_target": False}
