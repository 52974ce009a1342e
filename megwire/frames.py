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

Decoding is total: whatever bytes arrive, :func:`from_parts` / :func:`unpack` return a frame or raise
:class:`FrameError` -- never another exception. Every limit (:class:`FrameLimits`: header size, JSON nesting depth,
integer digits, string and kind lengths, buffer count, dimensions, elements, bytes) is checked before the thing it
bounds is allocated: nesting depth is measured on the raw bytes before ``json.loads`` runs, integers longer than the
limit are refused by the parser's hook before ``int()`` sees them, and a shape's size is computed with exact integers
before any array exists.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from megbed.megwire.errors import FrameError

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
    max_json_depth : int
        Deepest accepted nesting of JSON arrays / objects in the header (the header itself is depth 1).
    max_int_digits : int
        Longest accepted JSON integer literal (digits; nanosecond stamps and 63-bit seeds need 19).
    max_dims : int
        Most dimensions of one buffer.
    max_kind_chars : int
        Longest accepted frame kind.
    max_name_chars : int
        Longest accepted buffer name.
    """

    max_header_bytes: int = 1 << 20
    max_buffers: int = 64
    max_total_bytes: int = 512 << 20
    max_json_depth: int = 32
    max_int_digits: int = 40
    max_dims: int = 16
    max_kind_chars: int = 64
    max_name_chars: int = 128


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


def _make_dumps(make: Any = getattr(json.encoder, "c_make_encoder", None)) -> Any:
    """``json.dumps(value, separators=(",", ":"), allow_nan=True)``, the same text, for every header.

    ``json.dumps`` with keyword arguments builds a JSONEncoder on every call, and ``JSONEncoder.encode`` builds its
    C encoder on every call (~2 us a header): here the C encoder is built once. It keeps no markers (no circular
    check): a circular value -- which no frame holds -- raises RecursionError instead of ValueError, and both are
    a FrameError to the callers.
    """
    encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=True, check_circular=False)
    if make is None:  # an interpreter without the C accelerator
        return encoder.encode
    # c_make_encoder is CPython's private constructor: where its arguments differ (another version), the plain
    # encoder is used instead of failing at import or writing other text.
    probe = {"kind": "x\u00e9\"", "meta": {"a": [1, 2.5, None, True, float("nan"), -float("inf")], "b": {}}}
    try:
        chunks = make(None, encoder.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
        dumps = lambda value: "".join(chunks(value, 0))  # noqa: E731
        if dumps(probe) == json.dumps(probe, separators=(",", ":"), allow_nan=True):
            return dumps
    except (TypeError, ValueError):
        pass
    return encoder.encode


_dumps = _make_dumps()


def _json_bytes(value: Any) -> bytes:
    """``value`` as header JSON (UTF-8); what JSON cannot hold (a circular value: RecursionError) is a FrameError."""
    try:
        return _dumps(value).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise FrameError(f"frame meta is not JSON-serialisable: {exc}") from exc


def _views(arrays: Iterable[np.ndarray]) -> list[bytes | memoryview]:
    """The buffer parts of a frame: the arrays' bytes, not copied."""
    return [memoryview(a).cast("B") if a.nbytes else b"" for a in arrays]


