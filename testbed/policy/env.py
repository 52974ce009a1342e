"""The MEG constrained MDP as a gymnasium environment, built from a measured campaign.

One step is one generation request. The state is the channel of the coming request (SNR, i.e. the channel gain to
noise, in dB) and the latency and energy of the previous request (the paper's state), optionally more channel
fields. The action ``a`` in [0, 1]^2 picks N and beta (and optional extra action columns in further dimensions).
The reward is the quality of the request (-log MSE against the reference by default, PSNR or MS-SSIM selectable).
The costs -- latency (s) and energy (J) of the request -- come back as a vector in ``info["cost"]`` in the order of
``env.cost_names`` (the FSRL / Safety-Gymnasium convention) and one by one as ``info["cost_latency_s"]``, ...
Outcomes are drawn from the measured conditional distributions (:mod:`megbed.testbed.policy.costmodel`).

An episode is ``episode_length`` (64) requests under a time-correlated channel process. The episode ends by
truncation only (the request stream goes on; the state holds no time index), so learners bootstrap through it.

Limits are per request (e.g. latency <= 3 s per request). The CMDP constraint they define is the standard episodic
one: E[sum over the episode of cost_i] <= T * limit_i, i.e. the expected mean cost per request stays within the
per-request limit. See :mod:`megbed.testbed.policy.limits` for how the learners turn this into their thresholds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from megbed.testbed.policy.costmodel import MeasuredCostModel
from megbed.testbed.policy.data import PolicyDatasetError

REWARDS = {"neg_log_mse": "q_neg_log_mse", "psnr_db": "q_psnr_db", "ms_ssim": "q_ms_ssim"}
COSTS = ("latency_s", "energy_j")
N_MAPPINGS = ("uniform", "paper")
OBS_EXTRAS = ("gain_db", "distance_m", "fading_gain_db")


class ChannelLike(Protocol):
    """What the environment needs of a channel process (``megbed.channel_emu.process.ChannelProcess`` fits)."""

    def reset(self, seed: int | None = None) -> Any:
        """Start a new sequence; returns the state of the first request (``.snr_db``, ``.gain_db``, ...)."""

    def step(self) -> Any:
        """Advance by one request; returns the new state."""


@dataclass(frozen=True)
class ChannelSample:
    """A channel state drawn from a campaign's measured deliveries (same fields as a ``ChannelState``)."""

    snr_db: float
    gain_db: float
    distance_m: float
    index: int
    path_loss_db: float = math.nan
    fading_gain_db: float = math.nan


class DatasetChannel:
    """Channel states drawn i.i.d. from the realised channel of a campaign's requests.

    This replays the measured states without time correlation (a campaign sweeps its grid in random order, so
    consecutive measured requests are not a channel trajectory). Use the channel emulator's process for a
    time-correlated sequence; this one matches the campaign's SNR distribution exactly.
    """

    def __init__(self, table, seed: int | None = None) -> None:
        snr = table["snr_db"].to_numpy(dtype=float) if "snr_db" in table.columns else np.array([])
        keep = np.isfinite(snr)
        if not keep.any():
            raise PolicyDatasetError("channel='dataset' needs the realised SNR of the measured requests (ch_snr_db)")
        self._snr = snr[keep]
        dist = table["distance_m"].to_numpy(dtype=float) if "distance_m" in table.columns else np.full(len(snr), np.nan)
        self._dist = dist[keep]
        self._rng = np.random.default_rng(seed)
        self._index = 0

    def _draw(self) -> ChannelSample:
        j = int(self._rng.integers(len(self._snr)))
        self._index += 1
        return ChannelSample(snr_db=float(self._snr[j]), gain_db=math.nan, distance_m=float(self._dist[j]),
                             index=self._index)

    def reset(self, seed: int | None = None) -> ChannelSample:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._index = -1
        return self._draw()

    def step(self) -> ChannelSample:
        return self._draw()


def channel_process(config: Any = None, seed: int | None = None) -> ChannelLike:
    """The channel emulator's seeded, time-correlated process (``megbed.channel_emu.process.ChannelProcess``; its
    dependencies are in the policy extra)."""
    from megbed.channel_emu.process import ChannelProcess

    return ChannelProcess(config, seed)


