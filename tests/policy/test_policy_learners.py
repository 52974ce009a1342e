"""CVPO reaches the known constrained optimum; duals stay in their bounds; PPO-Lagrangian's multiplier reacts."""

from __future__ import annotations

import numpy as np
import torch
from known_optimum import LIMIT, KnownOptimumCMDP, constrained_optimum, cost_fn, reward_fn

from megbed.testbed.policy.cvpo import CVPO, CVPOConfig
from megbed.testbed.policy.evaluate import run_episodes, summarise
from megbed.testbed.policy.limits import Constraints
from megbed.testbed.policy.ppo_lag import PPOLagConfig, PPOLagrangian
from megbed.testbed.policy.trainer import Trainer, TrainOptions, _Policy


def exact_performance(learner) -> tuple[float, float]:
    """Expected reward and cost / limit of the learner's deterministic policy, from the known model."""
    xs = (np.arange(2000) + 0.5) / 2000
    with torch.no_grad():
        mu, _ = learner.actor(torch.tensor(2 * xs - 1, dtype=torch.float32)[:, None])
        u = ((learner.actor.to_unit(mu) + 1) / 2).numpy()
    return float(reward_fn(u[:, 0], u[:, 1]).mean()), float(cost_fn(xs, u[:, 0], u[:, 1]).mean() / LIMIT)


class DualRecorder(CVPO):
    """CVPO that records every dual variable after every update."""

    def update(self, critics_only: bool = False):
        stats = super().update(critics_only)
        self.trace.append((*self.estep_dual.detach().tolist(), stats["mstep_dual_mu"], stats["mstep_dual_std"]))
        return stats


def test_cvpo_reaches_the_known_constrained_optimum(tmp_path):
    env = KnownOptimumCMDP()
    cons = Constraints.from_mapping(env.cost_names, {"cost": LIMIT}, env.episode_length)
    # 10 iterations of 320 steps. Exact reward / optimum per iteration on this seed: 1.24 (over the limit), 0.10,
    # 0.97, 0.97, 0.95, 0.97, 0.99, 0.99, 0.99, 1.00 at cost 1.012 x limit.
    # Paper settings except a short discount (the states are i.i.d., so every gamma has the same optimal policy;
    # 0.5 makes the critics' level converge in a few hundred updates) and 64-unit layers for speed.
    cfg = CVPOConfig(gamma=0.5, hidden=(64, 64))
    agent = DualRecorder(1, 2, cons, cfg, seed=0)
    agent.trace = []
    trainer = Trainer(agent, env, cons, tmp_path, TrainOptions(total_steps=3200, seed=0, eval_every=0,
                                                               checkpoint_every=100, progress=False))
    trainer.run()
    optimum = constrained_optimum()
    reward, cost_ratio = exact_performance(agent)
    assert reward >= 0.95 * optimum["reward"], (reward, optimum)
    assert cost_ratio <= 1.05, cost_ratio
    # the same, measured by running the policy in the environment
    summary = summarise(run_episodes(env, _Policy(agent, trainer.scaler), 60, seed=5), cons)
    assert summary["reward_mean"] >= 0.95 * optimum["reward"] - 0.01
    assert summary["violation"] <= 0.05
    # the dual variables never left their bounds
    trace = np.array(agent.trace)
    assert len(trace) == agent.updates
    eta, lam, m_mu, m_std = trace[:, 0], trace[:, 1], trace[:, 2], trace[:, 3]
    floor = np.float32(1e-6)  # DUAL_EPS as stored (float32)
    assert (eta >= floor).all() and (eta <= cfg.estep_dual_max).all()
    assert (lam >= floor).all() and (lam <= cfg.estep_dual_max).all()
    assert (m_mu >= 0).all() and (m_mu <= cfg.mstep_dual_max).all()
    assert (m_std >= 0).all() and (m_std <= cfg.mstep_dual_max).all()
    assert lam.max() > 0.1  # the constraint was active at some point


def test_ppo_lagrangian_multiplier_rises_under_violation_and_cost_falls(tmp_path):
    env = KnownOptimumCMDP(episode_length=32)
    cons = Constraints.from_mapping(env.cost_names, {"cost": 0.2}, env.episode_length)
    agent = PPOLagrangian(1, 2, cons, PPOLagConfig(hidden=(32, 32), episodes_per_collect=8, batch_size=64, lr=3e-3, init_log_std=-1.0),
                          seed=1)
    # start from a costly policy: u0 ~ 1, u1 ~ 0
    with torch.no_grad():
        agent.actor.mu.bias.copy_(torch.tensor([1.0, -1.0]))
    trainer = Trainer(agent, env, cons, tmp_path, TrainOptions(total_steps=256 * 24, seed=1, episodes_per_collect=8,
                                                               eval_every=0, checkpoint_every=100, progress=False))
    result = trainer.run()
    ratios = [row["cost_ratio_cost"] for row in result.log]
    lams = [row["lambda_cost"] for row in result.log]
    assert ratios[0] > 1.5 and lams[0] > 1.0  # over the limit at first: the multiplier is up
    assert all(lam > 0 for lam, r in zip(lams, ratios, strict=True) if r > 1.2)  # held up while violating
    assert np.mean(ratios[-3:]) < 0.7 * ratios[0]  # and the cost comes down


