"""Constrained Variational Policy Optimization (CVPO; Liu et al., ICML 2022), written here in PyTorch.

Each update, on a batch of B states from the replay buffer:

* **Critics.** One Q critic for the reward and one per constrained cost (costs in units of their limit), each
  regressed on its n-step target ``sum_{k<n} gamma^k x_{t+k} + gamma^n Q'(s_{t+n}, a')`` with ``a' ~ pi(s_{t+n})``
  and Polyak-averaged target critics Q' (tau). Episode ends by truncation bootstrap; terminations do not.
* **E-step.** K actions per state are drawn from the current (old) policy. The non-parametric
  ``q(a|s) ∝ pi_old(a|s) exp((Q_r - sum_i lambda_i Q_ci) / eta)`` comes from the convex dual
  ``g(eta, lambda) = eta*eps + sum_i lambda_i*d_i + eta * E_s log E_{a~pi_old} exp((Q_r - sum_i lambda_i Q_ci)/eta)``
  minimised by Adam over (eta, lambda) and projected onto [eps, dual_max] -- the KL(q || pi_old) <= eps trust
  region and the per-step cost thresholds d_i (see :mod:`megbed.testbed.policy.limits`).
* **M-step.** Weighted maximum likelihood of the K samples under the new policy, with the mean and the std
  decoupled (the mean evaluated with the old std and vice versa) and each held in its own Gaussian KL trust region
  (KL_mu, KL_sigma) by a dual variable updated by Adam and projected onto [0, mstep_dual_max].

Defaults are the paper's (FSRL) settings; see :class:`CVPOConfig`. Deliberate differences from FSRL, both about
the bounded action box: the policy is a squashed Gaussian by default (``squash``; see :mod:`megbed.testbed.policy.nets`),
and the critics are only ever queried at executed actions in the box -- the replay buffer stores the executed
action and the E-step evaluates Q at the executed form of its K samples while the M-step fits the raw samples.
FSRL stores and evaluates raw Gaussian samples; with a tanh-bounded mean and an initial std near 1 the critics are
then queried far outside the box, where an untrained critic is a steep linear function, the weighted likelihood
favours the farthest samples, and the std grows each update faster than the bounded M-step dual (<= 0.5) holds it
(seen here: std at its cap, e^2, within ~50 updates).
"""

from __future__ import annotations

import copy
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from megbed.megwire.validation import Count, Positive
from megbed.testbed.policy.learner import (
    HiddenSizes,
    Learner,
    LearnerConfig,
    Rollout,
)
from megbed.testbed.policy.nets import LOG_STD_MIN, GaussianActor, QCritic, normal_log_prob
from megbed.testbed.policy.replay import ReplayBuffer

DUAL_EPS = 1e-6


