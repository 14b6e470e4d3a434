"""Whether a video file ended early: what its container declares, read from its header without decoding.

OpenCV reports neither truncation nor damage: reading just stops. Its frame count is no proof either
(an AVI's count includes empty "repeat" chunks, Matroska's is duration x fps with the sound track's
duration, an MP4 trimmed by stream copy keeps samples its edit list skips), so a warning is given only
where the container itself makes it certain (:func:`truncation_message`). Every read is bounded: a few
bytes per top-level chunk or box, at most ``_MAX_BOXES`` of them, and an MP4 ``moov`` of at most 64 MiB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Iterator

import cv2


@dataclass(frozen=True)
class Container:
    """What a video file's own header says about it, read without decoding.

    ``cut_short``: the file ends before the sizes its header declares (a copy or download cut off).
    ``lists_frames``: OpenCV's frame count is the number of frames stored and played: the AVI
    header, an MP4/MOV sample table whose video track has one plain edit (or none). Otherwise
    OpenCV's count is no promise: Matroska/WebM and fragmented MP4 give duration x fps, the
    duration of the longest track (audio too); an MP4 cut by stream copy keeps all samples and an
    edit list that skips some.
    """

    name: str
    cut_short: bool
    lists_frames: bool


# First box types of an ISO base media file (MP4, MOV, M4V, 3GP); old QuickTime files need not start with ftyp.
_BMFF_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"styp", b"sidx", b"moof", b"uuid"}
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_MATROSKA_SEGMENT = b"\x18\x53\x80\x67"
_MAX_MOOV = 64 << 20  # a moov this large (hours of video) is not read: its count is then not trusted
_MAX_BOXES = 100_000  # top-level chunks or boxes walked before giving up (a crafted file of tiny boxes)


def _riff_end(f: BinaryIO, size: int) -> int:
    """Where the file's RIFF chunks (AVI, then OpenDML's AVIX extensions) declare it ends."""
    pos = 0
    for _ in range(_MAX_BOXES):
        if pos + 8 > size:
            break
        f.seek(pos)
        head = f.read(8)
        if head[:4] != b"RIFF":
            break  # data after the last chunk is not ours to judge
        length = int.from_bytes(head[4:8], "little")
        pos += 8 + length + (length & 1)
    return pos


def _box_header(head: bytes, room: int) -> tuple[bytes, int, int] | None:
    """(type, header length, box length) of the ISO box whose first bytes are ``head``; a size-0 box
    runs to the end (``room`` bytes). None where the bytes are no box header."""
    if len(head) < 8 or not all(32 <= b < 127 for b in head[4:8]):
        return None
    length, header = int.from_bytes(head[:4], "big"), 8
    if length == 1:
        if len(head) < 16:
            return None
        length, header = int.from_bytes(head[8:16], "big"), 16
    elif length == 0:
        length = room
    return (head[4:8], header, length) if length >= header else None


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, body start, body end) of the ISO boxes in ``data[start:end]``, stopping at a bad one."""
    pos = start
    while (box := _box_header(data[pos : pos + 16], end - pos)) is not None and pos + box[2] <= end:
        yield box[0], pos + box[1], pos + box[2]
        pos += box[2]


def _child(data: bytes, span: tuple[int, int], kind: bytes) -> tuple[int, int] | None:
    """Body span of the first ``kind`` box inside the box body ``span``."""
    return next(((a, b) for k, a, b in _boxes(data, *span) if k == kind), None)


def _timescale_duration(data: bytes, at: int) -> tuple[int, int]:
    """(timescale, duration) of an mvhd/mdhd box body starting at ``at`` (version 0 or 1 layout)."""
    if data[at] == 1:
        return int.from_bytes(data[at + 20 : at + 24], "big"), int.from_bytes(data[at + 24 : at + 32], "big")
    return int.from_bytes(data[at + 12 : at + 16], "big"), int.from_bytes(data[at + 16 : at + 20], "big")


def _tkhd_duration(data: bytes, at: int) -> int:
    """Duration (movie timescale) of a tkhd box body: the track's length after its edit list."""
    if data[at] == 1:
        return int.from_bytes(data[at + 28 : at + 36], "big")
    return int.from_bytes(data[at + 20 : at + 24], "big")