def _rollout(agent, env, steps: int, seed: int):
    from megbed.testbed.policy.learner import Rollout

    obs, _ = env.reset(seed=seed)
    rows = {k: [] for k in ("obs", "act", "reward", "cost", "obs_next", "terminated", "done", "logp")}
    for _ in range(steps):
        raw, logp = agent.act(obs)
        nxt, r, term, trunc, info = env.step((agent.unit_action(raw) + 1.0) / 2.0)
        for k, v in (("obs", obs), ("act", raw), ("reward", r), ("cost", np.atleast_1d(info["cost"])),
                     ("obs_next", nxt), ("terminated", term), ("done", term or trunc), ("logp", logp)):
            rows[k].append(v)
        obs = nxt if not (term or trunc) else env.reset()[0]
    return Rollout(**{k: np.asarray(v, dtype=np.float32) for k, v in rows.items()})


def test_cvpo_warmup_acts_uniformly_and_trains_only_the_critics():
    env = KnownOptimumCMDP()
    cons = Constraints.from_mapping(env.cost_names, {"cost": LIMIT}, env.episode_length)
    agent = CVPO(1, 2, cons, CVPOConfig(gamma=0.5, hidden=(32, 32), batch_size=32, warmup_steps=64, mu_max=3.0,
                                        log_std_max=0.5), seed=0)
    actor_before = {k: v.clone() for k, v in agent.actor.state_dict().items()}
    critic_before = [p.clone() for p in agent.critics.parameters()]
    roll = _rollout(agent, env, 64, seed=1)
    executed = agent.unit_action(roll.act)
    # uniform over the executed box, not the policy's (mostly saturated) squashed Gaussian
    assert executed.min() < -0.6 and executed.max() > 0.6 and abs(float(executed.mean())) < 0.25
    agent.learn(roll)
    assert agent.env_steps == 64 and not agent.warming_up
    assert all(torch.equal(v, agent.actor.state_dict()[k]) for k, v in actor_before.items())
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, agent.critics.parameters(), strict=True))
    agent.learn(_rollout(agent, env, 64, seed=2))  # past the warm-up: the actor moves
    assert any(not torch.equal(v, agent.actor.state_dict()[k]) for k, v in actor_before.items())
    # the mean stays within mu_max, the std within e^log_std_max
    with torch.no_grad():
        mu, std = agent.actor(torch.linspace(-1, 1, 11).unsqueeze(1))
    assert float(mu.abs().max()) < 3.0 and float(std.max()) <= np.exp(0.5) + 1e-6
    # the state round-trips with the step counter
    clone = CVPO(1, 2, cons, agent.cfg, seed=5)
    clone.load_state(agent.state_tensors(), agent.state_json())
    assert clone.env_steps == 128 and clone.updates == agent.updates


def test_cvpo_warmup_has_its_own_update_rate():
    """Critic updates during the warm-up at warmup_update_per_step (so the cost critics are near their fixed point
    when the E-step first uses them), then update_per_step."""
    env = KnownOptimumCMDP()
    cons = Constraints.from_mapping(env.cost_names, {"cost": LIMIT}, env.episode_length)
    cfg = CVPOConfig(hidden=(8, 8), batch_size=16, sample_actions=4, warmup_steps=64, update_per_step=0.1,
                     warmup_update_per_step=0.5)
    agent = CVPO(1, 2, cons, cfg, seed=0)
    agent.learn(_rollout(agent, env, 64, seed=1))
    assert agent.updates == 32
    agent.learn(_rollout(agent, env, 64, seed=2))
    assert agent.updates == 32 + 6
    # unset, the warm-up runs at the ordinary rate
    plain = CVPO(1, 2, cons, cfg.model_copy(update={"warmup_update_per_step": None}), seed=0)
    plain.learn(_rollout(plain, env, 64, seed=1))
    assert plain.updates == 6


def test_head_penalty_pulls_runaway_raw_outputs_back_inside_their_bounds():
    """Past mu_max (soft bound) and outside [log_std_min, log_std_max] (clamp) the actor's heads get no gradient from
    the likelihood; the M-step's penalty on the excess brings them back, and without it they stay where they ran."""
    env = KnownOptimumCMDP()
    cons = Constraints.from_mapping(env.cost_names, {"cost": LIMIT}, env.episode_length)
    obs = torch.linspace(-1, 1, 11).unsqueeze(1)
    excess = {}
    for weight in (0.0, 1.0):
        cfg = CVPOConfig(gamma=0.5, hidden=(16, 16), batch_size=32, sample_actions=8, mu_max=3.0, log_std_max=-1.0,
                         log_std_min=-2.5, mu_penalty=weight, std_penalty=weight, update_per_step=0.25)
        agent = CVPO(1, 2, cons, cfg, seed=0)
        with torch.no_grad():  # raw outputs far outside the bounds: mean head +-8, log-std head +3 and -7
            agent.actor.mu.bias.copy_(torch.tensor([8.0, -8.0]))
            agent.actor.sigma.bias.copy_(torch.tensor([3.0, -7.0]))
            _, _, mu_ex, std_ex = agent.actor.forward_with_excess(obs)
        assert float(mu_ex.min()) > 4.0 and float(std_ex.min()) > 3.0  # 8 - 3, 3 - (-1), -2.5 - (-7), about
        for seed in range(3):
            agent.learn(_rollout(agent, env, 128, seed=seed))
        with torch.no_grad():
            mu, std, mu_ex, std_ex = agent.actor.forward_with_excess(obs)
        assert float(mu.abs().max()) < 3.0  # the bounds hold either way
        assert np.exp(-2.5) - 1e-6 <= float(std.min()) and float(std.max()) <= np.exp(-1.0) + 1e-6
        excess[weight] = (float(mu_ex.mean()), float(std_ex.mean()))
    assert excess[0.0][0] > 3.0 and excess[0.0][1] > 2.0  # unpenalised: still far out
    assert excess[1.0][0] < 0.5 * excess[0.0][0] and excess[1.0][1] < 0.5 * excess[0.0][1]
