"""PPO-Lagrangian with a PID-controlled multiplier per constraint (Stooke et al., ICML 2020), in PyTorch.

Per iteration (``episodes_per_collect`` complete episodes): GAE advantages for the reward and for each cost (costs in
units of their per-request limit), the multipliers updated once by their PID controllers on the episodes' mean
episodic cost against the episodic limit ``T`` (same units), then ``repeat`` epochs of clipped-surrogate minibatch
updates on the combined advantage ``(A_r - sum_i lambda_i A_ci) / (1 + sum_i lambda_i)``, stopping early once the
approximate KL to the collecting policy exceeds ``target_kl``. Defaults: FSRL's PPO-Lagrangian, with the paper's PID
gains (0.05, 0.0005, 0.1) and the discount of the CVPO runs.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from megbed.megwire.validation import Count, Positive
from megbed.testbed.policy.learner import (
    Gains,
    HiddenSizes,
    Learner,
    LearnerConfig,
    Rollout,
)
from megbed.testbed.policy.nets import GaussianActor, VCritic, normal_log_prob


class PPOLagConfig(LearnerConfig):
    """PPO-Lagrangian hyperparameters.

    Attributes
    ----------
    gamma, gae_lambda : float
        Discount and GAE parameter.
    lr : float
        Adam learning rate of actor and critics (one optimiser).
    clip : float
        PPO ratio clip.
    target_kl : float
        Early stop of the epochs once the mean approximate KL exceeds it.
    vf_coef, max_grad_norm : float
        Value-loss weight; gradient norm clip (applied to the actor and to the critics separately).
    repeat, batch_size : int
        Epochs per iteration and minibatch size.
    episodes_per_collect : int
    pid : tuple of float
        (K_P, K_I, K_D) of the multiplier controllers (paper: 0.05, 0.0005, 0.1).
    rescaling : bool
        Divide the combined advantage by 1 + sum(lambda).
    norm_adv : bool
        Normalise the combined advantage per minibatch.
    hidden : tuple of int
    init_log_std : float
        Initial log-std of the state-independent Gaussian.
    squash : bool
        Squashed Gaussian (tanh of the sample; the ratio of pre-squash densities is the ratio of the policies) or
        FSRL's tanh-bounded mean with clipping.
    """

    gamma: Annotated[float, Field(ge=0.0, le=1.0)] = 0.97
    gae_lambda: Annotated[float, Field(ge=0.0, le=1.0)] = 0.95
    lr: Positive = 5e-4
    clip: Positive = 0.2
    target_kl: Positive = 0.02
    vf_coef: Annotated[float, Field(ge=0.0)] = 0.25
    max_grad_norm: Positive = 0.5
    repeat: Count = 4
    batch_size: Count = 256
    episodes_per_collect: Count = 20
    pid: Gains = (0.05, 0.0005, 0.1)
    rescaling: bool = True
    norm_adv: bool = True
    hidden: HiddenSizes = (128, 128)
    init_log_std: float = -0.5
    squash: bool = True


class PIDLagrangian:
    """A PID controller on the constraint error, projected onto lambda >= 0 (Stooke et al. 2020).

    ``error = value - threshold``; ``integral = max(0, integral + error)``; ``derivative = max(0, error - previous)``;
    ``lambda = max(0, K_P error + K_I integral + K_D derivative)``.
    """

    def __init__(self, gains: tuple[float, float, float] = (0.05, 0.0005, 0.1)) -> None:
        self.kp, self.ki, self.kd = (float(g) for g in gains)
        self.integral = 0.0
        self.previous = 0.0
        self.value = 0.0

    def step(self, value: float, threshold: float) -> float:
        error = float(value) - float(threshold)
        derivative = max(0.0, error - self.previous)
        self.integral = max(0.0, self.integral + error)
        self.previous = error
        self.value = max(0.0, self.kp * error + self.ki * self.integral + self.kd * derivative)
        return self.value

    def state(self) -> dict:
        return {"integral": self.integral, "previous": self.previous, "value": self.value}

    def load(self, state: dict) -> None:
        self.integral, self.previous, self.value = state["integral"], state["previous"], state["value"]


def gae(signal: np.ndarray, values: np.ndarray, next_values: np.ndarray, terminated: np.ndarray, done: np.ndarray,
        gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimates and returns for one signal over time-ordered transitions.

    ``next_values`` is V(s_{t+1}) (bootstrapped at truncation, zeroed at termination by ``terminated``); the
    recursion restarts at every episode end (``done``).
    """
    adv = np.zeros_like(signal, dtype=np.float64)
    last = 0.0
    for t in range(len(signal) - 1, -1, -1):
        delta = signal[t] + gamma * next_values[t] * (1.0 - terminated[t]) - values[t]
        last = delta + gamma * lam * (1.0 - done[t]) * last
        adv[t] = last
    return adv, adv + values


