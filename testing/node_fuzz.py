"""Random and mutated messages for robustness checks of a node (every one must be refused, none may crash it).

Used by the tests (>= 1,000 messages per node) and usable against a running node from the command line::

    python -m megbed.testing.node_fuzz tcp://127.0.0.1:5555 --count 1000

Each generated message is a list of ZeroMQ parts as a DEALER would send them (``[b"", *frame_parts]``, or
deliberately without the delimiter). :func:`must_be_refused` checks locally that a mutation is really invalid for the
target (a bit flip inside a prompt can leave a valid request, which a node would rightly serve).

Three sources, mixed by :func:`messages`:

* random bytes and byte-level mutations of valid frames (bit flips, truncation, wrong version, ...);
* the hostile classes of :data:`HOSTILE_CLASSES` -- each one crashed or stalled a node once (issue 20): JSON nested
  100,000 lists or 50,000 objects deep, an integer of > 4,300 digits, ``"shape": [true]``, ``"dtype": ["float32"]``,
  65 dimensions, ``[0, 2**63]``, ``[10**400]``, duplicate buffer names, a 0.9 MB ``kind``, a 200 KB ``msg_id``, wrong
  JSON types in every header field;
* :func:`structured_messages`: structure-aware mutation of valid frames driven by ``hypothesis`` -- a path in the
  header's JSON tree is chosen and its value replaced, deleted, re-typed or given a sibling, buffers re-declared or
  resized -- so the mutations reach the field checks behind the frame decoder.
"""

from __future__ import annotations

import argparse
import copy
import json
import struct
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from megbed.megwire import DEFAULT_LIMITS, Frame, FrameError, FrameLimits, from_parts, to_parts
from megbed.megwire.frames import MAGIC, PROTOCOL_VERSION

_PREFIX = struct.Struct("<4sHHI")


def _head(kind: str, meta: dict, buffers: list[dict], version: int = PROTOCOL_VERSION) -> bytes:
    header = json.dumps({"kind": kind, "meta": meta, "buffers": buffers}).encode()
    return _PREFIX.pack(MAGIC, version, 0, len(header)) + header


