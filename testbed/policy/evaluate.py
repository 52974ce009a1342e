"""Running policies on an environment and summarising what they achieved.

A policy here is anything with ``name`` and ``action(obs, state) -> env action`` (:class:`EvalPolicy`); ``state`` is
the environment's channel state for the coming request (``env.channel_state``), which only the oracle uses.

Metrics (per-request limits, see :mod:`megbed.testbed.policy.limits`):

* ``reward_mean``: mean reward per request; ``cost_mean_<c>``: mean cost per request (in the cost's units).
* ``cost_ratio_<c>`` = cost_mean / limit; ``violation`` = max over constraints of max(0, cost_ratio - 1): by how much
  the CMDP's expected-cost constraint is exceeded (0.05 = 5 % over the limit).
* ``episode_violation_rate``: fraction of episodes whose mean cost per request exceeds a limit (any constraint).
* ``request_violation_rate``: fraction of requests whose own cost exceeds its per-request limit.
* ``cost_ci_low_<c>`` / ``cost_ci_high_<c>``: 95 % confidence interval of the mean cost per request, from the
  per-episode means (Student t over episodes: requests within an episode share a channel trajectory).

:func:`cmdp_summary_lines` states the outcome in the CMDP's own terms (reward vs the oracle's, each cost's mean vs
its limit with its CI, "within limits" or "over by X %"); ``megbed evaluate``, ``megbed train`` and ``make run``'s
policy step print it.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from megbed.testbed.policy.limits import Constraints


class EvalPolicy(Protocol):
    """A policy that can be evaluated."""

    name: str

    def action(self, obs: np.ndarray, state: Any) -> np.ndarray:
        """Environment action for observation ``obs`` when the coming request's channel is ``state``."""


def episode_seeds(seed: int, count: int, offset: int = 0) -> list[int]:
    """Independent episode seeds derived from one seed (episode ``offset + j`` for j < count)."""
    return [int(np.random.SeedSequence([int(seed), offset + j]).generate_state(1)[0]) for j in range(count)]


def run_episodes(env, policy: EvalPolicy, episodes: int, seed: int = 0, seeds: list[int] | None = None):
    """Run ``episodes`` complete episodes and return one record per request (a pandas DataFrame).

    Columns: ``policy, episode, t, reward``, ``cost_<name>`` for every cost of ``info["cost"]``, and the scalar
    fields of ``info`` (``snr_db``, ``n_steps``, ``merge_ratio``, ``latency_s``, quality, ...).
    """
    import pandas as pd

    cost_names = list(getattr(env.unwrapped, "cost_names", ()))
    seeds = seeds if seeds is not None else episode_seeds(seed, episodes, offset=1_000_000)
    records: list[dict] = []
    for ep, s in enumerate(seeds[:episodes]):
        obs, _ = env.reset(seed=s)
        t = 0
        while True:
            state = getattr(env.unwrapped, "channel_state", None)
            action = policy.action(obs, state)
            obs, reward, terminated, truncated, info = env.step(action)
            cost = np.atleast_1d(np.asarray(info.get("cost", 0.0), dtype=float))
            names = cost_names or (["cost"] if len(cost) == 1 else [f"cost_{i}" for i in range(len(cost))])
            rec = {"policy": policy.name, "episode": ep, "t": t, "reward": float(reward)}
            rec.update({f"cost_{n}" if not n.startswith("cost") else n: float(v)
                        for n, v in zip(names, cost, strict=True)})
            for k, v in info.items():
                if k != "cost" and not k.startswith("cost_") and isinstance(v, (int, float, np.floating, np.integer)):
                    rec[k] = float(v)
            records.append(rec)
            t += 1
            if terminated or truncated:
                break
    return pd.DataFrame(records)


def cost_column(name: str) -> str:
    return name if name.startswith("cost") else f"cost_{name}"


