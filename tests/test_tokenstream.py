"""The .rtok format: round trip, and clear errors for truncated, corrupted or hostile files (fuzzed)."""

import io
import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.tokenstream import Block, TokenStreamWriter, iter_records, parse_bytes, read_header, read_stream
from tests.conftest import moving_still

HEADER = {"width": 40, "height": 24, "fps": 10.0, "block_frames": 8, "temporal_factor": 4, "spatial_factor": 8,
          "fsq_levels": [8, 5, 5, 5], "codebook_size": 1000, "model_version": 1, "checkpoint_sha256": "ab" * 32,
          "reference_codec": "png"}


@pytest.fixture(scope="module")
def stream_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("rtok") / "s.rtok"
    rng = np.random.default_rng(0)
    frames = moving_still("astronaut", 2, 40)[:, :24]
    with TokenStreamWriter(path, HEADER) as writer:
        for frame in frames:
            writer.write_reference(frame)
            writer.write_block(rng.integers(0, 1000, (2, 3, 5)), 8)
        writer.write_block(rng.integers(0, 1000, (2, 3, 5)), 3)
    return path.read_bytes(), frames


def record(kind: int, payload: bytes) -> bytes:
    return struct.pack("<BI", kind, len(payload)) + payload + struct.pack("<I", zlib.crc32(payload))


def header_section(blob: bytes, version: int = 2) -> bytes:
    """magic | version | hlen | header JSON ``blob`` [| crc32 of all that, version 2]."""
    head = b"RTOK" + struct.pack("<HI", version, len(blob)) + blob
    return head + (struct.pack("<I", zlib.crc32(head)) if version >= 2 else b"")


def end_record(head: bytes, records: list[bytes], version: int = 2) -> bytes:
    """The end record after ``head`` (a :func:`header_section`) and ``records``: their count and, in version 2,
    the crc32 of every byte before it except the CRC fields (each one's last 4 bytes)."""
    if version < 2:
        return record(3, struct.pack("<I", len(records)))
    crc = zlib.crc32(head[:-4])
    for item in records:
        crc = zlib.crc32(item[:-4], crc)
    return record(3, struct.pack("<II", len(records), crc))


def assemble(head: bytes, records: list[bytes], version: int = 2) -> bytes:
    """A well-formed stream: ``head`` (a :func:`header_section`), ``records`` and the end record they need."""
    return head + b"".join(records) + end_record(head, records, version)