def _random_bytes(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> bytes:
    return rng.integers(0, 256, size=int(rng.integers(lo, hi)), dtype=np.uint8).tobytes()


def _parts(frame: Frame) -> list[bytes]:
    return [bytes(p) for p in to_parts(frame)]


def _mutations(rng: np.random.Generator, seeds: list[Frame], kinds: list[str]) -> list[Callable[[], list[bytes]]]:
    def pick() -> list[bytes]:
        return _parts(seeds[int(rng.integers(len(seeds)))])

    def garbage() -> list[bytes]:
        return [b"", _random_bytes(rng, 1, 512)]

    def many_garbage() -> list[bytes]:
        return [b""] + [_random_bytes(rng, 0, 64) for _ in range(int(rng.integers(1, 6)))]

    def no_delimiter() -> list[bytes]:
        return [_random_bytes(rng, 1, 64)]

    def only_delimiter() -> list[bytes]:
        return [b""]

    def bit_flip() -> list[bytes]:
        parts = pick()
        head = bytearray(parts[0])
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(len(head)))
            head[i] ^= 1 << int(rng.integers(8))
        return [b"", bytes(head), *parts[1:]]

    def truncate_head() -> list[bytes]:
        parts = pick()
        return [b"", parts[0][: int(rng.integers(0, len(parts[0])))], *parts[1:]]

    def truncate_buffer() -> list[bytes]:
        parts = pick()
        if len(parts) < 2:
            return [b"", parts[0][:-1]]
        i = int(rng.integers(1, len(parts)))
        parts[i] = parts[i][: max(0, len(parts[i]) - int(rng.integers(1, 9)))] if parts[i] else b"x"
        return [b"", *parts]

    def drop_buffer() -> list[bytes]:
        parts = pick()
        return [b"", *(parts[:-1] if len(parts) > 1 else parts + [b"extra"])]

    def wrong_version() -> list[bytes]:
        parts = pick()
        head = bytearray(parts[0])
        struct.pack_into("<H", head, 4, int(rng.choice([0, 2, 3, 255, 65535])))
        return [b"", bytes(head), *parts[1:]]

    def oversized() -> list[bytes]:
        what = int(rng.integers(3))
        if what == 0:
            specs = [{"name": "x", "dtype": "float64", "shape": [1 << 20, 1 << 20]}]
        elif what == 1:
            specs = [{"name": f"b{i}", "dtype": "uint8", "shape": [1]} for i in range(DEFAULT_LIMITS.max_buffers + 1)]
        else:
            return [b"", _PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, DEFAULT_LIMITS.max_header_bytes + 1) + b"{}"]
        return [b"", _head(str(rng.choice(kinds)), {}, specs), *[b"\0"] * len(specs)]

    def bad_dtype() -> list[bytes]:
        return [b"", _head(str(rng.choice(kinds)), {}, [{"name": "x", "dtype": "object", "shape": [1]}]), b"\0" * 8]

    def bad_json() -> list[bytes]:
        body = rng.choice([b"{", b"[]", b"null", b'{"kind": 3}', b'{"kind": ""}', b'{"kind":"request","meta":[]}',
                           b"\xff\xfe", b'{"kind":"request","buffers":{}}'])
        return [b"", _PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, len(body)) + bytes(body)]

    def unknown_kind() -> list[bytes]:
        return _with_delim(Frame(f"no_such_kind_{int(rng.integers(1 << 30))}", meta={"x": 1}))

    def bad_meta() -> list[bytes]:
        # A served kind with missing, mistyped or out-of-range fields.
        base = seeds[int(rng.integers(len(seeds)))]
        meta = json.loads(json.dumps(base.meta))
        _mutate_json(rng, meta)
        return _with_delim(Frame(base.kind, meta=meta, buffers=dict(base.buffers)))

    def wrong_buffers() -> list[bytes]:
        base = seeds[int(rng.integers(len(seeds)))]
        buffers = dict(base.buffers)
        if buffers and rng.random() < 0.5:
            name = str(rng.choice(list(buffers)))
            buffers[name] = np.zeros(int(rng.integers(0, 5)), dtype=rng.choice([np.float32, np.uint8, np.int64]))
        else:
            buffers[f"junk{int(rng.integers(100))}"] = np.arange(3, dtype=np.float32)
            buffers.pop(next(iter(buffers)), None)
        return _with_delim(Frame(base.kind, meta=dict(base.meta), buffers=buffers))

    hostile = _hostile_classes()
    cache: dict[tuple[str, str], list[bytes]] = {}

    def hostile_class() -> list[bytes]:
        # The large classes cost a megabyte to build: each (class, kind) is built once and resent.
        key = (str(rng.choice(sorted(hostile))), str(rng.choice(kinds)))
        if key not in cache:
            cache[key] = hostile[key[0]](key[1])
        return list(cache[key])

    return [garbage, many_garbage, no_delimiter, only_delimiter, bit_flip, truncate_head, truncate_buffer,
            drop_buffer, wrong_version, oversized, bad_dtype, bad_json, unknown_kind, bad_meta, bad_meta,
            wrong_buffers, hostile_class, hostile_class, hostile_class]


def _raw_head(body: bytes, version: int = PROTOCOL_VERSION) -> bytes:
    return _PREFIX.pack(MAGIC, version, 0, len(body)) + body


