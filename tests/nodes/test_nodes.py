from __future__ import annotations

import logging
import math
import time

import numpy as np
import pytest
import zmq
from nodes_helpers import make_spec

from megbed.measurements.schema import problems
from megbed.megwire import Frame, recv_frame
from megbed.testbed.nodes import protocol as P
from megbed.testbed.nodes import rows as R
from megbed.testbed.nodes.es import EsNode
from megbed.testbed.nodes.orchestrator import NodeDead, Orchestrator, RequestFailed
from megbed.testbed.nodes.rpc import NodeError, RpcClient
from megbed.testbed.nodes.synthetic_engine import SyntheticEngine
from megbed.testbed.nodes.ue import UeNode
from megbed.testing import node_fuzz as fuzz


def test_three_schemes_through_orchestrator_give_valid_rows(synthetic_pair):
    es, ue = synthetic_pair
    rows = []
    with Orchestrator(es.address, [ue.address], heartbeat_s=0.2, dead_after_s=2.0) as orch:
        orch.connect(wait_s=10)
        orch.sync_clocks()
        assert orch.es.info["role"] == "es" and orch.ues[0].info["role"] == "ue"
        for scheme in ("meg", "ceg", "ue_local"):
            spec = make_spec(scheme, f"r-{scheme}")
            out = orch.generate(spec, timeout_s=30)
            assert out.image.shape == (64, 64, 3) and out.image.dtype == np.uint8
            ref = orch.reference(spec, 8)
            rows += R.outcome_rows(out, "run", quality=R.quality_columns(out.image, ref), extra={"model": "synthetic"})
    df = R.to_dataframe(rows)
    assert problems(df) == []
    stages = {s: set(zip(g.node, g.stage, strict=True)) for s, g in df.groupby("scheme")}
    assert stages["meg"] == {("es", "text_encode"), ("es", "denoise"), ("es", "merge"), ("es", "serialize"),
                             ("channel", "link"), ("ue", "deserialize"), ("ue", "unmerge"), ("ue", "decode"),
                             ("orchestrator", "end_to_end")}
    assert ("es", "image_encode") in stages["ceg"] and ("ue", "image_decode") in stages["ceg"]
    assert stages["ue_local"] == {("ue", "text_encode"), ("ue", "denoise"), ("ue", "decode"),
                                  ("orchestrator", "end_to_end")}
    e2e = df[df.stage == "end_to_end"].set_index("scheme")
    # The synthetic reference is the unmerged latent's image: identical for CEG / UE-local, degraded by merging.
    assert e2e.loc["ceg", "q_psnr_db"] == pytest.approx(100.0)
    assert e2e.loc["meg", "q_psnr_db"] < 60
    # Stage windows nest inside the end-to-end window on one timeline.
    for scheme, group in df.groupby("scheme"):
        whole = group[group.stage == "end_to_end"].iloc[0]
        parts = group[group.node.isin(["es", "ue"])]
        assert (parts.t_start_ns >= whole.t_start_ns).all() and (parts.t_end_ns <= whole.t_end_ns).all(), scheme
    assert (df[df.scheme == "meg"].payload_bytes.dropna() > 0).all()


def test_es_refuses_bad_requests_and_keeps_serving(synthetic_pair):
    es, _ = synthetic_pair
    ctx = zmq.Context()
    with RpcClient(es.address, ctx, timeout_s=10) as client:
        with pytest.raises(NodeError, match="nothing to run on the ES"):
            client.call(P.request_frame(make_spec("ue_local"), 0))
        with pytest.raises(NodeError, match="k = N only"):
            client.call(P.request_frame(make_spec("meg", es_steps=2), 0))
        with pytest.raises(NodeError, match="n_steps"):
            client.call(Frame(P.REFERENCE, meta={"request_id": "r1", "request": make_spec().to_meta()}))
        assert client.call(P.request_frame(make_spec(), 0)).kind == "handoff"
    ctx.term()


def _valid_for(node_kinds):
    def is_valid(frame: Frame) -> bool:
        if frame.kind in (P.HEARTBEAT, P.HELLO):
            return True
        if frame.kind not in node_kinds:
            return False
        if frame.kind == P.CANCEL:
            return isinstance(frame.meta.get("request_id"), str)
        try:
            spec = P.parse_request_meta(frame)
        except P.ProtocolError:
            return False
        # The node may still refuse it (ES: ue_local; synthetic: k < N) -- an error answer either way, but only
        # count frames that are certain to be refused.
        return not (frame.kind == P.REQUEST and spec.scheme == "ue_local")
    return is_valid