def summarise(records, constraints: Constraints | None) -> dict[str, float]:
    """Metrics of :func:`run_episodes` records (see the module docstring)."""
    out: dict[str, float] = {
        "episodes": float(records["episode"].nunique()), "requests": float(len(records)),
        "reward_mean": float(records["reward"].mean()),
        "reward_std": float(records["reward"].std(ddof=0)),
    }
    if constraints is None:
        return out
    per_episode = records.groupby("episode")
    ep_bad = np.zeros(per_episode.ngroups, dtype=bool)
    req_bad = np.zeros(len(records), dtype=bool)
    worst = 0.0
    for name, limit in zip(constraints.constrained, constraints.limits, strict=True):
        col = cost_column(name)
        mean = float(records[col].mean())
        out[f"cost_mean_{name}"] = mean
        out[f"cost_ratio_{name}"] = mean / limit
        out[f"cost_p95_{name}"] = float(np.percentile(records[col], 95))
        lo, hi = mean_ci95(per_episode[col].mean().to_numpy())
        out[f"cost_ci_low_{name}"], out[f"cost_ci_high_{name}"] = lo, hi
        ep_bad |= (per_episode[col].mean() > limit).to_numpy()
        req_bad |= (records[col] > limit).to_numpy()
        worst = max(worst, mean / limit - 1.0)
    for name in constraints.cost_names:
        col = cost_column(name)
        if name not in constraints.constrained and col in records.columns:
            out[f"cost_mean_{name}"] = float(records[col].mean())
    out["violation"] = max(worst, 0.0)
    out["episode_violation_rate"] = float(ep_bad.mean()) if len(ep_bad) else math.nan
    out["request_violation_rate"] = float(req_bad.mean()) if len(req_bad) else math.nan
    return out


def evaluate(env, policy: EvalPolicy, constraints: Constraints | None, episodes: int = 20, seed: int = 0):
    """Run and summarise: returns ``(summary dict, records DataFrame)``."""
    records = run_episodes(env, policy, episodes, seed=seed)
    return summarise(records, constraints), records


def mean_ci95(values) -> tuple[float, float]:
    """95 % Student-t confidence interval of the mean of ``values`` (n,); (mean, mean) for n < 2."""
    v = np.asarray(values, dtype=float)
    m = float(v.mean()) if len(v) else math.nan
    if len(v) < 2:
        return m, m
    from scipy.stats import t

    half = float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m - half, m + half


def cmdp_verdict(summary: dict, constraints: Constraints) -> tuple[bool, list[str]]:
    """Per constrained cost: "mean vs limit [CI]: within limit | over by X %"; and whether all are within.

    A cost is within its limit when its mean is (the CMDP's constraint is on the expected cost); the CI says how
    sure that is (an upper bound above the limit is flagged as "not certain").
    """
    ok, parts = True, []
    for name, limit in zip(constraints.constrained, constraints.limits, strict=True):
        mean = summary.get(f"cost_mean_{name}", math.nan)
        lo, hi = summary.get(f"cost_ci_low_{name}", math.nan), summary.get(f"cost_ci_high_{name}", math.nan)
        text = f"{name} {mean:.4g} vs limit {limit:.4g} (95 % CI {lo:.4g}..{hi:.4g}): "
        if mean <= limit:
            text += "within limit" + (" (CI reaches over it)" if hi > limit else "")
        else:
            ok = False
            text += f"over by {100 * (mean / limit - 1):.1f} %"
        parts.append(text)
    return ok, parts


def cmdp_summary_lines(name: str, summary: dict, constraints: Constraints | None,
                       oracle_reward: float | None = None) -> list[str]:
    """The evaluation of one policy in the CMDP's terms, leading line first.

    ``oracle_reward``: the oracle's mean reward per request where one exists (the dataset environment's oracle, a
    reference CMDP's closed-form optimum); the per-request share over a per-request limit follows, labelled.
    """
    reward = summary.get("reward_mean", math.nan)
    head = f"{name}: reward {reward:.4g} per request"
    if oracle_reward is not None and math.isfinite(oracle_reward) and oracle_reward != 0:
        head += f" ({100 * reward / oracle_reward:.1f} % of the oracle's {oracle_reward:.4g})"
    if constraints is None:
        return [head + " (no limits given)"]
    ok, parts = cmdp_verdict(summary, constraints)
    head += ", " + ("WITHIN LIMITS" if ok else "NOT WITHIN LIMITS")
    lines = [head] + [f"  {p}" for p in parts]
    lines.append(f"  ({summary.get('episodes', 0):.0f} episodes; episodes over the episodic limit "
                 f"{100 * summary.get('episode_violation_rate', math.nan):.0f} %; per-request share over the "
                 f"per-request limit, not the CMDP's constraint: "
                 f"{100 * summary.get('request_violation_rate', math.nan):.0f} %)")
    return lines