def _hostile_classes() -> dict[str, Callable[[str], list[bytes]]]:
    """Message makers by attack class (``kind`` is a kind the target serves)."""
    def spec_frame(kind: str, specs: list, parts: list[bytes] | None = None, meta: dict | None = None) -> list[bytes]:
        body = json.dumps({"kind": kind, "meta": meta or {}, "buffers": specs}).encode()
        return [b"", _raw_head(body), *(parts if parts is not None else [b""] * len(specs))]

    deep_lists = b'{"kind":"%s","meta":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    deep_objects = b'{"kind":"%s","meta":' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}"
    big_int = b'{"kind":"%s","meta":{"request_id":"r","n":' + b"7" * 5000 + b"}}"
    return {
        "deep_lists": lambda k: [b"", _raw_head(deep_lists.replace(b"%s", k.encode(), 1))],
        "deep_objects": lambda k: [b"", _raw_head(deep_objects.replace(b"%s", k.encode(), 1))],
        "big_int": lambda k: [b"", _raw_head(big_int.replace(b"%s", k.encode(), 1))],
        "big_int_in_shape": lambda k: [b"", _raw_head(
            b'{"kind":"%s","meta":{},"buffers":[{"name":"x","dtype":"uint8","shape":[' % k.encode()
            + b"9" * 4400 + b"]}]}"), b""],
        "shape_true": lambda k: spec_frame(k, [{"name": "x", "dtype": "uint8", "shape": [True]}], [b"\0"]),
        "dtype_list": lambda k: spec_frame(k, [{"name": "x", "dtype": ["float32"], "shape": [1]}], [b"\0" * 4]),
        "dims_65": lambda k: spec_frame(k, [{"name": "x", "dtype": "uint8", "shape": [1] * 65}], [b"\0"]),
        "shape_0_2e63": lambda k: spec_frame(k, [{"name": "x", "dtype": "uint8", "shape": [0, 2**63]}], [b""]),
        "shape_1e400": lambda k: spec_frame(k, [{"name": "x", "dtype": "uint8", "shape": [10**400]}], [b""]),
        "shape_negative": lambda k: spec_frame(k, [{"name": "x", "dtype": "uint8", "shape": [-1]}], [b""]),
        "duplicate_names": lambda k: spec_frame(k, [{"name": "x", "dtype": "uint8", "shape": [1]}] * 2,
                                                [b"\1", b"\2"]),
        "huge_kind": lambda k: [b"", _raw_head(json.dumps({"kind": "k" * 900_000, "meta": {}}).encode())],
        "huge_msg_id": lambda k: [b"", _raw_head(json.dumps(
            {"kind": k, "meta": {"msg_id": "m" * 200_000, "request_id": "r"}}).encode())],
        "msg_id_object": lambda k: [b"", _raw_head(json.dumps({"kind": k, "meta": {"msg_id": {"a": [1]}}}).encode())],
        "wrong_types": lambda k: [b"", _raw_head(json.dumps(_WRONG_TYPE_HEADERS[hash(k) % len(_WRONG_TYPE_HEADERS)]
                                                            | {"kind": k}).encode())],
        "wrong_types_kind": lambda k: [b"", _raw_head(json.dumps({"kind": [k], "meta": {}}).encode())],
        "wrong_types_meta": lambda k: [b"", _raw_head(json.dumps({"kind": k, "meta": [1, 2]}).encode())],
        "wrong_types_buffers": lambda k: [b"", _raw_head(json.dumps({"kind": k, "buffers": {"x": 1}}).encode())],
        "wrong_types_spec": lambda k: spec_frame(k, [{"name": 3, "dtype": 1, "shape": "12"}], [b""]),
        "wrong_types_request": lambda k: [b"", _raw_head(json.dumps(
            {"kind": k, "meta": {"request_id": 5, "request": [1, {"scheme": None}]}}).encode())],
    }


_WRONG_TYPE_HEADERS = [
    {"meta": {"request": {"request_id": ["r"], "scheme": 1, "n_steps": "4", "link": "awgn"}}},
    {"meta": {"request": {"request_id": "r", "scheme": "meg", "n_steps": True, "es_steps": None}}},
    {"meta": {"request_id": {"x": 1}, "request": None}},
]

HOSTILE_CLASSES = tuple(_hostile_classes())


def hostile_messages(kinds: list[str]) -> dict[str, list[bytes]]:
    """One message of every hostile class (see :data:`HOSTILE_CLASSES`), aimed at the first served kind."""
    kind = sorted(kinds)[0] if kinds else "request"
    return {name: make(kind) for name, make in _hostile_classes().items()}


def _with_delim(frame: Frame) -> list[bytes]:
    return [b"", *_parts(frame)]


_JUNK = [None, -1, 10**12, 1e308, float("nan"), "", "x" * 300, [], {}, True, 0.5, "meg", -7.5]


def _mutate_json(rng: np.random.Generator, obj: dict, depth: int = 0) -> None:
    if not obj:
        obj["junk"] = 1
        return
    key = str(rng.choice(sorted(obj)))
    value = obj[key]
    roll = rng.random()
    if isinstance(value, dict) and value and depth < 3 and roll < 0.6:
        _mutate_json(rng, value, depth + 1)
    elif roll < 0.3:
        del obj[key]
    else:
        junk = _JUNK[int(rng.integers(len(_JUNK)))]
        obj[key] = junk if not isinstance(junk, float) or junk == junk else "nan"


def messages(seed_frames: list[Frame], count: int, *, seed: int = 0,
             is_valid: Callable[[Frame], bool] | None = None) -> Iterator[list[bytes]]:
    """``count`` random and mutated messages, each one that the target must refuse.

    Parameters
    ----------
    seed_frames : list of Frame
        Valid frames the target serves (mutations start from them).
    count : int
        How many messages.
    is_valid : callable, optional
        ``is_valid(frame) -> bool`` for a decodable frame: True if the target would accept it as a good request.
        Such mutations are skipped (and replaced) so every message yielded must come back as an error.
    """
    rng = np.random.default_rng(seed)
    kinds = sorted({f.kind for f in seed_frames}) or ["request"]
    makers = _mutations(rng, seed_frames, kinds)
    made = 0
    while made < count:
        parts = makers[int(rng.integers(len(makers)))]()
        if must_be_refused(parts, is_valid):
            made += 1
            yield parts


# --- structure-aware mutation (hypothesis) ---------------------------------------------------------------------------

_HOSTILE_LEAVES = [True, False, None, -1, 0, 2**63, 2**64, 10**30, -(10**30), 1e308, "", "x" * 300, "float32",
                   "../../../etc/passwd", "/tmp", "\x00", "NaN", [], {}, [True], ["float32"], [0, 2**63]]


def _json_tree(max_leaves: int = 10) -> Any:
    from hypothesis import strategies as st

    leaves = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
              | st.text(max_size=24) | st.sampled_from(_HOSTILE_LEAVES).map(copy.deepcopy))  # later edits mutate
    return st.recursive(leaves, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                        max_leaves=max_leaves)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.extend(_paths(v, (*prefix, i)))
    return out