def split_records(data: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
    """(header section with its CRC, [(kind, payload)] of the records before the end record) of a v2 stream."""
    head_len = 10 + struct.unpack("<I", data[6:10])[0] + 4
    records, pos = [], head_len
    while pos < len(data):
        kind, length = struct.unpack("<BI", data[pos:pos + 5])
        records.append((kind, data[pos + 5:pos + 5 + length]))
        pos += 9 + length
    assert records[-1][0] == 3
    return data[:head_len], records[:-1]


def salvaged(data: bytes) -> tuple[list, list[str]]:
    """(records, damage reports) of ``data`` read with ``on_damage``."""
    damage: list[str] = []
    fh = io.BytesIO(data)
    return list(iter_records(fh, read_header(fh), "s.rtok", on_damage=damage.append)), damage


def test_round_trip(tmp_path, stream_bytes):
    data, frames = stream_bytes
    path = tmp_path / "copy.rtok"
    path.write_bytes(data)
    header, records = read_stream(path)
    assert header == HEADER
    kinds = [type(r).__name__ for r in records]
    assert kinds == ["ndarray", "Block", "ndarray", "Block", "Block"]
    assert np.array_equal(records[0], frames[0]) and np.array_equal(records[2], frames[1])  # lossless references
    assert records[4].frames == 3 and records[1].tokens.dtype == np.int32 and records[1].tokens.shape == (2, 3, 5)


def test_the_writer_writes_version_2_exactly_as_documented(stream_bytes):
    data, _ = stream_bytes
    assert data[:4] == b"RTOK" and struct.unpack("<H", data[4:6])[0] == 2
    hlen = struct.unpack("<I", data[6:10])[0]
    assert json.loads(data[10:10 + hlen]) == HEADER
    assert data[10 + hlen:14 + hlen] == struct.pack("<I", zlib.crc32(data[:10 + hlen]))
    head, records = split_records(data)
    assert len(records) == 5  # rebuilt from the documented layout, byte for byte
    assert assemble(head, [record(k, p) for k, p in records]) == data


def test_a_version_1_stream_still_reads(stream_bytes):
    data, frames = stream_bytes
    _, records = split_records(data)
    head, body = header_section(json.dumps(HEADER).encode(), version=1), [record(k, p) for k, p in records]
    v1 = assemble(head, body, 1)
    header, parsed = parse_bytes(v1)
    assert header == HEADER and header.version == 1
    assert [type(r).__name__ for r in parsed] == ["ndarray", "Block", "ndarray", "Block", "Block"]
    assert np.array_equal(parsed[2], frames[1]) and parsed[4].frames == 3
    with pytest.raises(ReftokError, match="end record does not match"):  # a v2 end record in a v1 stream
        parse_bytes(v1[:-13] + record(3, struct.pack("<II", 5, 0)))
    with pytest.raises(ReftokError, match="^stream: 3 bytes after the end record$"):
        parse_bytes(v1 + b"abc")
    kept, damage = salvaged(v1 + b"abc")
    assert len(kept) == 5 and damage == ["s.rtok: 3 bytes after the end record"]


def test_other_versions_are_refused(stream_bytes):
    data, _ = stream_bytes
    for version in (0, 3, 0x0102):
        with pytest.raises(ReftokError, match=f"version {version}; this reftok-deploy reads versions 1, 2"):
            parse_bytes(data[:4] + struct.pack("<H", version) + data[6:])


def test_every_byte_flip_in_the_header_is_refused(stream_bytes):
    data, _ = stream_bytes
    head_len = 10 + struct.unpack("<I", data[6:10])[0] + 4  # magic .. header CRC
    accepted = []
    for pos in range(head_len):
        for mask in range(1, 256):
            flipped = bytearray(data)
            flipped[pos] ^= mask
            try:
                parse_bytes(bytes(flipped))
            except ReftokError as exc:
                assert "\n" not in str(exc)
            else:
                accepted.append((pos, mask))
    assert accepted == []


def test_a_corrupt_header_is_refused_by_its_crc(stream_bytes):
    data, _ = stream_bytes
    hlen = struct.unpack("<I", data[6:10])[0]
    speed = data.index(b'"fps": 10.0') + len('"fps": ')
    edited = data[:speed] + b"2" + data[speed + 1:]  # one digit: fps 10.0 -> 20.0, still a valid header
    assert json.loads(edited[10:10 + hlen])["fps"] == 20.0
    with pytest.raises(ReftokError, match="^stream: header is corrupt \\(CRC mismatch\\)$"):
        parse_bytes(edited)
    with pytest.raises(ReftokError, match="truncated inside its header"):
        parse_bytes(data[:10 + hlen + 2])


FPS_EDITS = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"0", b"0.0", b"1e-9", b"0.09", b"5000", b"1000.5", b"-10",
             b"true"]


@pytest.mark.parametrize("fps", FPS_EDITS, ids=[f.decode() for f in FPS_EDITS])
def test_fps_out_of_range_is_refused_even_with_a_valid_header_crc(stream_bytes, fps):
    data, _ = stream_bytes
    head, records = split_records(data)
    blob = json.dumps(HEADER).encode().replace(b'"fps": 10.0', b'"fps": ' + fps)
    edited = assemble(header_section(blob), [record(k, p) for k, p in records])
    with pytest.raises(ReftokError, match="fps|non-finite") as caught:
        parse_bytes(edited)
    assert "\n" not in str(caught.value)
    with pytest.raises(ReftokError, match="fps|non-finite"):  # and in a version-1 stream
        parse_bytes(assemble(header_section(blob, 1), [record(k, p) for k, p in records], 1))