@pytest.mark.parametrize("target", ["es", "ue"])
def test_fuzz_each_node_1000_messages(synthetic_pair, target, caplog):
    es, ue = synthetic_pair
    node = es if target == "es" else ue
    if target == "es":
        seeds = [P.request_frame(make_spec(), 1), P.reference_frame(make_spec("ceg")),
                 P.request_frame(make_spec("ceg"), 2)]
        kinds = {P.REQUEST, P.REFERENCE}
    else:
        seeds = [P.generate_frame(make_spec()), P.generate_frame(make_spec("ue_local")),
                 Frame(P.CANCEL, meta={"request_id": "r1"})]
        kinds = {P.GENERATE, P.CANCEL}
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10000)
    sock.connect(node.address)
    before = node.server.stats.received
    refused = 0
    with caplog.at_level(logging.WARNING):
        for parts in fuzz.messages(seeds, 1000, seed=11 if target == "es" else 12, is_valid=_valid_for(kinds)):
            sock.send_multipart(parts)
            _, reply = recv_frame(sock)
            assert reply.kind == P.ERROR, reply
            refused += 1
    sock.close(0)
    assert refused == 1000 and node.server.stats.received - before >= 1000
    # Still serving real work.
    with RpcClient(ue.address, ctx, timeout_s=10) as client:
        assert client.call(P.generate_frame(make_spec(rid="after-fuzz"))).kind == P.RESULT
    ctx.term()
    assert "rejected frame" in caplog.text


def test_dead_es_is_detected_and_ue_is_freed():
    es = EsNode(SyntheticEngine(compute_s_per_step=0.5), bind="tcp://127.0.0.1:0").start()
    ue = UeNode(SyntheticEngine(), bind="tcp://127.0.0.1:0", es_address=es.address, request_timeout_s=60).start()
    try:
        with Orchestrator(es.address, [ue.address], heartbeat_s=0.1, dead_after_s=0.6) as orch:
            orch.connect(wait_s=10)
            # Kill the ES (its loop stops; heartbeats go silent) while it computes the request.
            import threading

            threading.Timer(0.3, es.server.request_stop).start()
            t0 = time.monotonic()
            with pytest.raises(NodeDead) as info:
                orch.generate(make_spec(rid="doomed"), timeout_s=60)
            assert info.value.node == "es" and time.monotonic() - t0 < 10
            # The UE was told to stop waiting: it serves the next request right away.
            out = orch.generate(make_spec("ue_local", rid="next"), timeout_s=10)
            assert out.result["request_id"] == "next"
            with pytest.raises(NodeDead):
                orch.generate(make_spec(rid="needs-es"), timeout_s=10)
    finally:
        ue.stop()
        es.stop()


def test_request_error_is_reported_not_fatal(synthetic_pair):
    es, ue = synthetic_pair
    with Orchestrator(es.address, [ue.address], heartbeat_s=0.2, dead_after_s=2.0) as orch:
        orch.connect(wait_s=10)
        with pytest.raises(RequestFailed) as info:
            orch.generate(make_spec(rid="hybrid", es_steps=1), timeout_s=10)
        assert info.value.code == P.CODE_UPSTREAM
        assert orch.generate(make_spec(rid="fine"), timeout_s=10).result["request_id"] == "fine"


def test_one_es_serves_two_ues(synthetic_pair):
    es, _ = synthetic_pair
    ue2 = UeNode(SyntheticEngine(), name="ue1", bind="tcp://127.0.0.1:0", es_address=es.address).start()
    ue3 = UeNode(SyntheticEngine(), name="ue2", bind="tcp://127.0.0.1:0", es_address=es.address).start()
    try:
        with Orchestrator(es.address, [ue2.address, ue3.address], heartbeat_s=0.2, dead_after_s=2.0) as orch:
            orch.connect(wait_s=10)
            import concurrent.futures as cf

            # Requests from both UEs in flight at once (one thread per UE: a UE's control socket has one user);
            # the ES's ROUTER routes each answer to its UE.
            def drive(i):
                return [orch.generate(make_spec(rid=f"u{i}-{j}", seed=i * 10 + j), ue=i, timeout_s=20)
                        for j in range(3)]

            with cf.ThreadPoolExecutor(2) as pool:
                outs = [o for f in [pool.submit(drive, i) for i in range(2)] for o in f.result()]
            assert {o.result["request_id"] for o in outs} == {f"u{i}-{j}" for i in range(2) for j in range(3)}
            assert {o.ue_name for o in outs} == {"ue0", "ue1"}
    finally:
        ue2.stop()
        ue3.stop()


