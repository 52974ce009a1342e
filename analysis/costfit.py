"""The paper's linear FLOP-based cost model, fitted to measured stage costs.

The paper models each node's compute delay and energy as linear in the work done: ``latency_s = a · TFLOP + b``
(and likewise energy), with coefficients from measurements on one GPU and the UE assumed 2x slower. Here the
coefficients are fitted per node to the measured compute stages (``text_encode``, ``denoise``, ``decode``) by
ordinary least squares, and the residuals show where the model misses (e.g. the VAE decoder's memory-bound
convolutions versus the U-Net's attention).

Stage work:

* ``denoise``: steps run on the node x one U-Net step (CFG batch, the node's tomesd ratio);
* ``decode``: one VAE decode;  ``text_encode``: the text encoders.

FLOPs are counted by a :class:`FlopCounter` the caller hands in (``megbed report`` passes :mod:`megbed.testbed.ldm.flops`,
which builds the networks on the meta device): this package reads data and never builds a model. When no counter is
given or the model folder named in the manifest is not on this machine, FLOPs cannot be counted: the fallback is a
per-step proportional model, ``latency_s = a · steps + b`` on the ``denoise`` stages only, and the result says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from megbed.analysis.load import RunData
from megbed.analysis.model_folder import find_model_dir

log = logging.getLogger(__name__)

COMPUTE_STAGES = ("text_encode", "denoise", "decode")
COMPUTE_NODES = ("es", "ue")
COSTS = (("latency_s", "latency (s)", 1.0), ("energy_mj_total", "energy (J)", 1e-3))


class FlopCounter(Protocol):
    """What the cost model needs to count a model folder's work (:mod:`megbed.testbed.ldm.flops` is one, as a module).

    ``stage_flops`` returns an object with ``unet_step``, ``vae_decode`` and ``text_encode`` in FLOPs and raises
    ``FlopCountError`` when the folder cannot be counted.
    """

    FlopCountError: type[Exception]

    def native_size_px(self, model_dir: Path) -> int: ...

    def stage_flops(self, model_dir: Path, height_px: int, width_px: int, cfg: bool, tome_ratio: float = 0.0,
                    tome_max_downsample: int | None = None, disk_cache: Path | None = None) -> Any: ...


@dataclass(frozen=True)
class LinearFit:
    """``y = slope · x + intercept`` fitted by least squares.

    Attributes
    ----------
    node, cost : str
        Which node and which cost column (``latency_s`` or ``energy_mj_total``).
    slope, intercept : float
        In the cost's unit (s or J) per work unit, and in the cost's unit.
    r2, rmse : float
        Coefficient of determination and root-mean-square residual (cost's unit).
    n : int
        Rows fitted.
    """

    node: str
    cost: str
    slope: float
    intercept: float
    r2: float
    rmse: float
    n: int


@dataclass
class CostModelResult:
    """Fits plus the rows they were fitted on.

    Attributes
    ----------
    basis : str
        ``"flops"`` or ``"steps"`` (the fallback).
    work_unit : str
        Unit of the regressor: ``"TFLOP"`` or ``"U-Net steps"``.
    rows : pandas.DataFrame
        ``node, stage, scheme, work, latency_s, energy_j`` and per cost ``<cost>_model`` / ``<cost>_residual``.
    fits : list of LinearFit
    note : str
        How the work was obtained (model folder, or why the fallback was used).
    """

    basis: str
    work_unit: str
    rows: pd.DataFrame
    fits: list[LinearFit] = field(default_factory=list)
    note: str = ""

    def fit(self, node: str, cost: str) -> LinearFit | None:
        return next((f for f in self.fits if f.node == node and f.cost == cost), None)


def node_steps(scheme: str, node: str, n_steps: float, es_steps: float) -> float:
    """Denoising steps a node runs for a request of ``scheme``."""
    if scheme == "ceg":
        return n_steps if node == "es" else 0.0
    if scheme == "ue_local":
        return n_steps if node == "ue" else 0.0
    k = es_steps if np.isfinite(es_steps) else n_steps
    return k if node == "es" else n_steps - k


def ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """Slope, intercept, R² and RMSE of ``y ≈ slope · x + intercept`` (intercept only when x is constant)."""
    if len(x) >= 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
    else:
        slope, intercept = 0.0, float(np.mean(y))
    resid = y - (slope * x + intercept)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return float(slope), float(intercept), r2, float(np.sqrt((resid**2).mean()))


def _col(df: pd.DataFrame, name: str, default) -> np.ndarray:
    if name in df.columns:
        return df[name].to_numpy(dtype=float)
    return np.full(len(df), default, dtype=float)


def stage_work(data: RunData, model_dir: Path | None = None, tome_max_downsample: int | None = None,
               flop_cache: Path | None = None, flop_counter: FlopCounter | None = None,
               named_models: Mapping[str, Path] | None = None) -> tuple[pd.DataFrame, str, str, str]:
    """Compute-stage rows with their work (TFLOP, or steps in the fallback: no ``flop_counter``, no model folder).

    Returns
    -------
    rows, basis, work_unit, note
    """
    st = data.stages
    st = st[st["stage"].isin(COMPUTE_STAGES) & st["node"].isin(COMPUTE_NODES)].copy()
    if st.empty:
        return st.assign(work=[]), "none", "", "no compute stages (text_encode, denoise, decode) on es/ue"
    dropped_note = ""
    if "decoder" in st.columns:
        other = (st["stage"] == "decode") & ~st["decoder"].fillna("base").astype(str).isin(["base", ""])
        if other.any():
            # a distilled decoder is another network: the model folder's VAE FLOPs are not its work
            st = st[~other]
            dropped_note = (f" {int(other.sum())} decode rows of other decoders "
                            f"({', '.join(sorted(set(data.stages.loc[data.stages['stage'] == 'decode', 'decoder'].dropna().astype(str)) - {'base'}))}) "
                            "are left out: their FLOPs are not the model folder's VAE's.")
    n = _col(st, "n_steps", np.nan)
    k = _col(st, "es_steps", np.nan)
    steps = np.array([node_steps(s, nd, a, b) for s, nd, a, b in zip(st["scheme"], st["node"], n, k, strict=True)])
    st["steps"] = steps
    model_name = None
    if "model" in st.columns and st["model"].notna().any():
        model_name = str(st["model"].dropna().iloc[0])
    found = (model_dir if model_dir is not None
             else find_model_dir(data.manifest, model_name, data.run_dir, named_models)[0])
    reason = ""
    if flop_counter is None:
        reason = "no FLOP counter was given (`megbed report` passes the runtime's, megbed.testbed.ldm.flops)"
    elif found is not None:
        try:
            side = flop_counter.native_size_px(found)
            h = np.nan_to_num(_col(st, "height_px", side), nan=side).astype(int)
            w = np.nan_to_num(_col(st, "width_px", side), nan=side).astype(int)
            cfg = np.nan_to_num(_col(st, "guidance_scale", 1.0), nan=1.0) > 1.0
            tome = np.where(st["node"].to_numpy() == "es", _col(st, "tome_ratio_es", 0.0), _col(st, "tome_ratio_ue", 0.0))
            tome = np.nan_to_num(tome, nan=0.0)
            work = np.empty(len(st))
            for i, stage in enumerate(st["stage"].to_numpy()):
                f = flop_counter.stage_flops(found, h[i], w[i], bool(cfg[i]), float(tome[i]), tome_max_downsample,
                                             flop_cache)
                work[i] = {"denoise": f.unet_step * steps[i], "decode": f.vae_decode,
                           "text_encode": f.text_encode}[stage] / 1e12
            st["work"] = work
            note = (f"FLOPs counted with torch FlopCounterMode on the configs of {found} (meta device, no weights)."
                    + dropped_note)
            return st, "flops", "TFLOP", note
        except flop_counter.FlopCountError as exc:
            reason = str(exc)
            log.warning("FLOP counting failed, falling back to the per-step model: %s", exc)
    else:
        tried = find_model_dir(data.manifest, model_name, data.run_dir, named_models)[1]
        reason = ("the model folder named in the manifest is not on this machine"
                  + (f" (tried {', '.join(str(p) for p in tried[:3])})" if tried else " (the manifest names none)"))
    den = st[st["stage"] == "denoise"].copy()
    den["work"] = den["steps"]
    note = f"FLOPs not counted: {reason}. Fallback: per-step proportional model on the denoise stages only."
    return den, "steps", "U-Net steps", note


def fit_cost_model(data: RunData, model_dir: Path | None = None, tome_max_downsample: int | None = None,
                   flop_cache: Path | None = None, flop_counter: FlopCounter | None = None,
                   named_models: Mapping[str, Path] | None = None) -> CostModelResult:
    """Fit ``cost = a · work + b`` per node for latency and (valid) energy; see the module docstring.

    ``flop_cache``: a JSON file remembering FLOP counts between reports (see ``megbed.testbed.ldm.flops.stage_flops``).
    ``flop_counter``: counts the model folder's FLOPs (None: the per-step fallback). ``named_models``: model
    folders known by name (``{"default": ...}``), searched after the manifest's own paths.
    """
    rows, basis, unit, note = stage_work(data, model_dir, tome_max_downsample, flop_cache, flop_counter,
                                         named_models)
    result = CostModelResult(basis=basis, work_unit=unit, rows=rows, note=note)
    if rows.empty:
        return result
    valid = rows["energy_valid"].astype(bool) & rows["energy_method"].ne("none")
    rows["energy_j"] = np.where(valid, rows["energy_mj_total"].astype(float) * 1e-3, np.nan)
    for cost, _label, _scale in COSTS:
        col = "latency_s" if cost == "latency_s" else "energy_j"
        rows[f"{col}_model"] = np.nan
        rows[f"{col}_residual"] = np.nan
        for node in COMPUTE_NODES:
            sel = (rows["node"] == node).to_numpy() & np.isfinite(rows[col].to_numpy(dtype=float))
            sel &= np.isfinite(rows["work"].to_numpy(dtype=float))
            if sel.sum() < 2:
                continue
            x = rows.loc[sel, "work"].to_numpy(dtype=float)
            y = rows.loc[sel, col].to_numpy(dtype=float)
            slope, intercept, r2, rmse = ols(x, y)
            rows.loc[sel, f"{col}_model"] = slope * x + intercept
            rows.loc[sel, f"{col}_residual"] = y - (slope * x + intercept)
            result.fits.append(LinearFit(node, col, slope, intercept, r2, rmse, int(sel.sum())))
    result.rows = rows
    return result