@pytest.mark.parametrize("fps", [0.1, 1000, 1000.0, 29.97])
def test_fps_at_the_bounds_is_accepted(stream_bytes, fps):
    data, _ = stream_bytes
    head, records = split_records(data)
    blob = json.dumps(dict(HEADER, fps=fps)).encode()
    header, parsed = parse_bytes(assemble(header_section(blob), [record(k, p) for k, p in records]))
    assert header["fps"] == fps and len(parsed) == 5


def test_nan_elsewhere_in_the_header_and_huge_numbers_are_refused(stream_bytes):
    data, _ = stream_bytes
    _, records = split_records(data)
    body = [record(k, p) for k, p in records]
    blob = json.dumps(dict(HEADER, extra=float("nan"))).encode()
    with pytest.raises(ReftokError, match="non-finite number NaN"):
        parse_bytes(assemble(header_section(blob), body))
    blob = json.dumps(HEADER).encode().replace(b'"width": 40', b'"width": 1' + b"0" * 5000)  # past Python's int digit limit
    with pytest.raises(ReftokError, match="^stream: header is not valid JSON$"):
        parse_bytes(assemble(header_section(blob), body))


def test_the_writer_refuses_an_fps_no_video_can_have(tmp_path):
    for fps in (float("nan"), float("inf"), 0.0, 0.05, 1e4):
        with pytest.raises(ReftokError, match="fps"):
            TokenStreamWriter(tmp_path / "s.rtok", dict(HEADER, fps=fps))
    assert list(tmp_path.iterdir()) == []


def tail_damage(data: bytes) -> dict[str, tuple[bytes, int, str]]:
    """Streams damaged at their end -> (bytes, records yielded before the damage shows, error pattern).

    The rewritten and swapped blocks keep their own CRCs valid and their lengths: a file CRC that also ran
    over the records' CRC fields would miss them (CRC-32 over data and its own CRC is a constant)."""
    head, records = split_records(data)
    body = head + b"".join(record(k, p) for k, p in records[:-1])
    old_crc = struct.unpack("<II", data[-12:-4])[1]
    edited = [record(k, p) for k, p in records]
    edited[3] = record(2, records[3][1][:8] + bytes(len(records[3][1]) - 8))  # its own CRC valid
    swapped = [record(k, p) for k, p in records]
    swapped[1], swapped[3] = swapped[3], swapped[1]  # two blocks of the same length
    return {
        "one trailing byte": (data + b"\0", 5, "^stream: 1 byte after the end record$"),
        "trailing garbage": (data + b"garbage" * 100, 5, "^stream: 700 bytes after the end record$"),
        "a second stream appended": (data + data, 5, f"^stream: {len(data)} bytes after the end record$"),
        "last block removed, count fixed": (body + record(3, struct.pack("<II", 4, old_crc)), 4, "file CRC"),
        "last block removed, old end record": (body + data[-17:], 4, "end record does not match the 4 records"),
        "a record rewritten with a valid CRC": (b"".join([head, *edited]) + data[-17:], 5, "file CRC"),
        "two blocks swapped": (b"".join([head, *swapped]) + data[-17:], 5, "file CRC"),
        "a v1 end record": (data[:-17] + record(3, struct.pack("<I", 5)), 5, "end record does not match"),
    }


@pytest.mark.parametrize("case", ["one trailing byte", "trailing garbage", "a second stream appended",
                                  "last block removed, count fixed", "last block removed, old end record",
                                  "a record rewritten with a valid CRC", "two blocks swapped", "a v1 end record"])
def test_damage_at_the_end_is_refused_and_salvaged_up_to_it(stream_bytes, case):
    blob, intact, pattern = tail_damage(stream_bytes[0])[case]
    with pytest.raises(ReftokError, match=pattern) as caught:
        parse_bytes(blob)
    assert "\n" not in str(caught.value)
    records, damage = salvaged(blob)
    assert len(records) == intact and len(damage) == 1 and damage[0] == "s.rtok" + str(caught.value)[len("stream"):]
    assert all(isinstance(r, (np.ndarray, Block)) for r in records)


