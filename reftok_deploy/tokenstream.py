"""The .rtok token-stream file: references and token blocks of one video, versioned and bounds-checked.

Layout (little-endian):

    magic   4 bytes  b"RTOK"
    version u16      1
    hlen    u32      length of the header JSON (<= 64 KiB)
    header  hlen     UTF-8 JSON: width, height (original frame size), fps, block_frames,
                     temporal_factor, spatial_factor, fsq_levels, codebook_size, model_version,
                     checkpoint_sha256, reference_codec ("png"); optional: backend (the
                     runtime that encoded it, e.g. "onnxruntime:int8", for reftok-decode to report)
    records, each:   kind u8 | length u32 | payload (length bytes) | crc32(payload) u32
        kind 1  reference:  PNG bytes of the unquantised reference frame (RGB, width x height)
        kind 2  block:      frames u16 (valid frames, <= block_frames) | groups u16 | h u16 | w u16 |
                            groups*h*w token ids as u16
        kind 3  end:        records u32 (count of records before it)

A block refers to the latest reference; a stream must start with a reference and end
with an end record (a missing one means the file was truncated). Every length, shape
and id is checked against the header before use.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import cv2
import numpy as np

from reftok_deploy.errors import ReftokError
from reftok_deploy.files import AtomicFile

MAGIC = b"RTOK"
VERSION = 1
MAX_HEADER = 64 * 1024
MAX_RECORD = 64 * 1024 * 1024
MAX_SIDE = 16384
MAX_PIXELS = 8192 * 4352  # 8K: larger references are refused before any PNG is decoded
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KIND_REFERENCE, KIND_BLOCK, KIND_END = 1, 2, 3
HEADER_KEYS = {"width": int, "height": int, "fps": float, "block_frames": int, "temporal_factor": int,
               "spatial_factor": int, "fsq_levels": list, "codebook_size": int, "model_version": int,
               "checkpoint_sha256": str, "reference_codec": str}


def stream_header(cfg, width: int, height: int, fps: float, checkpoint_sha256: str,
                  backend: str | None = None) -> dict:
    """Header of a stream of ``width`` x ``height`` frames tokenized by a model of config ``cfg`` (RefTokConfig)
    with ``backend`` (a --backend spec such as ``onnxruntime:int8``; optional, for reftok-decode to report)."""
    header = {"width": width, "height": height, "fps": float(fps), "block_frames": cfg.block_frames,
              "temporal_factor": cfg.temporal_factor, "spatial_factor": cfg.spatial_factor,
              "fsq_levels": list(cfg.fsq_levels), "codebook_size": int(np.prod(cfg.fsq_levels)),
              "model_version": cfg.model_version, "checkpoint_sha256": checkpoint_sha256, "reference_codec": "png"}
    if backend is not None:
        header["backend"] = backend
    return header


@dataclass
class Block:
    """Tokens ``[G,h,w]`` int32 of one block, of which the first ``frames`` decoded frames are real."""

    tokens: np.ndarray
    frames: int


def _check_header(header: dict) -> dict:
    if not isinstance(header, dict):
        raise ReftokError("token stream header is not a JSON object")
    for key, kind in HEADER_KEYS.items():
        value = header.get(key)
        if kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ReftokError(f"token stream header field {key!r} is missing or not {kind.__name__}")
    if not (0 < header["width"] <= MAX_SIDE and 0 < header["height"] <= MAX_SIDE) or \
            header["width"] * header["height"] > MAX_PIXELS:
        raise ReftokError(f"token stream frame size {header['width']}x{header['height']} out of range "
                          f"(at most {MAX_SIDE} a side and {MAX_PIXELS} pixels)")
    if not (0 < header["temporal_factor"] <= header["block_frames"] <= 1024) or header["block_frames"] % header["temporal_factor"]:
        raise ReftokError("token stream block_frames/temporal_factor are inconsistent")
    if header["spatial_factor"] not in (1, 2, 4, 8, 16, 32) or not 1 < header["codebook_size"] <= 65536:
        raise ReftokError("token stream spatial_factor or codebook_size out of range")
    levels = header["fsq_levels"]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 1 < v <= 65536 for v in levels) or \
            int(np.prod(levels, dtype=np.int64)) != header["codebook_size"]:
        raise ReftokError("token stream fsq_levels do not multiply to codebook_size")
    if header["reference_codec"] != "png":
        raise ReftokError(f"unsupported reference codec {header['reference_codec']!r}")
    if "backend" in header and not (isinstance(header["backend"], str) and 0 < len(header["backend"]) <= 64):
        raise ReftokError("token stream header field 'backend' is not a short string")
    return header


def token_grid(header: dict) -> tuple[int, int, int]:
    """(groups, h, w) every block of a stream with this header must have."""
    s = header["spatial_factor"]
    return (header["block_frames"] // header["temporal_factor"], -(-header["height"] // s), -(-header["width"] // s))


def reference_png(frame_rgb: np.ndarray) -> bytes:
    """``[H,W,3]`` uint8 RGB -> the PNG bytes a .rtok stores for a reference (OpenCV's default compression:
    at 640x480 15 ms and 427 KB, against 600 ms and 338 KB at level 9, too slow for a live stream)."""
    ok, png = cv2.imencode(".png", np.ascontiguousarray(frame_rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()


class TokenStreamWriter:
    """Write a .rtok file atomically: records go to a temp file renamed on :meth:`close`."""

    def __init__(self, path: str | Path, header: dict) -> None:
        self.path = Path(path)
        self.header = _check_header(dict(header))
        self.records = 0
        try:
            self._out = AtomicFile(self.path, suffix=".partial")
        except OSError as exc:
            raise ReftokError(f"cannot write token stream {self.path}: {exc.strerror or exc}") from None
        try:
            self._fh: BinaryIO = self._out.open()
            blob = json.dumps(self.header, sort_keys=True).encode()
            self._fh.write(MAGIC + struct.pack("<HI", VERSION, len(blob)) + blob)
        except BaseException:
            self._out.discard()
            raise

    def _record(self, kind: int, payload: bytes) -> None:
        self._fh.write(struct.pack("<BI", kind, len(payload)) + payload + struct.pack("<I", zlib.crc32(payload)))
        self.records += 1

    def write_reference(self, frame_rgb: np.ndarray, png: bytes | None = None) -> None:
        """``[H,W,3]`` uint8 RGB, stored as lossless PNG (``png``: its :func:`reference_png`, if already made)."""
        if frame_rgb.shape != (self.header["height"], self.header["width"], 3) or frame_rgb.dtype != np.uint8:
            raise ValueError(f"reference {frame_rgb.shape} {frame_rgb.dtype} does not match the stream header")
        self._record(KIND_REFERENCE, reference_png(frame_rgb) if png is None else png)

    def write_block(self, tokens: np.ndarray, frames: int) -> None:
        """Tokens ``[G,h,w]`` int ids of one block; ``frames`` of its decoded frames are real."""
        if tokens.shape != token_grid(self.header) or not 0 < frames <= self.header["block_frames"]:
            raise ValueError(f"block {tokens.shape} ({frames} frames) does not match the stream header")
        payload = struct.pack("<HHHH", frames, *tokens.shape) + np.ascontiguousarray(tokens, dtype="<u2").tobytes()
        self._record(KIND_BLOCK, payload)

    def close(self) -> Path:
        """Finish the stream (end record) and move it into place."""
        self._record(KIND_END, struct.pack("<I", self.records))
        self._fh.close()
        return self._out.commit()

    def abort(self) -> None:
        self._fh.close()
        self._out.discard()

    def __enter__(self) -> "TokenStreamWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_header(fh: BinaryIO, name: str = "stream") -> dict:
    head = fh.read(10)
    if len(head) < 10 or head[:4] != MAGIC:
        raise ReftokError(f"{name} is not a .rtok token stream (bad magic)")
    version, hlen = struct.unpack("<HI", head[4:])
    if version != VERSION:
        raise ReftokError(f"{name} is .rtok version {version}; this reftok-deploy reads version {VERSION}")
    if hlen > MAX_HEADER:
        raise ReftokError(f"{name}: header length {hlen} exceeds {MAX_HEADER}")
    blob = fh.read(hlen)
    if len(blob) != hlen:
        raise ReftokError(f"{name} is truncated inside its header")
    try:
        header = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ReftokError(f"{name}: header is not valid JSON") from None
    return _check_header(header)


def png_size(payload: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, read before decoding, or None if it is not a PNG."""
    if len(payload) < 24 or payload[:8] != PNG_SIGNATURE or payload[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", payload[16:24])


def iter_records(fh: BinaryIO, header: dict, name: str = "stream",
                 on_damage: Callable[[str], None] | None = None) -> Iterator[np.ndarray | Block]:
    """Yield reference frames (``[H,W,3]`` uint8 RGB) and :class:`Block` s in file order, checking everything.

    Records are read one at a time (a reference is decoded only when reached). With ``on_damage``
    (salvage), a truncated or corrupt record ends the stream: ``on_damage`` gets the reason and the
    records read so far stand; without it every problem is a ReftokError.
    """
    if on_damage is None:
        yield from _records(fh, header, name)
        return
    try:
        yield from _records(fh, header, name)
    except ReftokError as exc:
        on_damage(str(exc))


def _records(fh: BinaryIO, header: dict, name: str) -> Iterator[np.ndarray | Block]:
    grid = token_grid(header)
    count, seen_reference = 0, False
    while True:
        head = fh.read(5)
        if not head:
            raise ReftokError(f"{name} is truncated: no end record after {count} records")
        if len(head) < 5:
            raise ReftokError(f"{name} is truncated inside record {count}")
        kind, length = struct.unpack("<BI", head)
        if kind not in (KIND_REFERENCE, KIND_BLOCK, KIND_END):
            raise ReftokError(f"{name}: record {count} has unknown kind {kind}")
        if length > MAX_RECORD:
            raise ReftokError(f"{name}: record {count} claims {length} bytes (limit {MAX_RECORD})")
        payload = fh.read(length)
        crc = fh.read(4)
        if len(payload) != length or len(crc) != 4:
            raise ReftokError(f"{name} is truncated inside record {count}")
        if zlib.crc32(payload) != struct.unpack("<I", crc)[0]:
            raise ReftokError(f"{name}: record {count} is corrupt (CRC mismatch)")
        if kind == KIND_END:
            if length != 4 or struct.unpack("<I", payload)[0] != count:
                raise ReftokError(f"{name}: end record does not match the {count} records read")
            return
        count += 1
        if kind == KIND_REFERENCE:
            if png_size(payload) != (header["width"], header["height"]):
                raise ReftokError(f"{name}: reference in record {count - 1} is not a {header['width']}x{header['height']} RGB PNG")
            image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
            if image is None or image.shape != (header["height"], header["width"], 3) or image.dtype != np.uint8:
                raise ReftokError(f"{name}: reference in record {count - 1} is not a {header['width']}x{header['height']} RGB PNG")
            seen_reference = True
            yield np.ascontiguousarray(image[:, :, ::-1])
        else:
            if not seen_reference:
                raise ReftokError(f"{name}: token block before any reference frame")
            if length != 8 + 2 * grid[0] * grid[1] * grid[2]:
                raise ReftokError(f"{name}: block record {count - 1} has {length} bytes, expected {8 + 2 * np.prod(grid)}")
            frames, *shape = struct.unpack("<HHHH", payload[:8])
            if tuple(shape) != grid or not 0 < frames <= header["block_frames"]:
                raise ReftokError(f"{name}: block record {count - 1} has shape {shape} / {frames} frames, expected {grid}")
            tokens = np.frombuffer(payload[8:], dtype="<u2").reshape(grid).astype(np.int32)
            if tokens.max(initial=0) >= header["codebook_size"]:
                raise ReftokError(f"{name}: block record {count - 1} holds ids outside the codebook")
            yield Block(tokens, frames)


@contextlib.contextmanager
def open_stream(path: str | Path, on_damage: Callable[[str], None] | None = None
                ) -> Iterator[tuple[dict, Iterator[np.ndarray | Block]]]:
    """Open a .rtok file -> (checked header, lazy record iterator); memory holds one record at a time."""
    path = Path(path)
    if not path.is_file():
        raise ReftokError(f"token stream not found: {path}")
    with open(path, "rb") as fh:
        header = read_header(fh, path.name)
        yield header, iter_records(fh, header, path.name, on_damage)


def check_header_matches(header: dict, cfg, name: str = "stream") -> None:
    """Refuse a stream whose header disagrees with the model that is to decode it (RefTokConfig)."""
    wanted = {"block_frames": cfg.block_frames, "temporal_factor": cfg.temporal_factor,
              "spatial_factor": cfg.spatial_factor, "fsq_levels": list(cfg.fsq_levels),
              "model_version": cfg.model_version}
    for key, value in wanted.items():
        if header[key] != value:
            raise ReftokError(f"{name}: header {key} is {header[key]!r}, the model has {value!r}")


def read_stream(path: str | Path) -> tuple[dict, list[np.ndarray | Block]]:
    """Parse a whole .rtok file -> (header, records)."""
    path = Path(path)
    if not path.is_file():
        raise ReftokError(f"token stream not found: {path}")
    with open(path, "rb") as fh:
        header = read_header(fh, path.name)
        return header, list(iter_records(fh, header, path.name))


def parse_bytes(data: bytes) -> tuple[dict, list[np.ndarray | Block]]:
    """Parse an in-memory stream (used by the fuzz tests)."""
    fh = io.BytesIO(data)
    header = read_header(fh)
    return header, list(iter_records(fh, header))