@dataclass
class RequestSpace:
    """The CMDP's conventions for actions and observations, shared by the dataset and the live environments.

    Attributes
    ----------
    action_names : list of str
        ``n_steps``, ``merge_ratio`` and any extra action columns.
    action_ranges : list of (float, float)
        Measured range of each action column.
    n_grid : list of int
        Measured N values.
    n_mapping, n_choices : str
        See :class:`MegEnv`.
    obs_names : list of str
        Observation fields: ``snr_db``, ``last_latency_s`` [, ``last_energy_j``] [, extras].
    obs_ref : dict of name -> (offset, scale)
        Observation ``(value - offset) / scale``.
    initial_last : dict
        ``last_latency_s`` / ``last_energy_j`` before the first request of an episode (the campaign's medians).
    """

    action_names: list[str]
    action_ranges: list[tuple[float, float]]
    n_grid: list[int]
    n_mapping: str
    n_choices: str
    obs_names: list[str]
    obs_ref: dict[str, tuple[float, float]]
    initial_last: dict[str, float]

    def __post_init__(self) -> None:
        if self.n_mapping not in N_MAPPINGS:
            raise ValueError(f"n_mapping must be one of {N_MAPPINGS}")
        if self.n_choices not in ("all", "grid"):
            raise ValueError("n_choices must be 'all' or 'grid'")

    @property
    def n_min(self) -> int:
        return int(round(self.action_ranges[0][0]))

    @property
    def n_max(self) -> int:
        return int(round(self.action_ranges[0][1]))

    def decode_action(self, action) -> tuple[float, ...]:
        """Env action in [0, 1]^d -> measured units ``(n_steps, merge_ratio, extras...)``."""
        a = np.clip(np.asarray(action, dtype=float).reshape(-1), 0.0, 1.0)
        if len(a) != len(self.action_names):
            raise ValueError(f"action has {len(a)} dimensions, the environment expects {len(self.action_names)}")
        span = self.n_max - self.n_min
        if self.n_mapping == "paper":
            n = self.n_min + int(span * a[0])
        else:
            n = self.n_min + min(int((span + 1) * a[0]), span)
        if self.n_choices == "grid":
            n = min(self.n_grid, key=lambda g: (abs(g - n), g))
        out = [float(n)]
        for (lo, hi), x in zip(self.action_ranges[1:], a[1:], strict=True):
            out.append(lo + float(x) * (hi - lo))
        return tuple(out)

    def encode_action(self, values: tuple[float, ...]) -> np.ndarray:
        """Measured units -> an env action that decodes to them (the centre of N's bin)."""
        n = int(round(values[0]))
        span = self.n_max - self.n_min
        if self.n_mapping == "paper":
            a0 = 1.0 if n >= self.n_max else (n - self.n_min + 0.5) / max(span, 1)
        else:
            a0 = (n - self.n_min + 0.5) / (span + 1)
        out = [min(max(a0, 0.0), 1.0)]
        for (lo, hi), x in zip(self.action_ranges[1:], values[1:], strict=True):
            out.append(0.0 if hi == lo else (float(x) - lo) / (hi - lo))
        return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)

    def observation(self, state, last: dict[str, float]) -> np.ndarray:
        """Normalised observation from a channel state and the previous request's outcomes."""
        vals = []
        for name in self.obs_names:
            if name.startswith("last_"):
                v = last[name]
            else:
                v = float(getattr(state, name, math.nan))
                if not math.isfinite(v):
                    v = self.obs_ref[name][0]
            off, scale = self.obs_ref[name]
            vals.append((v - off) / scale)
        return np.asarray(vals, dtype=np.float32)

    def to_json(self) -> dict:
        return {"action_names": list(self.action_names), "action_ranges": [list(r) for r in self.action_ranges],
                "n_grid": list(self.n_grid), "n_mapping": self.n_mapping, "n_choices": self.n_choices,
                "obs_names": list(self.obs_names), "obs_ref": {k: list(v) for k, v in self.obs_ref.items()},
                "initial_last": dict(self.initial_last)}

    @classmethod
    def from_json(cls, data: dict) -> RequestSpace:
        return cls(list(data["action_names"]), [tuple(r) for r in data["action_ranges"]],
                   [int(n) for n in data["n_grid"]], data["n_mapping"], data["n_choices"], list(data["obs_names"]),
                   {k: tuple(v) for k, v in data["obs_ref"].items()}, dict(data["initial_last"]))

    @classmethod
    def from_cost_model(cls, cost_model: MeasuredCostModel, n_mapping: str = "uniform", n_choices: str = "all",
                        obs_extras: tuple[str, ...] = ()) -> RequestSpace:
        bad = [x for x in obs_extras if x not in OBS_EXTRAS]
        if bad:
            raise ValueError(f"unknown observation extras {bad}; known: {OBS_EXTRAS}")
        t = cost_model.table
        lo, hi = cost_model.snr_range_db
        latency = float(np.median(t["latency_s"]))
        obs_ref = {"snr_db": (0.5 * (lo + hi) if math.isfinite(lo) else 0.0, 10.0), "last_latency_s": (0.0, latency)}
        obs_names = ["snr_db", "last_latency_s"]
        initial = {"last_latency_s": latency, "last_energy_j": 0.0}
        if cost_model.has_energy:
            energy = float(np.median(t["energy_j"]))
            obs_ref["last_energy_j"] = (0.0, energy)
            obs_names.append("last_energy_j")
            initial["last_energy_j"] = energy
        for x in obs_extras:
            obs_ref[x] = (-100.0 if x == "gain_db" else 0.0, 100.0 if x == "distance_m" else 10.0)
            obs_names.append(x)
        return cls(
            action_names=[ax.name for ax in cost_model.action_axes],
            action_ranges=[(float(ax.values[0]), float(ax.values[-1])) for ax in cost_model.action_axes],
            n_grid=[int(round(v)) for v in cost_model.action_axes[0].values], n_mapping=n_mapping,
            n_choices=n_choices, obs_names=obs_names, obs_ref=obs_ref, initial_last=initial)


