"""The tokenizer service's client: encode and decode GOPs on a ``reftok-serve`` server over HTTP.

:class:`RemoteCodec` has :class:`reftok_deploy.runtimes.codec.FrameCodec`'s interface (uint8 frames
in, int32 tokens out, and back), so the live pipeline runs unchanged with the model remote. The
server pads and converts frames with the same code as a local run, so with the same backend and
precision the tokens are the same.

Failures the server cannot help (4xx: a bad payload, a wrong token, another checkpoint) are one
:class:`ReftokError` line with the server's reason; a connection that drops or a 5xx (a replica
being replaced) is retried with backoff for up to ``retry_seconds`` (encode and decode are pure
functions of their inputs, so a retry is safe).
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.parse
from typing import Any

import numpy as np

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.service_api import (BATCH_HEADER, CHECKPOINT_HEADER, DECODE_PATH, ENCODE_PATH, HEALTH_PATH,
                                            MODEL_PATH, TOKEN_ENV)
from reftok_deploy.base.wire import MEDIA_TYPE, ArrayRule, PayloadError, decode_arrays, encode_arrays

RETRY_STATUSES = {500, 502, 503, 504}
MAX_RESPONSE_BYTES = 1 << 30


class ServerClient:
    """One keep-alive connection to a server (one per thread: not shared between threads)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0, retry_seconds: float = 120.0,
                 checkpoint_sha256: str | None = None) -> None:
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ReftokError(f"--server: not an http(s) URL: {url}")
        self.url = f"{parsed.scheme}://{parsed.netloc}"
        self._host, self._port, self._https = parsed.hostname, parsed.port, parsed.scheme == "https"
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.timeout, self.retry_seconds = timeout, retry_seconds
        self.checkpoint_sha256 = checkpoint_sha256
        self.retries = 0  # requests sent again after a dropped connection or a 5xx
        self.last_batch = 0  # GOPs the server ran together with the last one
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._connection = kind(self._host, self._port, timeout=self.timeout)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[bytes, dict[str, str]]:
        """One request, retried on dropped connections and 5xx; -> (body, headers). 4xx: ReftokError."""
        headers = {"Content-Type": MEDIA_TYPE} if body is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.checkpoint_sha256:
            headers[CHECKPOINT_HEADER] = self.checkpoint_sha256
        deadline, wait = time.monotonic() + self.retry_seconds, 0.2
        while True:
            try:
                connection = self._connect()
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read(MAX_RESPONSE_BYTES + 1)
                status, reply_headers = response.status, {k.lower(): v for k, v in response.getheaders()}
                if len(data) > MAX_RESPONSE_BYTES:
                    raise ReftokError(f"{self.url}{path}: response over {MAX_RESPONSE_BYTES} bytes")
                if status < 400:
                    return data, reply_headers
                reason = data.decode("utf-8", "replace").strip().splitlines()[0] if data.strip() else response.reason
                if status not in RETRY_STATUSES:
                    raise ReftokError(f"server {self.url} refused {path} ({status}): {reason}")
                problem = f"{status}: {reason}"
            except (http.client.HTTPException, OSError) as exc:  # refused, reset, timed out, cut short
                self.close()
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() + wait > deadline:
                raise ReftokError(f"server {self.url} did not answer {path} within {self.retry_seconds:g} s "
                                  f"(last: {problem})")
            self.retries += 1
            time.sleep(wait)
            wait = min(wait * 2, 2.0)

    def _json(self, path: str) -> dict[str, Any]:
        data, _ = self.request("GET", path)
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            document = None
        if not isinstance(document, dict):
            raise ReftokError(f"server {self.url}{path}: not a JSON object; is this a reftok-serve server?")
        return document

    def health(self) -> dict[str, Any]:
        return self._json(HEALTH_PATH)

    def model(self) -> dict[str, Any]:
        """The server's model: ``geometry``, ``fsq_levels``, ``checkpoint_sha256``, ``backend``, ``limits``..."""
        return self._json(MODEL_PATH)

    def _call(self, path: str, arrays: list[np.ndarray], rule: ArrayRule) -> np.ndarray:
        data, headers = self.request("POST", path, encode_arrays(arrays))
        try:
            self.last_batch = int(headers.get(BATCH_HEADER.lower(), 0))
        except ValueError:
            self.last_batch = 0
        try:
            return decode_arrays(data, [rule])[0]
        except PayloadError as exc:
            raise ReftokError(f"server {self.url}{path}: bad response: {exc}") from None

    def encode(self, reference: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """(reference ``[H,W,3]``, frames ``[T,H,W,3]``) uint8 RGB -> tokens ``[G,h,w]`` int32."""
        return self._call(ENCODE_PATH, [reference, frames], ArrayRule("tokens", np.int32, (None, None, None)))

    def decode(self, reference: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """(reference ``[H,W,3]`` uint8 RGB, tokens ``[G,h,w]`` int32) -> frames ``[T,H,W,3]`` uint8 RGB."""
        return self._call(DECODE_PATH, [reference, np.ascontiguousarray(tokens, dtype=np.int32)],
                          ArrayRule("frames", np.uint8, (None, None, None, 3)))


class RemoteCodec:
    """FrameCodec's interface over a server; one per stream (each owns its connection)."""

    def __init__(self, client: ServerClient) -> None:
        self.client = client
        self.name = f"server {client.url}"

    def encode(self, reference: np.ndarray, block: np.ndarray) -> np.ndarray:
        return self.client.encode(reference, block)

    def decode(self, reference: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return self.client.decode(reference, tokens)

    def close(self) -> None:
        self.client.close()
