"""The campaign runner: sweeps a validated spec over the nodes, writing the dataset as it goes.

Run directory::

    RUN_DIR/campaign.yaml          the spec as given (resume reads it back; its hash must match the manifest's)
    RUN_DIR/manifest.json          provenance (megbed.measurements.manifest) + ``campaign``, ``nodes``, ``clock_sync`` sections
    RUN_DIR/dataset/part-*.parquet rows: one per stage and one end_to_end per request (megbed.measurements.dataset)
    RUN_DIR/references/*.png       quality references (megbed.testbed.ldm.reference), one per (prompt, seed, N_max, size,
                                   guidance, sampler, model, precision)
    RUN_DIR/images/*.png           generated images (per ``keep_images``)
    RUN_DIR/logs/*.log             local node processes' logs

Order: every request (grid point x prompt x seed x repetition) in a seeded random order, the same on resume. Each
request's rows are flushed as one atomic Parquet part before the next starts, so a crash or kill loses at most the
request in flight. Resume skips every request that has an ``ok`` end_to_end row; failed ones are tried again under
a new attempt id (``<request>-a1``), the failed attempt's row staying in the data.

A node that stops answering heartbeats is detected within ``timeouts.dead_after_s``; local nodes are restarted and
the request retried up to ``retries`` times; remote nodes are waited for. A request that still fails gets a
``failed`` end_to_end row naming the error; when a node stays dead the campaign stops (resume later).
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from megbed.measurements import manifest as M
from megbed.measurements.dataset import DatasetWriter, has_rows
from megbed.megwire import LinkTimeout
from megbed.testbed.campaign.errors import CampaignError
from megbed.testbed.campaign.liveness import startup_wait_s
from megbed.testbed.campaign.spec import CampaignSpec, load_spec
from megbed.testbed.ldm.png import write_png
from megbed.testbed.ldm.reference import ReferenceCache, ReferenceKey
from megbed.testbed.nodes import rows as R
from megbed.testbed.nodes.orchestrator import NodeDead, Orchestrator, RequestFailed, client_curves
from megbed.testbed.request import Request

log = logging.getLogger(__name__)

SPEC_COPY = "campaign.yaml"
ATTEMPT_RE = re.compile(r"-a(\d+)$")


def one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's message on one line (Arrow's and the OS's texts may span several)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_run_manifest(run: Path) -> dict[str, Any]:
    """``run``'s manifest, or :class:`CampaignError` naming what is wrong with it (unreadable, not JSON, binary)."""
    try:
        return M.read_manifest(run)
    except (M.ManifestError, OSError, ValueError) as exc:
        raise CampaignError(f"{run / 'manifest.json'} is damaged: {one_line(exc)}") from None


def check_out_dir(run: Path, spec_source: str | None) -> None:
    """Refuse an ``--out`` that cannot become a fresh run directory, before anything is written.

    Raises
    ------
    CampaignError
        ``run`` is a file, lies under a file, cannot be created or written, or holds the user's own spec (the
        frozen copy ``campaign.yaml`` would overwrite it).
    """
    if run.exists() and not run.is_dir():
        raise CampaignError(f"--out {run} is a file, not a directory")
    for parent in run.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CampaignError(f"--out {run} lies under {parent}, which is a file")
            break
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CampaignError(f"cannot create run directory {run}: {exc.strerror or one_line(exc)}") from None
    probe = run / f".megbed-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CampaignError(f"cannot write into run directory {run}: {exc.strerror or one_line(exc)}") from None
    frozen = run / SPEC_COPY
    if frozen.exists():
        source = Path(spec_source) if spec_source else None
        same = False
        if source is not None and source.exists():
            try:
                same = frozen.samefile(source)
            except OSError:
                same = False
        if same or not (run / "manifest.json").is_file():
            raise CampaignError(f"--out {run} already holds {frozen.name}{' (your spec)' if same else ''}, which "
                                f"the run would overwrite with its frozen copy: choose another --out "
                                f"(e.g. {run / 'run1'})")


def base_request_id(request_id: str) -> str:
    """``<request>`` of ``<request>-a<n>`` (a retry attempt), else the id itself."""
    return ATTEMPT_RE.sub("", request_id)