def _head(kind: str, meta: Any, version: int, arrays: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """The head part (prefix and JSON header) of a frame of ``kind``, ``meta`` and these buffers."""
    if not isinstance(kind, str) or not kind:
        raise FrameError("frame kind must be a non-empty string")
    header = _json_bytes({"kind": kind, "meta": meta,
                          "buffers": [{"name": n, "dtype": _dtype_name(a.dtype), "shape": list(a.shape)}
                                      for n, a in arrays]})
    return _PREFIX.pack(MAGIC, version, 0, len(header)) + header


def _prepare(frame: Frame) -> tuple[bytes, list[tuple[str, np.ndarray]]]:
    arrays = [(str(n), _canonical(a, str(n))) for n, a in frame.buffers.items()]
    return _head(frame.kind, frame.meta, frame.version, arrays), arrays


def bare_head(kind: str, meta: dict[str, Any], version: int = PROTOCOL_VERSION) -> bytes:
    """The head part of a frame of ``kind`` and ``meta`` with no buffers: ``to_parts(Frame(kind, meta))[0]``,
    encoded without building the frame (the channel emulator sizes every delivery's header this way)."""
    return _head(kind, meta, version, ())


def to_parts(frame: Frame) -> list[bytes | memoryview]:
    """Encode a frame as ZeroMQ multipart parts (buffers are not copied)."""
    head, arrays = _prepare(frame)
    return [head, *_views(a for _, a in arrays)]


class GrowingFrame:
    """A frame encoded once whose meta may still gain entries: :meth:`to_parts` encodes only the entries added since
    (a node that encodes its answer to size it, then adds its measurement fields, does not encode the answer again).

    The header is encoded as :func:`to_parts` encodes it; its meta object ends just before the header's last
    ``,"buffers":`` (the buffer descriptors after it hold no such text: their strings' quotes are escaped), so the
    added entries go in before that closing brace. :meth:`to_parts` gives the parts of
    ``Frame(kind, {**meta, **added}, buffers)`` byte for byte as :func:`to_parts` would.

    Parameters
    ----------
    frame : Frame
        The frame as built. Its meta grows through :meth:`add` only: neither its values nor its buffers may be
        changed in place afterwards (the encoding made here would no longer be theirs).

    Raises
    ------
    FrameError
        As :func:`to_parts`: an empty kind, a buffer dtype not allowed on the wire, meta that is not JSON.
    """

    def __init__(self, frame: Frame) -> None:
        if type(frame.meta) is not dict:
            raise FrameError(f"frame meta must be a dict, got {type(frame.meta).__name__}")
        self.frame = frame
        head, self._arrays = _prepare(frame)
        self._body = head[_PREFIX.size:]
        self._meta_end = self._body.rindex(b',"buffers":') - 1  # the meta's closing brace
        self._base = dict(frame.meta)  # what the encoding holds
        self._added: dict[str, Any] = {}

    @property
    def packed_size(self) -> int:
        """``packed_size`` of the frame as it was given (before any :meth:`add`)."""
        return _packed_len(_PREFIX.size + len(self._body), self._arrays)

    @property
    def meta_json(self) -> bytes:
        """The JSON of the meta as it was given (before any :meth:`add`), as the header holds it."""
        return self._body[self._body.index(b',"meta":') + 8:self._meta_end + 1]  # the kind's quotes are escaped

    def add(self, entries: Mapping[str, Any]) -> None:
        """Add (or overwrite) meta entries, in the frame's meta as in what :meth:`to_parts` encodes."""
        self.frame.meta.update(entries)
        self._added.update(entries)

    def to_parts(self) -> list[bytes | memoryview]:
        """The frame's parts, its meta as it is now: the encoding with the added entries spliced in, or a fresh
        :func:`to_parts` where an added entry changed one that was already encoded (to a value of another type or
        another value)."""
        base = self._base
        fresh = self._added
        if not base.keys().isdisjoint(fresh):
            fresh = {}
            for key, value in self._added.items():
                if key not in base:
                    fresh[key] = value
                elif type(base[key]) is not type(value) or base[key] != value:
                    return to_parts(self.frame)
        body = self._body
        if fresh:
            entries = _json_bytes(fresh)
            at = self._meta_end
            body = b"".join((body[:at], b"," if base else b"", entries[1:-1], body[at:]))
        return [_PREFIX.pack(MAGIC, self.frame.version, 0, len(body)) + body, *_views(a for _, a in self._arrays)]


def parts_with_meta(head: bytes | memoryview, received: Frame, added: Mapping[str, Any],
                    buffers: Mapping[str, np.ndarray], *,
                    added_json: bytes | None = None) -> list[bytes | memoryview] | None:
    """The parts of ``Frame(received.kind, {**received.meta, **added}, buffers)``, where ``received`` is the frame
    :func:`from_parts` decoded from the first part ``head``: that header with ``added`` spliced in as the first meta
    entries, instead of a fresh encode of the whole meta (a relay that only adds a record encodes only the record).

    Returns None -- encode with :func:`to_parts` -- unless the splice provably decodes to that frame: ``head``
    opens with ``{"kind":<kind>,"meta":{``, holds no escape and no other ``"meta"`` (so that object is the meta a
    decoder keeps), no key of ``added`` is in ``received.meta``, and ``buffers`` have the names, dtypes and shapes
    of ``received.buffers`` (which ``head`` declares). ``added_json``: the JSON of ``added`` (an object), where the
    caller has it already.
    """
    head = memoryview(head)
    if len(head) < _PREFIX.size:
        return None
    magic, version, _flags, header_len = _PREFIX.unpack_from(head)
    if magic != MAGIC or version != received.version or len(head) != _PREFIX.size + header_len:
        return None
    body = bytes(head[_PREFIX.size:])
    opening = b'{"kind":' + _dumps(received.kind).encode() + b',"meta":{'
    if not body.startswith(opening) or body.count(b'"meta"') != 1 or b"\\" in body:
        return None
    if not added or any(k in received.meta for k in added) or len(buffers) != len(received.buffers):
        return None
    arrays = []
    for (name, array), (old_name, old) in zip(buffers.items(), received.buffers.items(), strict=True):
        array = _canonical(array, str(name))
        if name != old_name or array.dtype != old.dtype or array.shape != old.shape:
            return None
        arrays.append(array)
    entries = (added_json if added_json is not None else _json_bytes(dict(added)))[1:-1]
    at = len(opening)
    new_body = b"".join((body[:at], entries, b"," if received.meta else b"", body[at:]))
    return [_PREFIX.pack(MAGIC, version, 0, len(new_body)) + new_body, *_views(arrays)]


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
    body = head[_PREFIX.size:end]
    # Nesting is at most the number of openers: a header with no more than the limit needs no scan.
    if body.count(b"[") + body.count(b"{") > limits.max_json_depth:
        depth = json_depth(body)
        if depth > limits.max_json_depth:
            raise FrameError(f"header nests {depth} levels deep, over the limit of {limits.max_json_depth}")
    try:
        text = body.decode("utf-8")
        if b"0" * (limits.max_int_digits + 1) not in body.translate(_DIGITS_AS_ZEROS):
            # No run of digits is longer than the limit anywhere, so no integer literal can be: the C parser alone.
            header = _loads(text)
        else:
            header = json.loads(text, parse_int=_int_parser(limits.max_int_digits))
    except _IntTooLong as exc:
        raise FrameError(f"header integer of {exc.args[0]} digits exceeds the limit of {limits.max_int_digits}") \
            from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise FrameError(f"corrupted header: {_clip(exc)}") from None
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str) or not header["kind"]:
        raise FrameError("corrupted header: missing frame kind")
    if len(header["kind"]) > limits.max_kind_chars:
        raise FrameError(f"frame kind of {len(header['kind'])} characters exceeds the limit of "
                         f"{limits.max_kind_chars}")
    if not isinstance(header.get("meta", {}), dict) or not isinstance(header.get("buffers", []), list):
        raise FrameError("corrupted header: meta must be an object and buffers a list")
    return version, header, end