def test_records_are_yielded_before_the_end_is_checked(stream_bytes):
    """reftok-decode streams: it gets every record, then the error (and aborts its atomic output)."""
    data, _ = stream_bytes
    fh = io.BytesIO(data + b"x")
    records = iter_records(fh, read_header(fh))
    assert len([next(records) for _ in range(5)]) == 5
    with pytest.raises(ReftokError, match="1 byte after the end record"):
        next(records)


def test_iter_records_needs_the_header_read_header_returned(stream_bytes):
    fh = io.BytesIO(stream_bytes[0])
    header = dict(read_header(fh))
    with pytest.raises(TypeError):
        next(iter_records(fh, header))


def test_writer_refuses_mismatched_records_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / "bad.rtok"
    with pytest.raises(ValueError):
        with TokenStreamWriter(path, HEADER) as writer:
            writer.write_block(np.zeros((2, 3, 4), int), 8)
    assert not path.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cut", [3, 12, 60, -30, -9, -1])
def test_truncated_stream_is_a_clear_error(stream_bytes, cut):
    data, _ = stream_bytes
    with pytest.raises(ReftokError, match="truncated|bad magic"):
        parse_bytes(data[:cut])


def test_flipped_payload_byte_fails_the_crc(stream_bytes):
    data, _ = stream_bytes
    corrupted = bytearray(data)
    corrupted[len(data) // 2] ^= 0xFF
    with pytest.raises(ReftokError):
        parse_bytes(bytes(corrupted))


def test_hostile_but_well_formed_records_are_refused(stream_bytes):
    data, _ = stream_bytes
    head, records = split_records(data)
    block = struct.pack("<HHHH", 8, 2, 3, 5) + np.full(30, 999, "<u2").tobytes()
    with pytest.raises(ReftokError, match="before any reference"):
        parse_bytes(assemble(head, [record(2, block)]))
    ids_out_of_range = struct.pack("<HHHH", 8, 2, 3, 5) + np.full(30, 4000, "<u2").tobytes()
    with pytest.raises(ReftokError, match="outside the codebook"):
        parse_bytes(assemble(head, [record(k, p) for k, p in records] + [record(2, ids_out_of_range)]))
    with pytest.raises(ReftokError, match="claims"):
        parse_bytes(head + struct.pack("<BI", 1, 1 << 31))
    with pytest.raises(ReftokError, match="not a 40x24 RGB PNG"):
        parse_bytes(assemble(head, [record(1, b"\x89PNG not really")]))


def mutate(original: bytes, data, edits: int, cut: int, insert: int) -> bytes:
    """Up to ``edits`` random byte flips, cuts (<= ``cut`` bytes) and insertions (<= ``insert`` bytes)."""
    blob = bytearray(original)
    for _ in range(data.draw(st.integers(1, edits))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(len(blob) - 1, 0)))
        if op == "flip" and blob:
            blob[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del blob[pos:pos + data.draw(st.integers(1, cut))]
        else:
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=insert))
    return bytes(blob)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_streams_never_crash(stream_bytes, data):
    original, _ = stream_bytes
    blob = mutate(original, data, edits=8, cut=64, insert=16)
    try:
        header, records = parse_bytes(bytes(blob))
    except ReftokError as exc:
        assert "\n" not in str(exc)
        return
    assert all(isinstance(r, (np.ndarray, Block)) for r in records) and header["width"] <= 16384


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_are_refused(blob):
    with pytest.raises(ReftokError):
        parse_bytes(b"RTOK" + blob)


def test_deeply_nested_header_is_refused():
    blob = b"[" * 20000 + b"]" * 20000
    for version in (1, 2):
        with pytest.raises(ReftokError, match="header"):
            parse_bytes(header_section(blob, version))


