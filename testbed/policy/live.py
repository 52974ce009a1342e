"""Evaluating a policy on the running testbed instead of the measured cost model.

:class:`LiveTestbed` is the small interface the evaluation loop needs from the testbed: run one generation request
with a given (N, beta) under a given channel state and report what was measured. The binding to the orchestrator
(the nodes issue) implements it; ``megbed evaluate POLICY --env live --testbed module:factory`` loads such a binding.

:class:`LiveEnv` wraps a :class:`LiveTestbed` and a channel process into the same gymnasium CMDP as
:class:`megbed.testbed.policy.env.MegEnv` -- same observation and action conventions (:class:`RequestSpace`, taken from
the policy's training environment), same ``info["cost"]`` -- so a trained policy, a fixed scheme or the oracle runs
unchanged, and :func:`megbed.testbed.policy.evaluate.run_episodes` records the real outcomes.
"""

from __future__ import annotations

import importlib
import json
import math
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from megbed.testbed.policy.env import COSTS, REWARDS, ChannelLike, RequestSpace


@runtime_checkable
class LiveTestbed(Protocol):
    """One request on the live testbed."""

    def run_request(self, n_steps: int, merge_ratio: float, state: Any) -> dict:
        """Run one generation request with N = ``n_steps`` and beta = ``merge_ratio`` while the channel emulator
        applies ``state`` (a ``ChannelState``: ``snr_db``, ``gain_db``, ``distance_m``, ...).

        Returns
        -------
        dict
            At least ``latency_s`` (end to end, s) and the quality used as reward (``q_neg_log_mse``, or
            ``q_psnr_db`` / ``q_ms_ssim``); ``energy_j`` (J) when an energy limit is evaluated; optionally the
            realised channel (``snr_db``, ...), ``request_id`` and anything else worth keeping (scalars are recorded).
        """


class LiveEnv(gym.Env):
    """The MEG CMDP on the live testbed (see the module docstring).

    Parameters
    ----------
    testbed : LiveTestbed
        Runs the requests.
    channel : ChannelLike
        The channel process whose states the testbed applies.
    space : RequestSpace
        Action / observation conventions of the policy's training environment.
    episode_length : int
    reward : str
        ``neg_log_mse`` | ``psnr_db`` | ``ms_ssim``.
    costs : tuple of str
        Subset of ``("latency_s", "energy_j")``.
    """

    metadata = {"render_modes": []}

    def __init__(self, testbed: LiveTestbed, channel: ChannelLike, space: RequestSpace, *, episode_length: int = 64,
                 reward: str = "neg_log_mse", costs: tuple[str, ...] = COSTS) -> None:
        super().__init__()
        if not isinstance(testbed, LiveTestbed):
            raise TypeError(f"{type(testbed).__name__} has no run_request(n_steps, merge_ratio, state)")
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {tuple(REWARDS)}")
        self.testbed, self.channel, self.space = testbed, channel, space
        self.episode_length = int(episode_length)
        self.reward_name, self.reward_column = reward, REWARDS[reward]
        self.cost_names = tuple(costs)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(len(space.obs_names),), dtype=np.float32)
        self.action_space = gym.spaces.Box(0.0, 1.0, shape=(len(space.action_names),), dtype=np.float32)
        self._state = None
        self._t = 0
        self._last = dict(space.initial_last)

    @property
    def channel_state(self):
        return self._state

    def encode_action(self, values):
        return self.space.encode_action(values)

    def decode_action(self, action):
        return self.space.decode_action(action)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._state = self.channel.reset(seed=int(self.np_random.integers(2**31 - 1)))
        self._t = 0
        self._last = dict(self.space.initial_last)
        return self.space.observation(self._state, self._last), {"snr_db": float(self._state.snr_db)}

    def step(self, action):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        values = self.space.decode_action(action)
        n_steps, beta = int(round(values[0])), float(values[1])
        outcome = dict(self.testbed.run_request(n_steps, beta, self._state))
        missing = [k for k in ("latency_s", self.reward_column, *self.cost_names) if k not in outcome]
        if missing:
            raise ValueError(f"the live testbed's outcome lacks {missing} (got {sorted(outcome)})")
        cost = np.array([float(outcome[c]) for c in self.cost_names])
        info = {"cost": cost, **{f"cost_{c}": float(outcome[c]) for c in self.cost_names},
                "snr_db": float(outcome.get("snr_db", self._state.snr_db)), "n_steps": float(n_steps),
                "merge_ratio": beta}
        for k, v in outcome.items():
            if k not in info and isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
                info[k] = float(v)
        self._last["last_latency_s"] = float(outcome["latency_s"])
        if "last_energy_j" in self.space.obs_names:
            e = float(outcome.get("energy_j", math.nan))
            self._last["last_energy_j"] = e if math.isfinite(e) else self.space.initial_last["last_energy_j"]
        self._t += 1
        self._state = self.channel.step()
        obs = self.space.observation(self._state, self._last)
        return obs, float(outcome[self.reward_column]), False, self._t >= self.episode_length, info


def load_testbed(entry: str, kwargs: dict | str | None = None) -> LiveTestbed:
    """Instantiate a :class:`LiveTestbed` from ``module:factory`` (a class or a function) with ``kwargs``."""
    if ":" not in entry:
        raise ValueError(f"testbed binding must be 'module:factory', got {entry!r}")
    module, name = entry.split(":", 1)
    factory = getattr(importlib.import_module(module), name)
    if isinstance(kwargs, str):
        kwargs = json.loads(kwargs) if kwargs.strip() else {}
    testbed = factory(**(kwargs or {}))
    if not isinstance(testbed, LiveTestbed):
        raise TypeError(f"{entry} returned {type(testbed).__name__}, which has no run_request(n_steps, merge_ratio, state)")
    return testbed
