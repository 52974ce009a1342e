from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from megbed.megwire import (
    Frame,
    FrameError,
    FrameLimits,
    bare_head,
    from_parts,
    pack,
    packed_size,
    to_parts,
    unpack,
)
from megbed.megwire.frames import PROTOCOL_VERSION


def _frame() -> Frame:
    rng = np.random.default_rng(0)
    return Frame(
        kind="handoff",
        meta={"request_id": "r1", "n_steps": 8, "beta": 0.5, "nested": {"a": [1, 2]}},
        buffers={
            "latent": rng.standard_normal((4, 16, 16)).astype(np.float16),
            "merge_map": rng.integers(0, 64, size=(48,), dtype=np.int32),
            "empty": np.zeros((0, 3), np.float32),
            "flag": np.array([True, False]),
        },
    )


def _assert_equal(a: Frame, b: Frame) -> None:
    assert a.kind == b.kind and a.meta == b.meta and a.version == b.version
    assert list(a.buffers) == list(b.buffers)
    for name in a.buffers:
        assert a.buffers[name].dtype == b.buffers[name].dtype
        np.testing.assert_array_equal(a.buffers[name], b.buffers[name])


def test_parts_round_trip():
    f = _frame()
    _assert_equal(f, from_parts([bytes(p) for p in to_parts(f)]))


def test_bytes_round_trip_and_size():
    f = _frame()
    data = pack(f)
    assert len(data) == packed_size(f)
    _assert_equal(f, unpack(data))
    assert f.payload_nbytes == 4 * 16 * 16 * 2 + 48 * 4 + 2


def test_bare_head_is_the_head_of_a_frame_without_buffers():
    for kind, meta in [("handoff", _frame().meta), ("x", {}), ("r\u00e9", {"n": [1, 2.5, None, float("nan")]})]:
        assert bare_head(kind, meta) == bytes(to_parts(Frame(kind, meta))[0])
    for kind in ("", None, 3):
        with pytest.raises(FrameError, match="kind"):
            bare_head(kind, {})
    with pytest.raises(FrameError, match="JSON"):
        bare_head("x", {"v": object()})


def test_big_endian_input_is_canonicalised():
    f = Frame("x", buffers={"v": np.arange(5, dtype=">i4")})
    out = unpack(pack(f))
    np.testing.assert_array_equal(out.buffers["v"], np.arange(5))


@pytest.mark.parametrize("cut", [0, 5, 11, 20, -5, -1])
def test_truncated_bytes_are_named(cut):
    data = pack(_frame())
    with pytest.raises(FrameError, match="truncated|corrupted"):
        unpack(data[:cut] if cut > 0 else data[:cut])


def test_flipped_payload_bit_fails_crc():
    data = bytearray(pack(_frame()))
    data[-40] ^= 0x10
    with pytest.raises(FrameError, match="CRC"):
        unpack(bytes(data))


def test_version_mismatch_is_named():
    data = bytearray(pack(_frame()))
    struct.pack_into("<H", data, 4, PROTOCOL_VERSION + 1)
    with pytest.raises(FrameError, match="version mismatch"):
        unpack(bytes(data))


def test_bad_magic():
    with pytest.raises(FrameError, match="magic"):
        from_parts([b"XXXX" + bytes(20)])


def test_object_dtype_rejected_on_send():
    with pytest.raises(FrameError, match="not allowed"):
        pack(Frame("x", buffers={"o": np.array([object()])}))


def test_unserialisable_meta_rejected():
    with pytest.raises(FrameError, match="JSON"):
        pack(Frame("x", meta={"s": {1, 2}}))


def test_limits_refuse_oversized_before_allocating():
    f = Frame("x", buffers={"big": np.zeros(1000, np.float64)})
    with pytest.raises(FrameError, match="oversized|limit"):
        from_parts(to_parts(f), FrameLimits(max_total_bytes=4000))
    with pytest.raises(FrameError, match="buffers exceed"):
        from_parts(to_parts(f), FrameLimits(max_buffers=0))


def test_buffer_count_and_length_mismatch():
    parts = [bytes(p) for p in to_parts(_frame())]
    with pytest.raises(FrameError, match="declares"):
        from_parts(parts[:-1])
    parts[1] = parts[1][:-2]
    with pytest.raises(FrameError, match="bytes, header declares"):
        from_parts(parts)