_raw_decode = json.JSONDecoder().raw_decode


def _loads(text: str) -> Any:
    """``json.loads(text)``: the decoder's own entry when the text is one object with nothing around it (~1 us less
    than ``loads``, which looks for whitespace on both sides with regular expressions), ``loads`` itself otherwise
    (so that the same texts are accepted and the same errors raised)."""
    if text[:1] == "{":
        value, end = _raw_decode(text)
        if end == len(text):
            return value
    return json.loads(text)


_MAX_CLIP = 120


def _clip(value: object) -> str:
    """Short text of a peer-chosen value for an error message (never megabytes, never a failing repr)."""
    if isinstance(value, (list, tuple, dict)) and len(value) > 8:
        text = f"<{type(value).__name__} of {len(value)} items>"
    else:
        try:
            text = repr(value) if not isinstance(value, BaseException) else str(value)
        except Exception:  # noqa: BLE001 - a deeply nested value's repr can itself fail
            text = f"<{type(value).__name__}>"
    return text if len(text) <= _MAX_CLIP else f"{text[:_MAX_CLIP]}...(+{len(text) - _MAX_CLIP} chars)"


class _IntTooLong(ValueError):
    pass


# Every ASCII digit as "0", everything else as a space: a run of digits longer than the limit is then a plain substring
# search (C speed, where a regex scan costs ten times more).
_DIGITS_AS_ZEROS = bytes(48 if 48 <= c <= 57 else 32 for c in range(256))


