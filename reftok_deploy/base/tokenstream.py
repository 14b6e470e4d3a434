"""The .rtok token-stream file: references and token blocks of one video, versioned and checked end to end.

Layout (little-endian). Version 2, written by this reftok-deploy:

    magic   4 bytes  b"RTOK"
    version u16      2
    hlen    u32      length of the header JSON (<= 64 KiB)
    header  hlen     UTF-8 JSON: width, height (original frame size), fps (finite, 0.1..1000),
                     block_frames, temporal_factor, spatial_factor, fsq_levels, codebook_size,
                     model_version, checkpoint_sha256, reference_codec ("png"); optional: backend
                     (the runtime that encoded it, e.g. "onnxruntime:int8", for reftok-decode to report).
                     NaN and Infinity are refused.
    hcrc    u32      crc32 of every byte before it (magic .. header)
    records, each:   kind u8 | length u32 | payload (length bytes) | crc32(payload) u32
        kind 1  reference:  PNG bytes of the unquantised reference frame (RGB, width x height)
        kind 2  block:      frames u16 (valid frames, <= block_frames) | groups u16 | h u16 | w u16 |
                            groups*h*w token ids as u16
        kind 3  end:        records u32 (count of records before it) |
                            file_crc u32 (crc32 of every byte of the file before the end record
                            except the CRC fields: magic .. header, then each record's kind,
                            length and payload)
    nothing after the end record

The file CRC leaves out hcrc and the records' CRCs because a CRC-32 run over data followed by its
own CRC ends in a constant (0x2144df1c, its residue) whatever the data: with them in, the file CRC
would depend only on the records' kinds and lengths, blind to any record rewritten with a valid CRC.

Version 1 (still read) is the same without hcrc, and its end record holds only records u32.

A block refers to the latest reference; a stream must start with a reference and end
with an end record (a missing one means the file was truncated), and the file must end
there. Every length, shape and id is checked against the header before use; in version 2
the header CRC is checked before the header is parsed, and the end record's file CRC
catches records removed, added or altered with their own CRCs kept valid.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import cv2
import numpy as np

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.files import AtomicFile, StagedOutput, write_error

MAGIC = b"RTOK"
VERSION = 2  # the version written
READ_VERSIONS = (1, 2)  # the versions read
MAX_HEADER = 64 * 1024
MAX_RECORD = 64 * 1024 * 1024
MAX_SIDE = 16384
MAX_PIXELS = 8192 * 4352  # 8K: larger references are refused before any PNG is decoded
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KIND_REFERENCE, KIND_BLOCK, KIND_END = 1, 2, 3
END_PAYLOAD = {1: "<I", 2: "<II"}  # end record of each version: records [, file_crc]
# Checked with OpenCV 5.1: VideoWriter opens mp4v .mp4 (.mkv, .mov) and MJPG .avi at 0.1 and at 1000 fps, and
# they read back at that rate; below 0.01 fps it does not open, and an MJPG .avi above 1000 reads back at 600.
MIN_FPS, MAX_FPS = 0.1, 1000.0
HEADER_KEYS = {"width": int, "height": int, "fps": float, "block_frames": int, "temporal_factor": int,
               "spatial_factor": int, "fsq_levels": list, "codebook_size": int, "model_version": int,
               "checkpoint_sha256": str, "reference_codec": str}


def stream_header(cfg, width: int, height: int, fps: float, checkpoint_sha256: str,
                  backend: str | None = None) -> dict:
    """Header of a stream of ``width`` x ``height`` frames tokenized by a model of config ``cfg`` (RefTokConfig)
    with ``backend`` (a --backend spec such as ``onnxruntime:int8``; optional, for reftok-decode to report)."""
    # A source slower than 0.1 fps (a time-lapse) is recorded at 0.1: OpenCV's writers refuse less.
    header = {"width": width, "height": height, "fps": min(max(float(fps), MIN_FPS), MAX_FPS),
              "block_frames": cfg.block_frames,
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
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ReftokError(f"token stream header field {key!r} is missing or not {kind.__name__}")
    if not (math.isfinite(header["fps"]) and MIN_FPS <= header["fps"] <= MAX_FPS):
        raise ReftokError(f"token stream header fps {header['fps']!r} is out of range ({MIN_FPS:g} to {MAX_FPS:g})")
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


class TokenStreamWriter(StagedOutput):
    """Write a version-2 .rtok file atomically: records go to a temp file renamed on :meth:`close`."""

    def __init__(self, path: str | Path, header: dict) -> None:
        self.path = Path(path)
        self.header = _check_header(dict(header))
        self.records = 0
        self._crc = 0  # the end record's file CRC so far (every byte written but the CRC fields)
        try:
            self._out = AtomicFile(self.path, suffix=".partial")
        except OSError as exc:
            raise ReftokError(f"cannot write token stream {self.path}: {exc.strerror or exc}") from None
        try:
            self._fh: BinaryIO = self._out.open()
            blob = json.dumps(self.header, sort_keys=True, allow_nan=False).encode()
            head = MAGIC + struct.pack("<HI", VERSION, len(blob)) + blob
            self._write(head, zlib.crc32(head))
        except BaseException:
            self._out.discard()
            raise

    def _write(self, data: bytes, crc: int) -> None:
        """``data`` and then ``crc``, its CRC field (the header's or a record's), which the file CRC leaves out."""
        try:
            self._fh.write(data + struct.pack("<I", crc))
        except OSError as exc:  # a full disk: one line; the caller aborts the stream
            raise write_error(self.path, exc) from None
        self._crc = zlib.crc32(data, self._crc)

    def _record(self, kind: int, payload: bytes) -> None:
        self._write(struct.pack("<BI", kind, len(payload)) + payload, zlib.crc32(payload))
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

    def finish(self) -> None:
        """Write the end record (record count and file CRC) and sync the file to disk; a failed write is a
        one-line ReftokError and the temp file is removed."""
        try:
            self._record(KIND_END, struct.pack(END_PAYLOAD[VERSION], self.records, self._crc))
            self._fh.close()
        except OSError as exc:
            self.abort()
            raise write_error(self.path, exc) from None
        self._out.sync()

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


class StreamHeader(dict):
    """A checked header (a plain dict to its users) that also carries what :func:`iter_records` needs to
    go on reading: the stream's ``version`` and ``crc``, the file CRC so far (of magic .. header)."""

    def __init__(self, header: dict, version: int, crc: int) -> None:
        super().__init__(header)
        self.version = version
        self.crc = crc


