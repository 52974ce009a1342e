"""ES, broker and UE in three network namespaces (the multi-host rehearsal); root only, skipped otherwise."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from megbed.measurements.dataset import read_dataset

_SPEC = importlib.util.spec_from_file_location(
    "netns_rehearsal", Path(__file__).resolve().parents[2] / "scripts" / "netns_rehearsal.py")
rehearsal = importlib.util.module_from_spec(_SPEC)
sys.modules["netns_rehearsal"] = rehearsal  # dataclasses look their module up there
_SPEC.loader.exec_module(rehearsal)

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module", autouse=True)
def _needs_netns():
    why = rehearsal.available()
    if why:
        pytest.skip(f"network namespaces unavailable: {why}")


def test_campaign_across_namespaces_with_a_delayed_link(tmp_path):
    delay_ms = 5.0
    res = rehearsal.rehearse(tmp_path, engine="synthetic", delay_ms=delay_ms, subnet=78)
    assert res["returncode"] == 0, res["stdout"] + res["stderr"]
    df = read_dataset(Path(res["run_dir"]))
    e2e = df[df.stage == "end_to_end"]
    assert (e2e.status == "ok").all() and len(e2e) == 7
    assert df[df.stage == "link"].ch_airtime_s.notna().all()  # the broker in its own namespace emulated the link
    ue, es = res["clock_sync"]["ue"], res["clock_sync"]["es"]
    # One shared kernel clock: the true offset is 0 and must lie inside each fit's NTP bound; the delayed path's
    # bound covers the asymmetry (>= half the added one-way delay), the undelayed one stays sub-millisecond.
    for fit in (ue, es):
        assert abs(fit["offset_ns"]) <= fit["uncertainty_ns"] + 1e3
    assert ue["uncertainty_ns"] >= 0.45 * delay_ms * 1e6
    assert es["uncertainty_ns"] < 2e6
    # Nothing left behind.
    import subprocess

    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in listed for ns in res["namespaces"])
