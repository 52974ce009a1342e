"""Energy per node (gross and net of idle) and per rail."""

from __future__ import annotations

import numpy as np
import pandas as pd

from megbed.analysis.figures import style
from megbed.analysis.figures.registry import FigureContext, register_figure
from megbed.analysis.load import RunData
from megbed.analysis.stats import mean_ci
from megbed.analysis.tables import scheme_label
from megbed.measurements import schema

POWERED_NODES = ("es", "ue")
RAIL_NODES = ("es", "ue", "channel")  # the channel's only rail is the modeled transmit energy


def valid_stage_energy(data: RunData) -> pd.DataFrame:
    """Stage rows whose energy is valid and measured (or modeled), with the method kept."""
    st = data.stages
    ok = st["energy_valid"].astype(bool) & st["energy_method"].ne("none") & st["energy_mj_total"].notna()
    return st[ok]


def per_request_node(data: RunData, column: str) -> pd.DataFrame:
    """Per request x node: the sum of ``column`` over the node's valid stages (mJ), with the request's scheme."""
    st = valid_stage_energy(data)
    g = st.groupby(["request_id", "node"])[column].sum(min_count=1).unstack("node")
    schemes = data.requests.drop_duplicates("request_id").set_index("request_id")["scheme"]
    return g.join(schemes, how="inner")


@register_figure("energy_nodes", title="Energy per node", section="Energy", requires=("requests", "energy"),
                 order=20)
def energy_nodes(data: RunData, ctx: FigureContext):
    """Mean energy per request (J) on each node, stacked, per scheme: (a) gross (all rails of the node's probe),
    (b) net of the idle baseline over the same windows. Only stages with a valid energy figure count; error bars:
    95% Student-t CI of the per-request total over repetitions."""
    fig, axes = style.figure(1, 2, height_in=3.6)
    schemes = data.schemes
    for ax, col, title in ((axes[0, 0], "energy_mj_total", "(a) gross"),
                           (axes[0, 1], "energy_net_mj_total", "(b) net of idle")):
        table = per_request_node(data, col)
        nodes = [n for n in schema.NODES if n in table.columns]
        if not nodes:
            style.empty_panel(ax, f"no valid {col}")
            continue
        for i, s in enumerate(schemes):
            sub = table[table["scheme"] == s]
            bottom = 0.0
            for n in nodes:
                v = float(np.nan_to_num(sub[n].mean() / 1e3))
                ax.bar(i, v, 0.6, bottom=bottom, color=style.NODE_COLORS.get(n), edgecolor="white",
                       label=n.upper() if i == 0 else None)
                bottom += v
            est = mean_ci(sub[nodes].sum(axis=1, min_count=1) / 1e3)
            if np.isfinite(est.low):
                ax.errorbar(i, est.value, yerr=[[est.value - est.low], [est.high - est.value]], fmt="none",
                            ecolor="black", capsize=3)
        ax.set_xticks(range(len(schemes)), [scheme_label(s) for s in schemes])
        ax.set_ylabel("energy per request (J)")
        ax.set_title(title)
        ax.legend(title="node")
    st = data.stages
    n_invalid = int((~st["energy_valid"].astype(bool) & st["node"].isin(POWERED_NODES)).sum())
    if n_invalid:
        reasons = st.loc[~st["energy_valid"].astype(bool) & st["node"].isin(POWERED_NODES), "energy_invalid_reason"]
        top = reasons.value_counts().head(2)
        ctx.note(f"{n_invalid} ES/UE stage rows have no valid energy and are left out ("
                 + "; ".join(f"{k or 'no reason given'}: {v}" for k, v in top.items()) + ").")
    methods = valid_stage_energy(data).groupby("node")["energy_method"].agg(lambda m: ", ".join(sorted(set(m))))
    ctx.note("Energy methods: " + "; ".join(f"{n.upper()}: {m}" for n, m in methods.items()) + ".")
    fig.tight_layout()
    return fig


@register_figure("energy_rails", title="Energy per rail", section="Energy", requires=("requests", "energy", "rails"),
                 order=21)
def energy_rails(data: RunData, ctx: FigureContext):
    """Mean gross energy per request (J) on each power rail, one panel per node, bars per scheme. Rails are shown
    side by side, not stacked: on boards such as the Jetson the input rail (VDD_IN) already contains the others.
    The channel's "tx" rail is modeled (transmit power x emulated airtime), not measured."""
    rails = schema.rail_columns(data.rows.columns)
    st = valid_stage_energy(data)
    nodes = [n for n in RAIL_NODES if n in set(st["node"])]
    nodes = [n for n in nodes if any(st.loc[st["node"] == n, r].notna().any() for r in rails)]
    if not nodes:
        from megbed.analysis.figures.registry import FigureSkipped

        raise FigureSkipped("no node has per-rail energy in its valid stage rows")
    fig, axes = style.figure(1, len(nodes), height_in=3.4, width_in=min(style.WIDTH_IN, 4.2 * len(nodes)),
                             gridspec_kw={"width_ratios": [max(len([r for r in rails if st.loc[st["node"] == n, r]
                                                                    .notna().any()]), 1.2) for n in nodes]})
    schemes = data.schemes
    for ax, node in zip(axes[0], nodes, strict=True):
        sub = st[st["node"] == node]
        node_rails = [r for r in rails if sub[r].notna().any()]
        per_req = sub.groupby("request_id")[node_rails].sum(min_count=1)
        per_req = per_req.join(data.requests.drop_duplicates("request_id").set_index("request_id")["scheme"])
        width = 0.8 / max(len(schemes), 1)
        for i, s in enumerate(schemes):
            rows = per_req[per_req["scheme"] == s]
            if rows.empty:
                continue
            x = np.arange(len(node_rails)) + (i - (len(schemes) - 1) / 2) * width
            means = rows[node_rails].mean().to_numpy() / 1e3
            ci = [mean_ci(rows[r] / 1e3) for r in node_rails]
            err = np.array([[m - c.low, c.high - m] if np.isfinite(c.low) else [0, 0] for m, c in zip(means, ci,
                                                                                                       strict=True)]).T
            ax.bar(x, means, width * 0.92, color=style.SCHEME_COLORS.get(s), label=scheme_label(s), yerr=err,
                   capsize=2, error_kw={"linewidth": 0.8})
        ax.set_xticks(range(len(node_rails)), [r[len(schema.ENERGY_PREFIX):] for r in node_rails],
                      rotation=20, ha="right")
        ax.set_ylabel("energy per request (J)")
        ax.set_xlabel("rail")
        probe = sub["probe"].dropna().astype(str)
        probe = probe[probe != ""]
        ax.set_title(f"{node.upper()}" + (f" ({probe.iloc[0]})" if len(probe) else ""))
        ax.legend(title="scheme")
    fig.tight_layout()
    return fig