class CVPOConfig(LearnerConfig):
    """CVPO hyperparameters (defaults: the paper's run, FSRL's settings).

    Attributes
    ----------
    gamma, n_step, tau : float, int, float
        Discount, n-step return length, Polyak rate of the target critics.
    actor_lr, critic_lr : float
        Adam learning rates.
    hidden : tuple of int
        MLP hidden sizes of actor and critics.
    estep_iters, estep_kl, estep_dual_max, estep_dual_lr, sample_actions : int, float, float, float, int
        E-step: dual iterations per update, KL bound eps, bound on eta and lambda, Adam rate, K.
    mstep_iters, mstep_kl_mu, mstep_kl_std, mstep_dual_max, mstep_dual_lr : int, float, float, float, float
        M-step: iterations per update, mean / std KL bounds, bound on their duals, Adam rate.
    batch_size, buffer_size : int
    episodes_per_collect : int
        Episodes collected between rounds of updates.
    update_per_step : float
        Gradient updates per collected environment step.
    threshold_rule : {"fsrl", "stationary"}
        How the per-request limit becomes the Q_c threshold (:meth:`Constraints.q_threshold`).
    conditioned_sigma : bool
        State-conditioned std (FSRL default) or a free log-std.
    squash : bool
        Squashed Gaussian (tanh of the sample; default) or FSRL's tanh-bounded mean with clipping.
    reward_scale : float
        Multiplies rewards before learning (1 = off).
    log_std_max : float
        Upper clamp of the actor's log-std (FSRL: 2). With the mean of a squashed policy bounded, weighted samples
        that all execute the same boundary action widen the std without limit; a lower cap keeps exploration local.
    mu_max : float or None
        Bound of the squashed policy's pre-tanh mean (None: unbounded, FSRL; see :mod:`megbed.testbed.policy.nets`).
    fused_duals : bool
        E-step dual gradient in closed form and the M-step duals' Adam written out (default), or both by autograd
        and torch optimisers as before issue 17 (the same mathematics; kept to measure the speed-up side by side).
    reward_norm : bool
        Scale rewards by 1 / their standard deviation in the first collection (fixed from then on, so the critics'
        targets never shift). Costs are already in units of their limit; with rewards in units of their spread the
        multipliers are O(1) whatever the environment's reward units, so the dual's step size and cap
        (``estep_dual_lr``, ``estep_dual_max``) mean the same on every environment.
    warmup_steps : int
        Environment steps at the start that act uniformly at random over the action box (in executed units) and
        train only the critics (0 = off, as FSRL). Without it the first E-steps follow critics fitted on a few
        hundred samples, the policy commits to whatever corner they favour and its std shrinks with it.
    warmup_update_per_step : float or None
        Critic updates per environment step during the warm-up (None: ``update_per_step``). The cost critics approach
        their fixed point c / (1 - gamma) with a time constant of about 1 / (tau (1 - gamma^n)) updates (~340 at the
        defaults); if the warm-up gives them fewer, the first E-steps see the costs under-estimated, leave the
        multipliers at 0 and send the policy to the dearest corner before the multipliers catch up.
    cost_target : float
        Fraction of each limit the learner aims its mean cost per step at (1 = the limit itself, FSRL). Below 1 it
        keeps a margin for the spread of the realised cost (and of the evaluated mean action's cost) around the aim.
    cost_reference : {"threshold", "collected"}
        What the E-step holds E_q[Q_c] below. ``threshold`` (FSRL): the rule's absolute level d (times
        ``cost_target``). ``collected``: the collecting policy's own E[Q_c] on the same batch and critic, plus the
        measured slack ``cost_target - m`` (m: the mean cost per step the environment reported for the collection
        just made) -- CPO's first-order bound m_new ~ m_old + E_q[A_c] (Achiam et al. 2017) with the realised
        cost for m_old. The absolute level of Q_c is ~1 / (1 - gamma) times the per-step cost (33x at 0.97), so
        a few per cent of critic error there moves the realised cost by tens of per cent, and the E-step's
        multiplier swings between 0 and its cap; the difference of two Q_c values on the same batch cancels that
        error, and the measured m closes the loop on what the environment reports.
    cost_slack_gain : float
        ``collected`` only: the share of the measured slack one collection's updates may take up, k in
        ``cost_target - m`` -> ``k (cost_target - m)``. The measured m of one collection carries its sampling
        noise; below 1 the policy chases less of it (the gap still closes geometrically, by 1 - k per collection).
    cost_slack_integral, cost_slack_max : float
        ``collected`` only: K_I of an integral term added to the slack, ``I <- clip(I + K_I (aim - m), +-max)`` per
        collection (0 = off). The first-order slack leaves a steady offset wherever the E-step's multiplier lags
        its batch's solution or the M-step falls short of q; the integral removes it, the clip is its anti-windup
        (``max`` in units of the limit).
    aim_mean_action : bool
        ``collected`` only: aim the *mean action's* cost at ``cost_target`` instead of the stochastic policy's
        (which is what m measures). Evaluation and deployment execute the mean action; where the optimum sits on
        the box's edge (the squashed samples all fall inside it) the two differ by several per cent. The gap is
        taken from the same critic, E_a[Q_c(s, a)] - Q_c(s, mean), on the collecting policy (first order, as the
        slack), and added to the stochastic policy's aim.
    dual_avg : float
        Weight of each update's solved multipliers in their running average (1 = off, FSRL: the E-step's weights
        use the multipliers solved on that batch). Below 1 the weights use an exponential moving average over
        updates, so one batch's critic noise does not swing the policy's target.
    log_std_min : float
        Lower clamp of the actor's log-std (default: ``nets.LOG_STD_MIN``, effectively none). Keeps the E-step's K
        samples spread: the M-step's mean bound is in units of the old std, so a collapsed std freezes the mean.
    mu_penalty, std_penalty : float
        Weights of a quadratic penalty, added to the M-step's loss, on how far the mean head's raw output lies beyond
        ``mu_max`` and the log-std head's outside [log_std_min, log_std_max] (0 = off, FSRL). Neither bound passes a
        gradient back once crossed (:meth:`GaussianActor.forward_with_excess`), so without it the heads run off:
        the mean action turns into a step between the box's edges and the std stays pinned at its cap.
    """

    gamma: Annotated[float, Field(ge=0.0, le=1.0)] = 0.97
    n_step: Count = 2
    tau: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05
    actor_lr: Positive = 5e-4
    critic_lr: Positive = 1e-3
    hidden: HiddenSizes = (128, 128)
    estep_iters: Count = 10
    estep_kl: Positive = 0.02
    estep_dual_max: Positive = 20.0
    estep_dual_lr: Positive = 0.02
    sample_actions: Count = 32
    mstep_iters: Count = 5
    mstep_kl_mu: Positive = 0.005
    mstep_kl_std: Positive = 0.0005
    mstep_dual_max: Positive = 0.5
    mstep_dual_lr: Positive = 0.1
    batch_size: Count = 256
    buffer_size: Count = 200_000
    episodes_per_collect: Count = 10
    update_per_step: Positive = 0.2
    threshold_rule: Literal["fsrl", "stationary"] = "fsrl"
    conditioned_sigma: bool = True
    squash: bool = True
    reward_scale: Positive = 1.0
    reward_norm: bool = False
    fused_duals: bool = True
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    warmup_update_per_step: Positive | None = None
    log_std_max: float = 2.0
    log_std_min: float = LOG_STD_MIN
    mu_max: Positive | None = None
    cost_target: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    cost_reference: Literal["threshold", "collected"] = "threshold"
    cost_slack_gain: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    aim_mean_action: bool = False
    cost_slack_integral: Annotated[float, Field(ge=0.0)] = 0.0
    cost_slack_max: Positive = 0.2
    dual_avg: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    mu_penalty: Annotated[float, Field(ge=0.0)] = 0.0
    std_penalty: Annotated[float, Field(ge=0.0)] = 0.0




