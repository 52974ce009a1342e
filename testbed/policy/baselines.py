"""Baselines on the MEG environment: fixed schemes and the oracle.

* :class:`FixedPolicy` -- one (N, beta) for every request: ``max_quality`` (N_max, no merging), ``min_cost``
  (N_min, beta_max), any explicit ``N=8,beta=0.5`` (the paper's fixed compressions), and ``best_fixed``: the single
  (N, beta) of highest expected reward whose expected costs over the channel's state distribution meet the limits.
* :class:`OraclePolicy` -- solves the constrained problem exactly on the environment's cost model (its conditional
  means), for each state, over a dense action set (every N, 101 values of beta):

  - ``mode="cmdp"`` (the upper bound): the CMDP's constraint is on the expected cost over the episode, so the optimum
    is ``a*(s) = argmax_a r(s,a) - sum_i lambda_i c_i(s,a)/limit_i`` with lambda minimising the dual
    ``D(lambda) = E_s max_a [r(s,a) - sum_i lambda_i (c_i(s,a)/limit_i - 1)]`` over the state distribution of the
    environment's channel process (sampled). The channel is exogenous and the costs depend on the current state
    and action only, so this is the optimal stationary policy of the CMDP. A final bisection on each lambda makes
    the deterministic policy feasible on the sample.
  - ``mode="per_request"``: every request's expected cost given its channel meets the limit; the best such action
    per state (the minimum normalised worst cost when none does). Stricter than the CMDP: a lower bound on what a
    policy may give up for per-request guarantees.
"""

from __future__ import annotations

import copy
import re
from itertools import product

import numpy as np

from megbed.testbed.policy.env import MegEnv
from megbed.testbed.policy.limits import Constraints

ORACLE_MODES = ("cmdp", "per_request")


def candidate_actions(env: MegEnv, n_beta: int = 101, n_extra: int = 11) -> np.ndarray:
    """Dense action set in measured units, shape (P, n_action_dims): every reachable N x a beta grid x extras."""
    if env.n_choices == "grid":
        ns = np.array(env.n_grid, dtype=float)
    else:
        ns = np.arange(env.n_min, env.n_max + 1, dtype=float)
    lo, hi = env.action_ranges[1]
    grids = [ns, np.linspace(lo, hi, n_beta)]
    for lo, hi in env.action_ranges[2:]:
        grids.append(np.linspace(lo, hi, n_extra))
    return np.array(list(product(*grids)), dtype=float)


def sample_states(env: MegEnv, episodes: int = 64, seed: int = 12345) -> np.ndarray:
    """SNRs (dB) the environment's channel visits over ``episodes`` episodes, from a copy of its process."""
    channel = copy.deepcopy(env.channel)
    rng = np.random.default_rng(seed)
    snr = []
    for _ in range(episodes):
        state = channel.reset(seed=int(rng.integers(2**31 - 1)))
        for t in range(env.episode_length):
            snr.append(float(state.snr_db))
            if t + 1 < env.episode_length:
                state = channel.step()
    return np.asarray(snr)