def _int_parser(max_digits: int) -> Any:
    def parse(literal: str) -> int:
        if len(literal.lstrip("-")) > max_digits:
            raise _IntTooLong(len(literal.lstrip("-")))
        return int(literal)

    return parse


# Escapes inside strings (\" \\ \uXXXX ...) hide quotes from the depth scan: they are blanked first.
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_DEPTH_TABLE = np.zeros(256, dtype=np.int8)
_DEPTH_TABLE[[ord("["), ord("{")]] = 1
_DEPTH_TABLE[[ord("]"), ord("}")]] = -1
_SHORT_SKELETON = 256  # brackets walked in Python below this; numpy above


def json_depth(data: bytes) -> int:
    """Deepest nesting of arrays / objects in JSON text ``data`` (brackets inside strings ignored), in O(n) C-level
    work and no recursion; meaningless (but bounded) for text that is not JSON."""
    if not data:
        return 0
    data = bytes(data)
    opens = data.count(b"[") + data.count(b"{")
    if opens <= 8:  # cannot nest deeper than its number of openers: small headers stop here
        return opens
    if b"\\" in data:
        data = _ESCAPE.sub(b"__", data)
    # The skeleton: the text outside string literals (every other piece between quotes; after an unpaired quote a
    # string runs to the end), brackets only.
    if b'"' in data:
        data = b"".join(data.split(b'"')[::2])
    skeleton = data.translate(None, _NOT_BRACKETS)
    if len(skeleton) > _SHORT_SKELETON:
        steps = _DEPTH_TABLE[np.frombuffer(skeleton, dtype=np.uint8)].astype(np.int32)
        return int(np.cumsum(steps).max(initial=0))
    depth = deepest = 0
    for c in skeleton:
        if c == 91 or c == 123:  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


_WIRE_DTYPES: dict[str, np.dtype] = {}


def _wire_dtype(name: str) -> np.dtype:
    """The little-endian dtype of an allowed name, built once (``np.dtype(...).newbyteorder`` costs microseconds)."""
    dtype = _WIRE_DTYPES.get(name)
    if dtype is None:
        dtype = _WIRE_DTYPES[name] = np.dtype(name).newbyteorder("<")
    return dtype


