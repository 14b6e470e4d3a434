"""The service's HTTP ingress: authentication, bounds, payload parsing, and the calls to the replicas.

Everything a request can get wrong is answered here with a 4xx and one line of text, before a
replica sees it (see :mod:`reftok_deploy.base.service_api` for the API); a replica that dies while
running a request is a 503 the client retries, while Serve starts a new one.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.service_api import (BATCH_HEADER, CHECKPOINT_HEADER, DECODE_PATH, ENCODE_PATH, HEALTH_PATH,
                                            MODEL_PATH, ServiceLimits)
from reftok_deploy.base.wire import MEDIA_TYPE, PayloadError, decode_arrays, encode_arrays


# An oversized body up to this many times the limit is read (and dropped) before the 413 goes out; a larger one
# is refused at once, and its client may see the connection close instead.
DRAIN_FACTOR = 4


class Refusal(Exception):
    """A request answered with ``status`` and one line, ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _line(text: str) -> str:
    return " ".join(str(text).split())[:500]


class Gateway:
    """HTTP routes of API version 1 over the encoder and decoder deployments."""

    def __init__(self, encoder: Any, decoder: Any, model: dict[str, Any], limits: ServiceLimits,
                 token: str | None) -> None:
        self.encoder, self.decoder = encoder, decoder
        self.model, self.limits, self.token = model, limits, token

    async def __call__(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except Refusal as refusal:
            return Response(_line(refusal.reason) + "\n", status_code=refusal.status, media_type="text/plain")

    async def _route(self, request: Request) -> Response:
        path, method = request.url.path.rstrip("/") or "/", request.method
        routes = {HEALTH_PATH: "GET", MODEL_PATH: "GET", ENCODE_PATH: "POST", DECODE_PATH: "POST"}
        if path not in routes:
            raise Refusal(404, f"no such path {path}: the API is {', '.join(routes)}")
        if method != routes[path]:
            raise Refusal(405, f"{path} takes {routes[path]}, not {method}")
        if path == HEALTH_PATH:
            return _json({"status": "ok"})
        self._authenticate(request)
        if path == MODEL_PATH:
            return _json(self.model)
        self._same_checkpoint(request)
        body = await self._body(request)
        if path == ENCODE_PATH:
            reference, frames = self._parse(body, self.limits.encode_rules(), self.limits.check_encode)
            tokens, batch = await self._call(self.encoder, reference, frames)
            return _arrays(tokens, batch)
        reference, tokens = self._parse(body, self.limits.decode_rules(), self.limits.check_decode)
        frames, batch = await self._call(self.decoder, reference, tokens)
        return _arrays(frames, batch)

    def _authenticate(self, request: Request) -> None:
        if self.token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token.encode()):
            raise Refusal(401, "a bearer token is required (Authorization: Bearer TOKEN)" if not given
                          else "wrong bearer token")

    def _same_checkpoint(self, request: Request) -> None:
        wanted = request.headers.get(CHECKPOINT_HEADER.lower())
        if wanted and wanted.strip().lower() != self.model["checkpoint_sha256"]:
            raise Refusal(409, f"this server runs checkpoint {self.model['checkpoint_sha256'][:16]}, the client "
                               f"expects {wanted.strip()[:16]}")

    async def _body(self, request: Request) -> bytes:
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            if declared.isdigit() and int(declared) <= DRAIN_FACTOR * limit:
                await self._read(request, limit)  # read and dropped: see DRAIN_FACTOR
            raise Refusal(413, f"a body of {declared} bytes; this server takes at most {limit}")
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type != MEDIA_TYPE:
            raise Refusal(415, f"Content-Type {content_type or 'missing'}: send {MEDIA_TYPE}")
        body, size = await self._read(request, limit)
        if size > limit:
            raise Refusal(413, f"a body over {limit} bytes, this server's limit")
        return body

    @staticmethod
    async def _read(request: Request, limit: int) -> tuple[bytes, int]:
        """(the body if it is at most ``limit`` bytes, the bytes read). An oversized body is read on, up to
        DRAIN_FACTOR times the limit, and dropped: a server that answers 413 and closes while the client is still
        sending gives the client a broken pipe instead of the answer."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > DRAIN_FACTOR * limit:
                break
            if size <= limit:
                chunks.append(chunk)
        return b"".join(chunks), size

    @staticmethod
    def _parse(body: bytes, rules, check) -> list[np.ndarray]:
        try:
            arrays = decode_arrays(body, rules)
            check(*arrays)
        except PayloadError as exc:
            raise Refusal(400, str(exc)) from None
        return arrays

    async def _call(self, deployment: Any, first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, int]:
        from ray import exceptions as ray_errors

        try:
            return await deployment.remote(first, second)
        except ReftokError as exc:  # Ray re-raises the replica's error as a subclass of its type
            raise Refusal(400, str(getattr(exc, "cause", None) or exc).splitlines()[-1]) from None
        except (ray_errors.RayActorError, ray_errors.ActorUnavailableError) as exc:
            raise Refusal(503, f"a replica stopped while running this request; retry ({type(exc).__name__})") from None
        except Exception as exc:  # noqa: BLE001 - any other failure is this request's 500, not the server's end
            raise Refusal(500, f"{type(exc).__name__}: {str(exc).splitlines()[-1] if str(exc) else ''}") from None


def _json(document: dict[str, Any]) -> Response:
    return Response(json.dumps(document), media_type="application/json")


def _arrays(array: np.ndarray, batch: int) -> Response:
    return Response(encode_arrays([array]), media_type=MEDIA_TYPE, headers={BATCH_HEADER: str(batch)})
