"""CMDPs whose constrained optimum is known in closed form: the MEG trade-off's family, for benchmarking learners.

Both have a continuous action u in [0, 1]^2, an i.i.d. channel quality x ~ U[0, 1] as the state (observed as
2x - 1), a concave reward and costs linear in the action with a state-dependent price, and 64-step episodes:

* :class:`PricedLinkCMDP` (one cost): r = log(1 + 4 u0) + 0.5 log(1 + 4 u1); c = p(x) (u0 + 0.5 u1) with the
  price p(x) = 0.2 + 1.6 (1 - x) (a poor channel makes every unit of action dear); limit 0.35 per step.
* :class:`TwoCostCMDP` (two costs): r = log(1 + 4 u0) + log(1 + 4 u1); c_lat = p(x) u0 + 0.2 u1,
  c_en = 0.3 u0 + q(x) u1, with p(x) = 0.2 + 1.6 (1 - x), q(x) = 0.3 + 1.2 x; limits 0.45 and 0.40.

Rewards carry Gaussian noise (sd 0.05) and costs a multiplicative one (sd 10 %); neither moves the expectations.

Because the state is exogenous and i.i.d., the CMDP optimum is the Lagrangian policy
u*(x) = argmax_u r(u) - sum_i lambda_i c_i(x, u) at the multipliers lambda* minimising the dual
g(lambda) = E_x[max_u L] + sum_i lambda_i d_i. The reward is separable and concave and the costs linear, so the
inner maximum is closed form per dimension (u_j = clip(w_j / (4 price_j) ... ), see :meth:`_best_action`) and
:func:`constrained_optimum` solves the convex dual by L-BFGS-B on a fine quadrature of x. Both constraints of
:class:`TwoCostCMDP` bind at its optimum (lambda* > 0).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

EPISODE_LENGTH = 64
QUADRATURE = 4000


def _price(x):
    return 0.2 + 1.6 * (1.0 - x)


class IidStateEnv(gym.Env):
    """The gymnasium side of a CMDP whose state is an i.i.d. channel quality x ~ U[0, 1], observed as 2x - 1.

    Subclasses set ``episode_length`` and the spaces in ``__init__`` and end ``step`` with :meth:`_next_state`.
    """

    metadata = {"render_modes": []}
    episode_length: int
    _x: float = 0.5
    _t: int = 0

    @property
    def channel_state(self):
        return None

    def _obs(self):
        return np.array([2.0 * self._x - 1.0], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        self._x = float(self.np_random.random())
        return self._obs(), {}

    def _next_state(self) -> tuple[np.ndarray, bool]:
        """Draw the next state: ``(observation, truncated)``, truncated once the episode has its length."""
        self._t += 1
        self._x = float(self.np_random.random())
        return self._obs(), self._t >= self.episode_length


class _ReferenceCMDP(IidStateEnv):
    """Shared machinery: i.i.d. state, separable concave log reward, costs linear in u."""

    cost_names: tuple[str, ...] = ()
    limits: dict[str, float] = {}
    reward_weights = (1.0, 1.0)

    def __init__(self, episode_length: int = EPISODE_LENGTH, reward_noise: float = 0.05,
                 cost_noise: float = 0.1) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
        self.episode_length = int(episode_length)
        self.reward_noise, self.cost_noise = float(reward_noise), float(cost_noise)
        self._x, self._t = 0.5, 0

    # the model -----------------------------------------------------------------------------------------------------
    @classmethod
    def reward(cls, u):
        """Expected reward of actions ``u`` (..., 2)."""
        w = cls.reward_weights
        return w[0] * np.log1p(4.0 * u[..., 0]) + w[1] * np.log1p(4.0 * u[..., 1])

    @classmethod
    def cost_matrix(cls, x):
        """Cost per unit action: shape (..., n_costs, 2), so c = cost_matrix(x) @ u."""
        raise NotImplementedError

    @classmethod
    def costs(cls, x, u):
        """Expected costs (..., n_costs) of actions ``u`` (..., 2) in states ``x`` (...)."""
        return np.einsum("...cj,...j->...c", cls.cost_matrix(x), u)

    @classmethod
    def _best_action(cls, x, lam):
        """argmax_u r(u) - lam . c(x, u), per state: d/du_j gives w_j 4 / (1 + 4 u_j) = price_j."""
        price = np.einsum("c,...cj->...j", lam, cls.cost_matrix(x))  # (..., 2)
        w = np.asarray(cls.reward_weights)
        with np.errstate(divide="ignore"):
            u = np.where(price > 0, w / np.maximum(price, 1e-12) - 0.25, 1.0)
        return np.clip(u, 0.0, 1.0)

    @classmethod
    def constrained_optimum(cls, limits: dict[str, float] | None = None) -> dict:
        """Optimal mean reward per step, its mean costs and multipliers (the convex dual solved by L-BFGS-B)."""
        from scipy.optimize import minimize

        limits = dict(cls.limits if limits is None else limits)
        d = np.array([limits.get(n, np.inf) for n in cls.cost_names])
        active = np.isfinite(d)
        xs = (np.arange(QUADRATURE) + 0.5) / QUADRATURE

        def full(lam_active):
            lam = np.zeros(len(d))
            lam[active] = lam_active
            return lam

        def dual(lam_active):
            lam = full(np.maximum(lam_active, 0.0))
            u = cls._best_action(xs, lam)
            c = cls.costs(xs, u).mean(0)
            g = cls.reward(u).mean() - lam @ c + lam[active] @ d[active]
            return g, (d - c)[active]

        res = minimize(dual, x0=np.ones(int(active.sum())), jac=True, method="L-BFGS-B",
                       bounds=[(0.0, None)] * int(active.sum()), options={"gtol": 1e-10, "ftol": 1e-14})
        lam = full(res.x)
        u = cls._best_action(xs, lam)
        cost = cls.costs(xs, u).mean(0)
        return {"reward": float(cls.reward(u).mean()), "costs": dict(zip(cls.cost_names, cost.tolist(), strict=True)),
                "multipliers": dict(zip(cls.cost_names, lam.tolist(), strict=True)), "limits": limits}

    def optimal_reward(self, limits: dict[str, float]) -> float:
        """The oracle's mean reward per step under per-step ``limits`` (what ``megbed evaluate`` compares with)."""
        return self.constrained_optimum(limits)["reward"]

    def step(self, action):
        u = np.clip(np.asarray(action, dtype=float), 0.0, 1.0)
        rng = self.np_random
        reward = float(self.reward(u)) + self.reward_noise * rng.standard_normal()
        cost = self.costs(np.asarray(self._x), u) * (1.0 + self.cost_noise * rng.standard_normal(len(self.cost_names)))
        info = {"cost": np.maximum(cost, 0.0), "channel_quality": self._x}
        obs, truncated = self._next_state()
        return obs, float(reward), False, truncated, info


class PricedLinkCMDP(_ReferenceCMDP):
    """One cost: the family of issue 17 (see the module docstring)."""

    cost_names = ("cost",)
    limits = {"cost": 0.35}
    reward_weights = (1.0, 0.5)

    @classmethod
    def cost_matrix(cls, x):
        p = _price(np.asarray(x, dtype=float))
        return np.stack([p, 0.5 * p], axis=-1)[..., None, :]


class TwoCostCMDP(_ReferenceCMDP):
    """Two costs, both binding at the optimum (see the module docstring)."""

    cost_names = ("latency", "energy")
    limits = {"latency": 0.45, "energy": 0.40}
    reward_weights = (1.0, 1.0)

    @classmethod
    def cost_matrix(cls, x):
        x = np.asarray(x, dtype=float)
        p, q = _price(x), 0.3 + 1.2 * x
        lat = np.stack([p, np.full_like(p, 0.2)], axis=-1)
        en = np.stack([np.full_like(q, 0.3), q], axis=-1)
        return np.stack([lat, en], axis=-2)
