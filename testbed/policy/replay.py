"""A circular replay buffer with n-step returns for several signals (reward and each cost) at once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class NStepBatch:
    """What an n-step target needs, for a batch of B transitions and S signals (reward first, then costs).

    Attributes
    ----------
    obs, act : ndarray, shapes (B, ds), (B, da)
        The transitions' state and (raw learner) action.
    partial : ndarray, shape (B, S)
        Sum_{k < n'} gamma^k x_{t+k}: the discounted signals up to the n'-th step (n' <= n; it stops early at an
        episode end).
    discount : ndarray, shape (B,)
        gamma^{n'}: the weight of the bootstrap.
    boot_obs : ndarray, shape (B, ds)
        The state to bootstrap from (s_{t+n'}).
    boot_mask : ndarray, shape (B,)
        0 where the episode terminated within the n' steps (no bootstrap), 1 otherwise (truncation bootstraps).
    """

    obs: np.ndarray
    act: np.ndarray
    partial: np.ndarray
    discount: np.ndarray
    boot_obs: np.ndarray
    boot_mask: np.ndarray


class ReplayBuffer:
    """Transitions ``(s, a, [r, c_1..c_m], s', terminated, done)`` in insertion order, overwritten when full."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, n_signals: int) -> None:
        self.capacity = int(capacity)
        self.obs = np.zeros((self.capacity, obs_dim), dtype=np.float32)
        self.act = np.zeros((self.capacity, act_dim), dtype=np.float32)
        self.sig = np.zeros((self.capacity, n_signals), dtype=np.float32)
        self.obs_next = np.zeros((self.capacity, obs_dim), dtype=np.float32)
        self.terminated = np.zeros(self.capacity, dtype=bool)
        self.done = np.zeros(self.capacity, dtype=bool)
        self.ptr = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs, act, sig, obs_next, terminated, done) -> None:
        """Append a block of transitions (first axis = time, in order)."""
        n = len(obs)
        for start in range(0, n, self.capacity):
            stop = min(start + self.capacity, n)
            idx = (self.ptr + np.arange(stop - start)) % self.capacity
            self.obs[idx] = obs[start:stop]
            self.act[idx] = act[start:stop]
            self.sig[idx] = sig[start:stop]
            self.obs_next[idx] = obs_next[start:stop]
            self.terminated[idx] = terminated[start:stop]
            self.done[idx] = done[start:stop]
            self.ptr = int((self.ptr + stop - start) % self.capacity)
            self.size = int(min(self.size + stop - start, self.capacity))

    def sample_indices(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        if self.size == 0:
            raise ValueError("the replay buffer is empty")
        return rng.integers(0, self.size, size=batch_size)

    def nstep(self, idx: np.ndarray, n: int, gamma: float) -> NStepBatch:
        """n-step pieces for transitions ``idx`` (see :class:`NStepBatch`).

        Accumulation stops after a transition with ``done`` (episode end, terminated or truncated) and at the
        newest transition in the buffer; the bootstrap state is the ``obs_next`` of the last transition used.
        """
        idx = np.asarray(idx)
        newest = (self.ptr - 1) % self.capacity
        partial = np.zeros((len(idx), self.sig.shape[1]), dtype=np.float64)
        discount = np.ones(len(idx), dtype=np.float64)
        alive = np.ones(len(idx), dtype=bool)
        last = idx.copy()
        for k in range(n):
            j = (idx + k) % self.capacity
            partial += (alive * discount)[:, None] * self.sig[j]
            last = np.where(alive, j, last)
            discount = np.where(alive, discount * gamma, discount)
            alive = alive & ~self.done[j] & (j != newest)
        return NStepBatch(
            obs=self.obs[idx], act=self.act[idx], partial=partial, discount=discount,
            boot_obs=self.obs_next[last], boot_mask=(~self.terminated[last]).astype(np.float64),
        )

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The stored transitions (for checkpoints)."""
        n = self.size
        return {"obs": self.obs[:n], "act": self.act[:n], "sig": self.sig[:n], "obs_next": self.obs_next[:n],
                "terminated": self.terminated[:n].astype(np.uint8), "done": self.done[:n].astype(np.uint8)}

    def load_arrays(self, arrays: dict[str, np.ndarray], ptr: int) -> None:
        n = len(arrays["obs"])
        self.obs[:n], self.act[:n], self.sig[:n] = arrays["obs"], arrays["act"], arrays["sig"]
        self.obs_next[:n] = arrays["obs_next"]
        self.terminated[:n] = arrays["terminated"].astype(bool)
        self.done[:n] = arrays["done"].astype(bool)
        self.size, self.ptr = n, int(ptr)
