"""The .rtok format: round trip, and clear errors for truncated, corrupted or hostile files (fuzzed)."""

import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reftok_deploy.errors import ReftokError
from reftok_deploy.tokenstream import Block, TokenStreamWriter, parse_bytes, read_stream
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


def record(kind: int, payload: bytes) -> bytes:
    return struct.pack("<BI", kind, len(payload)) + payload + struct.pack("<I", zlib.crc32(payload))


def test_hostile_but_well_formed_records_are_refused(stream_bytes):
    data, _ = stream_bytes
    head_len = 10 + struct.unpack("<I", data[6:10])[0]
    head = data[:head_len]
    block = struct.pack("<HHHH", 8, 2, 3, 5) + np.full(30, 999, "<u2").tobytes()
    with pytest.raises(ReftokError, match="before any reference"):
        parse_bytes(head + record(2, block) + record(3, struct.pack("<I", 1)))
    ids_out_of_range = struct.pack("<HHHH", 8, 2, 3, 5) + np.full(30, 4000, "<u2").tobytes()
    with pytest.raises(ReftokError, match="outside the codebook"):
        parse_bytes(data[: len(data) - 13] + record(2, ids_out_of_range) + record(3, struct.pack("<I", 6)))
    with pytest.raises(ReftokError, match="claims"):
        parse_bytes(head + struct.pack("<BI", 1, 1 << 31))
    with pytest.raises(ReftokError, match="not a 40x24 RGB PNG"):
        parse_bytes(head + record(1, b"\x89PNG not really") + record(3, struct.pack("<I", 1)))


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
    with pytest.raises(ReftokError, match="header"):
        parse_bytes(b"RTOK" + struct.pack("<HI", 1, len(blob)) + blob)


def split_records(data: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
    """(header bytes, [(kind, payload)]) of a well-formed stream."""
    head_len = 10 + struct.unpack("<I", data[6:10])[0]
    records, pos = [], head_len
    while pos < len(data):
        kind, length = struct.unpack("<BI", data[pos:pos + 5])
        records.append((kind, data[pos + 5:pos + 5 + length]))
        pos += 9 + length
    return data[:head_len], records


def with_header(data: bytes, header: dict) -> bytes:
    import json

    blob = json.dumps(header).encode()
    _, records = split_records(data)
    return b"RTOK" + struct.pack("<HI", 1, len(blob)) + blob + b"".join(record(k, p) for k, p in records)


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
        _, parsed = parse_bytes(head + b"".join(record(k, p) for k, p in records))
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
    from reftok_deploy.model import RefTokConfig
    from reftok_deploy.tokenstream import stream_header

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
        parse_bytes(head + record(1, bomb) + record(3, struct.pack("<I", 1)))


def test_header_fields_are_checked_against_the_model():
    from reftok_deploy.model import PRESETS
    from reftok_deploy.tokenstream import check_header_matches

    cfg = PRESETS["tiny"]
    good = dict(HEADER, model_version=cfg.model_version)
    check_header_matches(good, cfg)
    for key, value in (("block_frames", 16), ("temporal_factor", 2), ("fsq_levels", [8, 5, 5, 5, 8, 8]),
                       ("model_version", 1), ("spatial_factor", 4)):
        with pytest.raises(ReftokError, match=key):
            check_header_matches(dict(good, **{key: value}), cfg)


def test_a_cut_off_stream_is_salvaged_up_to_its_last_intact_record(stream_bytes):
    import io

    from reftok_deploy.tokenstream import iter_records, read_header

    data, frames = stream_bytes
    cut = data[:-20]  # the last block and the end record are damaged
    with pytest.raises(ReftokError, match="truncated"):
        parse_bytes(cut)
    damage = []
    fh = io.BytesIO(cut)
    records = list(iter_records(fh, read_header(fh), "cut.rtok", on_damage=damage.append))
    assert [type(r).__name__ for r in records] == ["ndarray", "Block", "ndarray", "Block"]
    assert len(damage) == 1 and "truncated" in damage[0]