def test_fuzzed_parts_only_raise_frame_error():
    rnd = random.Random(1234)
    base = [bytes(p) for p in to_parts(_frame())]
    for _ in range(1000):
        parts = [bytearray(p) for p in base]
        for _ in range(rnd.randint(1, 4)):
            choice = rnd.random()
            i = rnd.randrange(len(parts))
            if choice < 0.4 and parts[i]:
                parts[i][rnd.randrange(len(parts[i]))] = rnd.randrange(256)
            elif choice < 0.6:
                parts[i] = parts[i][: rnd.randrange(len(parts[i]) + 1)]
            elif choice < 0.8:
                parts.insert(i, bytearray(rnd.randbytes(rnd.randrange(64))))
            elif len(parts) > 1:
                parts.pop(i)
        try:
            from_parts([bytes(p) for p in parts])
        except FrameError:
            pass


def test_fuzzed_bytes_only_raise_frame_error():
    rnd = random.Random(99)
    base = pack(_frame())
    for _ in range(1000):
        data = bytearray(base)
        if rnd.random() < 0.5:
            data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
        else:
            data = data[: rnd.randrange(len(data))]
        with pytest.raises(FrameError):
            unpack(bytes(data))


def _head_of(header: dict | str) -> bytes:
    import json
    import struct

    body = (header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))).encode()
    return struct.pack("<4sHHI", b"MGWB", 1, 0, len(body)) + body


def test_parts_with_meta_splices_the_record_and_decodes_as_a_fresh_encode():
    from megbed.megwire.frames import parts_with_meta

    values = np.arange(12, dtype=np.float16).reshape(3, 4)
    for meta in ({"request_id": "r1", "es_records": [{"stage": "s", "t_ns": 5}], "x": float("nan")}, {}):
        sent = Frame("handoff", meta=meta, buffers={"tokens": values, "empty": np.zeros(0, np.int32)})
        head = to_parts(sent)[0]
        received = from_parts(to_parts(sent))
        delivered = {"tokens": values + 1, "empty": np.zeros(0, np.int32)}
        added = {"delivery": {"snr_db": 3.5, "extra": {}}}
        parts = parts_with_meta(head, received, added, delivered)
        assert parts is not None
        got = from_parts(parts)
        fresh = from_parts(to_parts(Frame("handoff", {**received.meta, **added}, delivered)))
        assert got.kind == fresh.kind and json_equal(got.meta, fresh.meta)
        assert list(got.buffers) == list(fresh.buffers)
        assert all(np.array_equal(got.buffers[n], fresh.buffers[n]) for n in got.buffers)


def json_equal(a: dict, b: dict) -> bool:
    import json

    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_parts_with_meta_refuses_whatever_it_cannot_prove():
    from megbed.megwire.frames import parts_with_meta

    values = np.ones(4, np.float32)
    good = {"kind": "handoff", "meta": {"a": 1}, "buffers": [{"name": "v", "dtype": "float32", "shape": [4]}]}
    head = _head_of(good)
    received = from_parts([head, values.tobytes()])
    assert parts_with_meta(head, received, {"delivery": {}}, {"v": values}) is not None
    # A second "meta" key (the decoder keeps the last one: the splice would land in the discarded object).
    dup = ('{"kind":"handoff","meta":{"a":1},"meta":{"a":1},"buffers":[{"name":"v","dtype":"float32","shape":[4]}]}')
    assert parts_with_meta(_head_of(dup), from_parts([_head_of(dup), values.tobytes()]), {"delivery": {}},
                           {"v": values}) is None
    escaped = dup.replace('"meta":{"a":1},"meta"', '"meta":{"a":1},"\\u006deta"')
    assert parts_with_meta(_head_of(escaped), from_parts([_head_of(escaped), values.tobytes()]), {"delivery": {}},
                           {"v": values}) is None
    spaced = '{"kind": "handoff","meta":{"a":1},"buffers":[{"name":"v","dtype":"float32","shape":[4]}]}'
    assert parts_with_meta(_head_of(spaced), from_parts([_head_of(spaced), values.tobytes()]), {"delivery": {}},
                           {"v": values}) is None
    assert parts_with_meta(head, received, {"a": 2}, {"v": values}) is None  # a key already there
    assert parts_with_meta(head, received, {}, {"v": values}) is None
    assert parts_with_meta(head, received, {"d": 1}, {"v": values.reshape(2, 2)}) is None
    assert parts_with_meta(head, received, {"d": 1}, {"v": values.astype(np.float64)}) is None
    assert parts_with_meta(head, received, {"d": 1}, {"w": values}) is None
    assert parts_with_meta(head[:-1], received, {"d": 1}, {"v": values}) is None
    assert parts_with_meta(b"MGWB", received, {"d": 1}, {"v": values}) is None


