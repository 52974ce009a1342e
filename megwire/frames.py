"""Frames: a small versioned JSON header plus raw array buffers.

A frame is what every megbed process sends to another (ES -> UE handoffs, requests, results, heartbeats, clock
sync, errors). It never carries pickled objects: the header is JSON, the buffers are raw little-endian arrays whose
dtype and shape the header declares.

Two encodings of the same frame:

* **parts** (``to_parts`` / ``from_parts``): ZeroMQ multipart, ``[prefix+header, buf0, buf1, ...]``; buffers travel
  without copies.
* **bytes** (``pack`` / ``unpack``): one contiguous byte string with per-buffer lengths and a CRC-32 trailer, for
  files and for byte-exact payload accounting. Truncation and corruption are detected and named.

Layout of the prefix (little endian, 12 bytes): magic ``b"MGWB"``, protocol version (u16), flags (u16, reserved),
header length in bytes (u32).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAGIC = b"MGWB"
PROTOCOL_VERSION = 1
_PREFIX = struct.Struct("<4sHHI")
_LEN = struct.Struct("<Q")
_CRC = struct.Struct("<I")

# Only plain numeric dtypes cross the wire; object arrays (which could smuggle pickles) never do.
ALLOWED_DTYPES = frozenset(
    {"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
     "float16", "float32", "float64", "complex64", "complex128"}
)


class FrameError(ValueError):
    """A frame could not be encoded or decoded; the message names what is wrong."""


@dataclass(frozen=True)
class FrameLimits:
    """Upper bounds a receiver enforces before allocating anything.

    Attributes
    ----------
    max_header_bytes : int
        Largest accepted JSON header.
    max_buffers : int
        Largest accepted number of buffers.
    max_total_bytes : int
        Largest accepted sum of buffer sizes (bytes).
    """

    max_header_bytes: int = 1 << 20
    max_buffers: int = 64
    max_total_bytes: int = 512 << 20


DEFAULT_LIMITS = FrameLimits()


@dataclass
class Frame:
    """One message between megbed processes.

    Attributes
    ----------
    kind : str
        What the frame is (``"handoff"``, ``"request"``, ``"result"``, ``"error"``, ``"heartbeat"``, ...).
    meta : dict
        JSON-serialisable fields (request id, timestamps, configuration, records).
    buffers : dict[str, numpy.ndarray]
        Named arrays, in order. Sent as raw little-endian bytes.
    version : int
        Protocol version of the sender; receivers reject other versions.
    """

    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    buffers: dict[str, np.ndarray] = field(default_factory=dict)
    version: int = PROTOCOL_VERSION

    @property
    def payload_nbytes(self) -> int:
        """Sum of the buffers' sizes in bytes (what a link carries besides the header)."""
        return int(sum(np.asarray(b).nbytes for b in self.buffers.values()))


_DTYPE_NAMES: dict[np.dtype, str] = {}


