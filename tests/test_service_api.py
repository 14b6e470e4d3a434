"""The service's payload format and HTTP gateway, without Ray: every bad request is a 4xx with one line.

The gateway runs as Serve runs it (an ASGI request in, a response out); the replicas are stand-ins
that record what reached them, so these tests show what is refused before any model work.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("starlette")
pytest.importorskip("ray.serve")

from starlette.requests import Request  # noqa: E402

from reftok_deploy.base.service_api import ServiceLimits  # noqa: E402
from reftok_deploy.base.wire import MEDIA_TYPE, ArrayRule, PayloadError, decode_arrays, encode_arrays  # noqa: E402
from reftok_deploy.serve.gateway import Gateway  # noqa: E402

LIMITS = ServiceLimits(block_frames=8, groups=2, spatial_factor=8, codebook_size=1000, max_pixels=64 * 64)
SHA = "ab" * 32
RULES = LIMITS.encode_rules()


class StandIn:
    """A deployment handle that answers like a replica: zeros of the right shape, and a batch of 1."""

    def __init__(self, graph: str) -> None:
        self.graph, self.calls = graph, 0

    def remote(self, reference: np.ndarray, second: np.ndarray):
        async def answer():
            self.calls += 1
            height, width = reference.shape[:2]
            if self.graph == "encoder":
                return np.zeros(LIMITS.token_shape(height, width), np.int32), 1
            return np.zeros((LIMITS.block_frames, height, width, 3), np.uint8), 1
        return answer()


def call(gateway: Gateway, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):
    """-> (status, body text or bytes, headers) of one request through the gateway."""
    headers = {"content-type": MEDIA_TYPE, "content-length": str(len(body)), **(headers or {})}
    scope = {"type": "http", "method": method, "path": path, "headers": [(k.lower().encode(), v.encode())
                                                                          for k, v in headers.items()],
             "query_string": b"", "server": ("127.0.0.1", 8000), "scheme": "http", "root_path": ""}
    chunks = [body[i: i + 65536] for i in range(0, len(body), 65536)] or [b""]

    async def receive():
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    response = asyncio.run(gateway(Request(scope, receive)))
    return response.status_code, response.body, dict(response.headers)


@pytest.fixture
def gateway():
    model = {"api": "v1", "checkpoint_sha256": SHA, "block_frames": 8}
    return Gateway(StandIn("encoder"), StandIn("decoder"), model, LIMITS, token="s3cret")


AUTH = {"authorization": "Bearer s3cret"}


def encode_body(height=32, width=48, frames=8, dtype=np.uint8) -> bytes:
    rng = np.random.default_rng(0)
    return encode_arrays([rng.integers(0, 255, (height, width, 3)).astype(dtype),
                          rng.integers(0, 255, (frames, height, width, 3)).astype(dtype)])


def test_payload_round_trip_keeps_every_byte():
    rng = np.random.default_rng(1)
    reference, frames = rng.integers(0, 256, (17, 9, 3), dtype=np.uint8), rng.integers(0, 256, (8, 17, 9, 3), dtype=np.uint8)
    got = decode_arrays(encode_arrays([reference, frames]), RULES)
    assert all(np.array_equal(a, b) for a, b in zip(got, (reference, frames)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 2000))
def test_any_bytes_are_parsed_or_refused_with_one_line(noise, cut):
    """Random bodies, and valid ones cut short or with noise spliced in: a PayloadError line or arrays that
    follow the rules, never another exception."""
    valid = encode_body(8, 8)
    for body in (noise, valid[:cut], valid[:cut] + noise + valid[cut:]):
        try:
            arrays = decode_arrays(body, RULES)
        except PayloadError as exc:
            assert "\n" not in str(exc)
        else:
            assert [a.dtype for a in arrays] == [np.uint8, np.uint8] and arrays[1].shape[0] == 8


def test_a_header_promising_a_huge_array_is_refused_before_reading(gateway):
    header = encode_arrays([np.zeros((1, 1, 3), np.uint8)])
    huge = header.replace(b"(1, 1, 3)", b"(8000, 8000, 3)")
    with pytest.raises(PayloadError, match="header promises"):
        decode_arrays(huge + encode_body(), RULES)


@pytest.mark.parametrize("body, headers, status, reason", [
    (encode_body(), {}, 401, "bearer token is required"),
    (encode_body(), {"authorization": "Bearer wrong"}, 401, "wrong bearer token"),
    (b"not npy", AUTH, 400, "reference: not a .npy array"),
    (encode_body(8, 8, dtype=np.float32), AUTH, 400, "dtype float32, expected uint8"),
    (encode_body(frames=7), AUTH, 400, "frames: size 7 in dimension 0, expected 8"),
    (encode_body(65, 65), AUTH, 400, "over this server's limit of 4096 pixels"),
    (encode_body() + b"x", AUTH, 400, "1 bytes after the last array"),
    (encode_body(), {**AUTH, "content-type": "application/json"}, 415, "send application/x-reftok-npy"),
    (encode_body(), {**AUTH, "content-length": str(10**12)}, 413, "at most"),
    (encode_body(), {**AUTH, "x-reftok-checkpoint": "cd" * 32}, 409, "the client expects cdcdcdcd"),
])
def test_bad_requests_get_a_4xx_with_one_line_and_reach_no_replica(gateway, body, headers, status, reason):
    got, text, _ = call(gateway, "POST", "/v1/encode", body, headers)
    assert got == status and reason in text.decode()
    assert text.decode().count("\n") == 1
    assert gateway.encoder.calls == 0


def test_a_body_over_the_limit_without_a_length_is_cut_off(gateway):
    over = b"\0" * (LIMITS.max_body_bytes + 1)
    status, text, _ = call(gateway, "POST", "/v1/encode", over, {**AUTH, "content-length": ""})
    assert status == 413 and gateway.encoder.calls == 0


def test_decode_checks_tokens_against_the_reference_and_the_codebook(gateway):
    reference = np.zeros((32, 48, 3), np.uint8)
    wrong_shape = encode_arrays([reference, np.zeros((2, 3, 6), np.int32)])
    out_of_range = encode_arrays([reference, np.full((2, 4, 6), 1000, np.int32)])
    assert call(gateway, "POST", "/v1/decode", wrong_shape, AUTH)[:2] == (
        400, b"tokens [2, 3, 6] do not fit a 48x32 reference: expected [2, 4, 6]\n")
    assert call(gateway, "POST", "/v1/decode", out_of_range, AUTH)[:2] == (400, b"token ids outside 0..999\n")
    assert gateway.decoder.calls == 0


def test_good_requests_reach_the_replicas_and_return_arrays(gateway):
    status, body, headers = call(gateway, "POST", "/v1/encode", encode_body(30, 46), AUTH)
    assert status == 200 and headers["x-reftok-batch"] == "1"
    tokens = decode_arrays(body, [ArrayRule("tokens", np.int32, (2, 4, 6))])[0]
    status, body, _ = call(gateway, "POST", "/v1/decode", encode_arrays([np.zeros((30, 46, 3), np.uint8), tokens]), AUTH)
    assert status == 200 and decode_arrays(body, [ArrayRule("frames", np.uint8, (8, 30, 46, 3))])[0].shape == (8, 30, 46, 3)


def test_routes_methods_and_the_open_health_check(gateway):
    assert call(gateway, "GET", "/v1/health")[:2] == (200, b'{"status": "ok"}')  # no token needed
    assert call(gateway, "GET", "/v1/model")[0] == 401
    status, body, _ = call(gateway, "GET", "/v1/model", headers=AUTH)
    assert status == 200 and json.loads(body)["checkpoint_sha256"] == SHA
    assert call(gateway, "GET", "/v1/encode", headers=AUTH)[:2] == (405, b"/v1/encode takes POST, not GET\n")
    assert call(gateway, "GET", "/v2/encode", headers=AUTH)[0] == 404