def with_header(data: bytes, header: dict) -> bytes:
    _, records = split_records(data)
    return assemble(header_section(json.dumps(header).encode()), [record(k, p) for k, p in records])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_crc_consistent_payload_edits_never_crash(stream_bytes, data):
    """Edits that keep every CRC valid reach the record decoders themselves (PNG, token grids)."""
    original, _ = stream_bytes
    head, records = split_records(original)
    index = data.draw(st.integers(0, len(records) - 1))
    kind, payload = records[index]
    records[index] = (kind, mutate(payload, data, edits=6, cut=32, insert=8))
    try:
        _, parsed = parse_bytes(assemble(head, [record(k, p) for k, p in records]))
    except ReftokError as exc:
        assert "\n" not in str(exc)
        return
    for item in parsed:  # what is accepted is exactly what the header promises
        if isinstance(item, Block):
            assert item.tokens.shape == (2, 3, 5) and item.tokens.max() < 1000
        else:
            assert item.shape == (24, 40, 3) and item.dtype == np.uint8


HEADER_EDITS = [("width", 0), ("width", -5), ("width", 16385), ("width", "40"), ("width", 40.5), ("height", None),
                ("fps", "fast"), ("block_frames", 7), ("temporal_factor", 0), ("spatial_factor", 3),
                ("fsq_levels", [8, 5, 5]), ("fsq_levels", "8,5,5,5"), ("codebook_size", 999), ("model_version", "2"),
                ("checkpoint_sha256", 5), ("reference_codec", "jpeg"), ("width", True), ("backend", 7),
                ("backend", ""), ("backend", "x" * 65)]


@pytest.mark.parametrize("key,value", HEADER_EDITS)
def test_header_edits_are_refused(stream_bytes, key, value):
    edited = dict(HEADER, **{key: value}) if value is not None else {k: v for k, v in HEADER.items() if k != key}
    with pytest.raises(ReftokError, match="header|frame size|block_frames|spatial_factor|fsq_levels|codec"):
        parse_bytes(with_header(stream_bytes[0], edited))


def test_the_encoding_backend_is_an_optional_header_field(stream_bytes):
    from reftok_deploy.model.reftok import RefTokConfig
    from reftok_deploy.base.tokenstream import stream_header

    header = stream_header(RefTokConfig(), 40, 24, 10.0, "ab" * 32, backend="onnxruntime:int8")
    assert header["backend"] == "onnxruntime:int8" and "backend" not in stream_header(RefTokConfig(), 40, 24, 10.0, "ab" * 32)
    parsed_header, _ = parse_bytes(with_header(stream_bytes[0], dict(HEADER, backend="openvino:fp16")))
    assert parsed_header["backend"] == "openvino:fp16"


def test_huge_frames_are_refused_before_any_png_is_decoded(stream_bytes):
    with pytest.raises(ReftokError, match="out of range"):
        parse_bytes(with_header(stream_bytes[0], dict(HEADER, width=16384, height=16384)))
    head, _ = split_records(stream_bytes[0])
    # a CRC-valid PNG record whose IHDR claims 30000x30000: refused from its first 24 bytes
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 30000, 30000) + bytes(40)
    with pytest.raises(ReftokError, match="not a 40x24 RGB PNG"):
        parse_bytes(assemble(head, [record(1, bomb)]))


def test_header_fields_are_checked_against_the_model():
    from reftok_deploy.model.reftok import PRESETS
    from reftok_deploy.base.tokenstream import check_header_matches

    cfg = PRESETS["tiny"]
    good = dict(HEADER, model_version=cfg.model_version)
    check_header_matches(good, cfg)
    for key, value in (("block_frames", 16), ("temporal_factor", 2), ("fsq_levels", [8, 5, 5, 5, 8, 8]),
                       ("model_version", 1), ("spatial_factor", 4)):
        with pytest.raises(ReftokError, match=key):
            check_header_matches(dict(good, **{key: value}), cfg)


def test_a_cut_off_stream_is_salvaged_up_to_its_last_intact_record(stream_bytes):
    data, frames = stream_bytes
    cut = data[:-20]  # the last block and the end record are damaged
    with pytest.raises(ReftokError, match="truncated"):
        parse_bytes(cut)
    damage = []
    fh = io.BytesIO(cut)
    records = list(iter_records(fh, read_header(fh), "cut.rtok", on_damage=damage.append))
    assert [type(r).__name__ for r in records] == ["ndarray", "Block", "ndarray", "Block"]
    assert len(damage) == 1 and "truncated" in damage[0]
