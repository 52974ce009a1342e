from __future__ import annotations

import pytest
from nodes_helpers import make_spec


@pytest.fixture
def spec_factory():
    return make_spec


@pytest.fixture(scope="module")
def synthetic_pair():
    """A synthetic-engine ES and UE (no model), UE talking to the ES directly."""
    from testbed.nodes.es import EsNode
    from testbed.nodes.synthetic_engine import SyntheticEngine
    from testbed.nodes.ue import UeNode

    es = EsNode(SyntheticEngine(), bind="tcp://127.0.0.1:0").start()
    ue = UeNode(SyntheticEngine(), bind="tcp://127.0.0.1:0", es_address=es.address, request_timeout_s=10).start()
    yield es, ue
    ue.stop()
    es.stop()
