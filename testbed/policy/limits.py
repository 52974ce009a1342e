"""Per-request limits, the CMDP's episodic constraint they define, and the learners' thresholds.

The user states limits per request (``latency_s <= 3`` s, ``energy_j <= E`` J). The environment's per-step cost is
the request's cost, an episode is T requests, and the CMDP constraint is the standard episodic one:

    E[ sum_{t<T} c_i(t) ] <= C_i = T * limit_i        (the mean cost per request stays within the limit)

Learners see costs in units of their limit, ``c_i / limit_i`` (so multipliers are unit-free and latency and energy
have the same scale); the episodic limit is then ``T`` and the per-request limit 1.

CVPO constrains a per-step cost critic Q_c(s, a). FSRL turns the episodic limit C into the threshold

    fsrl:        C (1 - gamma^T) / ((1 - gamma) T)   = limit * (1 - gamma^T) / (1 - gamma)

which is the discounted cost of an episode that *ends* at T, starting from its first step. Our episodes end by
truncation and the critics bootstrap through it (the request stream continues, the state holds no time), so a
policy whose mean cost is exactly the limit has, at stationarity, Q_c = limit / (1 - gamma):

    stationary:  limit / (1 - gamma)

At T = 64 and gamma = 0.97 the FSRL rule is (1 - 0.97^64) = 0.858 of the stationary one, i.e. it asks for a mean
cost 14 % below the limit; for T >> 1/(1 - gamma) both coincide. ``stationary`` -- the CMDP's own constraint,
the per-step limit on the expected mean cost -- is what the default preset uses on every environment
(``megbed.testbed.policy.api.GENERAL_OVERRIDES``); ``fsrl`` is :class:`megbed.testbed.policy.cvpo.CVPOConfig`'s default, i.e.
``--preset paper`` (FSRL's exact settings), and selectable anywhere with ``--set threshold_rule=fsrl``. PPO-Lagrangian's PID multiplier compares the measured episodic cost with T
directly (no discounting involved).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

THRESHOLD_RULES = ("fsrl", "stationary")


@dataclass(frozen=True)
class Constraints:
    """Which of an environment's costs are limited, and by how much per request.

    Attributes
    ----------
    cost_names : tuple of str
        All costs the environment reports in ``info["cost"]``, in order.
    limits : tuple of float
        Per-request limit of each constrained cost, in the order of :attr:`constrained`.
    constrained : tuple of str
        Names of the limited costs (a subset of ``cost_names``, in cost order).
    episode_length : int
        T, requests per episode.
    """

    cost_names: tuple[str, ...]
    constrained: tuple[str, ...]
    limits: tuple[float, ...]
    episode_length: int

    @classmethod
    def from_mapping(cls, cost_names: Sequence[str], limits: Mapping[str, float], episode_length: int) -> Constraints:
        """Build from ``{"latency_s": 3.0, ...}``; names must be among ``cost_names``; at least one limit."""
        cost_names = tuple(cost_names)
        unknown = [k for k in limits if k not in cost_names]
        if unknown:
            raise ValueError(f"limits on unknown costs {unknown}; the environment reports {list(cost_names)}")
        if not limits:
            raise ValueError("at least one limit is needed (e.g. latency_s=3)")
        for k, v in limits.items():
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"the limit on {k} must be a positive number, got {v}")
        constrained = tuple(c for c in cost_names if c in limits)
        return cls(cost_names, constrained, tuple(float(limits[c]) for c in constrained), int(episode_length))

    @property
    def index(self) -> np.ndarray:
        """Positions of the constrained costs in the environment's cost vector."""
        return np.array([self.cost_names.index(c) for c in self.constrained], dtype=int)

    @property
    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.constrained, self.limits, strict=True))

    def normalise(self, cost: np.ndarray) -> np.ndarray:
        """Costs ``(..., n_costs)`` -> constrained costs in units of their limit ``(..., n_constrained)``."""
        cost = np.asarray(cost, dtype=np.float64)
        return cost[..., self.index] / np.asarray(self.limits)

    def episodic_limits(self) -> dict[str, float]:
        """C_i = T * limit_i, in the cost's own units."""
        return {c: self.episode_length * lim for c, lim in zip(self.constrained, self.limits, strict=True)}

    def q_threshold(self, gamma: float, rule: str = "fsrl") -> float:
        """Per-step Q_c threshold for a normalised cost (limit 1), the same for every constraint."""
        if rule == "fsrl":
            t = self.episode_length
            return float(t * (1.0 - gamma**t) / ((1.0 - gamma) * t))
        if rule == "stationary":
            return float(1.0 / (1.0 - gamma))
        raise ValueError(f"threshold rule must be one of {THRESHOLD_RULES}, not {rule!r}")

    def to_json(self) -> dict:
        return {"cost_names": list(self.cost_names), "limits": self.as_dict, "episode_length": self.episode_length}

    @classmethod
    def from_json(cls, data: Mapping) -> Constraints:
        return cls.from_mapping(data["cost_names"], data["limits"], data["episode_length"])