def gaussian_kl_decoupled(mu_old, std_old, mu, std) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled KLs (Abdolmaleki et al. 2018): KL(N(mu_old, s_old) || N(mu, s_old)), KL(N(mu_old, s_old) || N(mu_old, s)).

    Summed over action dimensions, averaged over the batch.
    """
    var_old = std_old.pow(2).clamp_min(1e-6)
    var = std.pow(2).clamp_min(1e-6)
    kl_mu = (0.5 * (mu_old - mu).pow(2) / var_old).sum(-1).mean()
    kl_std = (0.5 * (torch.log(var / var_old) + var_old / var - 1.0)).sum(-1).mean()
    return kl_mu, kl_std


class CVPO(Learner):
    """CVPO on a continuous Box action space with any number of constrained costs."""

    algo = "cvpo"
    config_type = CVPOConfig

    def build(self) -> None:
        c, obs_dim, act_dim = self.cfg, self.obs_dim, self.act_dim
        self.actor = GaussianActor(obs_dim, act_dim, c.hidden, conditioned_sigma=c.conditioned_sigma, squash=c.squash,
                                   log_std_max=c.log_std_max, mu_max=c.mu_max, log_std_min=c.log_std_min)
        # Member 0 the reward critic, then one per constrained cost. (Stacked into one batched network with
        # torch.baddbmm they ran 2.1x slower on CPU than separate nn.Linear calls, measured for issue 17.)
        self.critics = torch.nn.ModuleList([QCritic(obs_dim, act_dim, c.hidden) for _ in range(1 + self.n_costs)])
        self.critics_targ = torch.nn.ModuleList([QCritic(obs_dim, act_dim, c.hidden) for _ in range(1 + self.n_costs)])
        self.critics_targ.load_state_dict(self.critics.state_dict())
        for p in self.critics_targ.parameters():
            p.requires_grad_(False)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr)
        self.critic_optim = torch.optim.Adam(self.critics.parameters(), lr=c.critic_lr)
        # E-step duals: [eta, lambda_1..lambda_m]; eta starts at 1, lambdas at 0 (as FSRL).
        init = np.zeros(1 + self.n_costs, dtype=np.float32)
        init[0] = 1.0
        self.estep_dual = torch.tensor(init, requires_grad=True)
        self.estep_optim = torch.optim.Adam([self.estep_dual], lr=c.estep_dual_lr)
        self.qc_threshold = self.constraints.q_threshold(c.gamma, c.threshold_rule)
        self.lambda_avg = torch.zeros(self.n_costs)  # the multipliers the E-step's weights use (see dual_avg)
        # cost_reference "collected": the policy that made the last collection, and its measured mean costs
        self.actor_ref = copy.deepcopy(self.actor) if c.cost_reference == "collected" else None
        self.measured_cost = np.full(self.n_costs, np.nan)
        self.slack_integral = np.zeros(self.n_costs)
        self._aim_gap = np.zeros(self.n_costs)  # the last batch's critic estimate of E_a[Q_c] - Q_c(mean)
        self._ref_thresholds = torch.full((self.n_costs,), self.qc_threshold * c.cost_target)
        self.buffer = ReplayBuffer(c.buffer_size, obs_dim, act_dim, 1 + self.n_costs)
        self.updates = 0
        self.env_steps = 0
        self._last_mstep = {"mstep_dual_mu": 0.0, "mstep_dual_std": 0.0}
        self.reward_norm_scale = 1.0  # set from the first collection when cfg.reward_norm

    @property
    def warming_up(self) -> bool:
        return self.env_steps < self.cfg.warmup_steps

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> tuple[np.ndarray, float]:
        if deterministic or not self.warming_up:
            return super().act(obs, deterministic)
        # Uniform over the executed box; the raw action that executes as it (atanh for the squashed policy).
        unit = self.np_rng.uniform(-1.0, 1.0, size=self.act_dim).astype(np.float32)
        raw = np.arctanh(np.clip(unit, -0.999, 0.999)) if self.cfg.squash else unit
        return raw.astype(np.float32), float(-self.act_dim * np.log(2.0))

    # ---------------------------------------------------------------- learning
    def learn(self, rollout: Rollout) -> dict[str, float]:
        if self.cfg.reward_norm and self.env_steps == 0 and len(rollout.reward) > 1:
            self.reward_norm_scale = 1.0 / max(float(np.std(rollout.reward)), 1e-6)
        scale = self.cfg.reward_scale * self.reward_norm_scale
        sig = np.concatenate([rollout.reward[:, None] * scale, rollout.cost], axis=1)
        # The buffer holds the executed (clipped) actions, so critics never extrapolate outside the action box.
        executed = self.unit_action(rollout.act)
        self.buffer.add(rollout.obs, executed, sig, rollout.obs_next, rollout.terminated, rollout.done)
        warm = self.warming_up
        if self.actor_ref is not None and not warm:
            # collected by the current policy (warm-up collections act at random and say nothing about it)
            self.actor_ref.load_state_dict(self.actor.state_dict())
            self.measured_cost = rollout.cost.mean(0).astype(float)
            if self.cfg.cost_slack_integral > 0:
                aim = self.cfg.cost_target + self._aim_gap
                self.slack_integral = np.clip(self.slack_integral + self.cfg.cost_slack_integral
                                              * (aim - self.measured_cost), -self.cfg.cost_slack_max,
                                              self.cfg.cost_slack_max)
        self.env_steps += len(rollout.obs)
        rate = self.cfg.update_per_step
        if warm and self.cfg.warmup_update_per_step is not None:
            rate = self.cfg.warmup_update_per_step
        n_updates = max(1, int(round(rate * len(rollout.obs))))
        acc: dict[str, float] = {}
        for _ in range(n_updates):
            stats = self.update(critics_only=warm)
            for k, v in stats.items():
                acc[k] = acc.get(k, 0.0) + v / n_updates
        acc["updates"] = float(self.updates)
        return acc

    def critic_targets(self, batch) -> torch.Tensor:
        """n-step targets, shape (B, 1 + m): reward first, then each cost."""
        boot_obs = torch.as_tensor(batch.boot_obs)
        with torch.no_grad():
            mu, std = self.actor(boot_obs)
            a_next = self.actor.to_unit(mu + std * torch.randn(mu.shape, generator=self.torch_gen))
            q_next = torch.stack([q(boot_obs, a_next) for q in self.critics_targ], dim=1)
        partial = torch.as_tensor(batch.partial, dtype=torch.float32)
        scale = torch.as_tensor(batch.discount * batch.boot_mask, dtype=torch.float32)[:, None]
        return partial + scale * q_next

    def update(self, critics_only: bool = False) -> dict[str, float]:
        """One CVPO update: critics, E-step, M-step, target averaging (``critics_only``: critics and targets)."""
        c = self.cfg
        idx = self.buffer.sample_indices(c.batch_size, self.np_rng)
        batch = self.buffer.nstep(idx, c.n_step, c.gamma)
        obs = torch.as_tensor(batch.obs)
        act = torch.as_tensor(batch.act)

        # Critics.
        target = self.critic_targets(batch)
        q_pred = torch.stack([q(obs, act) for q in self.critics], dim=1)  # (B, 1 + m)
        critic_loss = (q_pred - target).pow(2).mean(0).sum()
        self.critic_optim.zero_grad()
        critic_loss.backward()
        self.critic_optim.step()
        stats = {"critic_loss": critic_loss.item()}
        if not critics_only:
            stats.update(self._policy_step(obs))
        self._polyak()
        self.updates += 1
        stats.update({"q_reward": q_pred[:, 0].mean().item(), "eta": self.estep_dual[0].item(), **self._last_mstep})
        for i, name in enumerate(self.constraints.constrained):
            stats[f"q_cost_{name}"] = q_pred[:, 1 + i].mean().item()
        return stats

    def _policy_step(self, obs: torch.Tensor) -> dict[str, float]:
        """E-step and M-step on a batch of states; returns the actor's statistics."""
        c = self.cfg
        # E-step: K samples from the old policy, their Q values, the dual, the non-parametric weights.
        k, b = c.sample_actions, obs.shape[0]
        with torch.no_grad():
            mu_old, std_old = self.actor(obs)
            samples = mu_old + std_old * torch.randn((k, *mu_old.shape), generator=self.torch_gen)  # (K, B, da)
            # Q of the actions the environment would execute (see the module docstring).
            obs_k = obs.unsqueeze(0).expand(k, -1, -1).reshape(k * b, -1)
            flat = self.actor.to_unit(samples).reshape(k * b, -1)
            q_vals = torch.stack([q(obs_k, flat).reshape(k, b) for q in self.critics])  # (1+m, K, B): all K at once
            if self.actor_ref is not None:
                self._ref_thresholds = self.reference_thresholds(obs, obs_k)
            # The dual's gradient in closed form on the precomputed Q values (no autograd graph per iteration),
            # applied by the same Adam optimiser and projection as before.
            for _ in range(c.estep_iters if c.fused_duals else 0):
                self.estep_dual.grad = self.estep_dual_grad(q_vals)
                self.estep_optim.step()
                self.estep_dual.clamp_(DUAL_EPS, c.estep_dual_max)
        for _ in range(0 if c.fused_duals else c.estep_iters):
            loss = self.estep_dual_loss(q_vals)
            self.estep_optim.zero_grad()
            loss.backward()
            self.estep_optim.step()
            with torch.no_grad():
                self.estep_dual.clamp_(DUAL_EPS, c.estep_dual_max)
        with torch.no_grad():
            eta = self.estep_dual[0]
            self.lambda_avg.mul_(1.0 - c.dual_avg).add_(self.estep_dual[1:], alpha=c.dual_avg)
            combined = q_vals[0] - (self.lambda_avg[:, None, None] * q_vals[1:]).sum(0)
            weights = torch.softmax(combined / eta, dim=0)  # (K, B)

        # M-step: weighted maximum likelihood with decoupled KL trust regions. The two duals' loss is linear in
        # them, so their Adam step is written out (gradient: bound - KL) instead of an optimiser per update.
        duals = np.zeros(2)
        adam_m, adam_v = np.zeros(2), np.zeros(2)
        bounds = np.array([c.mstep_kl_mu, c.mstep_kl_std])
        if not c.fused_duals:
            t_duals = torch.zeros(2, requires_grad=True)
            mstep_optim = torch.optim.Adam([t_duals], lr=c.mstep_dual_lr)
        for it in range(1, c.mstep_iters + 1):
            mu, std, mu_excess, std_excess = self.actor.forward_with_excess(obs)
            loglik = normal_log_prob(samples, mu, std_old) + normal_log_prob(samples, mu_old, std)  # (K, B)
            loss_mle = -(weights * loglik).mean()
            if c.mu_penalty > 0 or c.std_penalty > 0:  # pull the heads' raw outputs back inside their bounds
                excess = c.mu_penalty * mu_excess.pow(2) + c.std_penalty * std_excess.pow(2)
                loss_mle = loss_mle + excess.sum(-1).mean()
            kl_mu, kl_std = gaussian_kl_decoupled(mu_old, std_old, mu, std)
            if c.fused_duals:
                grad = bounds - np.array([kl_mu.item(), kl_std.item()])
                adam_m = 0.9 * adam_m + 0.1 * grad
                adam_v = 0.999 * adam_v + 0.001 * grad**2
                step = c.mstep_dual_lr * (adam_m / (1 - 0.9**it)) / (np.sqrt(adam_v / (1 - 0.999**it)) + 1e-8)
                duals = np.clip(duals - step, 0.0, c.mstep_dual_max)
            else:
                kls = torch.stack([kl_mu, kl_std]).detach()
                dual_loss = (t_duals * (torch.as_tensor(bounds, dtype=torch.float32) - kls)).sum()
                mstep_optim.zero_grad()
                dual_loss.backward()
                mstep_optim.step()
                with torch.no_grad():
                    t_duals.clamp_(0.0, c.mstep_dual_max)
                duals = t_duals.detach().numpy().astype(float)
            dual_mu, dual_std = float(duals[0]), float(duals[1])
            loss_kl = dual_mu * (kl_mu - c.mstep_kl_mu) + dual_std * (kl_std - c.mstep_kl_std)
            actor_loss = loss_mle + loss_kl.sum()
            self.actor_optim.zero_grad()
            actor_loss.backward()
            self.actor_optim.step()

        self._last_mstep = {"mstep_dual_mu": dual_mu, "mstep_dual_std": dual_std}
        return {"actor_loss": actor_loss.item(), "kl_mu": kl_mu.item(), "kl_std": kl_std.item(),
                "policy_std": std_old.mean().item()}

    @torch.no_grad()
    def _polyak(self) -> None:
        tau = self.cfg.tau
        for p, pt in zip(self.critics.parameters(), self.critics_targ.parameters(), strict=True):
            pt.mul_(1.0 - tau).add_(p, alpha=tau)

    @property
    def cost_thresholds(self) -> torch.Tensor:
        """The E-step's Q_c thresholds d_i, shape (m,): the rule's level times ``cost_target``, or under
        ``cost_reference == "collected"`` the last batch's :meth:`reference_thresholds`."""
        if self.actor_ref is not None:
            return self._ref_thresholds
        return torch.full((self.n_costs,), self.qc_threshold * self.cfg.cost_target)

    @torch.no_grad()
    def reference_thresholds(self, obs: torch.Tensor, obs_k: torch.Tensor) -> torch.Tensor:
        """``cost_reference == "collected"``: d_i = E_B E_{a~pi_collect}[Q_ci(s, a)] + k (aim_i - m_i), shape (m,).

        ``obs`` (B, ds) and ``obs_k`` (K*B, ds), the batch repeated K times; pi_collect is the policy as it was when
        it made the last collection (m_i its measured mean cost per step, in limit units). Before the first
        collection of the policy's own (m unknown) the slack is 0: hold the collecting policy's cost. The aim is
        ``cost_target``, plus under ``aim_mean_action`` the critic's E_a[Q_ci(s, a)] - Q_ci(s, mean action).
        """
        k, b = self.cfg.sample_actions, obs.shape[0]
        mu, std = self.actor_ref(obs)
        flat = self.actor_ref.to_unit(mu + std * torch.randn((k, *mu.shape), generator=self.torch_gen)).reshape(k * b, -1)
        ref = torch.stack([q(obs_k, flat).mean() for q in self.critics[1:]])
        aim = np.full(self.n_costs, self.cfg.cost_target)
        if self.cfg.aim_mean_action:
            mean_act = self.actor_ref.to_unit(mu)
            self._aim_gap = (ref - torch.stack([q(obs, mean_act).mean() for q in self.critics[1:]])).numpy()
            aim = aim + self._aim_gap
        gap = self.cfg.cost_slack_gain * (aim - self.measured_cost) + self.slack_integral
        slack = np.where(np.isfinite(self.measured_cost), gap, 0.0)
        return ref + torch.as_tensor(slack, dtype=torch.float32)

    def estep_dual_loss(self, q_vals: torch.Tensor) -> torch.Tensor:
        """The convex dual g(eta, lambda) on Q values of shape (1 + m, K, B)."""
        eta = self.estep_dual[0]
        lam = self.estep_dual[1:]
        k = q_vals.shape[1]
        combined = q_vals[0] - (lam[:, None, None] * q_vals[1:]).sum(0)  # (K, B)
        lse = torch.logsumexp(combined / eta, dim=0) - np.log(k)  # (B,)
        return eta * self.cfg.estep_kl + (lam * self.cost_thresholds).sum() + eta * lse.mean()

    def estep_dual_grad(self, q_vals: torch.Tensor) -> torch.Tensor:
        """Gradient of :meth:`estep_dual_loss` in (eta, lambda), in closed form.

        With w = softmax_K(A / eta), A = Q_r - sum_i lambda_i Q_ci and L = logsumexp_K(A / eta) - log K:
        dg/deta = eps + E_B[L] - E_B[E_w[A]] / eta and dg/dlambda_i = d_i - E_B[E_w[Q_ci]].
        """
        eta = self.estep_dual[0].detach()
        lam = self.estep_dual[1:].detach()
        combined = q_vals[0] - (lam[:, None, None] * q_vals[1:]).sum(0)  # (K, B)
        z = combined / eta
        lse = torch.logsumexp(z, dim=0) - np.log(q_vals.shape[1])
        w = torch.softmax(z, dim=0)
        g_eta = self.cfg.estep_kl + lse.mean() - (w * combined).sum(0).mean() / eta
        g_lam = self.cost_thresholds - (w.unsqueeze(0) * q_vals[1:]).sum(1).mean(-1)
        return torch.cat([g_eta.reshape(1), g_lam]).to(self.estep_dual.dtype)

    # ---------------------------------------------------------------- state
    def multipliers(self) -> dict[str, float]:
        d = self.estep_dual.detach()
        # the multipliers the policy's weights use: the running average when dual_avg < 1, else the solved ones
        lam = self.lambda_avg if self.cfg.dual_avg < 1.0 else d[1:]
        out = {f"lambda_{name}": float(lam[i]) for i, name in enumerate(self.constraints.constrained)}
        if self.cfg.dual_avg < 1.0:
            out.update({f"lambda_solved_{name}": float(d[1 + i]) for i, name in enumerate(self.constraints.constrained)})
        if self.actor_ref is not None or self.cfg.cost_target < 1.0:
            # the E-step's last threshold in units of the rule's: where the "collected" reference puts it
            out.update({f"threshold_scale_{name}": float(self.cost_thresholds[i]) / self.qc_threshold
                        for i, name in enumerate(self.constraints.constrained)})
        out["eta"] = float(d[0])
        out.update(self._last_mstep)
        return out

    def _networks(self) -> tuple[dict[str, torch.nn.Module], dict[str, torch.optim.Optimizer]]:
        return ({"actor": self.actor, "critics": self.critics, "critics_targ": self.critics_targ},
                {"actor_optim": self.actor_optim, "critic_optim": self.critic_optim, "estep_optim": self.estep_optim})

    def state_tensors(self) -> dict[str, torch.Tensor]:
        t = self._network_tensors()
        t["estep_dual"] = self.estep_dual.detach().clone()
        t["lambda_avg"] = self.lambda_avg.clone()
        for key, arr in self.buffer.state_arrays().items():
            t[f"buffer.{key}"] = torch.from_numpy(np.ascontiguousarray(arr))
        rng_t, _ = self._rng_state()
        t.update(rng_t)
        return t

    def state_json(self) -> dict:
        meta = {"algo": self.algo, "config": self.cfg.to_dict(), "updates": self.updates, "env_steps": self.env_steps,
                "buffer_ptr": self.buffer.ptr, "last_mstep": self._last_mstep, "qc_threshold": self.qc_threshold,
                "reward_norm_scale": self.reward_norm_scale, "slack_integral": self.slack_integral.tolist(),
                "aim_gap": self._aim_gap.tolist()}
        meta.update(self._optimizer_json())
        meta.update(self._rng_state()[1])
        return meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self._load_networks(tensors, meta)
        with torch.no_grad():
            self.estep_dual.copy_(tensors["estep_dual"])
            self.lambda_avg.copy_(tensors.get("lambda_avg", self.estep_dual[1:]))
        arrays = {k[len("buffer."):]: v.numpy() for k, v in tensors.items() if k.startswith("buffer.")}
        self.buffer.load_arrays(arrays, meta["buffer_ptr"])
        self.updates = int(meta["updates"])
        self.env_steps = int(meta.get("env_steps", 0))
        self._last_mstep = dict(meta["last_mstep"])
        self.reward_norm_scale = float(meta.get("reward_norm_scale", 1.0))
        self.slack_integral = np.asarray(meta.get("slack_integral", np.zeros(self.n_costs)), dtype=float)
        self._aim_gap = np.asarray(meta.get("aim_gap", np.zeros(self.n_costs)), dtype=float)
        self._load_rng(tensors, meta)