def ordered_requests(spec: CampaignSpec) -> list[Request]:
    """Every request in the campaign's (seeded) order."""
    reqs = spec.requests()
    if spec.randomize:
        random.Random(spec.order_seed).shuffle(reqs)
    return reqs


def completed_requests(run_dir: Path) -> tuple[set[str], dict[str, int]]:
    """Base ids with an ``ok`` end_to_end row, and the number of attempts already made per base id."""
    from megbed.measurements.dataset import DatasetError, has_rows, read_dataset
    from megbed.measurements.schema import SchemaError

    if not has_rows(run_dir):  # parts or a compacted copy
        return set(), {}
    folder = run_dir / "dataset"

    try:
        df = read_dataset(run_dir, validate=False)
    except (DatasetError, SchemaError, M.ManifestError, OSError, ValueError) as exc:
        # The same checks `megbed report` and `megbed train` rely on; resume writes nothing next to a damaged part.
        raise CampaignError(f"cannot resume {run_dir}: {one_line(exc)} (move the damaged part out of "
                            f"{folder} to re-run its requests)") from None
    if "stage" not in df.columns or "request_id" not in df.columns or "status" not in df.columns:
        raise CampaignError(f"cannot resume {run_dir}: its dataset parts hold no campaign rows "
                            "(stage, request_id, status)")
    e2e = df[df["stage"] == "end_to_end"]
    done = {base_request_id(r) for r, s in zip(e2e["request_id"], e2e["status"], strict=True) if s == "ok"}
    attempts: dict[str, int] = {}
    for rid in e2e["request_id"]:
        b = base_request_id(str(rid))
        attempts[b] = attempts.get(b, 0) + 1
    return done, attempts


def with_request_id(req: Request, request_id: str) -> Request:
    from dataclasses import replace

    return replace(req, request_id=request_id)


# --- references -----------------------------------------------------------------------------------------------------


def es_reference(refs: ReferenceCache, orch: Orchestrator, req: Request, n_max: int, timeout_s: float) -> np.ndarray:
    """``req``'s quality reference at ``n_max`` steps: from ``refs``, or rendered by the ES (``uint8 [H, W, 3]``)."""
    key = ReferenceKey.for_engine(orch.es.info.get("engine") or {}, req, n_max)
    return refs.get(key, lambda: orch.reference(req, n_max, timeout_s=timeout_s))


# --- the runner -----------------------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """What a run (or resume) did."""

    run_dir: Path
    run_id: str
    total: int
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    retried: int = 0
    restarts: int = 0
    stopped_early: str | None = None
    wall_s: float = 0.0
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "total": self.total, "skipped": self.skipped, "ok": self.ok,
                "failed": self.failed, "retried": self.retried, "restarts": self.restarts, "stopped_early": self.stopped_early,
                "wall_s": self.wall_s, "failures": self.failures[:50]}