def _dtype_name(dtype: np.dtype) -> str:
    """``dtype.name``, cached: numpy builds the string on every access (~4 us, twice per buffer per encode)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = dtype.name
    return name


def _canonical(array: np.ndarray, name: str) -> np.ndarray:
    if type(array) is not np.ndarray:
        array = np.asarray(array)
    dtype_name = _dtype_name(array.dtype)
    if dtype_name not in ALLOWED_DTYPES:
        raise FrameError(f"buffer {name!r}: dtype {dtype_name} is not allowed on the wire")
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array if array.ndim and array.flags.c_contiguous else np.ascontiguousarray(array)  # 0-d: 1-d, as before


def _header_bytes(frame: Frame, arrays: Sequence[tuple[str, np.ndarray]]) -> bytes:
    if not isinstance(frame.kind, str) or not frame.kind:
        raise FrameError("frame kind must be a non-empty string")
    header = {
        "kind": frame.kind,
        "meta": frame.meta,
        "buffers": [{"name": n, "dtype": _dtype_name(a.dtype), "shape": list(a.shape)} for n, a in arrays],
    }
    try:
        return json.dumps(header, separators=(",", ":"), allow_nan=True).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise FrameError(f"frame meta is not JSON-serialisable: {exc}") from exc


def _prepare(frame: Frame) -> tuple[bytes, list[tuple[str, np.ndarray]]]:
    arrays = [(str(n), _canonical(a, str(n))) for n, a in frame.buffers.items()]
    header = _header_bytes(frame, arrays)
    prefix = _PREFIX.pack(MAGIC, frame.version, 0, len(header))
    return prefix + header, arrays


def to_parts(frame: Frame) -> list[bytes | memoryview]:
    """Encode a frame as ZeroMQ multipart parts (buffers are not copied)."""
    head, arrays = _prepare(frame)
    return [head] + [memoryview(a).cast("B") if a.nbytes else b"" for _, a in arrays]


def _parse_head(head: bytes | memoryview, limits: FrameLimits) -> tuple[int, dict[str, Any], int]:
    # Copy at most prefix + the largest allowed header: a huge first part costs nothing before it is rejected.
    head = bytes(memoryview(head)[: _PREFIX.size + limits.max_header_bytes])
    if len(head) < _PREFIX.size:
        raise FrameError(f"truncated frame: {len(head)} bytes is shorter than the {_PREFIX.size}-byte prefix")
    magic, version, _flags, header_len = _PREFIX.unpack_from(head)
    if magic != MAGIC:
        raise FrameError(f"not a megbed frame: bad magic {magic!r}")
    if version != PROTOCOL_VERSION:
        raise FrameError(f"protocol version mismatch: frame has v{version}, this node speaks v{PROTOCOL_VERSION}")
    if header_len > limits.max_header_bytes:
        raise FrameError(f"header of {header_len} bytes exceeds the limit of {limits.max_header_bytes}")
    end = _PREFIX.size + header_len
    if len(head) < end:
        raise FrameError(f"truncated frame: header needs {header_len} bytes, {len(head) - _PREFIX.size} present")
    try:
        header = json.loads(head[_PREFIX.size:end].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FrameError(f"corrupted header: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str) or not header["kind"]:
        raise FrameError("corrupted header: missing frame kind")
    if not isinstance(header.get("meta", {}), dict) or not isinstance(header.get("buffers", []), list):
        raise FrameError("corrupted header: meta must be an object and buffers a list")
    return version, header, end


def _buffer_specs(header: Mapping[str, Any], limits: FrameLimits) -> list[tuple[str, np.dtype, tuple[int, ...], int]]:
    specs = header.get("buffers", [])
    if len(specs) > limits.max_buffers:
        raise FrameError(f"{len(specs)} buffers exceed the limit of {limits.max_buffers}")
    out = []
    total = 0
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise FrameError(f"buffer #{i}: descriptor is not an object")
        name, dtype_name, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")
        if not isinstance(name, str):
            raise FrameError(f"buffer #{i}: missing name")
        if dtype_name not in ALLOWED_DTYPES:
            raise FrameError(f"buffer {name!r}: dtype {dtype_name!r} is not allowed on the wire")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise FrameError(f"buffer {name!r}: bad shape {shape!r}")
        dtype = np.dtype(dtype_name).newbyteorder("<")
        nbytes = int(np.prod(shape, dtype=np.float64) * dtype.itemsize)
        total += nbytes
        if total > limits.max_total_bytes:
            raise FrameError(f"payload exceeds the limit of {limits.max_total_bytes} bytes (oversized frame)")
        out.append((name, dtype, tuple(shape), nbytes))
    return out


def from_parts(parts: Sequence[bytes | memoryview], limits: FrameLimits = DEFAULT_LIMITS) -> Frame:
    """Decode multipart parts into a frame, validating everything before use.

    Raises
    ------
    FrameError
        Wrong magic or version, corrupted header, wrong buffer count or sizes, disallowed dtype, over a limit.
    """
    if not parts:
        raise FrameError("empty message")
    version, header, end = _parse_head(parts[0], limits)
    if len(parts[0]) != end:
        raise FrameError(f"first part has {len(parts[0]) - end} unexpected trailing bytes")
    specs = _buffer_specs(header, limits)
    if len(parts) - 1 != len(specs):
        raise FrameError(f"header declares {len(specs)} buffers but {len(parts) - 1} arrived")
    buffers = {}
    for (name, dtype, shape, nbytes), raw in zip(specs, parts[1:], strict=True):
        if len(raw) != nbytes:
            raise FrameError(f"buffer {name!r}: {len(raw)} bytes, header declares {nbytes} for {dtype.name}{list(shape)}")
        buffers[name] = np.frombuffer(raw, dtype=dtype).reshape(shape) if nbytes else np.zeros(shape, dtype)
    return Frame(kind=header["kind"], meta=header.get("meta", {}), buffers=buffers, version=version)


def pack(frame: Frame) -> bytes:
    """Encode a frame as one contiguous byte string with a CRC-32 trailer."""
    head, arrays = _prepare(frame)
    chunks = [head]
    for _, a in arrays:
        chunks.append(_LEN.pack(a.nbytes))
        chunks.append(a.tobytes())
    body = b"".join(chunks)
    return body + _CRC.pack(zlib.crc32(body))


def packed_size(frame: Frame) -> int:
    """Size in bytes of ``pack(frame)`` without building it."""
    head, arrays = _prepare(frame)
    return len(head) + sum(_LEN.size + a.nbytes for _, a in arrays) + _CRC.size


def unpack(data: bytes | bytearray | memoryview, limits: FrameLimits = DEFAULT_LIMITS) -> Frame:
    """Decode ``pack`` output. Truncated or corrupted input raises :class:`FrameError` naming the problem."""
    data = memoryview(data).cast("B")
    if len(data) < _PREFIX.size + _CRC.size:
        raise FrameError(f"truncated frame: {len(data)} bytes")
    version, header, offset = _parse_head(data, limits)
    specs = _buffer_specs(header, limits)
    body_end = len(data) - _CRC.size
    buffers = {}
    for name, dtype, shape, nbytes in specs:
        if offset + _LEN.size > body_end:
            raise FrameError(f"truncated frame: buffer {name!r} is missing")
        (declared,) = _LEN.unpack_from(data, offset)
        offset += _LEN.size
        if declared != nbytes:
            raise FrameError(f"corrupted frame: buffer {name!r} length {declared} != {nbytes} from its header")
        if offset + nbytes > body_end:
            raise FrameError(f"truncated frame: buffer {name!r} needs {nbytes} bytes, {body_end - offset} left")
        buffers[name] = np.frombuffer(data[offset:offset + nbytes], dtype=dtype).reshape(shape).copy()
        offset += nbytes
    if offset != body_end:
        raise FrameError(f"corrupted frame: {body_end - offset} unexpected bytes after the last buffer")
    (crc,) = _CRC.unpack_from(data, body_end)
    if crc != zlib.crc32(data[:body_end]):
        raise FrameError("corrupted frame: CRC-32 mismatch")
    return Frame(kind=header["kind"], meta=header.get("meta", {}), buffers=buffers, version=version)


def error_frame(message: str, *, request_id: str | None = None, code: str = "bad_request", **meta: Any) -> Frame:
    """The frame a node answers with when it rejects a request (it keeps serving)."""
    body = {"error": message, "code": code, **meta}
    if request_id is not None:
        body["request_id"] = request_id
    return Frame(kind="error", meta=body)
