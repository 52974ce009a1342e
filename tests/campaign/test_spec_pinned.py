"""Pins what the campaign spec's validation must never change: the configuration hash of ``campaigns/default.yaml``
(the run manifest records it; resume compares it) and every point and request id (datasets join on them)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from megbed.measurements.manifest import config_hash
from megbed.testbed.campaign.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "campaigns" / "default.yaml"
# The resolved spec holds absolute paths (model folder, link file): pinned with the checkout's root replaced, so
# the pin holds in any clone.
DEFAULT_HASH_RELATIVE = "7a07305670ac93c2f29b6e93b99d3b64623e8688c6eab601416e41e92103f59a"
DEFAULT_POINT_IDS_SHA256 = "065f6bf045d87e2b7578dac548da31d20685908b9a1d97ab0c3a356030cd1c0f"
DEFAULT_REQUEST_IDS_SHA256 = "84b4fb2c612fe2214137eab23f5798d2fffa573d965c8eb88572785c81b4b9e6"


def _relative(value):
    if isinstance(value, str) and value.startswith(str(REPO)):
        return "<repo>" + value[len(str(REPO)):]
    if isinstance(value, dict):
        return {k: _relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v) for v in value]
    return value


def test_default_campaign_hash_and_ids_are_pinned():
    spec = load_spec(DEFAULT)
    assert spec.config_hash() == config_hash(spec.resolved())
    assert config_hash(_relative(spec.resolved())) == DEFAULT_HASH_RELATIVE
    ids = [p.point_id for p in spec.points()]
    assert ids[:3] == ["11d1c04b2f41", "9bbf536a470f", "f07f5d3bedeb"] and len(ids) == 29
    assert hashlib.sha256(",".join(ids).encode()).hexdigest() == DEFAULT_POINT_IDS_SHA256
    request_ids = [r.request_id for r in spec.requests()]
    assert len(request_ids) == 58
    assert hashlib.sha256(",".join(request_ids).encode()).hexdigest() == DEFAULT_REQUEST_IDS_SHA256