def _set(obj: Any, path: tuple, value: Any, *, delete: bool = False) -> Any:
    if not path:
        return value
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return obj


def _structured_one(data: Any, seeds: list[Frame]) -> list[bytes]:
    """Draw one mutated message from valid ``seeds`` (``data``: hypothesis's ``st.data()`` object)."""
    from hypothesis import strategies as st

    seed = seeds[data.draw(st.integers(0, len(seeds) - 1), label="seed")]
    parts = _parts(seed)
    header = json.loads(bytes(parts[0][_PREFIX.size:]))
    buffers = list(parts[1:])
    for _ in range(data.draw(st.integers(1, 3), label="n_mutations")):
        paths = _paths(header)
        path = paths[data.draw(st.integers(0, len(paths) - 1), label="path")]
        op = data.draw(st.sampled_from(["replace", "replace", "delete", "add_key", "retype", "buffer"]), label="op")
        if op == "replace" or (op == "delete" and not path):
            header = _set(header, path, data.draw(_json_tree(), label="value"))
        elif op == "delete":
            header = _set(header, path, None, delete=True)
        elif op == "add_key":
            target = header
            for key in path:
                target = target[key]
            if isinstance(target, dict):
                target[data.draw(st.text(max_size=12), label="key")] = data.draw(_json_tree(4), label="value")
            elif isinstance(target, list):
                target.append(data.draw(_json_tree(4), label="value"))
        elif op == "retype":
            node = header
            for key in path:
                node = node[key]
            swapped = {dict: lambda v: list(v.values()), list: lambda v: {str(i): x for i, x in enumerate(v)},
                       str: lambda v: [v], int: lambda v: str(v), float: lambda v: [v], bool: lambda v: int(v)}
            header = _set(header, path, swapped.get(type(node), lambda v: {"v": v})(node))
        else:
            what = data.draw(st.sampled_from(["drop", "add", "resize", "redeclare"]), label="buffer_op")
            if what == "drop" and buffers:
                buffers.pop()
            elif what == "add":
                buffers.append(data.draw(st.binary(max_size=64), label="raw"))
            elif what == "resize" and buffers:
                i = data.draw(st.integers(0, len(buffers) - 1), label="i")
                buffers[i] = bytes(buffers[i])[: data.draw(st.integers(0, max(0, len(buffers[i]) - 1)), label="n")]
            elif isinstance(header, dict):
                header["buffers"] = data.draw(st.lists(st.fixed_dictionaries(
                    {"name": st.text(max_size=4), "dtype": st.sampled_from(["uint8", "float32", "object", "f8"]),
                     "shape": st.lists(st.integers(-2, 2**64), max_size=4)}), max_size=3), label="specs")
    try:
        body = json.dumps(header, allow_nan=True).encode()
    except (TypeError, ValueError):
        body = b"{"
    return [b"", _PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, len(body)) + body, *buffers]


