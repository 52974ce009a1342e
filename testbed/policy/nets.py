"""Networks shared by the learners: MLPs, a Gaussian actor, Q and V critics.

The actor is a diagonal Gaussian over a raw action u. By default it is *squashed*: the executed action is tanh(u)
in (-1, 1)^d (SAC / MPO practice). FSRL's alternative (``squash=False``) bounds the mean with tanh and clips the
sampled action to [-1, 1]. Either way :meth:`GaussianActor.to_unit` gives the executed action in [-1, 1]^d and
:class:`ActionScaler` maps it onto the environment's Box.

Why squashed by default: when the best action lies on the boundary of the box (beta = 0, N = N_max in a good
channel), every clipped sample beyond the boundary is the same action, the critics' Q is flat there, the weighted
likelihood favours the far samples and the std grows until it hits its cap; with a tanh-bounded mean the executed
actions then scatter over the corners of the box (seen on the MEG environment: std at e^2 within three iterations).
Squashed, a boundary optimum drives the mean of u outwards and the executed action converges to the boundary.

Optionally (``mu_max``; CVPO's MEG preset uses 3) the mean of u is itself bounded, softly, to ``|mu| < mu_max``
(``mu_max * tanh(f / mu_max)``; tanh(3) = 0.995, so the mean still reaches the boundary of the box to within
0.5 %). Unbounded, the mean ran off to |u| ~ 8 on the real MEG dataset: there every sample executes the same corner
action, the critics' Q values of the K samples are equal, the E-step weights are uniform and the policy can never
leave the corner when the multipliers later ask it to. A bounded mean needs a bounded std as well (``log_std_max``):
samples beyond a boundary optimum all execute the boundary action and the weighted likelihood widens the std.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of ``sizes`` with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def orthogonal_init(module: nn.Module, gain: float = 1.0) -> None:
    """Orthogonal weights and zero biases on every Linear (as FSRL initialises its actor-critic)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight, gain=gain)
            nn.init.zeros_(m.bias)


class GaussianActor(nn.Module):
    """Diagonal Gaussian policy over a raw action u; executed action tanh(u) (squashed) or clip(u) (FSRL).

    Parameters
    ----------
    obs_dim, act_dim : int
        Observation and action sizes.
    hidden : sequence of int
        Hidden layer sizes (paper: 128 x 128).
    conditioned_sigma : bool
        Std from a head on the trunk (CVPO default) or one learned log-std per dimension (PPO).
    init_log_std : float
        Initial log-std for the free-parameter variant.
    squash : bool
        True: executed action tanh(u). False: mean tanh(f(s)), executed action clip(u, -1, 1).
    log_std_max : float
        Upper clamp of the log-std.
    mu_max : float, optional
        Squashed only: bound the mean of u softly to ``|mu| < mu_max`` (None: unbounded, as FSRL / SAC).
    log_std_min : float
        Lower clamp of the log-std (default ``LOG_STD_MIN``).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (128, 128), conditioned_sigma: bool = True,
                 init_log_std: float = -0.5, squash: bool = True, log_std_max: float = LOG_STD_MAX,
                 mu_max: float | None = None, log_std_min: float = LOG_STD_MIN) -> None:
        super().__init__()
        self.squash = bool(squash)
        self.log_std_max = float(log_std_max)
        self.log_std_min = float(log_std_min)
        self.mu_max = None if mu_max is None else float(mu_max)
        self.trunk = nn.Sequential(mlp([obs_dim, *hidden]), nn.ReLU())
        self.mu = nn.Linear(hidden[-1], act_dim)
        self.conditioned_sigma = conditioned_sigma
        if conditioned_sigma:
            self.sigma = nn.Linear(hidden[-1], act_dim)
        else:
            self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))
        orthogonal_init(self)
        if not conditioned_sigma:
            nn.init.constant_(self.log_std, float(init_log_std))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std, each of shape ``(..., act_dim)``."""
        mu, std, _, _ = self.forward_with_excess(obs)
        return mu, std

    def forward_with_excess(self, obs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Mean, std, and how far each head's raw output lies beyond its bound, all of shape ``(..., act_dim)``.

        The mean head's excess is ``relu(|f| - mu_max)`` (f: its output before the soft bound; 0 without
        ``mu_max``), the conditioned log-std head's distance outside [log_std_min, log_std_max] (of its output
        before the clamp; 0 for a free log-std). Neither bound passes a gradient back once crossed (tanh(f / mu_max)
        saturates, the clamp is flat), so nothing else stops the raw outputs from running off; CVPO can penalise
        the excess (``mu_penalty``, ``std_penalty`` in :mod:`megbed.testbed.policy.cvpo`).
        """
        h = self.trunk(obs)
        f = self.mu(h)
        mu_excess = torch.zeros_like(f)
        if not self.squash:
            mu = torch.tanh(f)
        elif self.mu_max is not None:
            mu = self.mu_max * torch.tanh(f / self.mu_max)
            mu_excess = torch.relu(f.abs() - self.mu_max)
        else:
            mu = f
        if self.conditioned_sigma:
            raw = self.sigma(h)
            log_std = raw.clamp(self.log_std_min, self.log_std_max)
            std_excess = torch.relu(raw - self.log_std_max) + torch.relu(self.log_std_min - raw)
        else:
            log_std = self.log_std.clamp(self.log_std_min, self.log_std_max).expand_as(mu)
            std_excess = torch.zeros_like(f)
        return mu, log_std.exp(), mu_excess, std_excess

    def to_unit(self, u: torch.Tensor) -> torch.Tensor:
        """The executed action in [-1, 1]^d for raw actions ``u``."""
        return torch.tanh(u) if self.squash else u.clamp(-1.0, 1.0)


def normal_log_prob(x: torch.Tensor, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Log density of a diagonal Gaussian, summed over the last dimension."""
    var = std.pow(2)
    return (-0.5 * (x - mu).pow(2) / var - std.log() - 0.5 * np.log(2.0 * np.pi)).sum(-1)


class QCritic(nn.Module):
    """Q(s, a): an MLP on the concatenated observation and action."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (128, 128)) -> None:
        super().__init__()
        self.net = mlp([obs_dim + act_dim, *hidden, 1])
        orthogonal_init(self)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, act], dim=-1)).squeeze(-1)


class VCritic(nn.Module):
    """V(s): an MLP on the observation."""

    def __init__(self, obs_dim: int, hidden: Sequence[int] = (128, 128)) -> None:
        super().__init__()
        self.net = mlp([obs_dim, *hidden, 1])
        orthogonal_init(self)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


class ActionScaler:
    """Map learner actions in [-1, 1]^d onto a Box ``[low, high]`` (clip, then scale)."""

    def __init__(self, low, high) -> None:
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        if not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high))):
            raise ValueError("the action space must be a bounded Box")

    def to_env(self, raw: np.ndarray) -> np.ndarray:
        u = np.clip(np.asarray(raw, dtype=np.float64), -1.0, 1.0)
        return (self.low + (u + 1.0) * 0.5 * (self.high - self.low)).astype(np.float32)

    def from_env(self, action: np.ndarray) -> np.ndarray:
        span = np.where(self.high > self.low, self.high - self.low, 1.0)
        return (2.0 * (np.asarray(action, dtype=np.float64) - self.low) / span - 1.0).astype(np.float32)
