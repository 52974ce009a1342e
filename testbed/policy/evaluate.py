"""Running policies on an environment and summarising what they achieved.

A policy here is anything with ``name`` and ``action(obs, state) -> env action`` (:class:`EvalPolicy`); ``state`` is
the environment's channel state for the coming request (``env.channel_state``), which only the oracle uses.

Metrics (per-request limits, see :mod:`testbed.policy.limits`):

* ``reward_mean``: mean reward per request; ``cost_mean_<c>``: mean cost per request (in the cost's units).
* ``cost_ratio_<c>`` = cost_mean / limit; ``violation`` = max over constraints of max(0, cost_ratio - 1): by how much
  the CMDP's expected-cost constraint is exceeded (0.05 = 5 % over the limit).
* ``episode_violation_rate``: fraction of episodes whose mean cost per request exceeds a limit (any constraint).
* ``request_violation_rate``: fraction of requests whose own cost exceeds its per-request limit.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from testbed.policy.limits import Constraints


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
