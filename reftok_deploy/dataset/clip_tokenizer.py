"""One worker's job in a dataset run: whole clips -> Parquet shards, with one runner opened once.

The GOPs are the ones reftok-run forms (:class:`reftok_deploy.base.gop_plan.GopPlanner`, same ``--size``,
``--refresh-blocks`` and ``--cut-threshold``), each block encoded by the same codec on the same backend and
its reference stored as the same PNG, so a clip decodes bit for bit like the ``.rtok`` that
``reftok-run --video`` writes. Memory per worker: the model, one GOP of frames and at most
``rows_per_shard`` rows (tokens plus one PNG reference each) -- not the clip: a 2-hour file needs no more
than a 10-second one.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reftok_deploy.dataset.corpus import URI, Clip
from reftok_deploy.base.errors import ReftokError, damaged_inputs, forget_damaged_inputs
from reftok_deploy.base.files import AtomicFile
from reftok_deploy.base.gop_plan import Gop, GopPlanner, NewReference
from reftok_deploy.dataset.token_dataset import remove_clip_shards, write_done, write_shard
from reftok_deploy.base.tokenstream import reference_png
from reftok_deploy.base.video import iter_video


@dataclass(frozen=True)
class TokenizeSettings:
    """Everything a worker needs to tokenize clips the same way as every other worker (picklable)."""

    out: str
    checkpoint: str
    export_folder: str | None
    backend: str  # a concrete --backend spec (never "auto": chosen once by the driver)
    device: str
    threads: int
    size: int | None
    refresh_blocks: int
    cut_threshold: float | None
    rows_per_shard: int
    max_pixels: int
    block_frames: int
    refine_steps: int = 0  # the torch backend's token search against the decoder (0: the encoder's tokens)

    def fingerprint(self) -> dict[str, Any]:
        """What makes two runs' rows comparable: a rerun into the same folder must match it."""
        keep = ("backend", "device", "size", "refresh_blocks", "cut_threshold", "rows_per_shard", "max_pixels",
                "refine_steps")
        return {k: v for k, v in asdict(self).items() if k in keep}


def _video_fps(path: str) -> float | None:
    import cv2

    cap = cv2.VideoCapture(path)
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
    finally:
        cap.release()
    return fps if math.isfinite(fps) and 0 < fps <= 1000 else None


def _localize(source: str, scratch: Path) -> str:
    """A local path OpenCV can open: the file itself, or a URI's bytes streamed to ``scratch``."""
    if source.startswith("file://"):
        return source[len("file://"):]
    if not URI.match(source):
        return source
    import pyarrow.fs as pafs

    fs, inner = pafs.FileSystem.from_uri(source)
    target = scratch / ("input" + Path(inner).suffix)
    with fs.open_input_stream(inner) as src, AtomicFile(target) as copy, copy.open() as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return str(target)