def _edits(data: bytes, at: int) -> int:
    """How many entries of an elst box body play media (an empty edit, media time -1, only delays)."""
    step, offset, width = (20, 8, 8) if data[at] == 1 else (12, 4, 4)
    first = at + 8
    count = min(int.from_bytes(data[at + 4 : first], "big"), (len(data) - first) // step)
    starts = (first + i * step + offset for i in range(count))
    return sum(data[t : t + width] != b"\xff" * width for t in starts)


def _plays_all_samples(moov: bytes) -> bool:
    """Whether the movie's only video track plays its samples as stored: at most one edit that plays
    media, and a track length not shorter than its media. Where it does not, fewer frames decode
    than the sample table (and OpenCV's count) lists, though nothing is wrong."""
    span = (0, len(moov))
    header = _child(moov, span, b"mvhd")
    videos = []
    for kind, a, b in _boxes(moov, *span):
        mdia = _child(moov, (a, b), b"mdia") if kind == b"trak" else None
        hdlr = mdia and _child(moov, mdia, b"hdlr")
        if hdlr and moov[hdlr[0] + 8 : hdlr[0] + 12] == b"vide":
            videos.append((a, b, mdia))
    if header is None or len(videos) != 1:
        return False
    a, b, mdia = videos[0]
    tkhd, mdhd = _child(moov, (a, b), b"tkhd"), _child(moov, mdia, b"mdhd")
    edts = _child(moov, (a, b), b"edts")
    elst = edts and _child(moov, edts, b"elst")
    if tkhd is None or mdhd is None or (elst and _edits(moov, elst[0]) > 1):
        return False
    (movie_scale, _), (media_scale, media) = _timescale_duration(moov, header[0]), _timescale_duration(moov, mdhd[0])
    if not movie_scale or not media_scale:
        return False
    # Played time may exceed the media time (a start delay, a last frame's duration) but not fall short.
    return _tkhd_duration(moov, tkhd[0]) / movie_scale >= media / media_scale - 0.001


def _inspect_bmff(f: BinaryIO, size: int) -> Container | None:
    """Walk an MP4/MOV's top-level boxes (a seek and 16 bytes each), then read its moov."""
    pos, moov, fragmented = 0, None, False
    for _ in range(_MAX_BOXES):
        if pos + 8 > size:
            break
        f.seek(pos)
        box = _box_header(f.read(16), size - pos)
        if box is None:
            return None
        moov = (pos + box[1], pos + box[2]) if box[0] == b"moov" else moov
        fragmented |= box[0] == b"moof"
        pos += box[2]
    listed = False
    if moov is not None and not fragmented and moov[1] <= size and moov[1] - moov[0] <= _MAX_MOOV:
        f.seek(moov[0])
        listed = _plays_all_samples(f.read(moov[1] - moov[0]))
    return Container("MP4/MOV", pos > size, listed)


def _ebml_vint(data: bytes, pos: int) -> tuple[int, int, bool] | None:
    """(value, length in bytes, whether it is the reserved 'unknown' value) of the EBML variable-size
    integer at ``pos``, or None if it is not one."""
    if pos >= len(data) or data[pos] == 0:
        return None
    length = 9 - data[pos].bit_length()
    if pos + length > len(data):
        return None
    value = data[pos] & ((1 << (8 - length)) - 1)
    for byte in data[pos + 1 : pos + length]:
        value = value << 8 | byte
    return value, length, value == (1 << (7 * length)) - 1


def _matroska_end(head: bytes) -> int | None:
    """Where the Matroska/WebM segment declares the file ends, from the file's first bytes; None when
    the writer left the size unknown (live recorders do)."""
    header = _ebml_vint(head, 4)
    if header is None:
        return None
    pos = 4 + header[1] + header[0]
    if head[pos : pos + 4] != _MATROSKA_SEGMENT or (segment := _ebml_vint(head, pos + 4)) is None or segment[2]:
        return None
    return pos + 4 + segment[1] + segment[0]


def inspect_container(path: str | Path) -> Container | None:
    """Read a video's header for :class:`Container`; None for formats without declared sizes
    (MPEG-PS/TS, raw streams) or a header it does not understand."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            head = f.read(4096)
            if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
                return Container("AVI", _riff_end(f, size) > size, True)
            if head[4:8] in _BMFF_BOXES:
                return _inspect_bmff(f, size)
            if head[:4] == _EBML_MAGIC:
                end = _matroska_end(head)
                return None if end is None else Container("Matroska/WebM", end > size, False)
    except (OSError, IndexError, ValueError):  # a header shorter than its boxes claim: no verdict
        return None
    return None


def _usable_fps(fps: float) -> float | None:
    """OpenCV's frame rate where it is one (files may report 0 or NaN)."""
    return fps if math.isfinite(fps) and 0.0 < fps <= 1000.0 else None


@dataclass
class FrameTally:
    """Frames a capture delivered and the latest timestamp among them (ms from the stream's start).

    The timestamp tells how far into the file reading got when frames are fewer than the count says
    without anything missing: AVIs repeat a frame with empty chunks that the count includes (OpenCV's
    tree.avi: 68 frames decoded of the 444 listed, the last at the 444th slot).
    """

    frames: int = 0
    last_ms: float = 0.0

    def add(self, cap: cv2.VideoCapture) -> None:
        """Count the frame ``cap`` just read (a property read: well under a microsecond)."""
        self.frames += 1
        ms = cap.get(cv2.CAP_PROP_POS_MSEC)  # 0 where the frame has no timestamp: keep the latest known
        if ms > self.last_ms:
            self.last_ms = ms

    def reached(self, fps: float) -> int:
        """How many frame slots of the stream reading covered: frames read, or the last timestamp's slot."""
        if (rate := _usable_fps(fps)) is None:
            return self.frames
        return max(self.frames, round(self.last_ms * rate / 1000.0) + 1)


def truncation_message(label: str, tally: FrameTally, count: float, fps: float,
                       container: Container | None) -> str | None:
    """The warning for a file whose reading ended early, or None when it is not certain it did.

    Certain means: OpenCV's frame count is more than one frame past where reading got (one frame
    short is normal: a frame the decoder drops, a count rounded up from a duration that includes a
    longer sound track), and either that count is the container's list of frames
    (``lists_frames``: reading stopped inside the file, damaged) or the file is shorter than its
    header declares (``cut_short``: truncated; the count may then be an estimate).
    """
    if container is None or not math.isfinite(count) or int(count) - tally.reached(fps) <= 1:
        return None
    if not (container.lists_frames or container.cut_short):
        return None
    listed = int(count)
    what = (f"the {listed} frames its container lists" if container.lists_frames
            else f"the ~{listed} frames its container's duration implies")
    return f"{label}: read {tally.frames} of {what} (truncated or damaged); used those {tally.frames}"


def ended_early(path: str | Path, cap: cv2.VideoCapture, tally: FrameTally) -> str | None:
    """Once ``cap`` (still open) has failed to read past ``tally``'s frames: the warning for
    :func:`report_damaged_input` when the file certainly ended early (:func:`truncation_message`).

    Not detectable: MPEG-PS/TS (.mpg, .ts) declare no sizes and OpenCV estimates their count from the
    bytes present; files whose writer left the size open (a crashed recorder, a live WebM); damage
    inside a Matroska/WebM or fragmented MP4 that is not a cut (their counts are estimates); damage
    the decoder skips without stopping. A cut that only loses the sound after the last video frame
    of a Matroska/WebM file with a longer sound track is reported as missing frames.
    """
    count, fps = cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FPS)
    if not count > tally.reached(fps) + 1:
        return None  # the common case: no header to read
    container = inspect_container(path)
    if container is not None and cap.getBackendName() != "FFMPEG":
        # Other backends (GStreamer) count from a duration: only a cut file is then certain.
        container = replace(container, lists_frames=False)
    return truncation_message(str(path), tally, count, fps, container)


def unopenable_reason(path: Path) -> str:
    """Why OpenCV could not open ``path``: an MP4 cut before its index (kept at the end) says so."""
    container = inspect_container(path)
    if container is not None and container.cut_short:
        return "the file is truncated (it ends before its header says) and cannot be read"
    return "not a readable video file"