class FixedPolicy:
    """The same (N, beta[, extras]) for every request."""

    def __init__(self, env, values: tuple[float, ...], name: str | None = None) -> None:
        space = env.unwrapped.space  # MegEnv and LiveEnv share the RequestSpace conventions
        self.values = tuple(float(v) for v in values)
        self._action = space.encode_action(self.values)
        self.name = name or "fixed:" + ",".join(f"{n}={v:g}" for n, v in zip(space.action_names, self.values,
                                                                              strict=False))

    def action(self, obs, state=None) -> np.ndarray:
        return self._action.copy()

    @classmethod
    def parse(cls, env, spec: str, constraints: Constraints | None = None,
              states: np.ndarray | None = None) -> FixedPolicy:
        """``max_quality`` | ``min_cost`` | ``best_fixed`` | ``N=8,beta=0.5`` (also ``n_steps=..,merge_ratio=..``)."""
        spec = spec.strip()
        sp = env.unwrapped.space
        if spec == "max_quality":
            return cls(env, (sp.n_max, sp.action_ranges[1][0], *[lo for lo, _ in sp.action_ranges[2:]]),
                       name="fixed:max_quality")
        if spec == "min_cost":
            return cls(env, (sp.n_min, sp.action_ranges[1][1], *[hi for _, hi in sp.action_ranges[2:]]),
                       name="fixed:min_cost")
        if spec == "best_fixed":
            if constraints is None:
                raise ValueError("best_fixed needs the constraints")
            return best_fixed(env, constraints, states)
        values = {}
        for part in filter(None, re.split(r"[,\s]+", spec)):
            if "=" not in part:
                raise ValueError(f"fixed scheme {spec!r}: expected NAME=VALUE pairs, got {part!r}")
            k, v = part.split("=", 1)
            key = {"n": "n_steps", "beta": "merge_ratio", "b": "merge_ratio"}.get(k.strip().lower(), k.strip())
            values[key] = float(v)
        missing = [n for n in sp.action_names if n not in values]
        if missing:
            raise ValueError(f"fixed scheme {spec!r} lacks {missing} (e.g. N=8,beta=0.5)")
        return cls(env, tuple(values[n] for n in sp.action_names))


def best_fixed(env: MegEnv, constraints: Constraints, states: np.ndarray | None = None) -> FixedPolicy:
    """The constant action of highest expected reward meeting every limit in expectation over the states."""
    states = sample_states(env) if states is None else states
    cand = candidate_actions(env, n_beta=51)
    reward = np.zeros(len(cand))
    costs = np.zeros((len(cand), len(constraints.constrained)))
    for snr in np.quantile(states, np.linspace(0.0, 1.0, 65)):  # the state distribution through its quantiles
        e = env.cost_model.expected(cand, snr)
        reward += e[env.reward_column] / 65
        costs += np.stack([e[c] for c in constraints.constrained], axis=1) / 65
    ratio = (costs / np.asarray(constraints.limits)).max(axis=1)
    feasible = ratio <= 1.0
    best = int(np.argmax(np.where(feasible, reward, -np.inf))) if feasible.any() else int(np.argmin(ratio))
    return FixedPolicy(env, tuple(cand[best]), name="fixed:best_fixed")