class MegEnv(gym.Env):
    """The MEG CMDP on a measured cost model (see the module docstring).

    Parameters
    ----------
    cost_model : MeasuredCostModel
        Conditional outcome distributions of the campaign.
    channel : ChannelLike
        The channel process (``reset(seed)`` / ``step()`` returning states with ``snr_db``).
    episode_length : int
        Requests per episode (paper: 64).
    reward : {"neg_log_mse", "psnr_db", "ms_ssim"}
        Quality used as the reward.
    costs : tuple of str
        Cost vector, a subset of ``("latency_s", "energy_j")`` in the order given.
    n_mapping : {"uniform", "paper"}
        ``paper``: N = N_min + int((N_max - N_min) * a0) (N = int(8 a0) + 4 for 4..12: N_max only at a0 = 1);
        ``uniform``: equal-width bins of a0 for every N in N_min..N_max (default; a deterministic policy with a
        tanh-bounded mean can reach N_max).
    n_choices : {"all", "grid"}
        ``all``: every integer N in range (costs interpolated between measured N); ``grid``: measured N only.
    obs_extras : tuple of str
        More channel fields in the observation (``gain_db``, ``distance_m``, ``fading_gain_db``).
    """

    metadata = {"render_modes": []}

    def __init__(self, cost_model: MeasuredCostModel, channel: ChannelLike, *, episode_length: int = 64,
                 reward: str = "neg_log_mse", costs: tuple[str, ...] = COSTS, n_mapping: str = "uniform",
                 n_choices: str = "all", obs_extras: tuple[str, ...] = ()) -> None:
        super().__init__()
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {tuple(REWARDS)}, not {reward!r}")
        if REWARDS[reward] not in cost_model.outcomes:
            raise PolicyDatasetError(f"reward {reward!r} needs column {REWARDS[reward]}, which the dataset lacks")
        bad = [c for c in costs if c not in COSTS]
        if bad or not costs:
            raise ValueError(f"costs must be a non-empty subset of {COSTS}, got {costs}")
        if "energy_j" in costs and not cost_model.has_energy:
            raise PolicyDatasetError(
                "an energy cost needs valid energy figures, and this dataset has none (energy_valid false or missing "
                "energy_mj_total): drop the energy limit")
        if episode_length < 1:
            raise ValueError("episode_length must be >= 1")
        self.cost_model = cost_model
        self.channel = channel
        self.episode_length = int(episode_length)
        self.reward_name = reward
        self.reward_column = REWARDS[reward]
        self.cost_names = tuple(costs)
        self.obs_extras = tuple(obs_extras)
        self.space = RequestSpace.from_cost_model(cost_model, n_mapping, n_choices, self.obs_extras)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(len(self.space.obs_names),),
                                                dtype=np.float32)
        self.action_space = gym.spaces.Box(0.0, 1.0, shape=(len(self.space.action_names),), dtype=np.float32)
        self._t = 0
        self._state = None
        self._last = dict(self.space.initial_last)

    # ---------------------------------------------------------------- mapping (see RequestSpace)
    n_min = property(lambda self: self.space.n_min)
    n_max = property(lambda self: self.space.n_max)
    n_grid = property(lambda self: self.space.n_grid)
    n_mapping = property(lambda self: self.space.n_mapping)
    n_choices = property(lambda self: self.space.n_choices)
    action_ranges = property(lambda self: self.space.action_ranges)
    action_names = property(lambda self: self.space.action_names)
    obs_names = property(lambda self: self.space.obs_names)

    def decode_action(self, action) -> tuple[float, ...]:
        """Env action in [0, 1]^d -> measured units ``(n_steps, merge_ratio, extras...)``."""
        return self.space.decode_action(action)

    def encode_action(self, values: tuple[float, ...]) -> np.ndarray:
        """Measured units -> an env action that decodes to them (the centre of N's bin)."""
        return self.space.encode_action(values)

    # ---------------------------------------------------------------- gym API
    @property
    def channel_state(self):
        """The channel state of the coming request (privileged: for the oracle and for logging)."""
        return self._state

    def _obs(self) -> np.ndarray:
        return self.space.observation(self._state, self._last)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        channel_seed = int(self.np_random.integers(2**31 - 1))
        self._state = self.channel.reset(seed=channel_seed)
        self._t = 0
        self._last = dict(self.space.initial_last)
        return self._obs(), {"snr_db": float(self._state.snr_db)}

    def step(self, action):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        values = self.decode_action(action)
        snr_db = float(self._state.snr_db)
        out = self.cost_model.sample(values, snr_db, self.np_random)
        reward = out[self.reward_column]
        cost = np.array([out[c] for c in self.cost_names], dtype=np.float64)
        info = {
            "cost": cost,
            **{f"cost_{c}": float(out[c]) for c in self.cost_names},
            "snr_db": snr_db,
            "gain_db": float(getattr(self._state, "gain_db", math.nan)),
            "latency_s": out["latency_s"],
            "airtime_s": out["airtime_s"],
            "energy_j": out.get("energy_j", math.nan),
            **{name: v for name, v in zip(self.action_names, values, strict=True)},
            **{c: out[c] for c in self.cost_model.quality_columns},
        }
        info = {k: v for k, v in info.items() if k == "cost" or math.isfinite(v)}  # unknown fields are left out
        self._last["last_latency_s"] = out["latency_s"]
        if self.cost_model.has_energy:
            self._last["last_energy_j"] = out["energy_j"]
        self._t += 1
        self._state = self.channel.step()
        truncated = self._t >= self.episode_length
        return self._obs(), float(reward), False, truncated, info

    # ---------------------------------------------------------------- description
    def spec_dict(self) -> dict:
        """What rebuilds this environment (stored with trained policies)."""
        return {"episode_length": self.episode_length, "reward": self.reward_name, "costs": list(self.cost_names),
                "obs_extras": list(self.obs_extras), "space": self.space.to_json(),
                "cost_model": self.cost_model.describe()}


