"""Policy training: learning curves, cost-to-limit ratios, Lagrange multipliers and violation rates."""

from __future__ import annotations

import matplotlib.pyplot as plt

from megbed.analysis.figures import style
from megbed.analysis.figures.registry import FigureContext, register_figure
from megbed.analysis.load import RunData

ALGO_LABELS = {"cvpo": "CVPO", "ppo_lag": "PPO-Lag", "ppo_lagrangian": "PPO-Lag", "ddpg_lag": "DDPG-Lag"}


def _x(df):
    if "env_steps" in df.columns and df["env_steps"].notna().any():
        return df["env_steps"], "environment steps (requests)"
    return df["iteration"], "iteration"


@register_figure("policy_training", title="Policy training (CVPO, PPO-Lagrangian)", section="Policy",
                 requires=("training_logs",), order=80)
def policy_training(data: RunData, ctx: FigureContext):
    """Per training iteration: (a) mean reward per request (−log MSE; dashed: deterministic evaluation);
    (b) mean cost per request over its limit (1 = at the limit; one line per constrained cost);
    (c) Lagrange multipliers (λ per cost; CVPO's E-step temperature η dotted); (d) fraction of episodes whose
    mean cost exceeded a limit."""
    fig, axes = style.figure(2, 2, height_in=6.0)
    (a, b), (c, d) = axes
    colors = plt.get_cmap("tab10").colors
    xlabel = "iteration"
    for i, (algo, log) in enumerate(sorted(data.training_logs.items())):
        color = colors[i % 10]
        name = ALGO_LABELS.get(algo, algo)
        x, xlabel = _x(log)
        if "reward_mean" in log.columns:
            a.plot(x, log["reward_mean"], color=color, label=name)
        if "eval_reward_mean" in log.columns and log["eval_reward_mean"].notna().any():
            a.plot(x, log["eval_reward_mean"], color=color, linestyle="--", label=f"{name} (eval)")
        styles = ["-", "--", ":", "-."]
        for j, col in enumerate(c for c in log.columns if c.startswith("cost_ratio_")):
            b.plot(x, log[col], color=color, linestyle=styles[j % 4], label=f"{name} {col[len('cost_ratio_'):]}")
        for j, col in enumerate(c for c in log.columns if c.startswith("lambda_")):
            c.plot(x, log[col], color=color, linestyle=styles[j % 4], label=f"{name} λ {col[len('lambda_'):]}")
        if "eta" in log.columns:
            c.plot(x, log["eta"], color=color, linestyle=":", label=f"{name} η")
        if "episode_violation_rate" in log.columns:
            d.plot(x, log["episode_violation_rate"], color=color, label=name)
        missing = [k for k in ("reward_mean", "episode_violation_rate") if k not in log.columns]
        if missing:
            ctx.note(f"{name}: the log has no {', '.join(missing)}.")
        ctx.note(f"{name}: {len(log)} iterations from {log.attrs.get('source', '?')}.")
    b.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="limit")
    for ax, title, ylabel in ((a, "(a) reward", "mean reward per request (−log MSE)"),
                              (b, "(b) cost / limit", "mean cost / limit (–)"),
                              (c, "(c) multipliers", "multiplier value (–)"),
                              (d, "(d) violation rate", "episodes over a limit (fraction)")):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            style.empty_panel(ax, "not in the training logs")
    d.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    return fig