class PPOLagrangian(Learner):
    """PPO-Lagrangian on a continuous Box action space with any number of constrained costs."""

    algo = "ppo-lag"
    config_type = PPOLagConfig

    def build(self) -> None:
        c, obs_dim, act_dim = self.cfg, self.obs_dim, self.act_dim
        self.actor = GaussianActor(obs_dim, act_dim, c.hidden, conditioned_sigma=False, init_log_std=c.init_log_std,
                                   squash=c.squash)
        self.critics = torch.nn.ModuleList([VCritic(obs_dim, c.hidden) for _ in range(1 + self.n_costs)])
        self.optim = torch.optim.Adam(list(self.actor.parameters()) + list(self.critics.parameters()), lr=c.lr)
        self.pids = [PIDLagrangian(c.pid) for _ in range(self.n_costs)]
        self.iterations = 0

    def learn(self, rollout: Rollout) -> dict[str, float]:
        c = self.cfg
        t_ep = self.constraints.episode_length
        obs = torch.as_tensor(rollout.obs)
        act = torch.as_tensor(rollout.act)
        signals = np.concatenate([rollout.reward[:, None], rollout.cost], axis=1).astype(np.float64)
        with torch.no_grad():
            values = torch.stack([v(obs) for v in self.critics], 1).numpy().astype(np.float64)
            next_values = torch.stack([v(torch.as_tensor(rollout.obs_next)) for v in self.critics], 1).numpy()
        term = rollout.terminated.astype(np.float64)
        done = rollout.done.astype(np.float64)
        advs, rets = zip(*(gae(signals[:, i], values[:, i], next_values[:, i], term, done, c.gamma, c.gae_lambda)
                           for i in range(signals.shape[1])), strict=True)
        adv = np.stack(advs, 1)
        ret = torch.as_tensor(np.stack(rets, 1), dtype=torch.float32)

        # Multipliers: the mean episodic (normalised) cost against the episodic limit T.
        ends = np.flatnonzero(rollout.done)
        starts = np.concatenate([[0], ends[:-1] + 1])
        ep_costs = np.array([rollout.cost[s:e + 1].sum(0) for s, e in zip(starts, ends, strict=True)])
        lambdas = np.array([pid.step(ep_costs[:, i].mean(), t_ep) for i, pid in enumerate(self.pids)])
        combined = adv[:, 0] - (adv[:, 1:] * lambdas).sum(1)
        if c.rescaling:
            combined = combined / (1.0 + lambdas.sum())
        combined_t = torch.as_tensor(combined, dtype=torch.float32)
        logp_old = torch.as_tensor(rollout.logp)

        n = len(obs)
        stats = {"policy_loss": 0.0, "value_loss": 0.0, "approx_kl": 0.0, "entropy": 0.0, "epochs": 0.0}
        batches = 0
        stop = False
        for _ in range(c.repeat):
            order = torch.as_tensor(self.np_rng.permutation(n))
            kls = []
            for start in range(0, n, c.batch_size):
                mb = order[start:start + c.batch_size]
                mu, std = self.actor(obs[mb])
                logp = normal_log_prob(act[mb], mu, std)
                ratio = (logp - logp_old[mb]).exp()
                a = combined_t[mb]
                if c.norm_adv and len(mb) > 1:
                    a = (a - a.mean()) / (a.std() + 1e-8)
                pl = -torch.min(ratio * a, ratio.clamp(1 - c.clip, 1 + c.clip) * a).mean()
                v_pred = torch.stack([v(obs[mb]) for v in self.critics], 1)
                vl = (v_pred - ret[mb]).pow(2).mean(0).sum()
                loss = pl + c.vf_coef * vl
                self.optim.zero_grad()
                loss.backward()
                # Clipped separately: one global norm lets the value gradients (returns ~ r / (1 - gamma)) shrink
                # the policy's step to nothing.
                torch.nn.utils.clip_grad_norm_(self.actor.parameters(), c.max_grad_norm)
                torch.nn.utils.clip_grad_norm_(self.critics.parameters(), c.max_grad_norm)
                self.optim.step()
                with torch.no_grad():
                    kl = (logp_old[mb] - logp).mean().item()
                kls.append(kl)
                stats["policy_loss"] += pl.item()
                stats["value_loss"] += vl.item()
                stats["approx_kl"] += kl
                stats["entropy"] += (std.log() + 0.5 * np.log(2 * np.pi * np.e)).sum(-1).mean().item()
                batches += 1
            stats["epochs"] += 1
            if np.mean(kls) > c.target_kl:
                stop = True
            if stop:
                break
        for k in ("policy_loss", "value_loss", "approx_kl", "entropy"):
            stats[k] /= max(batches, 1)
        self.iterations += 1
        stats["policy_std"] = self.actor.log_std.detach().exp().mean().item()
        return stats

    # ---------------------------------------------------------------- state
    def multipliers(self) -> dict[str, float]:
        return {f"lambda_{name}": pid.value for name, pid in zip(self.constraints.constrained, self.pids, strict=True)}

    def _networks(self) -> tuple[dict[str, torch.nn.Module], dict[str, torch.optim.Optimizer]]:
        return {"actor": self.actor, "critics": self.critics}, {"optim": self.optim}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**self._network_tensors(), **self._rng_state()[0]}

    def state_json(self) -> dict:
        return {"algo": self.algo, "config": self.cfg.to_dict(), "iterations": self.iterations,
                "pids": [p.state() for p in self.pids], **self._optimizer_json(), **self._rng_state()[1]}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self._load_networks(tensors, meta)
        for pid, st in zip(self.pids, meta["pids"], strict=True):
            pid.load(st)
        self.iterations = int(meta["iterations"])
        self._load_rng(tensors, meta)
