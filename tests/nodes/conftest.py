from __future__ import annotations

import pytest
from nodes_helpers import es_ue_pair, make_spec


@pytest.fixture
def spec_factory():
    return make_spec


@pytest.fixture(scope="module")
def synthetic_pair():
    """A synthetic-engine ES and UE (no model), UE talking to the ES directly."""
    yield from es_ue_pair()


@pytest.fixture(autouse=True)
def _log_every_line():
    """Tests read log lines: let every one through (the rate limit itself is tested on its own)."""
    import megbed.testbed.nodes.server  # noqa: F401 - installs its filter
    from megbed.megwire.logutil import FILTERS, set_rate_limit_interval

    old = set_rate_limit_interval(0.0)
    yield
    for name, interval in old.items():
        FILTERS[name].interval_s = interval


@pytest.fixture(scope="session")
def live_nodes(tmp_path_factory):
    """ES, channel broker and UE as live processes (synthetic engine), shared by the hardening and fuzz tests."""
    from nodes_helpers import start_live_nodes

    nodes = start_live_nodes(tmp_path_factory.mktemp("live"))
    yield nodes
    for node in nodes.values():
        node.stop()