class CampaignRunner:
    """Runs (or resumes) one campaign into one run directory.

    Parameters
    ----------
    spec : CampaignSpec
        The validated spec.
    run_dir : Path
        The run directory (created).
    addresses : dict, optional
        ``{"es": ..., "ue": [...], "channel_pub": ...}`` overriding the spec's nodes (``megbed node orchestrator``).
    engine : str
        Engine of local nodes (``ldm``; ``synthetic`` for harness measurements).
    progress : bool
        Show the rich progress bar.
    restart_dead_nodes : bool
        Local nodes only: restart a node that died and retry the request.
    local_extra_args : dict, optional
        Extra CLI flags per local node role.
    resync_period_s : float
        Clock-sync burst period during the run (drift tracking).
    use_broker : bool
        Local runs: put the channel broker between UE and ES (False: direct, no link emulation).
    """

    def __init__(self, spec: CampaignSpec, run_dir: str | Path, *, addresses: dict[str, Any] | None = None,
                 engine: str = "ldm", progress: bool = True, restart_dead_nodes: bool = True,
                 local_extra_args: dict[str, list[str]] | None = None, resync_period_s: float = 60.0,
                 use_broker: bool = True) -> None:
        self.use_broker = use_broker
        self.spec, self.run_dir = spec, Path(run_dir)
        self.addresses = addresses
        self.engine, self.progress = engine, progress
        self.restart_dead_nodes = restart_dead_nodes
        self.local_extra_args = local_extra_args or {}
        self.resync_period_s = resync_period_s
        self.cluster: Any = None
        self.orch: Orchestrator | None = None
        self._stop_reason: str | None = None
        self._refs: ReferenceCache | None = None
        self._next_ue = 0
        self._tx_dbm = spec.tx_power_dbm()
        self._probes: list[Any] = []
        self._summary: RunSummary | None = None
        self._row_extra: dict[str, Any] = {}  # link bandwidth and UE emulation columns, set when the nodes start

    # --- setup ------------------------------------------------------------------------------------------------------

    def _prepare_dir(self, resume: bool) -> str:
        run = self.run_dir
        if resume:
            manifest = read_run_manifest(run)
            if not manifest.get("run_id"):
                raise CampaignError(f"{run} holds no campaign manifest to resume")
            if manifest.get("config_hash") != M.config_hash(self.spec.resolved()):
                raise CampaignError(f"{run / SPEC_COPY} no longer matches the run's recorded configuration "
                                    "(config_hash differs): start a new run instead of resuming")
            return str(manifest["run_id"])
        if has_rows(run):
            raise CampaignError(f"{run} already holds a dataset: use `megbed campaign resume {run}` or another --out")
        check_out_dir(run, self.spec.source)
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{self.spec.name}"  # wall clock: a name for people only
        import yaml

        header = f"# frozen copy of {self.spec.source} (absolute paths, prompts inlined) for `megbed campaign resume`\n"
        (run / SPEC_COPY).write_text(header + yaml.safe_dump(self.spec.frozen(), sort_keys=False))
        manifest = M.build_manifest(run_id=run_id, config=self.spec.resolved(),
                                    machine={"orchestrator": M.machine_info()},
                                    campaign={"spec": SPEC_COPY, "name": self.spec.name, "runs": []})
        M.write_manifest(run, manifest)
        return run_id

    def _start_nodes(self) -> Orchestrator:
        spec = self.spec
        curves = client_curves(spec.curve_keys_dir)
        from megbed.testbed.campaign.emulate import no_emulation_columns
        from megbed.testbed.campaign.linkscale import resolve_link

        link_file, link_section, self._row_extra = resolve_link(spec.link_config, spec.model_dir, self.run_dir,
                                                                spec.height_px, spec.width_px)
        link_section["grid_tx_modes"] = list(spec.grid["tx_mode"]) if "tx_mode" in spec.grid else None
        M.update_manifest(self.run_dir, {"link": link_section})
        self._row_extra.update(no_emulation_columns())
        if self.addresses is None and spec.nodes.local:
            from megbed.testbed.campaign.local import LocalCluster, wait_ready

            self.cluster = LocalCluster(self.run_dir, spec.model_dir, devices=dict(spec.device),
                                        profiles=dict(spec.profiles), link_config=link_file,
                                        engine=self.engine, keys_dir=spec.curve_keys_dir,
                                        extra_args=self._node_args(), use_broker=self.use_broker)
            try:
                self.cluster.start()
                if self.cluster.emulation is not None:
                    self._row_extra.update(self.cluster.emulation.columns())
                    M.update_manifest(self.run_dir, {"ue_emulation": self.cluster.emulation.manifest()})
                wait_ready(self.cluster, 30)
            except CampaignError:
                raise
            except (RuntimeError, OSError) as exc:  # a node exited at start-up: its log tail says why
                raise CampaignError(f"local nodes did not start: {exc}") from None
            addr = self.cluster.addresses
            es, ues, pub = addr["es"], [addr["ue"]], addr.get("channel_pub")
        else:
            a = self.addresses or {"es": spec.nodes.es, "ue": list(spec.nodes.ue), "channel_pub": spec.nodes.channel_pub}
            es, ues, pub = a["es"], list(a["ue"]), a.get("channel_pub")
        orch = Orchestrator(es, ues, pub, heartbeat_s=spec.timeouts.heartbeat_s,
                            dead_after_s=spec.timeouts.dead_after_s, curves=curves)
        try:
            orch.connect(wait_s=startup_wait_s(spec.timeouts.request_s))
        except NodeDead as exc:
            if self.cluster is not None:
                try:
                    self.cluster.check_started()
                except RuntimeError as died:
                    raise CampaignError(f"local nodes did not start: {died}") from None
            raise CampaignError(f"cannot reach the nodes: {exc}") from exc
        orch.sync_clocks(bursts=1)
        self._probes = self._path_probes(orch)
        return orch

    def _path_probes(self, orch: Orchestrator) -> list[Any]:
        """Heartbeat probes of each UE's path to the ES when a broker sits on it (:mod:`megbed.testbed.campaign.liveness`).

        Local runs probe the broker the cluster started. Remote runs probe the address each UE reports for its ES
        when it differs from the ES's own, and only if this host reaches it now (so an address that means something
        else from here never stops a campaign)."""
        from megbed.testbed.campaign.liveness import PathProbe, wait_for_local_broker

        hb = self.spec.timeouts.heartbeat_s
        keys = self.spec.curve_keys_dir

        def curve_for(server: str):
            if keys is None:
                return None
            from megbed.testbed.nodes.keys import client_curve

            try:
                return client_curve(keys, "orchestrator", server)
            except (OSError, ValueError) as exc:
                log.warning("no CURVE keys to probe the %s path (%s): not probed", server, exc)
                raise LookupError(server) from None

        probes: list[PathProbe] = []
        try:
            if self.cluster is not None:
                # The hello reached the ES and the UE; the broker between them must be up too before warm-up.
                try:
                    probe = wait_for_local_broker(self.cluster, orch.ctx, curve_for("channel") if self.cluster.broker
                                                  else None, hb, startup_wait_s(self.spec.timeouts.request_s))
                except RuntimeError as exc:  # a node exited (its log tail), or the broker stayed silent
                    raise CampaignError(f"local nodes did not start: {exc}") from None
                return [probe] if probe is not None else []
            seen = {orch.es.address}
            for ue in orch.ues:
                addr = ue.info.get("es_address")
                if not isinstance(addr, str) or addr in seen:
                    continue
                seen.add(addr)
                probe = PathProbe(addr, orch.ctx, curve_for("channel"), hb)
                if probe.ping(orch.dead_after_s):
                    probes.append(probe)
                else:
                    log.warning("%s's ES address %s does not answer heartbeats from this host: its path is not "
                                "probed between requests", ue.name, addr)
                    probe.close()
        except LookupError:
            pass
        return probes

    def _nodes_ready(self) -> bool:
        """Before a request (and before a retry): every node answers heartbeats and so does each UE's path to the ES.

        An unresponsive node is treated like a dead one: a local node is restarted (the broker included, whatever
        state its process is in), a remote one waited for; False (with the stop reason set) when one stays silent.
        No request is sent, and no row written, while a node is down.
        """
        orch = self.orch
        for node in orch.nodes:
            if orch.alive(node):
                continue
            exc = NodeDead(node.name, f"{node.name} at {node.address} stopped answering heartbeats")
            log.warning("%s before the next request: treating it as dead", exc)
            if not self._recover(exc):
                self._stop_reason = (f"{node.name} is dead ({exc}); fix it and run "
                                     f"`megbed campaign resume {self.run_dir}`")
                return False
            self._count_restart()
        for probe in self._probes:
            window_s = orch.dead_after_s
            if probe.ping(window_s) or not orch.alive(orch.es):
                continue  # answered, or the ES itself is down (its heartbeats say so at the next request)
            if probe.local_name is not None and self.cluster is not None and self.restart_dead_nodes:
                proc = self.cluster.nodes[probe.local_name]
                log.warning("the channel broker at %s (pid %s, process %s) did not answer heartbeats for %.1f s: "
                            "restarting it", probe.address, proc.pid, "running" if proc.alive() else "gone",
                            window_s)
                self.cluster.restart(probe.local_name)
                if probe.ping(max(60.0, 3 * window_s)):
                    self._count_restart()
                    self._record_nodes_safely()
                    continue
                self._stop_reason = (f"the channel broker at {probe.address} does not answer even after a restart "
                                     f"(log: {proc.log_path}); fix it and run `megbed campaign resume {self.run_dir}`")
                return False
            self._stop_reason = (f"the UEs' path to the ES through {probe.address} (the channel broker) has not "
                                 f"answered heartbeats for {window_s:.1f} s while the ES and UE do: restart the "
                                 f"broker and run `megbed campaign resume {self.run_dir}`")
            return False
        return True

    def _count_restart(self) -> None:
        if self._summary is not None:
            self._summary.restarts += 1

    def _record_nodes(self, run_id: str) -> None:
        orch = self.orch
        nodes = orch.manifest_section()
        probes, profiles, machines = {}, {}, {}
        for node in orch.nodes:
            probes[node.name] = node.info.get("meter") or {"absent": node.info.get("meter_absent_reason", "unknown")}
            profiles[node.name] = node.info.get("firmware_profile")
            machines[node.name] = {"host": node.info.get("host"), "engine": node.info.get("engine")}
        clock = {n.name: n.clock.records() for n in orch.nodes if n.clock is not None}
        updates: dict[str, Any] = {"nodes": nodes, "probes": probes, "firmware_profiles": profiles,
                                   "machine": machines, "clock_sync": clock}
        if self.cluster is not None:
            updates["local_cluster"] = self.cluster.manifest_section()
        M.update_manifest(self.run_dir, updates)
        for name, prof in profiles.items():
            verify = (prof or {}).get("verify") if isinstance(prof, dict) else None
            if isinstance(verify, dict) and verify.get("ok") is False:
                log.warning("%s: live state does not match firmware profile %s: %s (recorded in the manifest)",
                            name, prof.get("name"), verify.get("mismatches"))

    # --- one request ------------------------------------------------------------------------------------------------

    def _node_args(self) -> dict[str, list[str]]:
        """Extra node arguments: the caller's, then ``--plans`` from the grid (a folder missing a component one of
        the campaign's plans needs stops the run at start-up, naming both)."""
        args = {role: list(extra) for role, extra in self.local_extra_args.items()}
        for role, plans in self.spec.node_plans().items():
            if "--plans" not in args.get(role, []):
                args.setdefault(role, []).extend(["--plans", ",".join(plans)])
        return args

    def _run_one(self, req: Request, refs: ReferenceCache, writer: DatasetWriter, run_id: str,
                 summary: RunSummary, attempt0: int) -> None:
        spec = self.spec
        extra = {"model": spec.model_dir.name, **self._row_extra}
        attempt = attempt0
        if not self._nodes_ready():
            return  # nothing sent, nothing written: the stop reason says why, and resume runs the request
        for trial in range(spec.retries + 1):
            rid = req.request_id if attempt == 0 else f"{req.request_id}-a{attempt}"
            this = with_request_id(req, rid)
            t0 = time.monotonic_ns()
            try:
                ref = es_reference(refs, self.orch, this, spec.reference_n_steps, spec.timeouts.request_s)
                # Several UEs take turns (one request at a time, so they never share the ES's compute).
                ue = self._next_ue % len(self.orch.ues)
                self._next_ue += 1
                outcome = self.orch.generate(this, ue=ue, timeout_s=spec.timeouts.request_s)
                if len(self.orch.ues) > 1:
                    extra = {**extra, "ue_name": outcome.ue_name}
                quality = self._quality(outcome.image, ref, rid)
                rows = R.outcome_rows(outcome, run_id, quality=quality, extra=extra, tx_power_dbm=self._tx_dbm)
                writer.extend(rows)
                writer.flush()
                self._keep_image(this, outcome.image)
                summary.ok += 1
                return
            except (NodeDead, LinkTimeout, RequestFailed) as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.warning("request %s failed: %s", rid, error)
                writer.append(R.failed_row(this, run_id, error, t0, time.monotonic_ns(), extra=extra))
                writer.flush()
                summary.failures.append(f"{rid}: {error}")
                attempt += 1
                retry = trial < spec.retries and self._recover(exc) and self._nodes_ready()
                if not retry:
                    summary.failed += 1
                    if isinstance(exc, NodeDead) and not self._alive_after(exc):
                        self._stop_reason = (f"{exc.node} is dead ({exc}); fix it and run "
                                             f"`megbed campaign resume {self.run_dir}`")
                    return
                summary.retried += 1

    def _quality(self, image: np.ndarray, ref: np.ndarray, rid: str) -> dict[str, float]:
        if image.shape != ref.shape:
            log.warning("%s: image %s and reference %s differ in shape: no quality", rid, image.shape, ref.shape)
            return {"q_mse": math.nan, "q_neg_log_mse": math.nan, "q_psnr_db": math.nan, "q_ms_ssim": math.nan}
        return R.quality_columns(image, ref)

    def _keep_image(self, req: Request, image: np.ndarray) -> None:
        keep = self.spec.keep_images
        if keep == "none" or (keep == "first" and req.repetition != 0):
            return
        folder = self.run_dir / "images"
        folder.mkdir(exist_ok=True)
        write_png(folder / f"{req.request_id}.png", image[..., :3])

    def _recover(self, exc: Exception) -> bool:
        """Make the failed request worth retrying: restart a dead local node, or wait for a remote one."""
        orch = self.orch
        if isinstance(exc, RequestFailed) and exc.code not in ("timeout", "cancelled"):
            return False  # the nodes are fine; the request itself is refused
        if isinstance(exc, NodeDead):
            handle = next((n for n in orch.nodes if n.name == exc.node), None)
            # A restarted local node loads its model again (minutes on a slow host); a remote one may come back.
            wait_s = max(3 * orch.dead_after_s, 10.0)
            if self.cluster is not None and self.restart_dead_nodes:
                role = "es" if exc.node == "es" else "ue"
                self.cluster.restart(role)
                if role == "es" and "channel" in self.cluster.nodes and not self.cluster.nodes["channel"].alive():
                    self.cluster.restart("channel")
                wait_s = max(wait_s, self.spec.timeouts.request_s, 300.0)
            if handle is not None and not orch.wait_alive([handle], timeout_s=wait_s):
                return False
            orch.sync_clocks(bursts=1)
            self._record_nodes_safely()
            return True
        if self.cluster is not None:
            for name, proc in self.cluster.nodes.items():
                if not proc.alive() and self.restart_dead_nodes:
                    self.cluster.restart(name)
        return True

    def _save_traces(self) -> None:
        """Fetch the nodes' new power samples and write them under ``traces/`` (never fatal to the campaign)."""
        from megbed.measurements.dataset import write_trace

        for node in self.orch.nodes:
            try:
                if not self.orch.alive(node):
                    continue
                offset = int(round(float(self.orch.clock_map(node).offset_ns)))
                for probe, arr in self.orch.fetch_traces(node):
                    write_trace(self.run_dir, node.name, probe.replace("-", "_"), arr.to_frame(probe),
                                clock_offset_ns=offset)
            except Exception as exc:  # noqa: BLE001 - traces are optional; the rows are what must not be lost
                log.warning("could not save %s's power traces: %s", node.name, exc)

    def _alive_after(self, exc: NodeDead) -> bool:
        handle = next((n for n in self.orch.nodes if n.name == exc.node), None)
        return handle is not None and self.orch.alive(handle)

    def _record_nodes_safely(self) -> None:
        try:
            self._record_nodes(M.read_manifest(self.run_dir).get("run_id", ""))
        except Exception as exc:  # noqa: BLE001 - a manifest hiccup must not lose the measurement
            log.warning("could not update the manifest: %s", exc)

    # --- warm-up ----------------------------------------------------------------------------------------------------

    def _warmup(self, todo: list[Request]) -> None:
        seen: dict[str, int] = {}
        for req in todo:
            if seen.get(req.scheme, 0) >= self.spec.warmup:
                continue
            i = seen.get(req.scheme, 0)
            seen[req.scheme] = i + 1
            try:
                # Warm-up requests pay the nodes' one-off costs (first imports, kernels, caches), which a loaded
                # machine stretches far past a measured request's timeout; heartbeats still catch a dead node.
                self.orch.generate(with_request_id(req, f"warmup-{req.scheme}-{i}"),
                                   timeout_s=startup_wait_s(self.spec.timeouts.request_s))
            except (NodeDead, LinkTimeout, RequestFailed) as exc:
                raise CampaignError(f"warm-up request for {req.scheme} failed: {exc}") from exc

    # --- the run ----------------------------------------------------------------------------------------------------

    def run(self, *, resume: bool = False) -> RunSummary:
        t_start = time.monotonic()
        import torch

        # Quality metrics run here between requests; one thread keeps them off the nodes' cores.
        torch.set_num_threads(1)
        # Heartbeat and delivery threads share the GIL with the main loop: hand it over quickly.
        sys.setswitchinterval(0.0005)
        run_id = self._prepare_dir(resume)
        plan = ordered_requests(self.spec)
        done, attempts = completed_requests(self.run_dir) if resume else (set(), {})
        todo = [r for r in plan if r.request_id not in done]
        summary = self._summary = RunSummary(self.run_dir, run_id, total=len(plan), skipped=len(plan) - len(todo))
        campaign = read_run_manifest(self.run_dir).get("campaign", {})
        runs = campaign.get("runs", []) if isinstance(campaign, dict) else None
        if not isinstance(runs, list):
            raise CampaignError(f"{self.run_dir / 'manifest.json'} is damaged: campaign.runs is not a list")
        if not todo:
            log.info("nothing to do: all %d requests of %s are complete", len(plan), self.run_dir)
            return summary
        old_handlers = self._install_signals()
        writer = None
        try:
            self.orch = self._start_nodes()
            self._record_nodes(run_id)
            refs = self._refs = ReferenceCache(self.run_dir / "references")
            self._warmup(todo)
            writer = DatasetWriter(self.run_dir, rows_per_part=1000)
            self._loop(todo, refs, writer, run_id, summary, attempts)
        finally:
            if writer is not None:
                writer.close()
            if self.orch is not None:
                self._save_traces()
            self._restore_signals(old_handlers)
            summary.wall_s = time.monotonic() - t_start
            summary.stopped_early = summary.stopped_early or self._stop_reason
            try:
                if self.orch is not None:
                    self._record_nodes(run_id)
                M.update_manifest(self.run_dir, campaign={
                    "runs": [*runs, {"resume": resume, **summary.to_dict(),
                                     "references_computed": getattr(self._refs, "computed", 0)}]})
            finally:
                for probe in self._probes:
                    probe.close()
                if self.orch is not None:
                    self.orch.close()
                if self.cluster is not None:
                    self.cluster.stop()
        if not summary.stopped_early:
            self._compact()
        return summary

    def _compact(self) -> None:
        """A finished run's parts become a few partitioned files (verified first; on failure the parts stay)."""
        from megbed.measurements.compact import CompactionError, compact_dataset

        try:
            res = compact_dataset(self.run_dir)
            log.info("dataset compacted: %d rows from %d files into %d in %s", res["rows"], res["inputs"],
                     res["files"], res["generation"])
        except (CompactionError, OSError) as exc:
            log.warning("dataset left as parts (compaction failed: %s); retry with `megbed dataset compact %s`",
                        exc, self.run_dir)

    def _loop(self, todo: list[Request], refs: ReferenceCache, writer: DatasetWriter, run_id: str,
              summary: RunSummary, attempts: dict[str, int]) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("elapsed"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"))
        with Progress(*columns, disable=not self.progress, transient=False) as bar:
            task = bar.add_task(self.spec.name, total=len(todo), status="")
            for req in todo:
                if self._stop_reason:
                    summary.stopped_early = self._stop_reason
                    break
                bar.update(task, status=f"{req.scheme} N={req.n_steps} k={req.es_steps} b={req.merge_ratio:g}")
                self._run_one(req, refs, writer, run_id, summary, attempts.get(req.request_id, 0))
                bar.advance(task)
                done = summary.ok + summary.failed
                if done % 10 == 0:
                    self._save_traces()
                if self.spec.cooldown_s > 0:
                    time.sleep(self.spec.cooldown_s)
                self.orch.maybe_resync(self.resync_period_s)

    def _install_signals(self) -> dict[int, Any]:
        def stop(signum: int, _frame: Any) -> None:
            self._stop_reason = f"stopped by signal {signum}; resume with `megbed campaign resume {self.run_dir}`"

        old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                old[sig] = signal.signal(sig, stop)
            except ValueError:  # not the main thread
                pass
        return old

    def _restore_signals(self, old: dict[int, Any]) -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def run_campaign(spec_path: str | Path, out: str | Path, **kw: Any) -> RunSummary:
    """Validate ``spec_path`` completely, then run it into ``out``."""
    spec = load_spec(spec_path)
    return CampaignRunner(spec, out, **kw).run()


def resume_campaign(run_dir: str | Path, **kw: Any) -> RunSummary:
    """Resume the campaign in ``run_dir`` from its own copy of the spec."""
    run_dir = Path(run_dir)
    path = run_dir / SPEC_COPY
    if not path.is_file():
        raise CampaignError(f"{run_dir} holds no {SPEC_COPY}: not a campaign run directory")
    spec = load_spec(path)
    return CampaignRunner(spec, run_dir, **kw).run(resume=True)
