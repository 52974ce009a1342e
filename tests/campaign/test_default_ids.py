"""Resume depends on them: the default campaign's point ids and request columns never change (the config hash is
pinned, checkout-independent, in test_spec_pinned.py)."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from megbed.testbed.campaign.spec import load_spec

REPO = Path(__file__).resolve().parents[2]

# Pinned before the request contract replaced Point / RequestSpec / GenerationRequest (issue 19).
POINT_IDS_SHA256 = "065f6bf045d87e2b7578dac548da31d20685908b9a1d97ab0c3a356030cd1c0f"
FIRST_POINT_IDS = ["11d1c04b2f41", "9bbf536a470f", "f07f5d3bedeb"]
# The configuration columns of every request (the old RequestSpec.config_columns), in a stable order.
COLUMNS_SHA256 = "0d2906c75dc938f2f5c4ae8595b0759962350d4773b091035ad6c6edf91ad224"
IDENTITY = ("request_id", "point_id", "repetition", "scheme")


def test_default_campaign_ids_hash_and_columns_are_pinned():
    spec = load_spec(REPO / "campaigns" / "default.yaml")
    ids = [p.point_id for p in spec.points()]
    assert len(ids) == 29 and ids[:3] == FIRST_POINT_IDS
    assert hashlib.sha256(",".join(ids).encode()).hexdigest() == POINT_IDS_SHA256
    requests = spec.requests()
    assert len(requests) == 58 and requests[0].request_id == "11d1c04b2f41-p0-s0-r0"
    rows = sorted((r.request_id, tuple(sorted([(k, v) for k, v in r.columns().items() if k not in IDENTITY],
                                              key=str))) for r in requests)
    assert hashlib.sha256(repr(rows).encode()).hexdigest() == COLUMNS_SHA256
    for r in requests:
        cols = r.columns()
        assert (cols["request_id"], cols["point_id"], cols["scheme"]) == (r.request_id, r.point_id, r.scheme)
        assert r.has_link == (r.scheme != "ue_local")
        assert math.isnan(cols["snr_db_set"]) and (math.isnan(cols["distance_m"]) == (r.scheme == "ue_local"))