def test_growing_frame_sizes_once_and_sends_the_bytes_a_fresh_encode_gives():
    from megbed.megwire.frames import GrowingFrame

    big_endian = np.arange(3, dtype=">f4")
    for meta in ({}, {"request_id": "r1", "shape": [2, 3], "roles": {"t": "values"}}):
        for buffers in ({}, {"tokens": np.arange(6, dtype=np.float16).reshape(2, 3)},
                        {"empty": np.zeros(0, np.uint8), "be": big_endian}):
            frame = Frame("handoff", dict(meta), dict(buffers))
            as_built = packed_size(frame)
            grown = GrowingFrame(frame)
            assert grown.packed_size == as_built
            assert [bytes(p) for p in grown.to_parts()] == [bytes(p) for p in to_parts(frame)]
            # Same value under a key already encoded, new keys, NaN, nesting: spliced, byte for byte.
            grown.add({"request_id": "r1", "es_records": [{"t_ns": 5, "e": float("nan")}], "link": None})
            grown.add({"msg_id": "7.0.1"})
            assert frame.meta["msg_id"] == "7.0.1" and grown.packed_size == as_built
            assert [bytes(p) for p in grown.to_parts()] == [bytes(p) for p in to_parts(frame)]
            # Another value (or another type) under an encoded key: a fresh encode, still the frame's bytes.
            grown.add({"request_id": "r2"} if meta else {"msg_id": 7})
            assert [bytes(p) for p in grown.to_parts()] == [bytes(p) for p in to_parts(frame)]
            decoded = from_parts(grown.to_parts())
            assert json_equal(decoded.meta, frame.meta)


def test_growing_frame_refuses_what_to_parts_refuses():
    from megbed.megwire.frames import GrowingFrame

    with pytest.raises(FrameError):
        GrowingFrame(Frame("", {}))
    with pytest.raises(FrameError):
        GrowingFrame(Frame("x", {"a": object()}))
    with pytest.raises(FrameError):
        GrowingFrame(Frame("x", [1, 2]))  # type: ignore[arg-type]
    with pytest.raises(FrameError):
        GrowingFrame(Frame("x", {}, {"o": np.array([object()])}))
    grown = GrowingFrame(Frame("x", {"a": 1}))
    grown.add({"b": {1, 2}})
    with pytest.raises(FrameError):
        grown.to_parts()


def test_headers_are_the_text_json_dumps_writes_and_circular_meta_is_a_frame_error():
    import json

    from megbed.megwire.frames import _dumps

    for value in ({"é": "ü\u2028\x00\"\\", "n": float("nan"), "i": float("-inf"), "z": -0.0, "big": 2**70,
                   "np": np.float64(0.1), "l": [1, None, True, 1e300, {"a": []}]}, "kind", [], {}):
        assert _dumps(value) == json.dumps(value, separators=(",", ":"), allow_nan=True)
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(FrameError):
        to_parts(Frame("x", circular))


def test_header_encoder_falls_back_where_the_private_c_encoder_differs():
    import json

    from megbed.megwire.frames import _make_dumps

    value = {"kind": "k", "meta": {"x": [1, 2.5, float("nan")], "s": "é"}}
    want = json.dumps(value, separators=(",", ":"), allow_nan=True)

    def other_signature(*args):
        raise TypeError("c_make_encoder() takes 8 positional arguments")

    for stand_in in (other_signature, lambda *args: (lambda value, level: ["{}"]), None):
        assert _make_dumps(stand_in)(value) == want
