"""Dataset rows from an orchestrator :class:`~megbed.testbed.nodes.orchestrator.Outcome` (``megbed.measurements.schema`` names).

One row per stage a node ran (ES: text_encode, denoise, merge, serialize | decode, image_encode; UE: deserialize,
unmerge, [text_encode, denoise], decode | image_decode), one ``link`` row on node ``channel`` for MEG / CEG, and one
``end_to_end`` row on node ``orchestrator``:

* ``t_start_ns`` / ``t_end_ns``: the node's stamps mapped onto the orchestrator's timeline through the clock-sync
  fit; ``clock_offset_ns`` / ``clock_uncertainty_ns`` say which offset was applied and how sure it is.
* ``latency_s``: measured on the node's own clock (no cross-host error), except the link row, whose ends lie on two
  hosts: from the ES's answer being ready (ES clock) to the UE receiving it (UE clock), both mapped; its
  uncertainty is the sum of both maps' bounds.
* The link's transmit energy is *modeled* (P_tx x emulated airtime; ``energy_method = "modeled"``, probe
  ``modeled_tx_power``): there is no radio to measure.
* ``end_to_end``: from the UE starting the request to the UE holding the image (UE clock: what a user waits), energy
  summed over every row of the request (ES + link + UE) with the weakest method and validity of its parts, and the
  quality against the reference.
"""

from __future__ import annotations

import math
from typing import Any

from megbed.measurements.schema import COLUMN_BY_NAME, ENERGY_NET_PREFIX, ENERGY_PREFIX
from megbed.testbed.nodes.clock import ClockMap
from megbed.testbed.request import Request

DEFAULT_TX_POWER_DBM = 30.0  # the paper's ES transmit power
_METHOD_RANK = {"none": -1, "modeled": 0, "integrated": 1, "counter": 2}
_DELIVERY_KEYS = tuple(c for c in COLUMN_BY_NAME if c.startswith("ch_")) + ("link_model", "tx_mode", "distance_m",
                                                                              "snr_db_set")


