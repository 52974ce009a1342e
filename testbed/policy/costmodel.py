"""The measured cost model: draws a request's latency, energy and quality given (N, beta, SNR).

Choices (documented here because the policy's results depend on them):

* **Grid.** The campaign measured a full-factorial grid of actions (N x beta [x extras]) and, when it swept link
  conditions (distances or fixed SNRs), of link conditions too. Each link condition becomes an SNR knot at the mean
  realised SNR of its requests. Every cell of the grid must hold at least one successful request.
* **Conditional mean + measured residual.** For each outcome the cell means are interpolated multilinearly over
  (N, beta [, extras] [, SNR]). A draw picks one grid vertex around the query point with probability equal to its
  multilinear weight (the product of per-axis Bernoulli choices), picks one measured request of that vertex, and adds
  that request's residual vector (its outcomes minus its cell's means) to the interpolated mean. At a grid vertex
  this reproduces the measured empirical distribution exactly; in between, the expectation is the interpolated mean
  and the spread is the mixture of the neighbours' measured spreads. Residuals are drawn jointly, so the measured
  correlation between latency, energy and quality is kept.
* **Airtime from payload and the realised channel.** When the dataset records payload bits, airtime and the realised
  SNR of each delivery, latency is split into ``airtime + other``. Airtime is modelled as
  ``airtime_bits / rate(snr)`` with ``rate(snr) = B_eff(snr) * log2(1 + snr)``: ``B_eff`` (the effective bandwidth,
  Hz) is the median of ``payload_bits / (airtime * log2(1 + snr))`` over SNR bins of the measured deliveries,
  interpolated between bins and held constant beyond them, so the Shannon shape extrapolates. ``airtime_bits`` of a
  request is its measured airtime times the model rate at its measured SNR, so the model reproduces every measured
  airtime exactly at the measured SNR, and the channel state the environment draws enters latency continuously
  instead of only through the knots. Without those columns, latency itself is interpolated on the grid.
* **Energy** is the measured energy (scope chosen when reading the table), interpolated on the grid; requests whose
  energy is not valid are left out of the model when energy is used.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np

from megbed.testbed.policy.data import (
    ACTION_COLUMNS,
    QUALITY_COLUMNS,
    PolicyDatasetError,
    read_campaign_rows,
    request_table,
)

log = logging.getLogger(__name__)

MIN_CAPACITY = 1e-6  # bit/s/Hz floor, keeps the rate positive at very low SNR


def capacity_bits_per_hz(snr_db: float | np.ndarray) -> np.ndarray:
    """Shannon spectral efficiency log2(1 + SNR) (bit/s/Hz) at ``snr_db``."""
    return np.maximum(np.log2(1.0 + 10.0 ** (np.asarray(snr_db, dtype=float) / 10.0)), MIN_CAPACITY)


@dataclass(frozen=True)
class Axis:
    """One axis of the measured grid: a column name and its sorted distinct values."""

    name: str
    values: np.ndarray

    def locate(self, x: float) -> tuple[int, float]:
        """Lower index and fraction of ``x`` (clamped to the axis range) between two neighbouring values."""
        v = self.values
        if len(v) == 1:
            return 0, 0.0
        x = min(max(x, v[0]), v[-1])
        i = min(bisect_right(v, x) - 1, len(v) - 2)
        return i, (x - v[i]) / (v[i + 1] - v[i])


@dataclass
class RateModel:
    """Effective link rate vs SNR from measured deliveries: ``rate = B_eff(snr) * log2(1 + snr)`` (bit/s).

    Attributes
    ----------
    knots_db : ndarray, shape (k,)
        SNR bin centres (dB).
    bandwidth_hz : ndarray, shape (k,)
        Effective bandwidth at each knot (Hz); linear in between, constant outside.
    """

    knots_db: np.ndarray
    bandwidth_hz: np.ndarray

    def rate_bps(self, snr_db: float | np.ndarray) -> np.ndarray:
        """Effective rate (bit/s) at ``snr_db``."""
        b = np.interp(snr_db, self.knots_db, self.bandwidth_hz)
        return b * capacity_bits_per_hz(snr_db)

    @classmethod
    def fit(cls, snr_db: np.ndarray, payload_bits: np.ndarray, airtime_s: np.ndarray, max_knots: int = 8,
            min_per_knot: int = 10) -> RateModel:
        eff = payload_bits / (airtime_s * capacity_bits_per_hz(snr_db))
        order = np.argsort(snr_db)
        k = int(max(1, min(max_knots, len(order) // max(min_per_knot, 1))))
        bins = np.array_split(order, k)
        knots = np.array([np.median(snr_db[b]) for b in bins])
        bw = np.array([np.median(eff[b]) for b in bins])
        keep = np.concatenate([[True], np.diff(knots) > 1e-6])  # np.interp needs increasing knots
        return cls(knots_db=knots[keep], bandwidth_hz=bw[keep])


@dataclass
class MeasuredCostModel:
    """Conditional distributions of a request's outcomes given the action and the channel, from a campaign.

    Build with :meth:`from_run_dir` or :meth:`from_table`. Outcomes on the grid are ``outcomes`` (e.g.
    ``other_latency_s``, ``airtime_bits``, ``energy_j``, ``q_neg_log_mse``); :meth:`sample` and :meth:`expected`
    also return ``latency_s`` and ``airtime_s``.
    """

    action_axes: list[Axis]
    snr_axis: Axis | None
    outcomes: list[str]
    cell_mean: np.ndarray  # (n_cells, n_outcomes), cells in C order over action axes then SNR axis
    residuals: np.ndarray  # (n_requests, n_outcomes)
    members: list[np.ndarray]  # per cell, row indices into residuals
    rate: RateModel | None
    table: object = None  # the request table the model was fitted on (pandas.DataFrame)
    source: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_run_dir(cls, run_dir: str | Path, *, scheme: str = "meg", energy_scope: str = "total",
                     fixed: dict | None = None, extra_action_columns: tuple[str, ...] = (), **kwargs
                     ) -> MeasuredCostModel:
        """Read a campaign run directory and fit the model (see :meth:`from_table` for ``kwargs``)."""
        rows = read_campaign_rows(run_dir)
        table = request_table(rows, scheme=scheme, energy_scope=energy_scope, fixed=fixed,
                              extra_action_columns=extra_action_columns)
        model = cls.from_table(table, extra_action_columns=extra_action_columns, **kwargs)
        model.source.update(run_dir=str(run_dir), scheme=scheme, energy_scope=energy_scope, fixed=fixed or {})
        manifest = Path(run_dir) / "manifest.json"
        if manifest.is_file():
            import json

            try:
                meta = json.loads(manifest.read_text(encoding="utf-8"))
                model.source.update(run_id=meta.get("run_id"), synthetic=bool(meta.get("synthetic", False)))
            except ValueError:
                log.warning("manifest %s is not valid JSON; ignored", manifest)
        return model

    @classmethod
    def from_table(cls, table, *, extra_action_columns: tuple[str, ...] = (), airtime: str = "auto",
                   max_snr_knots: int = 8, snr_axis: str = "auto") -> MeasuredCostModel:
        """Fit the model on a request table (:func:`megbed.testbed.policy.data.request_table`).

        Parameters
        ----------
        table : pandas.DataFrame
            One row per successful request.
        extra_action_columns : tuple of str
            Action columns beyond N and beta.
        airtime : {"auto", "model", "none"}
            ``model``: split latency into airtime (payload / rate(SNR)) and the rest (needs payload, airtime and SNR
            columns); ``none``: interpolate latency directly; ``auto``: ``model`` when the columns are there.
        max_snr_knots : int
            At most this many SNR knots (link conditions beyond that are binned by realised SNR).
        snr_axis : {"auto", "none"}
            ``auto``: an SNR axis when the campaign swept several link conditions.
        """
        if table is None or len(table) == 0:
            raise PolicyDatasetError("the request table is empty: no successful request to learn from")
        table = table.reset_index(drop=True).copy()
        action_cols = [*ACTION_COLUMNS, *extra_action_columns]

        # Which latency decomposition the data supports.
        have_link = (
            {"airtime_s", "payload_bits", "snr_db"} <= set(table.columns)
            and np.isfinite(table[["airtime_s", "payload_bits", "snr_db"]].to_numpy(dtype=float)).all(axis=1).mean()
            >= 0.9
        )
        if airtime == "model" and not have_link:
            raise PolicyDatasetError(
                "airtime='model' needs payload bits, airtime and realised SNR for (nearly) every request; "
                "this dataset lacks them (use airtime='none')")
        use_airtime = have_link if airtime == "auto" else airtime == "model"
        rate = None
        if use_airtime:
            ok = np.isfinite(table[["airtime_s", "payload_bits", "snr_db"]].to_numpy(dtype=float)).all(axis=1)
            ok &= (table["airtime_s"].to_numpy(dtype=float) > 0) & (table["payload_bits"].to_numpy(dtype=float) > 0)
            if (~ok).any():
                log.info("dropping %d requests without a usable link record", int((~ok).sum()))
            table = table[ok].reset_index(drop=True)
            snr = table["snr_db"].to_numpy(dtype=float)
            airtime_s = table["airtime_s"].to_numpy(dtype=float)
            rate = RateModel.fit(snr, table["payload_bits"].to_numpy(dtype=float), airtime_s, max_knots=max_snr_knots)
            table["airtime_bits"] = airtime_s * rate.rate_bps(snr)
            table["other_latency_s"] = table["latency_s"].to_numpy(dtype=float) - airtime_s
            outcomes = ["other_latency_s", "airtime_bits"]
        else:
            outcomes = ["latency_s"]

        # Energy: used when most requests carry a valid figure.
        if "energy_j" in table.columns and table["energy_j"].notna().mean() >= 0.5:
            n_bad = int(table["energy_j"].isna().sum())
            if n_bad:
                log.warning("dropping %d requests whose energy is not valid", n_bad)
            table = table[table["energy_j"].notna()].reset_index(drop=True)
            outcomes.append("energy_j")
        quality = [c for c in QUALITY_COLUMNS if c in table.columns and table[c].notna().mean() >= 0.9]
        if not quality:
            raise PolicyDatasetError("no quality column is filled for the successful requests (q_neg_log_mse, ...)")
        table = table.dropna(subset=quality).reset_index(drop=True)
        outcomes += quality

        # Action axes: the measured grid values; each must have at least two.
        axes = []
        for col in action_cols:
            values = np.unique(np.round(table[col].to_numpy(dtype=float), 9))
            if len(values) < 2:
                raise PolicyDatasetError(
                    f"the dataset holds a single value of {col} ({values[0]:g}): the environment needs at least two "
                    f"measured values per action dimension -- a single grid point cannot be interpolated")
            axes.append(Axis(col, values))

        # SNR axis over link conditions.
        snr_ax = None
        link_bin = np.zeros(len(table), dtype=int)
        keys = table["link_key"].astype(str).to_numpy() if "link_key" in table.columns else np.array(["single"] * len(table))
        snr_vals = table["snr_db"].to_numpy(dtype=float) if "snr_db" in table.columns else np.full(len(table), np.nan)
        distinct = sorted(set(keys))
        if snr_axis == "auto" and len(distinct) > 1:
            if np.isnan(snr_vals).mean() > 0.1:
                raise PolicyDatasetError(
                    "the campaign swept several link conditions but most requests lack a realised SNR (ch_snr_db or "
                    "snr_db_set): the environment cannot tell the conditions apart")
            if len(distinct) <= max_snr_knots:
                centres = {k: float(np.nanmean(snr_vals[keys == k])) for k in distinct}
                ordered = sorted(distinct, key=centres.get)
                knots = np.array([centres[k] for k in ordered])
                if np.any(np.diff(knots) < 0.05):
                    raise PolicyDatasetError(f"two link conditions have the same mean SNR ({centres}); cannot order them")
                index = {k: i for i, k in enumerate(ordered)}
                link_bin = np.array([index[k] for k in keys])
            else:
                order = np.argsort(snr_vals)
                bins = np.array_split(order, max_snr_knots)
                knots = np.array([float(np.median(snr_vals[b])) for b in bins])
                for i, b in enumerate(bins):
                    link_bin[b] = i
            snr_ax = Axis("snr_db", knots)

        # Cells: C order over action axes then the SNR axis.
        coords = [np.searchsorted(ax.values, np.round(table[ax.name].to_numpy(dtype=float), 9)) for ax in axes]
        shape = [len(ax.values) for ax in axes]
        if snr_ax is not None:
            coords.append(link_bin)
            shape.append(len(snr_ax.values))
        flat = np.ravel_multi_index(coords, shape)
        n_cells = int(np.prod(shape))
        counts = np.bincount(flat, minlength=n_cells)
        if (counts == 0).any():
            missing = [np.unravel_index(i, shape) for i in np.flatnonzero(counts == 0)[:5]]
            names = [ax.name for ax in axes] + (["snr_db"] if snr_ax is not None else [])
            all_axes = axes + ([snr_ax] if snr_ax is not None else [])
            described = [
                ", ".join(f"{n}={all_axes[d].values[i]:g}" for d, (n, i) in enumerate(zip(names, m, strict=True)))
                for m in missing
            ]
            raise PolicyDatasetError(
                f"the measured grid is not full factorial: {int((counts == 0).sum())} of {n_cells} cells have no "
                f"successful request, e.g. ({'); ('.join(described)})")
        values = table[outcomes].to_numpy(dtype=float)
        sums = np.zeros((n_cells, len(outcomes)))
        np.add.at(sums, flat, values)
        cell_mean = sums / counts[:, None]
        residuals = values - cell_mean[flat]
        members = [np.flatnonzero(flat == i) for i in range(n_cells)]
        table["cell"] = flat
        model = cls(action_axes=axes, snr_axis=snr_ax, outcomes=outcomes, cell_mean=cell_mean, residuals=residuals,
                    members=members, rate=rate, table=table)
        model._prepare()
        return model

    def _prepare(self) -> None:
        axes = self.all_axes
        self._shape = [len(a.values) for a in axes]
        self._strides = [int(np.prod(self._shape[i + 1:])) for i in range(len(self._shape))]
        self._col = {name: i for i, name in enumerate(self.outcomes)}
        self._values_lists = [list(map(float, a.values)) for a in axes]

    # ---------------------------------------------------------------- properties
    @property
    def all_axes(self) -> list[Axis]:
        return self.action_axes + ([self.snr_axis] if self.snr_axis is not None else [])

    @property
    def has_energy(self) -> bool:
        return "energy_j" in self._col

    @property
    def quality_columns(self) -> list[str]:
        return [c for c in self.outcomes if c.startswith("q_")]

    @property
    def n_range(self) -> tuple[int, int]:
        v = self.action_axes[0].values
        return int(round(v[0])), int(round(v[-1]))

    @property
    def beta_max(self) -> float:
        return float(self.action_axes[1].values[-1])

    @property
    def beta_min(self) -> float:
        return float(self.action_axes[1].values[0])

    @property
    def snr_range_db(self) -> tuple[float, float]:
        snr = self.table["snr_db"].to_numpy(dtype=float) if "snr_db" in self.table.columns else np.array([np.nan])
        return float(np.nanmin(snr)), float(np.nanmax(snr))

    # ---------------------------------------------------------------- queries
    def _point(self, action: tuple[float, ...], snr_db: float) -> list[tuple[int, float]]:
        locs = [ax.locate(float(x)) for ax, x in zip(self.action_axes, action, strict=True)]
        if self.snr_axis is not None:
            locs.append(self.snr_axis.locate(float(snr_db)))
        return locs

    def _derived(self, mean_or_draw: np.ndarray, snr_db) -> dict[str, np.ndarray]:
        out = {name: mean_or_draw[..., i] for name, i in self._col.items()}
        if self.rate is not None:
            out["airtime_s"] = out["airtime_bits"] / self.rate.rate_bps(snr_db)
            out["latency_s"] = out["other_latency_s"] + out["airtime_s"]
        else:
            out["airtime_s"] = np.zeros_like(out["latency_s"])
        return out

    def sample(self, action: tuple[float, ...], snr_db: float, rng: np.random.Generator) -> dict[str, float]:
        """Draw one request's outcomes.

        Parameters
        ----------
        action : tuple of float
            ``(n_steps, merge_ratio[, extras])`` in measured units (clamped to the measured range).
        snr_db : float
            Realised SNR of the delivery (dB).
        rng : numpy.random.Generator
            Source of randomness.

        Returns
        -------
        dict
            ``latency_s, airtime_s, energy_j`` (if measured), the quality columns, and the grid outcomes.
        """
        locs = self._point(action, snr_db)
        u = rng.random(len(locs) + 1)
        flat = 0
        # Interpolated mean over all corners; the vertex whose residual is used is drawn with its weight.
        weights = [1.0]
        corners = [0]
        for d, (i, t) in enumerate(locs):
            s, base = self._strides[d], i * self._strides[d]
            if t > 0.0:
                corners = [c + base + k * s for c in corners for k in (0, 1)]
                weights = [w * f for w in weights for f in (1.0 - t, t)]
                flat += base + (s if u[d] < t else 0)
            else:
                corners = [c + base for c in corners]
                flat += base
        mean = np.asarray(weights) @ self.cell_mean[corners]
        members = self.members[flat]
        row = members[min(int(u[-1] * len(members)), len(members) - 1)]
        draw = mean + self.residuals[row]
        out = {k: float(v) for k, v in self._derived(draw, snr_db).items()}
        out["latency_s"] = max(out["latency_s"], 0.0)
        if "energy_j" in out:
            out["energy_j"] = max(out["energy_j"], 0.0)
        return out

    def expected(self, actions: np.ndarray, snr_db: float | np.ndarray) -> dict[str, np.ndarray]:
        """Conditional means at many points.

        Parameters
        ----------
        actions : ndarray, shape (P, n_action_dims)
            Actions in measured units.
        snr_db : float or ndarray, shape (P,)
            SNR of each point (dB).

        Returns
        -------
        dict of ndarray, shape (P,)
            The same keys as :meth:`sample`.
        """
        actions = np.atleast_2d(np.asarray(actions, dtype=float))
        p = len(actions)
        snr = np.broadcast_to(np.asarray(snr_db, dtype=float), (p,))
        coords = [actions[:, d] for d in range(actions.shape[1])]
        if self.snr_axis is not None:
            coords.append(snr)
        idx_t = []
        for ax, x in zip(self.all_axes, coords, strict=True):
            v = ax.values
            if len(v) == 1:
                idx_t.append((np.zeros(p, dtype=int), np.zeros(p)))
                continue
            xc = np.clip(x, v[0], v[-1])
            i = np.clip(np.searchsorted(v, xc, side="right") - 1, 0, len(v) - 2)
            idx_t.append((i, (xc - v[i]) / (v[i + 1] - v[i])))
        mean = np.zeros((p, len(self.outcomes)))
        for bits in product((0, 1), repeat=len(idx_t)):
            w = np.ones(p)
            flat = np.zeros(p, dtype=int)
            for d, (b, (i, t)) in enumerate(zip(bits, idx_t, strict=True)):
                w = w * (t if b else 1.0 - t)
                flat = flat + np.minimum(i + b, self._shape[d] - 1) * self._strides[d]
            mean += w[:, None] * self.cell_mean[flat]
        return self._derived(mean, snr)

    def cell_statistics(self):
        """Per measured cell: its coordinates, count, and mean / std of latency, energy and quality."""
        import pandas as pd

        t = self.table
        cols = [c for c in ("latency_s", "energy_j", *self.quality_columns) if c in t.columns]
        g = t.groupby("cell")[cols].agg(["mean", "std", "count"])
        g.columns = [f"{a}_{b}" for a, b in g.columns]
        coords = np.array(np.unravel_index(g.index.to_numpy(), self._shape)).T
        for d, ax in enumerate(self.all_axes):
            g[ax.name if ax is not self.snr_axis else "snr_knot_db"] = ax.values[coords[:, d]]
        return pd.DataFrame(g).reset_index()

    def describe(self) -> dict:
        """A JSON-able summary: grid, outcomes, requests, rate model, source."""
        return {
            "axes": {ax.name: [float(x) for x in ax.values] for ax in self.all_axes},
            "outcomes": list(self.outcomes),
            "requests": int(len(self.residuals)),
            "airtime_model": None if self.rate is None else {
                "knots_db": [float(x) for x in self.rate.knots_db],
                "bandwidth_hz": [float(x) for x in self.rate.bandwidth_hz]},
            "source": dict(self.source),
        }
