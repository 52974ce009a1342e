"""Random and mutated messages for robustness checks of a node (every one must be refused, none may crash it).

Used by the tests (>= 1,000 messages per node) and usable against a running node from the command line::

    python -m testbed.nodes.fuzz tcp://127.0.0.1:5555 --count 1000

Each generated message is a list of ZeroMQ parts as a DEALER would send them (``[b"", *frame_parts]``, or
deliberately without the delimiter). :func:`must_be_refused` checks locally that a mutation is really invalid for the
target (a bit flip inside a prompt can leave a valid request, which a node would rightly serve).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from collections.abc import Callable, Iterator

import numpy as np

from megwire import DEFAULT_LIMITS, Frame, FrameError, FrameLimits, from_parts, to_parts
from megwire.frames import MAGIC, PROTOCOL_VERSION

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

    return [garbage, many_garbage, no_delimiter, only_delimiter, bit_flip, truncate_head, truncate_buffer,
            drop_buffer, wrong_version, oversized, bad_dtype, bad_json, unknown_kind, bad_meta, bad_meta,
            wrong_buffers]


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

    from megwire import make_socket, recv_frame

    ap = argparse.ArgumentParser(description="send random and mutated frames to a node; every one must be refused")
    ap.add_argument("address")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout-s", type=float, default=5.0)
    args = ap.parse_args(argv)
    seeds = [Frame("request", meta={"request_id": "r", "request": {"prompt": "x"}}), Frame("heartbeat")]
    ctx = zmq.Context()
    sock = make_socket(ctx, zmq.DEALER, timeout_s=args.timeout_s)
    sock.connect(args.address)
    errors = 0
    try:
        for parts in messages(seeds, args.count, seed=args.seed, is_valid=lambda f: f.kind == "heartbeat"):
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