def make_meg_env(run_dir: str | Path | None = None, *, cost_model: MeasuredCostModel | None = None,
                 channel: str | ChannelLike = "process", channel_config: Any = None, seed: int | None = None,
                 scheme: str = "meg", energy_scope: str = "total", fixed: dict | None = None,
                 extra_action_columns: tuple[str, ...] = (), airtime: str = "auto", **env_kwargs) -> MegEnv:
    """Build the MEG environment from a campaign run directory.

    Parameters
    ----------
    run_dir : path
        Campaign run directory (``dataset/part-*.parquet``); or pass a fitted ``cost_model``.
    channel : "process" | "dataset" | ChannelLike
        ``process``: the channel emulator's time-correlated ``ChannelProcess(channel_config, seed)``;
        ``dataset``: i.i.d. draws of the campaign's realised channel states; or any object with ``reset``/``step``.
    seed : int, optional
        Seed of the channel process when one is built here.
    scheme, energy_scope, fixed, extra_action_columns, airtime
        Passed to :meth:`MeasuredCostModel.from_run_dir`.
    **env_kwargs
        Passed to :class:`MegEnv` (``episode_length``, ``reward``, ``costs``, ``n_mapping``, ...).
    """
    if cost_model is None:
        if run_dir is None:
            raise ValueError("pass run_dir or cost_model")
        cost_model = MeasuredCostModel.from_run_dir(run_dir, scheme=scheme, energy_scope=energy_scope, fixed=fixed,
                                                    extra_action_columns=extra_action_columns, airtime=airtime)
    if isinstance(channel, str):
        if channel == "dataset":
            channel = DatasetChannel(cost_model.table, seed=seed)
        elif channel == "process":
            channel = channel_process(channel_config, seed)
        else:
            raise ValueError(f"channel must be 'process', 'dataset' or a channel object, not {channel!r}")
    if "costs" not in env_kwargs and not cost_model.has_energy:
        env_kwargs["costs"] = ("latency_s",)
    return MegEnv(cost_model, channel, **env_kwargs)