class _NonFinite(ValueError):
    """NaN, Infinity or an overflowing number in the header JSON (Python's json accepts them)."""


def _refuse_constant(literal: str) -> float:
    raise _NonFinite(literal)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf
        raise _NonFinite(text[:24])
    return value


def _parse_header(blob: bytes, name: str) -> dict:
    try:
        return json.loads(blob.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NonFinite as exc:
        raise ReftokError(f"{name}: header holds the non-finite number {exc} (not valid JSON)") from None
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, ints past Python's digit limit
        raise ReftokError(f"{name}: header is not valid JSON") from None


def read_header(fh: BinaryIO, name: str = "stream") -> StreamHeader:
    """Read and check the header (version 1 or 2; in 2 its CRC before anything else)."""
    head = fh.read(10)
    if len(head) < 10 or head[:4] != MAGIC:
        raise ReftokError(f"{name} is not a .rtok token stream (bad magic)")
    version, hlen = struct.unpack("<HI", head[4:])
    if version not in READ_VERSIONS:
        raise ReftokError(f"{name} is .rtok version {version}; this reftok-deploy reads versions "
                          f"{', '.join(map(str, READ_VERSIONS))}")
    if hlen > MAX_HEADER:
        raise ReftokError(f"{name}: header length {hlen} exceeds {MAX_HEADER}")
    blob = fh.read(hlen)
    if len(blob) != hlen:
        raise ReftokError(f"{name} is truncated inside its header")
    crc = zlib.crc32(head + blob)
    if version >= 2:
        stored = fh.read(4)
        if len(stored) != 4:
            raise ReftokError(f"{name} is truncated inside its header")
        if struct.unpack("<I", stored)[0] != crc:
            raise ReftokError(f"{name}: header is corrupt (CRC mismatch)")
    return StreamHeader(_check_header(_parse_header(blob, name)), version, crc)


def png_size(payload: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, read before decoding, or None if it is not a PNG."""
    if len(payload) < 24 or payload[:8] != PNG_SIGNATURE or payload[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", payload[16:24])


def iter_records(fh: BinaryIO, header: StreamHeader, name: str = "stream",
                 on_damage: Callable[[str], None] | None = None) -> Iterator[np.ndarray | Block]:
    """Yield reference frames (``[H,W,3]`` uint8 RGB) and :class:`Block` s in file order, checking everything.

    ``header`` is :func:`read_header`'s, read from ``fh`` just before. Records are read one at a time (a
    reference is decoded only when reached), so the end record (count, and in version 2 the file CRC) and
    the end of file after it are checked only after every record was yielded. With ``on_damage``
    (salvage), a truncated or corrupt record, a mismatching end record or bytes after it end the stream:
    ``on_damage`` gets the reason and the records read so far stand; without it every problem is a ReftokError.
    """
    if not isinstance(header, StreamHeader):
        raise TypeError("iter_records needs the header read_header returned")
    if on_damage is None:
        yield from _records(fh, header, name)
        return
    try:
        yield from _records(fh, header, name)
    except ReftokError as exc:
        on_damage(str(exc))


def _read_record(fh: BinaryIO, name: str, index: int, crc: int) -> tuple[int, bytes, int]:
    """The next record -> (kind, payload, file CRC ``crc`` continued over it), its own CRC checked."""
    head = fh.read(5)
    if not head:
        raise ReftokError(f"{name} is truncated: no end record after {index} records")
    if len(head) < 5:
        raise ReftokError(f"{name} is truncated inside record {index}")
    kind, length = struct.unpack("<BI", head)
    if kind not in (KIND_REFERENCE, KIND_BLOCK, KIND_END):
        raise ReftokError(f"{name}: record {index} has unknown kind {kind}")
    if length > MAX_RECORD:
        raise ReftokError(f"{name}: record {index} claims {length} bytes (limit {MAX_RECORD})")
    payload = fh.read(length)
    stored = fh.read(4)
    if len(payload) != length or len(stored) != 4:
        raise ReftokError(f"{name} is truncated inside record {index}")
    if zlib.crc32(payload) != struct.unpack("<I", stored)[0]:
        raise ReftokError(f"{name}: record {index} is corrupt (CRC mismatch)")
    return kind, payload, zlib.crc32(payload, zlib.crc32(head, crc))


def _check_end(fh: BinaryIO, payload: bytes, header: StreamHeader, count: int, crc: int, name: str) -> None:
    """The end record's ``payload`` against the ``count`` records and the file CRC ``crc`` of what came
    before it; then the file must end."""
    layout = END_PAYLOAD[header.version]
    if len(payload) != struct.calcsize(layout) or struct.unpack(layout, payload)[0] != count:
        raise ReftokError(f"{name}: end record does not match the {count} records read")
    if header.version >= 2 and struct.unpack(layout, payload)[1] != crc:
        raise ReftokError(f"{name}: end record's file CRC does not match (records removed, added or altered)")
    extra = _bytes_left(fh)
    if extra:
        raise ReftokError(f"{name}: {extra} byte{'s' if extra != 1 else ''} after the end record")


def _bytes_left(fh: BinaryIO) -> int:
    """How many bytes ``fh`` still holds (read through in chunks: a pipe cannot seek)."""
    left = 0
    while chunk := fh.read(1 << 20):
        left += len(chunk)
    return left


def _records(fh: BinaryIO, header: StreamHeader, name: str) -> Iterator[np.ndarray | Block]:
    count, seen_reference, crc = 0, False, header.crc
    while True:
        kind, payload, crc_after = _read_record(fh, name, count, crc)
        if kind == KIND_END:
            _check_end(fh, payload, header, count, crc, name)
            return
        if kind == KIND_REFERENCE:
            seen_reference = True
            yield _reference(payload, header, count, name)
        elif not seen_reference:
            raise ReftokError(f"{name}: token block before any reference frame")
        else:
            yield _block(payload, header, count, name)
        crc, count = crc_after, count + 1


def _reference(payload: bytes, header: dict, index: int, name: str) -> np.ndarray:
    """A reference record's PNG -> ``[H,W,3]`` uint8 RGB, its size checked before it is decoded."""
    size = f"{header['width']}x{header['height']}"
    if png_size(payload) != (header["width"], header["height"]):
        raise ReftokError(f"{name}: reference in record {index} is not a {size} RGB PNG")
    image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.shape != (header["height"], header["width"], 3) or image.dtype != np.uint8:
        raise ReftokError(f"{name}: reference in record {index} is not a {size} RGB PNG")
    return np.ascontiguousarray(image[:, :, ::-1])


def _block(payload: bytes, header: dict, index: int, name: str) -> Block:
    """A block record -> :class:`Block`, its length, shape, frame count and ids checked against the header."""
    grid = token_grid(header)
    expected = 8 + 2 * grid[0] * grid[1] * grid[2]
    if len(payload) != expected:
        raise ReftokError(f"{name}: block record {index} has {len(payload)} bytes, expected {expected}")
    frames, *shape = struct.unpack("<HHHH", payload[:8])
    if tuple(shape) != grid or not 0 < frames <= header["block_frames"]:
        raise ReftokError(f"{name}: block record {index} has shape {shape} / {frames} frames, expected {grid}")
    tokens = np.frombuffer(payload[8:], dtype="<u2").reshape(grid).astype(np.int32)
    if tokens.max(initial=0) >= header["codebook_size"]:
        raise ReftokError(f"{name}: block record {index} holds ids outside the codebook")
    return Block(tokens, frames)


@contextlib.contextmanager
def open_stream(path: str | Path, on_damage: Callable[[str], None] | None = None
                ) -> Iterator[tuple[StreamHeader, Iterator[np.ndarray | Block]]]:
    """Open a .rtok file (version 1 or 2) -> (checked header, lazy record iterator); memory holds one record
    at a time. A damaged header is always a ReftokError; ``on_damage`` is :func:`iter_records`'."""
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


def read_stream(path: str | Path) -> tuple[StreamHeader, list[np.ndarray | Block]]:
    """Parse a whole .rtok file (version 1 or 2) -> (header, records); any damage, a mismatching end record
    or bytes after it is a ReftokError."""
    path = Path(path)
    if not path.is_file():
        raise ReftokError(f"token stream not found: {path}")
    with open(path, "rb") as fh:
        header = read_header(fh, path.name)
        return header, list(iter_records(fh, header, path.name))


def parse_bytes(data: bytes) -> tuple[StreamHeader, list[np.ndarray | Block]]:
    """Parse an in-memory stream, as :func:`read_stream` does a file (used by the fuzz tests)."""
    fh = io.BytesIO(data)
    header = read_header(fh)
    return header, list(iter_records(fh, header))
