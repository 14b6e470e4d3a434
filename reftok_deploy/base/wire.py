"""The tokenizer service's payloads: a sequence of NumPy ``.npy`` arrays, parsed with bounds checks.

A request or response body is one or more arrays, each in NumPy's own ``.npy`` format (a short
text header with dtype and shape, then the raw bytes), written back to back, in the order the
endpoint names them. It is compact (uint8 frames, int32 tokens; no JSON lists of numbers) and
any language with a ``.npy`` reader can speak it.

Reading never trusts the sender: the header is parsed by NumPy with a size limit and no pickles,
and its dtype, rank and every dimension are checked against the endpoint's rule *before* a data
byte is touched; the body must hold exactly the bytes the headers promise.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reftok_deploy.base.errors import ReftokError

MEDIA_TYPE = "application/x-reftok-npy"
MAX_HEADER_BYTES = 1024  # a .npy header of a 4-D array is under 128 bytes


class PayloadError(ReftokError):
    """A payload that does not follow its endpoint's rules (the service answers 400 with this line)."""


@dataclass(frozen=True)
class ArrayRule:
    """What one array of a payload must be: its dtype and, per dimension, a fixed size or a size
    range ``(low, high)`` (``None`` = any size from 1)."""

    name: str
    dtype: np.dtype
    dims: tuple[int | tuple[int, int] | None, ...]

    def check(self, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        if np.dtype(dtype) != np.dtype(self.dtype):
            raise PayloadError(f"{self.name}: dtype {np.dtype(dtype)}, expected {np.dtype(self.dtype)}")
        if len(shape) != len(self.dims):
            raise PayloadError(f"{self.name}: shape {list(shape)}, expected {len(self.dims)} dimensions")
        for axis, (size, rule) in enumerate(zip(shape, self.dims)):
            low, high = (rule, rule) if isinstance(rule, int) else (rule or (1, None))
            if size < low or (high is not None and size > high):
                wanted = f"{low}" if low == high else f"{low}..{high if high is not None else ''}"
                raise PayloadError(f"{self.name}: size {size} in dimension {axis}, expected {wanted}")


def encode_arrays(arrays: Sequence[np.ndarray]) -> bytes:
    """Arrays -> one payload (``.npy`` version 1.0 each, C order, no pickles)."""
    out = io.BytesIO()
    for array in arrays:
        np.lib.format.write_array(out, np.ascontiguousarray(array), version=(1, 0), allow_pickle=False)
    return out.getvalue()


def decode_arrays(payload: bytes, rules: Sequence[ArrayRule]) -> list[np.ndarray]:
    """One payload -> its arrays, each checked against its rule; anything else is a :class:`PayloadError`
    (a missing or extra array, a bad header, a wrong dtype or size, too few or too many bytes)."""
    view = memoryview(payload)
    stream = io.BytesIO(payload)
    arrays = []
    for rule in rules:
        try:
            major, _ = np.lib.format.read_magic(stream)
            read_header = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}.get(major)
            if read_header is None:
                raise PayloadError(f"{rule.name}: .npy version {major} is not accepted (1 or 2)")
            shape, fortran, dtype = read_header(stream, max_header_size=MAX_HEADER_BYTES)
        except PayloadError:
            raise
        except Exception as exc:  # noqa: BLE001 - NumPy's header parser raises ValueError, SyntaxError, TokenError...
            raise PayloadError(f"{rule.name}: not a .npy array ({' '.join(str(exc).split())[:200]})") from None
        if fortran:
            raise PayloadError(f"{rule.name}: Fortran-ordered arrays are not accepted")
        rule.check(dtype, tuple(shape))
        start = stream.tell()
        size = math.prod(shape) * np.dtype(dtype).itemsize
        if start + size > len(payload):
            raise PayloadError(f"{rule.name}: {len(payload) - start} bytes of data, its header promises {size}")
        arrays.append(np.frombuffer(view[start: start + size], dtype=dtype).reshape(shape))
        stream.seek(start + size)
    if stream.tell() != len(payload):
        raise PayloadError(f"{len(payload) - stream.tell()} bytes after the last array "
                           f"({', '.join(r.name for r in rules)})")
    return arrays