def test_live_testbed_binding_records_rows(tmp_path, synthetic_pair):
    from megbed.testbed.campaign.live import OrchestratorTestbed
    from megbed.testbed.policy.live import LiveTestbed

    es, ue = synthetic_pair
    spec = tmp_path / "c.yaml"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text("{}")
    spec.write_text("model: model\nprompts: [a cat]\nimage: {height_px: 64, width_px: 64}\n"
                    "grid: {n_steps: [4], distance_m: [200]}\nreference: {n_steps: 4}\n")
    bed = OrchestratorTestbed(str(tmp_path / "live"), spec=str(spec), es=es.address, ue=ue.address)
    try:
        assert isinstance(bed, LiveTestbed)

        class State:
            snr_db = 3.0

        out = bed.run_request(4, 0.5, State())
        assert out["latency_s"] > 0 and math.isfinite(out["q_neg_log_mse"])
    finally:
        bed.close()
    from megbed.measurements.dataset import read_dataset

    df = read_dataset(tmp_path / "live")
    assert set(df.request_id) == {"live-000000"} and (df.merge_ratio == 0.5).all()


def test_curve_keys_folder_end_to_end(tmp_path):
    """`megbed keys generate` layout: ES and UE admit the orchestrator and each other, refuse anyone else."""
    from megbed.megwire import LinkTimeout
    from megbed.testbed.nodes import keys
    from megbed.testbed.nodes.orchestrator import client_curves

    keys.generate(tmp_path / "keys")
    k = tmp_path / "keys"
    es = EsNode(SyntheticEngine(), bind="tcp://127.0.0.1:0", curve=keys.server_curve(k, "es")).start()
    ue = UeNode(SyntheticEngine(), bind="tcp://127.0.0.1:0", es_address=es.address, curve=keys.server_curve(k, "ue"),
                es_curve=keys.client_curve(k, "ue", "es")).start()
    try:
        with Orchestrator(es.address, [ue.address], heartbeat_s=0.2, dead_after_s=2.0,
                          curves=client_curves(k)) as orch:
            orch.connect(wait_s=10)
            assert orch.generate(make_spec(rid="curve"), timeout_s=20).result["request_id"] == "curve"
        ctx = zmq.Context()
        with RpcClient(es.address, ctx, timeout_s=0.5) as plain, pytest.raises(LinkTimeout):
            plain.call(Frame(P.HEARTBEAT))
        ctx.term()
        deadline = time.monotonic() + 3
        while es.server.stats.refused_handshakes < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert es.server.stats.refused_handshakes >= 1
    finally:
        ue.stop()
        es.stop()


def test_stage_energy_and_power_traces_from_a_real_meter(tmp_path):
    from megbed.measurements.dataset import write_trace
    from megbed.measurements.meter import Meter

    meter = Meter.from_profile(None, rate_hz=200).start()  # whatever this host has (modeled CPU time here)
    es = EsNode(SyntheticEngine(compute_s_per_step=0.02), bind="tcp://127.0.0.1:0", meter=meter).start()
    ue = UeNode(SyntheticEngine(), bind="tcp://127.0.0.1:0", es_address=es.address).start()
    try:
        with Orchestrator(es.address, [ue.address], heartbeat_s=0.2, dead_after_s=2.0) as orch:
            orch.connect(wait_s=10)
            out = orch.generate(make_spec(rid="metered"), timeout_s=20)
            denoise = next(r for r in out.result["es_records"] if r["stage"] == "denoise")
            assert denoise["energy_method"] in ("counter", "integrated", "modeled")
            assert denoise["energy_mj_total"] > 0 and denoise["latency_s"] >= 0.08
            assert out.result["ue_records"][0]["energy_method"] == "none"  # the UE runs without a meter
            first = orch.fetch_traces(orch.es)
            assert first and len(first[0][1]) > 0
            seq_end = int(first[0][1].seq[-1])
            time.sleep(0.1)
            second = orch.fetch_traces(orch.es)
            assert all(int(arr.seq[0]) > seq_end for _, arr in second if len(arr))
            assert orch.fetch_traces(orch.ues[0]) == []
            probe, arr = first[0]
            path = write_trace(tmp_path, "es", probe, arr.to_frame(probe), clock_offset_ns=0)
            assert path.is_file()
    finally:
        ue.stop()
        es.stop()
        meter.close()