class OraclePolicy:
    """Exact constrained optimum on the cost model's conditional means (see the module docstring)."""

    def __init__(self, env: MegEnv, constraints: Constraints, mode: str = "cmdp", n_beta: int = 101,
                 states: np.ndarray | None = None, state_episodes: int = 64, seed: int = 12345) -> None:
        if mode not in ORACLE_MODES:
            raise ValueError(f"oracle mode must be one of {ORACLE_MODES}")
        self.env = env
        self.model = env.cost_model
        self.constraints = constraints
        self.mode = mode
        self.name = "oracle" if mode == "cmdp" else "oracle:per_request"
        self.candidates = candidate_actions(env, n_beta=n_beta)
        self.limits = np.asarray(constraints.limits, dtype=float)
        self.lambdas = np.zeros(len(self.limits))
        if mode == "cmdp":
            self.states = sample_states(env, state_episodes, seed) if states is None else np.asarray(states)
            self._solve_dual()

    # ---------------------------------------------------------------- per state
    def _tables(self, snr_db: float) -> tuple[np.ndarray, np.ndarray]:
        e = self.model.expected(self.candidates, snr_db)
        r = e[self.env.reward_column]
        c = np.stack([e[n] for n in self.constraints.constrained], axis=1) / self.limits
        return r, c

    def best_values(self, snr_db: float) -> tuple[float, ...]:
        """The oracle's action at SNR ``snr_db``, in measured units."""
        r, c = self._tables(snr_db)
        if self.mode == "cmdp":
            k = int(np.argmax(r - c @ self.lambdas))
        else:
            ok = (c <= 1.0).all(axis=1)
            k = int(np.argmax(np.where(ok, r, -np.inf))) if ok.any() else int(np.argmin(c.max(axis=1)))
        return tuple(self.candidates[k])

    def near_and_far(self, quantile: float = 0.05) -> dict[str, dict[str, float]]:
        """The oracle's action at the far (low-SNR) and near (high-SNR) end of the state distribution.

        Parameters
        ----------
        quantile : float
            The far end is this quantile of the sampled SNRs (dB), the near end ``1 - quantile``.

        Returns
        -------
        dict
            ``{"far": {"snr_db": .., <action name>: ..}, "near": {...}}``, actions in measured units (N, beta, ...).
        """
        states = self.states if self.mode == "cmdp" else sample_states(self.env)
        names = self.env.unwrapped.space.action_names
        out = {}
        for end, q in (("far", quantile), ("near", 1.0 - quantile)):
            snr_db = float(np.quantile(states, q))
            out[end] = {"snr_db": snr_db, **{n: float(v) for n, v in zip(names, self.best_values(snr_db),
                                                                          strict=True)}}
        return out

    def action(self, obs, state) -> np.ndarray:
        if state is None:
            raise ValueError("the oracle needs the channel state of the coming request")
        return self.env.unwrapped.space.encode_action(self.best_values(float(state.snr_db)))

    # ---------------------------------------------------------------- the dual
    def _state_tables(self) -> tuple[np.ndarray, np.ndarray]:
        # Quantiles stand in for the sampled states: same distribution, far fewer model evaluations.
        qs = np.quantile(self.states, (np.arange(256) + 0.5) / 256)
        rs, cs = zip(*(self._tables(s) for s in qs), strict=True)
        return np.stack(rs), np.stack(cs)  # (S, P), (S, P, m)

    def _policy_stats(self, lam: np.ndarray, r: np.ndarray, c: np.ndarray) -> tuple[float, np.ndarray, float]:
        score = r - np.einsum("spm,m->sp", c, lam)
        k = np.argmax(score, axis=1)
        rows = np.arange(len(k))
        exp_r = float(r[rows, k].mean())
        exp_c = c[rows, k].mean(axis=0)
        dual = float(score[rows, k].mean() + lam.sum())
        return exp_r, exp_c, dual

    def _bisect(self, lam: np.ndarray, i: int, r: np.ndarray, c: np.ndarray) -> float:
        """Smallest lambda_i (others fixed) at which the policy's expected cost i is within its limit."""
        def cost_at(x):
            trial = lam.copy()
            trial[i] = x
            return self._policy_stats(trial, r, c)[1][i]

        lo, hi = 0.0, max(float(lam[i]), 1e-3)
        while cost_at(hi) > 1.0 and hi < 1e6:
            lo, hi = hi, hi * 2.0
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            if cost_at(mid) > 1.0:
                lo = mid
            else:
                hi = mid
        return hi

    def _solve_dual(self) -> None:
        from scipy.optimize import minimize

        r, c = self._state_tables()
        m = c.shape[2]
        lam = np.zeros(m)
        if self._policy_stats(lam, r, c)[1].max() > 1.0:  # the unconstrained optimum is infeasible
            if m == 1:
                lam[0] = self._bisect(lam, 0, r, c)  # the dual is one-dimensional: exact by bisection
            else:
                res = minimize(lambda x: self._policy_stats(np.abs(x), r, c)[2], np.full(m, 0.5), method="Nelder-Mead",
                               options={"xatol": 1e-5, "fatol": 1e-7, "maxiter": 300 * m})
                lam = np.abs(res.x)
                # Make the deterministic policy feasible: raise each violated multiplier by bisection.
                for _ in range(4):
                    exp_c = self._policy_stats(lam, r, c)[1]
                    if (exp_c <= 1.0 + 1e-4).all():
                        break
                    for i in np.flatnonzero(exp_c > 1.0 + 1e-4):
                        lam[i] = self._bisect(lam, i, r, c)
        self.lambdas = lam
        exp_r, exp_c, _ = self._policy_stats(self.lambdas, r, c)
        self.expected_reward = exp_r
        self.expected_cost_ratio = dict(zip(self.constraints.constrained, map(float, exp_c), strict=True))