def _keep(rec: dict[str, Any]) -> dict[str, Any]:
    """Schema columns and per-rail energy columns of a node's record."""
    return {k: v for k, v in rec.items()
            if k in COLUMN_BY_NAME or k.startswith((ENERGY_PREFIX, ENERGY_NET_PREFIX))}


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def base_columns(spec: Request, run_id: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Identity and configuration columns shared by every row of a request."""
    return {
        "run_id": run_id, **spec.columns(), **(extra or {}),
    }


def _mapped(clock: ClockMap, t0: int, t1: int) -> dict[str, Any]:
    return {"t_start_ns": int(clock.to_local(t0)), "t_end_ns": int(clock.to_local(t1)),
            "clock_offset_ns": int(round(float(clock.offset_at(t0)))),
            "clock_uncertainty_ns": float(clock.uncertainty_ns)}


def stage_rows(outcome: Any, base: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the ES's and UE's stage records."""
    rows = []
    for role, records in (("es", outcome.result.get("es_records", [])), ("ue", outcome.result.get("ue_records", []))):
        clock = outcome.clocks[role]
        for rec in records:
            row = {**base, **_keep(rec), "node": role, "status": "ok", "error": ""}
            row.update(_mapped(clock, int(rec["t_start_ns"]), int(rec["t_end_ns"])))
            row["latency_s"] = float(rec["latency_s"])
            for key in ("energy_mj_total", "energy_net_mj_total"):
                row[key] = _num(row.get(key))
            rows.append(row)
    return rows


def delivery_columns(delivery: dict[str, Any] | None) -> dict[str, Any]:
    """The channel's realisation columns from a delivery record (absent ones omitted).

    Accepts the emulator's record as it travels (``DeliveryRecord.to_dict()``: ``mode``, ``airtime_s``, ...) or
    already as dataset columns (``tx_mode``, ``ch_airtime_s``, ...).
    """
    if not delivery:
        return {}
    from megbed.channel_emu.record import COLUMN_MAP

    out = {col: delivery[name] for name, col in COLUMN_MAP.items() if name in delivery}
    out.update({k: delivery[k] for k in _DELIVERY_KEYS if k in delivery})
    return {k: v for k, v in out.items() if v is not None}


def link_row(outcome: Any, base: dict[str, Any], tx_power_dbm: float = DEFAULT_TX_POWER_DBM) -> dict[str, Any] | None:
    """The ``link`` row (MEG / CEG): ES answer ready -> UE received, with the delivery record's columns."""
    res = outcome.result
    if outcome.spec.scheme == "ue_local" or res.get("es_t_reply_ns") is None or res.get("t_recv_ns") is None:
        return None
    es_clock, ue_clock = outcome.clocks["es"], outcome.clocks["ue"]
    t0 = int(es_clock.to_local(int(res["es_t_reply_ns"])))
    t1 = int(ue_clock.to_local(int(res["t_recv_ns"])))
    row = {**base, "node": "channel", "stage": "link", "status": "ok", "error": "", "t_start_ns": t0, "t_end_ns": t1,
           "latency_s": (t1 - t0) / 1e9, "clock_offset_ns": int(round(float(ue_clock.offset_at(int(res["t_recv_ns"]))))),
           "clock_uncertainty_ns": float(es_clock.uncertainty_ns) + float(ue_clock.uncertainty_ns)}
    if res.get("payload_bytes") is not None:
        row["payload_bytes"] = int(res["payload_bytes"])
    row.update(delivery_columns(outcome.delivery))
    processing = (outcome.delivery or {}).get("processing_s")
    if processing is not None:
        # Not (yet) a schema column: the emulator's own compute per frame, to tell harness time from airtime.
        row["ch_processing_s"] = float(processing)
    airtime = row.get("ch_airtime_s")
    if airtime is not None and math.isfinite(float(airtime)):
        extra = (outcome.delivery or {}).get("extra") or {}
        power_dbm = float((outcome.delivery or {}).get("tx_power_dbm", extra.get("tx_power_dbm", tx_power_dbm)))
        energy_mj = 10 ** (power_dbm / 10.0) * float(airtime)  # mW x s = mJ
        row.update({"energy_mj_total": energy_mj, "energy_net_mj_total": energy_mj, "energy_mj_tx": energy_mj,
                    "energy_method": "modeled", "energy_valid": True, "probe": "modeled_tx_power",
                    "energy_invalid_reason": ""})
    else:
        row.update({"energy_mj_total": math.nan, "energy_net_mj_total": math.nan, "energy_method": "none",
                    "energy_valid": False, "energy_invalid_reason": "no delivery record from the channel"})
    return row


def end_to_end_row(outcome: Any, base: dict[str, Any], parts: list[dict[str, Any]],
                   quality: dict[str, float] | None) -> dict[str, Any]:
    """The request's summary row on node ``orchestrator``."""
    res = outcome.result
    ue_clock = outcome.clocks["ue"]
    t0, t1 = int(res["t_begin_ns"]), int(res["t_done_ns"])
    row = {**base, "node": "orchestrator", "stage": "end_to_end", "status": "ok", "error": "",
           **_mapped(ue_clock, t0, t1), "latency_s": (t1 - t0) / 1e9}
    if res.get("payload_bytes") is not None:
        row["payload_bytes"] = int(res["payload_bytes"])
    row.update(delivery_columns(outcome.delivery))
    row.update(sum_energy(parts))
    for key, value in (quality or {}).items():
        row[key] = float(value)
    return row


def sum_energy(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Total energy of several rows: sums, the weakest method, valid only if every part is."""
    if not parts:
        return {"energy_mj_total": math.nan, "energy_net_mj_total": math.nan, "energy_method": "none",
                "energy_valid": False, "energy_invalid_reason": "no stages"}
    gross = sum(_num(p.get("energy_mj_total")) for p in parts)
    net = sum(_num(p.get("energy_net_mj_total")) for p in parts)
    method = min((p.get("energy_method", "none") for p in parts), key=lambda m: _METHOD_RANK.get(m, -1))
    invalid = [f"{p['node']}/{p['stage']}: {p.get('energy_invalid_reason') or 'invalid'}" for p in parts
               if not p.get("energy_valid", False)]
    return {"energy_mj_total": gross, "energy_net_mj_total": net, "energy_method": method,
            "energy_valid": not invalid, "energy_invalid_reason": "; ".join(invalid)[:2000]}


def outcome_rows(outcome: Any, run_id: str, *, quality: dict[str, float] | None = None,
                 extra: dict[str, Any] | None = None, tx_power_dbm: float = DEFAULT_TX_POWER_DBM
                 ) -> list[dict[str, Any]]:
    """Every row of one completed request (stages, link, end to end)."""
    base = base_columns(outcome.spec, run_id, extra)
    h, w = outcome.image.shape[:2]
    base["height_px"], base["width_px"] = int(h), int(w)
    base["decoder"] = outcome.result.get("decoder")  # what the UE used (None: CEG, no UE decoder)
    rows = stage_rows(outcome, base)
    link = link_row(outcome, base, tx_power_dbm)
    if link is not None:
        rows.append(link)
    rows.append(end_to_end_row(outcome, base, list(rows), quality))
    return rows


def failed_row(spec: Request, run_id: str, error: str, t_start_ns: int, t_end_ns: int, *,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The single row a failed request leaves (orchestrator clock), saying why."""
    base = base_columns(spec, run_id, extra)
    base["decoder"] = (spec.decoder or None) if spec.scheme != "ceg" else None  # the one asked for
    return {**base, "node": "orchestrator", "stage": "end_to_end", "status": "failed", "error": error[:2000],
            "t_start_ns": int(t_start_ns), "t_end_ns": int(t_end_ns), "latency_s": (t_end_ns - t_start_ns) / 1e9,
            "energy_mj_total": math.nan, "energy_net_mj_total": math.nan, "energy_method": "none",
            "energy_valid": False, "energy_invalid_reason": "request failed"}


def quality_columns(image: Any, reference: Any) -> dict[str, float]:
    """``q_mse``, ``q_neg_log_mse``, ``q_psnr_db``, ``q_ms_ssim`` of a ``uint8 [H, W, 3]`` image against its
    reference (MS-SSIM is NaN for images too small for it)."""
    import numpy as np
    import torch

    from megbed.testbed.ldm import metrics

    def tensor(a: Any) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)[:, :3]

    x, y = tensor(image), tensor(reference)
    q = metrics.quality(x, y)
    return {"q_mse": float(q["mse"][0]), "q_neg_log_mse": float(q["neg_log_mse"][0]),
            "q_psnr_db": float(q["psnr_db"][0]),
            "q_ms_ssim": float(q["ms_ssim"][0]) if "ms_ssim" in q else math.nan}


def to_dataframe(rows: list[dict[str, Any]]) -> Any:
    """Rows as a DataFrame with the schema's column kinds (nullable ints and bools where values are missing)."""
    import pandas as pd

    from megbed.measurements.schema import column_kind

    df = pd.DataFrame(rows)
    for name in df.columns:
        kind = column_kind(name)
        if kind == "int":
            df[name] = pd.to_numeric(df[name], errors="raise").astype("Int64")
        elif kind == "float":
            df[name] = pd.to_numeric(df[name], errors="raise").astype("float64")
        elif kind == "bool":
            df[name] = df[name].astype("boolean")
        elif kind == "string":
            df[name] = df[name].astype("string")
    return df
