"""The live testbed for policy evaluation: ``megbed evaluate POLICY --env live --testbed
megbed.testbed.campaign.live:OrchestratorTestbed --testbed-kwargs '{"out": "runs/live1"}'``.

:class:`OrchestratorTestbed` implements :class:`megbed.testbed.policy.live.LiveTestbed`: each ``run_request(N, beta,
state)`` is a MEG request (k = N, the paper's split) sent through the orchestrator to the UE, over the channel
broker at the state's SNR, measured like any campaign request -- its rows go into ``out``'s dataset (so a live
evaluation is a dataset like any other) -- and summarised for the policy loop.

Nodes: the addresses given (``es``, ``ue``, ``channel_pub``), or, with none, ES + broker + UE started locally from
the campaign spec (``campaigns/default.yaml`` unless ``spec`` names another).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path
from typing import Any

from megbed.measurements import manifest as M
from megbed.measurements.dataset import DatasetWriter
from megbed.testbed.campaign.liveness import startup_wait_s, wait_for_local_broker
from megbed.testbed.campaign.runner import es_reference
from megbed.testbed.campaign.spec import load_spec
from megbed.testbed.ldm.reference import ReferenceCache
from megbed.testbed.nodes import rows as R
from megbed.testbed.nodes.orchestrator import Orchestrator, client_curves

log = logging.getLogger(__name__)

DEFAULT_SPEC = Path(__file__).resolve().parents[2] / "campaigns" / "default.yaml"


def _broker_curve(keys_dir: Path | None):
    """The orchestrator's CURVE client keys for the local broker (None on a run without keys)."""
    if keys_dir is None:
        return None
    from megbed.testbed.nodes.keys import client_curve

    return client_curve(keys_dir, "orchestrator", "channel")


class OrchestratorTestbed:
    """A :class:`~megbed.testbed.policy.live.LiveTestbed` over the testbed's nodes.

    Parameters
    ----------
    out : str
        Run directory receiving the live requests' rows (created).
    spec : str, optional
        Campaign YAML for prompts, seeds, image settings, link model / mode, timeouts and local nodes.
    es, ue, channel_pub : str, optional
        Addresses of running nodes; without ``es`` the nodes are started locally.
    engine : str
        Local nodes' engine (``ldm``; ``synthetic`` for protocol checks).
    """

    def __init__(self, out: str, spec: str | None = None, es: str | None = None, ue: str | list[str] | None = None,
                 channel_pub: str | None = None, engine: str = "ldm") -> None:
        self.spec = load_spec(spec or DEFAULT_SPEC)
        self.out = Path(out)
        self.cluster = None
        if es is None:
            from megbed.testbed.campaign.local import LocalCluster, wait_ready

            s = self.spec
            self.cluster = LocalCluster(self.out, s.model_dir, devices=dict(s.device), profiles=dict(s.profiles),
                                        link_config=s.link_config, engine=engine, keys_dir=s.curve_keys_dir)
            self.cluster.start()
            wait_ready(self.cluster, 30)
            es, ue, channel_pub = (self.cluster.addresses["es"], self.cluster.addresses["ue"],
                                   self.cluster.addresses.get("channel_pub"))
        ues = [ue] if isinstance(ue, str) else list(ue or [])
        self.orch = Orchestrator(es, ues, channel_pub, heartbeat_s=self.spec.timeouts.heartbeat_s,
                                 dead_after_s=self.spec.timeouts.dead_after_s,
                                 curves=client_curves(self.spec.curve_keys_dir))
        try:
            wait_s = startup_wait_s(self.spec.timeouts.request_s)
            self.orch.connect(wait_s=wait_s)
            if self.cluster is not None:
                # the broker binds after its warm-up: the first request must not race it
                probe = wait_for_local_broker(self.cluster, self.orch.ctx, _broker_curve(self.spec.curve_keys_dir),
                                              self.spec.timeouts.heartbeat_s, wait_s)
                if probe is not None:
                    probe.close()
            self.orch.sync_clocks()
        except Exception:
            self.close()
            raise
        self.run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-live"  # wall clock: a name for people only
        M.write_manifest(self.out, M.build_manifest(
            run_id=self.run_id, config={"live": self.spec.resolved()}, machine={"orchestrator": M.machine_info()},
            nodes=self.orch.manifest_section(), campaign={"kind": "live policy evaluation"}))
        self.refs = ReferenceCache(self.out / "references")
        self.writer = DatasetWriter(self.out, rows_per_part=1000)
        self._count = itertools.count()
        self._link = (self.spec.grid["link_model"][0], self.spec.grid["tx_mode"][0])

    def run_request(self, n_steps: int, merge_ratio: float, state: Any) -> dict:
        """One MEG request (k = N) at the state's SNR; returns ``latency_s``, ``energy_j`` and the quality."""
        i = next(self._count)
        spec = self.spec
        snr = float(getattr(state, "snr_db", math.nan))
        model, mode = self._link
        if math.isfinite(snr):
            link = {"link_model": model, "tx_mode": mode, "distance_m": None, "snr_db_set": snr}
        else:
            link = {"link_model": model, "tx_mode": mode, "distance_m": float(getattr(state, "distance_m", 250.0)),
                    "snr_db_set": None}
        point = spec.point("meg", int(n_steps), int(n_steps), round(float(merge_ratio), 4), link=link)
        prompt = spec.prompts[i % len(spec.prompts)]
        seed = spec.seeds[(i // len(spec.prompts)) % len(spec.seeds)]
        req = spec.request_for(point, prompt, seed, 0, f"live-{i:06d}")
        ref = es_reference(self.refs, self.orch, req, spec.reference_n_steps, spec.timeouts.request_s)
        outcome = self.orch.generate(req, timeout_s=spec.timeouts.request_s)
        quality = R.quality_columns(outcome.image, ref)
        rows = R.outcome_rows(outcome, self.run_id, quality=quality, extra={"model": spec.model_dir.name},
                              tx_power_dbm=spec.tx_power_dbm())
        self.writer.extend(rows)
        self.writer.flush()
        e2e = rows[-1]
        self.orch.maybe_resync(60.0)
        return {"request_id": req.request_id, "latency_s": float(e2e["latency_s"]),
                "energy_j": float(e2e["energy_mj_total"]) / 1e3, **quality,
                "snr_db": float(e2e.get("ch_snr_db", snr)), "energy_method": e2e["energy_method"]}

    def close(self) -> None:
        if getattr(self, "writer", None) is not None:
            self.writer.close()
        self.orch.close()
        if self.cluster is not None:
            self.cluster.stop()

    def __del__(self) -> None:  # the policy CLI does not close bindings; never leave nodes running
        try:
            if self.cluster is not None:
                self.cluster.stop()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
