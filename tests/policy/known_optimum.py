"""A small CMDP whose constrained optimum is known, for testing the learners.

State x ~ U[0, 1], i.i.d. per step (observed). Action u in [0, 1]^2. Reward r = u0 - 0.4 u1 (+ noise); cost
c = w(x) u0 (1 - 0.7 u1) (x (1 + noise)) with w(x) = 0.05 + 1.9 x; per-step limit d = 0.5 on the mean cost.
u0 plays N (quality, costly), u1 plays beta (compression: cheaper, some quality lost), x the channel (how costly
quality is right now) -- the MEG trade-off in miniature.

Because the state is exogenous and i.i.d., the CMDP optimum is the Lagrangian policy
u*(x) = argmax_u r(u) - lambda* c(x, u), with lambda* the multiplier at which E_x[c(x, u*(x))] = d.
:func:`constrained_optimum` computes it by exhaustive search on a fine action grid and bisection on lambda: full
quality everywhere, compression switched on above x* ~ 0.52 (lambda* ~ 0.55); optimal mean reward 0.809 per step.
The best constant action meeting the limit gets 0.712 (88 %); a uniformly random one 0.30.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from megbed.testbed.policy.reference_cmdps import IidStateEnv

LIMIT = 0.5
EPISODE_LENGTH = 32


def reward_fn(u0, u1):
    return u0 - 0.4 * u1


def weight(x):
    return 0.05 + 1.9 * x


def cost_fn(x, u0, u1):
    return weight(x) * u0 * (1.0 - 0.7 * u1)


def constrained_optimum(limit: float = LIMIT, grid: int = 201, states: int = 400) -> dict:
    """Optimal mean reward, cost and multiplier, by exhaustive search over a fine action grid and bisection."""
    u = np.linspace(0.0, 1.0, grid)
    u0, u1 = np.meshgrid(u, u, indexing="ij")
    r = reward_fn(u0, u1).ravel()
    xs = (np.arange(states) + 0.5) / states
    base = (u0 * (1.0 - 0.7 * u1)).ravel()

    def policy(lam):
        c = weight(xs)[:, None] * base[None, :]
        k = np.argmax(r[None, :] - lam * c, axis=1)
        return float(r[k].mean()), float(c[np.arange(states), k].mean())

    lo, hi = 0.0, 50.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if policy(mid)[1] > limit:
            lo = mid
        else:
            hi = mid
    reward, cost = policy(hi)
    feasible_const = base * weight(0.5) <= limit  # E[w(x)] = w(0.5)
    return {"reward": reward, "cost": cost, "lambda": hi, "best_constant_reward": float(r[feasible_const].max())}


class KnownOptimumCMDP(IidStateEnv):
    """The CMDP above as a gymnasium environment with ``info["cost"]``."""

    cost_names = ("cost",)

    def __init__(self, episode_length: int = EPISODE_LENGTH, noise: float = 0.1) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
        self.episode_length = episode_length
        self.noise = noise
        self._x = 0.0
        self._t = 0

    def step(self, action):
        u0, u1 = np.clip(np.asarray(action, dtype=float), 0.0, 1.0)
        rng = self.np_random
        reward = reward_fn(u0, u1) + self.noise * 0.5 * rng.standard_normal()
        cost = cost_fn(self._x, u0, u1) * (1.0 + self.noise * rng.standard_normal())
        obs, truncated = self._next_state()
        return obs, float(reward), False, truncated, {"cost": np.array([cost])}