def structured_messages(seed_frames: list[Frame], count: int, *, seed: int = 0,
                        is_valid: Callable[[Frame], bool] | None = None) -> list[list[bytes]]:
    """``count`` structure-aware mutations of ``seed_frames`` drawn by ``hypothesis`` (seeded, no example database),
    each one the target must refuse (as :func:`messages`)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    out: list[list[bytes]] = []
    drawn: list[list[bytes]] = []

    def draw(data: Any) -> None:
        drawn.append(_structured_one(data, seed_frames))

    rounds = 0
    while len(out) < count and rounds < 20:
        drawn.clear()
        seeded_settings = settings(max_examples=count - len(out), database=None, deadline=None,
                                   phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        run = hseed(seed * 1000 + rounds)(seeded_settings(given(st.data())(draw)))
        run()
        out.extend(p for p in drawn if must_be_refused(p, is_valid))
        rounds += 1
    return out[:count]


def must_be_refused(parts: list[bytes], is_valid: Callable[[Frame], bool] | None,
                    limits: FrameLimits = DEFAULT_LIMITS) -> bool:
    if not parts or parts[0] != b"":
        return True
    try:
        frame = from_parts(parts[1:], limits)
    except FrameError:
        return True
    return is_valid is None or not is_valid(frame)


def main(argv: list[str] | None = None) -> int:
    import zmq

    from megbed.megwire import make_socket, recv_frame

    ap = argparse.ArgumentParser(description="send random and mutated frames to a node; every one must be refused")
    ap.add_argument("address")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout-s", type=float, default=5.0)
    ap.add_argument("--structured", action="store_true",
                    help="structure-aware mutations (hypothesis) instead of the random / hostile mix")
    args = ap.parse_args(argv)
    seeds = [Frame("request", meta={"request_id": "r", "request": {"prompt": "x"}}), Frame("heartbeat")]
    ctx = zmq.Context()
    sock = make_socket(ctx, zmq.DEALER, timeout_s=args.timeout_s)
    sock.connect(args.address)
    errors = 0
    try:
        valid = lambda f: f.kind == "heartbeat"  # noqa: E731
        stream = structured_messages(seeds, args.count, seed=args.seed, is_valid=valid) if args.structured \
            else messages(seeds, args.count, seed=args.seed, is_valid=valid)
        for parts in stream:
            sock.send_multipart(parts)
            _, reply = recv_frame(sock)
            errors += reply.kind == "error"
    finally:
        sock.close(0)
        ctx.term()
    print(f"{errors}/{args.count} refused with an error frame")
    return 0 if errors == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