class ClipTokenizer:
    """Tokenizes clips into ``settings.out`` with one runner of ``settings.backend``."""

    def __init__(self, settings: TokenizeSettings) -> None:
        from reftok_deploy.base.manifest import open_export
        from reftok_deploy.runtimes.codec import FrameCodec
        from reftok_deploy.runtimes.factory import make_runner

        import cv2

        self.settings = settings
        cv2.setNumThreads(settings.threads)  # OpenCV's resize and decode pools: this worker's share of the cores
        export = open_export(settings.export_folder) if settings.export_folder else None
        # Unpinned: OpenVINO pins a copy's threads to the first cores, so workers of one machine would share one
        # core (two one-thread copies ran at 0.7x of one pinned two-thread copy; see reftok-run --streams).
        self.runner = make_runner(settings.backend, export, settings.checkpoint, device=settings.device,
                                  threads=settings.threads, pin_threads=False, refine_steps=settings.refine_steps)
        self.runner.load()
        self.codec = FrameCodec(self.runner)
        self.node = socket.gethostname()

    def tokenize(self, clip: Clip) -> dict[str, Any]:
        """Tokenize one clip (its earlier partial shards replaced) -> its summary; never raises for a bad clip:
        a clip that fails is ``status: failed`` with a one-line ``reason``, and leaves no shard."""
        out = Path(self.settings.out)
        started = time.perf_counter()
        summary: dict[str, Any] = {"clip_id": clip.clip_id, "source": clip.source, "status": "done", "gops": 0,
                                   "frames": 0, "token_bytes": 0, "reference_bytes": 0, "reason": "",
                                   "warning": "", "node": self.node, "pid": os.getpid()}
        forget_damaged_inputs()
        remove_clip_shards(out, clip.clip_id)
        try:
            with tempfile.TemporaryDirectory(prefix="reftok-clip-") as scratch:
                self._tokenize(clip, _localize(clip.source, Path(scratch)), summary)
        except Exception as exc:  # a bad clip is recorded and the job goes on
            remove_clip_shards(out, clip.clip_id)
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            summary.update(status="failed", reason=reason if isinstance(exc, ReftokError) else
                           f"{type(exc).__name__}: {reason}")
        summary["warning"] = "; ".join(damaged_inputs())
        summary["seconds"] = round(time.perf_counter() - started, 3)
        if summary["status"] == "done":
            write_done(out, clip.clip_id, dict(summary, settings=self.settings.fingerprint()))
        return summary

    def _tokenize(self, clip: Clip, local: str, summary: dict[str, Any]) -> None:
        s = self.settings
        fps = _video_fps(local)
        summary["fps"] = fps
        planner = GopPlanner(s.block_frames, s.refresh_blocks, s.cut_threshold)
        rows: list[dict[str, Any]] = []
        shard = 0
        pending: list[int] = []  # source frame indices of the block being filled
        reference: dict[str, Any] = {}

        def block_row(gop: Gop, indices: list[int]) -> dict[str, Any]:
            tokens = self.codec.encode(gop.reference, gop.padded(s.block_frames))
            first, last = indices[0], indices[-1]
            new = reference.pop("new", False)
            png = reference["png"] if new else None
            summary["token_bytes"] += 2 * tokens.size
            summary["reference_bytes"] += len(png or b"")
            return {"clip_id": clip.clip_id, "source": clip.source, "gop_index": summary["gops"],
                    "reference_frame": reference["index"], "first_frame": first, "frames": len(indices),
                    "start_seconds": None if fps is None else first / fps,
                    "end_seconds": None if fps is None else (last + 1) / fps,
                    "height": gop.reference.shape[0], "width": gop.reference.shape[1],
                    "token_groups": tokens.shape[0], "token_height": tokens.shape[1], "token_width": tokens.shape[2],
                    "tokens": tokens.reshape(-1).astype("uint16"), "new_reference": new,
                    "scene_cut": reference["cut"], "reference_png": png}

        def handle(events: list, index: int) -> None:
            nonlocal rows, shard, pending
            for event in events:
                if isinstance(event, NewReference):
                    reference.update(index=index, png=reference_png(event.frame), cut=event.cut, new=True)
                    summary["frames"] += 1
                    continue
                rows.append(block_row(event, pending))
                summary["gops"] += 1
                summary["frames"] += len(pending)
                pending = []
                if len(rows) == s.rows_per_shard:
                    write_shard(Path(s.out), clip.clip_id, shard, rows, len(rows[0]["tokens"]))
                    rows, shard = [], shard + 1

        index = -1
        for index, frame in enumerate(iter_video(local, size=s.size)):
            if frame.shape[0] * frame.shape[1] > s.max_pixels:
                raise ReftokError(f"{frame.shape[1]}x{frame.shape[0]} frames, more than --max-pixels {s.max_pixels}: "
                                  "pass --size N")
            events = planner.push(frame)
            if not any(isinstance(e, NewReference) for e in events):
                pending.append(index)  # this frame joins a block (it closes one when the block is full)
            handle(events, index)
        handle(planner.flush(), index)
        if rows:
            write_shard(Path(s.out), clip.clip_id, shard, rows, len(rows[0]["tokens"]))
