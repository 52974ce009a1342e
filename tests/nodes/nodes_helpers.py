"""Helpers shared by the node tests."""

from __future__ import annotations

from testbed.nodes import protocol as P


def make_spec(scheme: str = "meg", rid: str = "r1", **kw) -> P.RequestSpec:
    base = dict(request_id=rid, scheme=scheme, prompt="a cat", seed=3, n_steps=4,
                es_steps=0 if scheme == "ue_local" else 4, merge_ratio=0.5 if scheme == "meg" else 0.0,
                link=None if scheme == "ue_local" else P.LinkSpec("awgn", "analog", 200.0, None),
                height_px=64, width_px=64, point_id=f"p-{scheme}", repetition=0)
    base.update(kw)
    return P.RequestSpec(**base)
