"""A live UE that receives a handoff with broken merge side information answers an error and keeps serving."""

from __future__ import annotations

import numpy as np
import pytest
import zmq
from nodes_helpers import es_ue_pair, make_spec

from megbed.megwire import Frame
from megbed.testbed.nodes import protocol as P
from megbed.testbed.nodes.rpc import NodeError, RpcClient
from megbed.testbed.nodes.synthetic_engine import SyntheticEngine
from megbed.testbed.request import Request, RequestError


class TamperingEngine(SyntheticEngine):
    """Serves real handoffs, but breaks the destination indices of requests whose id says so."""

    def es(self, req, rec) -> Frame:
        frame = super().es(req, rec)
        dst = frame.buffers.get("merge.dst")
        if dst is not None and req.request_id.startswith("truncate"):
            frame.buffers["merge.dst"] = np.ascontiguousarray(dst[:, :-1])
        elif dst is not None and req.request_id.startswith("overflow"):
            frame.buffers["merge.dst"] = np.full_like(dst, 0xFF)
        return frame


@pytest.fixture(scope="module")
def tampering_pair():
    yield from es_ue_pair(TamperingEngine())


@pytest.mark.parametrize("method", ["global_l2", "global"])
def test_bad_destination_indices_are_refused_and_the_ue_stays_up(tampering_pair, method):
    _, ue = tampering_pair
    ctx = zmq.Context()
    # 64x64 px -> an 8x8 latent -> 4x4 tokens, 4 destinations (2-bit indices): all-ones fields are in range;
    # 48x96 px -> 6x12 latent -> 3x6 tokens, 6 windows / destinations (3-bit indices): all-ones is 7, out of range.
    with RpcClient(ue.address, ctx, timeout_s=10) as client:
        with pytest.raises(NodeError, match="destination indices have shape"):
            client.call(P.generate_frame(make_spec(rid=f"truncate-{method}", merge_method=method)))
        with pytest.raises(NodeError, match="out of range"):
            client.call(P.generate_frame(make_spec(rid=f"overflow-{method}", merge_method=method, height_px=48,
                                                    width_px=96)))
        ok = client.call(P.generate_frame(make_spec(rid=f"fine-{method}", merge_method=method)))
        assert ok.kind == P.RESULT
    ctx.term()


def test_request_carries_and_checks_the_merge_method():
    spec = make_spec(merge_method="window")
    back = Request.from_meta(spec.to_meta())
    assert back.merge_method == "window"
    assert back.columns()["merge_method"] == "window"
    assert make_spec("ceg").columns()["merge_method"] == "none"
    legacy = {k: v for k, v in spec.to_meta().items() if k != "merge_method"}
    assert Request.from_meta(legacy).merge_method == "global_l2"  # a sender from before the field
    with pytest.raises(RequestError, match="merge_method"):
        Request.from_meta({**spec.to_meta(), "merge_method": "nearest"})
    with pytest.raises(RequestError, match="merge_method"):
        Request.from_meta({**spec.to_meta(), "merge_method": 3})