def _dim(value: object) -> int | None:
    # bool is an int subclass; JSON true must not pass as a dimension of 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _buffer_specs(header: Mapping[str, Any], limits: FrameLimits) -> list[tuple[str, np.dtype, tuple[int, ...], int]]:
    specs = header.get("buffers", [])
    if not isinstance(specs, list):
        raise FrameError("corrupted header: buffers must be a list")
    if len(specs) > limits.max_buffers:
        raise FrameError(f"{len(specs)} buffers exceed the limit of {limits.max_buffers}")
    out = []
    names: set[str] = set()
    total = 0
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise FrameError(f"buffer #{i}: descriptor is not an object")
        name, dtype_name, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")
        if not isinstance(name, str) or not name:
            raise FrameError(f"buffer #{i}: missing name")
        if len(name) > limits.max_name_chars:
            raise FrameError(f"buffer #{i}: name of {len(name)} characters exceeds the limit of "
                             f"{limits.max_name_chars}")
        if name in names:
            raise FrameError(f"buffer #{i}: duplicate buffer name {name!r}")
        names.add(name)
        if not isinstance(dtype_name, str) or dtype_name not in ALLOWED_DTYPES:
            raise FrameError(f"buffer {name!r}: dtype {_clip(dtype_name)} is not allowed on the wire")
        if not isinstance(shape, list):
            raise FrameError(f"buffer {name!r}: shape must be a list, got {type(shape).__name__}")
        if len(shape) > limits.max_dims:
            raise FrameError(f"buffer {name!r}: {len(shape)} dimensions exceed the limit of {limits.max_dims}")
        dims = [_dim(d) for d in shape]
        if any(d is None for d in dims):
            raise FrameError(f"buffer {name!r}: bad shape {_clip(shape)} (dimensions must be integers >= 0)")
        dtype = _wire_dtype(dtype_name)
        # Exact integer arithmetic, stopping as soon as the product passes the limit: no float rounding, no
        # overflow, no allocation (a shape of [0, 2**63] is 0 bytes but no numpy shape either).
        elements = 1
        for d in dims:
            if d > limits.max_total_bytes:
                raise FrameError(f"buffer {name!r}: dimension {_clip(d)} exceeds the limit of "
                                 f"{limits.max_total_bytes} (oversized frame)")
            elements *= d
        nbytes = elements * dtype.itemsize
        total += nbytes
        if total > limits.max_total_bytes:
            raise FrameError(f"payload exceeds the limit of {limits.max_total_bytes} bytes (oversized frame)")
        out.append((name, dtype, tuple(dims), nbytes))
    return out


def from_parts(parts: Sequence[bytes | memoryview], limits: FrameLimits = DEFAULT_LIMITS) -> Frame:
    """Decode multipart parts into a frame, validating everything before use.

    Raises
    ------
    FrameError
        Wrong magic or version, corrupted header, wrong buffer count or sizes, disallowed dtype, over a limit --
        and nothing else, whatever the parts hold.
    """
    try:
        return _from_parts(parts, limits)
    except FrameError:
        raise
    except Exception as exc:  # noqa: BLE001 - the decoder is total: any other failure is a malformed frame
        raise FrameError(f"malformed frame: {type(exc).__name__}: {_clip(exc)}") from None


def _from_parts(parts: Sequence[bytes | memoryview], limits: FrameLimits) -> Frame:
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
    return _packed_len(len(head), arrays)


def _packed_len(head_bytes: int, arrays: Sequence[tuple[str, np.ndarray]]) -> int:
    """Size of ``pack``'s output for a head of ``head_bytes`` and these buffers (each length-prefixed, then a CRC)."""
    return head_bytes + sum(_LEN.size + a.nbytes for _, a in arrays) + _CRC.size


def unpack(data: bytes | bytearray | memoryview, limits: FrameLimits = DEFAULT_LIMITS) -> Frame:
    """Decode ``pack`` output. Truncated or corrupted input raises :class:`FrameError` naming the problem (and
    nothing else raises)."""
    try:
        return _unpack(data, limits)
    except FrameError:
        raise
    except Exception as exc:  # noqa: BLE001 - total, as from_parts
        raise FrameError(f"malformed frame: {type(exc).__name__}: {_clip(exc)}") from None


def _unpack(data: bytes | bytearray | memoryview, limits: FrameLimits) -> Frame:
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
