"""Frame decoding is total and bounded: limits are checked before allocation, and only FrameError escapes."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from megbed.megwire import Frame, FrameError, FrameLimits, from_parts, pack, to_parts, unpack
from megbed.megwire.frames import MAGIC, PROTOCOL_VERSION, json_depth


def _head(header: dict | bytes) -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<4sHHI", MAGIC, PROTOCOL_VERSION, 0, len(body)) + body


def test_json_depth_ignores_brackets_inside_strings_and_escapes():
    assert json_depth(b'{"a": "[[[[[[[[[[[[{{{{{{{{", "b": "\\\\\\"[[[[[[[[[["}') == 1
    assert json_depth(b"[" * 40 + b"]" * 40) == 40
    assert json_depth(b'{"a": [1, {"b": [2]}]}') == 4


def test_deep_nesting_is_refused_before_the_parser_recurses():
    with pytest.raises(FrameError, match="nests 200001 levels"):
        from_parts([_head(b'{"kind":"x","meta":' + b"[" * 200_000 + b"]" * 200_000 + b"}")])
    # A legitimately nested header (records, links) passes.
    frame = Frame("x", meta={"a": {"b": [{"c": [1, 2]}]}, "s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["})
    assert from_parts(to_parts(frame)).meta == frame.meta


def test_integer_digits_are_bounded_but_ns_stamps_and_seeds_pass():
    ok = Frame("x", meta={"t_ns": 2**63 - 1, "neg": -(2**63)})
    assert from_parts(to_parts(ok)).meta == ok.meta
    with pytest.raises(FrameError, match="5000 digits"):
        from_parts([_head(b'{"kind":"x","meta":{"n":' + b"1" * 5000 + b"}}")])


@pytest.mark.parametrize("spec, match", [
    ({"name": "a", "dtype": "uint8", "shape": [True]}, "bad shape"),
    ({"name": "a", "dtype": ["float32"], "shape": [1]}, "not allowed"),
    ({"name": "a", "dtype": "uint8", "shape": [1] * 65}, "65 dimensions"),
    ({"name": "a", "dtype": "uint8", "shape": [0, 2**63]}, "exceeds the limit"),
    ({"name": "a", "dtype": "uint8", "shape": [1.0]}, "bad shape"),
    ({"name": "a", "dtype": "uint8", "shape": "[1]"}, "must be a list"),
    ({"name": "", "dtype": "uint8", "shape": [1]}, "missing name"),
    ({"name": "n" * 500, "dtype": "uint8", "shape": [1]}, "exceeds the limit"),
])
def test_buffer_descriptors_are_checked_before_allocation(spec, match):
    with pytest.raises(FrameError, match=match):
        from_parts([_head({"kind": "x", "meta": {}, "buffers": [spec]}), b"\0"])


def test_duplicate_names_and_long_kinds_are_refused_in_both_encodings():
    specs = [{"name": "a", "dtype": "uint8", "shape": [1]}] * 2
    with pytest.raises(FrameError, match="duplicate"):
        from_parts([_head({"kind": "x", "meta": {}, "buffers": specs}), b"\1", b"\2"])
    with pytest.raises(FrameError, match="kind of 100 characters"):
        from_parts([_head({"kind": "k" * 100, "meta": {}})])
    packed = bytearray(pack(Frame("x", buffers={"a": np.zeros(3, np.uint8)})))
    packed[20] ^= 0xFF  # inside the header
    with pytest.raises(FrameError):
        unpack(bytes(packed))


def test_limits_are_configurable():
    limits = FrameLimits(max_json_depth=3, max_dims=2)
    dims = FrameLimits(max_dims=2)
    with pytest.raises(FrameError, match="nests"):
        from_parts(to_parts(Frame("x", meta={"a": {"b": {"c": 1}}})), limits)
    with pytest.raises(FrameError, match="3 dimensions"):
        from_parts(to_parts(Frame("x", buffers={"a": np.zeros((1, 1, 1), np.uint8)})), dims)


def _depth_reference(data: bytes) -> int:
    """The plain definition: walk the text once, tracking strings and escapes."""
    depth = deepest = 0
    in_string = escaped = False
    for c in data:
        if in_string:
            if escaped:
                escaped = False
            elif c == ord("\\"):
                escaped = True
            elif c == ord('"'):
                in_string = False
        elif c == ord('"'):
            in_string = True
        elif c == ord("\\"):
            escaped = True
            in_string = in_string  # an escape outside a string still hides the next byte from the scan
        elif c in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in b"]}":
            depth -= 1
    return deepest


def _depth_numpy(data: bytes) -> int:
    """The previous implementation (escapes blanked, strings by quote parity, numpy cumsum), kept as a reference."""
    import re

    opens = data.count(b"[") + data.count(b"{")
    if opens <= 8:
        return opens
    raw = np.frombuffer(re.sub(rb"\\.", b"__", data, flags=re.DOTALL), dtype=np.uint8)
    in_string = np.bitwise_xor.accumulate(raw == ord('"'), dtype=np.uint8).astype(bool)
    table = np.zeros(256, dtype=np.int32)
    table[[ord("["), ord("{")]] = 1
    table[[ord("]"), ord("}")]] = -1
    steps = table[raw]
    steps[in_string] = 0
    return int(np.cumsum(steps).max(initial=0))


def test_json_depth_agrees_with_its_references_on_random_and_real_texts():
    rng = np.random.default_rng(7)
    alphabet = np.frombuffer(b'[]{}"\\ab,:1', dtype=np.uint8)
    for n in (0, 5, 40, 300, 2000):  # both the Python and the numpy skeleton walks, on garbage too
        for _ in range(60):
            text = bytes(rng.choice(alphabet, size=n))
            assert json_depth(text) == _depth_numpy(text)
    for value in ({"a": [1, {"b": ["[[", {"c": "}}\\\"{"}, [[{"d": [1]}]]]}]}, [[[[[[[[[[["x"]]]]]]]]]]],
                  {"k": "\\\\" * 9 + "[", "l": [[[[[[[[[[0]]]]]]]]]]}, [{"x": '"'}] * 200):
        text = json.dumps(value).encode()
        assert json_depth(text) == _depth_reference(text) == _depth_numpy(text)


def test_long_digit_runs_inside_strings_pass_and_long_integers_do_not():
    from megbed.megwire import Frame, from_parts, to_parts

    limits = FrameLimits(max_int_digits=19)
    frame = Frame("request", meta={"prompt": "9" * 300, "seed": 2**63 - 1})
    assert from_parts(to_parts(frame), limits).meta["prompt"] == "9" * 300
    with pytest.raises(FrameError, match="integer of 20 digits"):
        from_parts(to_parts(Frame("request", meta={"prompt": "9" * 300, "seed": 10**19})), limits)
