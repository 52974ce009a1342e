"""Must-show (a): a fresh Python 3.11 venv with only the node install serves MEG and hybrid over ZeroMQ.

One test (the install is the cost): torch from the CPU wheel exactly as the Makefile installs it, then the project
with no extra; ``pip list`` must hold none of the left-out packages, and an ES and a UE started from that venv
serve one MEG (k = N) and one hybrid (k < N) request with the embedded default model on loopback. pip's cache is
shared with the machine's, so a second run costs little more than the venv itself.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zmq
from board_helpers import LEFT_OUT, copy_source, free_port, start_node, stop_node

from megbed.testbed.nodes import protocol as P
from megbed.testbed.nodes.rpc import RpcClient
from megbed.testbed.request import Request

TORCH_SPEC = "torch==2.13.0"


def _pip(venv, *args, timeout=600):
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *args], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"pip {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def _spec(rid, es_steps):
    return Request(request_id=rid, scheme="meg", prompt="a red circle above a blue square", seed=1,
                   n_steps=4, es_steps=es_steps, merge_ratio=0.25, link_model="awgn", tx_mode="analog", distance_m=20.0, snr_db_set=None,
                   height_px=128, width_px=128, point_id=rid, repetition=0)


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the node-install check runs under Python 3.11")
def test_node_install_in_a_fresh_venv_serves_meg_and_hybrid(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    _pip(venv, "install", "-q", TORCH_SPEC)
    src = copy_source(tmp_path / "src")
    _pip(venv, "install", "-q", str(src))
    installed = {d["name"].lower() for d in json.loads(_pip(venv, "list", "--format=json"))}
    assert "megbed" in installed and "torch" in installed
    leaked = sorted(set(LEFT_OUT) & installed)
    assert not leaked, f"the node install pulled {leaked}"

    megbed = str(venv / "bin" / "megbed")
    es_addr, ue_addr = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    common = ["--probe", "none", "--idle-s", "0", "--plans", "meg,hybrid"]
    es = start_node([megbed, "node", "es", "--bind", es_addr, *common], tmp_path / "es.log")
    try:
        ue = start_node([megbed, "node", "ue", "--bind", ue_addr, "--es", es_addr, *common], tmp_path / "ue.log")
        try:
            ctx = zmq.Context()
            with RpcClient(ue_addr, ctx, timeout_s=300) as client:
                for rid, k in (("meg-1", 4), ("hybrid-1", 2)):
                    reply = client.call(P.generate_frame(_spec(rid, k)), timeout_s=300)
                    assert reply.kind == P.RESULT, reply.meta
                    image = np.asarray(reply.buffers["image"])
                    assert image.shape == (128, 128, 3) and image.dtype == np.uint8 and image.std() > 0
                    stages = {r["stage"]: r for r in reply.meta["ue_records"]}
                    assert ("denoise" in stages) == (k < 4)
                    assert stages["decode"]["mem_peak_mb"] > 0 and stages["decode"]["mem_method"] != "none"
            ctx.term()
        finally:
            stop_node(ue)
    finally:
        stop_node(es)
