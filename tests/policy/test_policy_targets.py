"""n-step critic targets checked by hand, the E-step dual, the decoupled KL, the PID multiplier, GAE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megbed.testbed.policy.cvpo import CVPO, CVPOConfig, gaussian_kl_decoupled
from megbed.testbed.policy.limits import Constraints
from megbed.testbed.policy.ppo_lag import PIDLagrangian, gae
from megbed.testbed.policy.replay import ReplayBuffer

G = 0.9


def _buffer():
    """Two episodes: the first (3 steps) truncated, the second (2 steps) terminated, then 1 step of a third."""
    buf = ReplayBuffer(capacity=10, obs_dim=1, act_dim=1, n_signals=2)
    obs = np.arange(6, dtype=np.float32)[:, None]
    nxt = obs + 100  # s' marked so the bootstrap state is recognisable
    sig = np.array([[1, 10], [2, 20], [3, 30], [4, 40], [5, 50], [6, 60]], dtype=np.float32)
    terminated = np.array([0, 0, 0, 0, 1, 0], dtype=bool)
    done = np.array([0, 0, 1, 0, 1, 0], dtype=bool)
    buf.add(obs, np.zeros((6, 1), np.float32), sig, nxt, terminated, done)
    return buf


def test_nstep_pieces_by_hand():
    b = _buffer().nstep(np.array([0, 1, 2, 3, 4, 5]), n=2, gamma=G)
    # t=0: r0 + g r1, bootstrap g^2 Q(s'_1) ; t=1: r1 + g r2 then the episode ends (truncated): bootstrap g^2 Q(s'_2)
    # t=2: last step of a truncated episode: r2, bootstrap g Q(s'_2) ; t=3: r3 + g r4, terminated at 4: no bootstrap
    # t=4: terminated: r4 only ; t=5: the newest transition: r5, bootstrap g Q(s'_5)
    assert b.partial[:, 0] == pytest.approx([1 + G * 2, 2 + G * 3, 3, 4 + G * 5, 5, 6])
    assert b.partial[:, 1] == pytest.approx([10 + G * 20, 20 + G * 30, 30, 40 + G * 50, 50, 60])
    assert b.discount == pytest.approx([G**2, G**2, G, G**2, G, G])
    assert b.boot_obs[:, 0].tolist() == [101, 102, 102, 104, 104, 105]
    assert b.boot_mask.tolist() == [1, 1, 1, 0, 0, 1]


def test_nstep_wraps_around_the_ring():
    buf = ReplayBuffer(capacity=4, obs_dim=1, act_dim=1, n_signals=1)
    for t in range(6):  # overwrites the first two
        buf.add(np.array([[t]], np.float32), np.zeros((1, 1), np.float32), np.array([[t]], np.float32),
                np.array([[t + 100]], np.float32), np.array([False]), np.array([t == 5]))
    # slots hold t = 4, 5, 2, 3; index 3 (t=3) continues into slot 0 (t=4)
    b = buf.nstep(np.array([3]), n=3, gamma=G)
    assert b.partial[0, 0] == pytest.approx(3 + G * 4 + G**2 * 5)
    assert b.boot_obs[0, 0] == 105 and b.discount[0] == pytest.approx(G**3)


def test_cvpo_critic_targets_use_the_target_critics():
    cons = Constraints.from_mapping(("latency_s",), {"latency_s": 2.0}, 8)
    agent = CVPO(1, 1, cons, CVPOConfig(gamma=G, hidden=(8, 8)), seed=0)
    # Target critics return a known function of the next state: Q'_r = 3 s, Q'_c = -s.
    for i, scale in enumerate((3.0, -1.0)):
        net = agent.critics_targ[i].net
        with torch.no_grad():
            for m in net:
                if isinstance(m, torch.nn.Linear):
                    m.weight.zero_()
                    m.bias.zero_()
            linears = [m for m in net if isinstance(m, torch.nn.Linear)]
            for m in linears[:-1]:
                m.weight[0, 0] = 1.0  # relu(s), s >= 0, carried through the hidden layers
            linears[-1].weight[0, 0] = scale
    buf = _buffer()
    batch = buf.nstep(np.arange(6), n=2, gamma=G)
    target = agent.critic_targets(batch).numpy()
    s_boot = batch.boot_obs[:, 0]
    expect_r = batch.partial[:, 0] + batch.discount * batch.boot_mask * 3.0 * s_boot
    expect_c = batch.partial[:, 1] + batch.discount * batch.boot_mask * -1.0 * s_boot
    assert target[:, 0] == pytest.approx(expect_r, rel=1e-5)
    assert target[:, 1] == pytest.approx(expect_c, rel=1e-5)
    assert target[0, 0] == pytest.approx(1 + G * 2 + G**2 * 3 * 101, rel=1e-5)  # by hand
    assert target[3, 1] == pytest.approx(40 + G * 50, rel=1e-5)  # terminated: no bootstrap


def test_estep_dual_minimiser_meets_the_kl_bound_and_the_cost_threshold():
    """At the minimum of the dual g(eta, lambda), the weights q have KL(q || pi_old) = eps and E_q[Q_c] = threshold."""
    from scipy.optimize import minimize

    cons = Constraints.from_mapping(("c",), {"c": 1.0}, 10)
    agent = CVPO(1, 1, cons, CVPOConfig(estep_kl=0.02, hidden=(8, 8), buffer_size=10), seed=0)
    gen = torch.Generator().manual_seed(0)
    q_r = torch.randn(32, 64, generator=gen)
    q_c = q_r + 0.5 * torch.randn(32, 64, generator=gen)  # reward and cost go together: the constraint binds
    q = torch.stack([q_r, q_c])
    agent.qc_threshold = float(q_c.mean()) - 0.2  # below the old policy's expected cost

    def dual(x):
        with torch.no_grad():
            agent.estep_dual.copy_(torch.tensor([abs(x[0]) + 1e-6, abs(x[1])]))
            return agent.estep_dual_loss(q).item()

    res = minimize(dual, [1.0, 0.5], method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 4000})
    eta, lam = abs(res.x[0]) + 1e-6, abs(res.x[1])
    w = torch.softmax((q_r - lam * q_c) / eta, dim=0)
    kl = (w * torch.log(w * 32)).sum(0).mean().item()
    assert kl == pytest.approx(0.02, rel=0.05)
    assert (w * q_c).sum(0).mean().item() == pytest.approx(agent.qc_threshold, abs=2e-3)
    assert lam > 0.1

    # slack constraint: lambda goes to zero, the KL bound still holds
    agent.qc_threshold = float(q_c.mean()) + 5.0
    res = minimize(dual, [1.0, 0.5], method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 4000})
    assert abs(res.x[1]) < 1e-3


def test_decoupled_kl_matches_torch():
    gen = torch.Generator().manual_seed(1)
    mu_old, mu = torch.randn(5, 2, generator=gen), torch.randn(5, 2, generator=gen)
    s_old, s = torch.rand(5, 2, generator=gen) + 0.5, torch.rand(5, 2, generator=gen) + 0.5
    n = torch.distributions.Normal
    kl_mu, kl_std = gaussian_kl_decoupled(mu_old, s_old, mu, s)
    assert kl_mu.item() == pytest.approx(torch.distributions.kl_divergence(n(mu_old, s_old), n(mu, s_old)).sum(-1)
                                         .mean().item(), rel=1e-5)
    assert kl_std.item() == pytest.approx(torch.distributions.kl_divergence(n(mu_old, s_old), n(mu_old, s)).sum(-1)
                                          .mean().item(), rel=1e-5)


def test_pid_lagrangian():
    pid = PIDLagrangian((0.05, 0.0005, 0.1))
    assert pid.step(12.0, 10.0) == pytest.approx(0.05 * 2 + 0.0005 * 2 + 0.1 * 2)
    assert pid.step(13.0, 10.0) == pytest.approx(0.05 * 3 + 0.0005 * 5 + 0.1 * 1)
    assert pid.step(11.0, 10.0) == pytest.approx(0.05 * 1 + 0.0005 * 6)  # falling error: no derivative term
    assert pid.step(0.0, 10.0) == 0.0  # projected onto lambda >= 0
    assert pid.integral == 0.0


def test_gae_by_hand():
    r = np.array([1.0, 2.0, 3.0])
    v = np.array([0.5, 0.4, 0.3])
    v_next = np.array([0.4, 0.3, 0.2])
    term = np.array([0.0, 0.0, 0.0])
    done = np.array([0.0, 0.0, 1.0])  # truncated at the end: bootstrap from V(s_3) = 0.2
    g, lam = 0.9, 0.5
    d = r + g * v_next - v
    a2 = d[2]
    a1 = d[1] + g * lam * a2
    a0 = d[0] + g * lam * a1
    adv, ret = gae(r, v, v_next, term, done, g, lam)
    assert adv == pytest.approx([a0, a1, a2])
    assert ret == pytest.approx(adv + v)
    adv_t, _ = gae(r, v, v_next, np.array([0.0, 0.0, 1.0]), done, g, lam)
    assert adv_t[2] == pytest.approx(3.0 - 0.3)  # terminated: no bootstrap


def test_q_thresholds():
    c = Constraints.from_mapping(("latency_s", "energy_j"), {"latency_s": 3.0}, 64)
    assert c.constrained == ("latency_s",)
    assert c.episodic_limits() == {"latency_s": 192.0}
    assert c.q_threshold(0.97, "fsrl") == pytest.approx(192 * (1 - 0.97**64) / (0.03 * 64) / 3.0)
    assert c.q_threshold(0.97, "stationary") == pytest.approx(1 / 0.03)
    assert c.normalise(np.array([[6.0, 100.0]])).tolist() == [[2.0]]
    with pytest.raises(ValueError, match="unknown"):
        Constraints.from_mapping(("latency_s",), {"energy": 1.0}, 64)



def _rollout(rng, cost, n=16):
    from megbed.testbed.policy.learner import Rollout

    return Rollout(obs=rng.uniform(-1, 1, (n, 1)).astype(np.float32), act=rng.normal(size=(n, 1)).astype(np.float32),
                   reward=rng.normal(size=n).astype(np.float32), cost=np.full((n, 1), cost, np.float32),
                   obs_next=rng.uniform(-1, 1, (n, 1)).astype(np.float32), terminated=np.zeros(n, bool),
                   done=np.arange(n) % 8 == 7, logp=np.zeros(n, np.float32))


def test_collected_reference_moves_the_threshold_against_the_measured_cost():
    """cost_reference "collected": the E-step's threshold is the collecting policy's E[Q_c] on the batch plus
    k (target - measured cost): below it after a collection over the target, above it after one under, equal at
    the target; warm-up collections (random actions) are not the policy's and set nothing."""
    cons = Constraints.from_mapping(("c",), {"c": 1.0}, 8)
    cfg = CVPOConfig(hidden=(8, 8), batch_size=16, sample_actions=4, buffer_size=200, estep_iters=2, mstep_iters=1,
                     update_per_step=0.25, warmup_steps=16, cost_target=0.9, cost_reference="collected",
                     cost_slack_gain=0.5)
    agent = CVPO(1, 1, cons, cfg, seed=0)
    rng = np.random.default_rng(0)
    obs = torch.as_tensor(rng.uniform(-1, 1, (16, 1)).astype(np.float32))
    obs_k = obs.unsqueeze(0).expand(4, -1, -1).reshape(64, -1)

    def reference_level():
        with torch.no_grad():
            mu, std = agent.actor_ref(obs)
            acts = agent.actor_ref.to_unit(mu + std * torch.randn((4, *mu.shape), generator=gen)).reshape(64, -1)
            return float(agent.critics[1](obs_k, acts).mean())

    agent.learn(_rollout(rng, 2.0))  # warm-up: the policy has not collected yet
    assert np.isnan(agent.measured_cost).all()
    for measured, sign in ((2.0, -1), (0.5, +1), (0.9, 0)):
        agent.learn(_rollout(rng, measured))
        assert agent.measured_cost[0] == pytest.approx(measured)
        # the reference is the policy that collected: a copy of the actor as it was before this round's updates
        state = agent.torch_gen.get_state()
        gen = torch.Generator().manual_seed(0)
        gen.set_state(state)
        level = reference_level()
        d = float(agent.reference_thresholds(obs, obs_k)[0])
        assert d - level == pytest.approx(0.5 * (0.9 - measured), abs=1e-5)
        assert np.sign(round(d - level, 6)) == sign
    # the dual solves for the threshold it is given: at lambda = 0, the gradient in lambda is d - E_w[Q_c] = d
    with torch.no_grad():
        agent.estep_dual.copy_(torch.tensor([1.0, 0.0]))
        agent._ref_thresholds = torch.tensor([3.0])
    assert float(agent.estep_dual_grad(torch.zeros(2, 4, 3))[1]) == pytest.approx(3.0)
    # FSRL's absolute threshold (the paper preset) is the rule's level times the target, whatever was measured
    fixed = CVPO(1, 1, cons, CVPOConfig(hidden=(8, 8), buffer_size=10, cost_target=0.9), seed=0)
    assert fixed.actor_ref is None and float(fixed.cost_thresholds[0]) == pytest.approx(0.9 * fixed.qc_threshold)


def test_cvpo_dual_average_feeds_the_weights():
    """dual_avg < 1: the weights (and the logged multiplier) use the running average of the solved multipliers."""
    cons = Constraints.from_mapping(("c",), {"c": 1.0}, 8)
    cfg = CVPOConfig(hidden=(8, 8), batch_size=16, sample_actions=4, buffer_size=200, estep_iters=1, mstep_iters=1,
                     dual_avg=0.25)
    agent = CVPO(1, 1, cons, cfg, seed=0)
    agent.buffer.add(np.zeros((4, 1), np.float32), np.zeros((4, 1), np.float32), np.ones((4, 2), np.float32),
                     np.zeros((4, 1), np.float32), np.zeros(4, bool), np.ones(4, bool))
    averages = []
    for target in (4.0, 4.0, 0.0):
        before = agent.lambda_avg.clone()
        with torch.no_grad():
            agent.estep_dual.copy_(torch.tensor([1.0, target]))
        agent._policy_step(torch.zeros(16, 1))
        solved = float(agent.estep_dual.detach()[1])
        assert float(agent.lambda_avg[0]) == pytest.approx(0.75 * float(before[0]) + 0.25 * solved, rel=1e-5)
        averages.append(float(agent.lambda_avg[0]))
    m = agent.multipliers()
    assert m["lambda_c"] == pytest.approx(averages[-1]) and m["lambda_solved_c"] == pytest.approx(solved)
    assert 0 < averages[0] < averages[1]  # creeping up towards the solved ~4, not jumping there
    # dual_avg 1 (FSRL): the weights use the multiplier solved on the batch, exactly
    plain = CVPO(1, 1, cons, cfg.model_copy(update={"dual_avg": 1.0}), seed=0)
    plain._policy_step(torch.zeros(16, 1))
    assert torch.equal(plain.lambda_avg, plain.estep_dual.detach()[1:]) and "lambda_solved_c" not in plain.multipliers()


def test_collected_reference_integral_and_mean_action_aim():
    """The integral term accumulates the measured error against the aim (bounded: anti-windup), and under
    aim_mean_action the aim is the target plus the critic's E_a[Q_c] - Q_c(mean action) of the collecting policy."""
    cons = Constraints.from_mapping(("c",), {"c": 1.0}, 8)
    cfg = CVPOConfig(hidden=(8, 8), batch_size=16, sample_actions=4, buffer_size=400, estep_iters=2, mstep_iters=1,
                     update_per_step=0.25, cost_target=0.9, cost_reference="collected", cost_slack_gain=0.5,
                     cost_slack_integral=0.1, cost_slack_max=0.25, aim_mean_action=True)
    agent = CVPO(1, 1, cons, cfg, seed=0)
    rng = np.random.default_rng(1)
    integrals = []
    for _ in range(8):
        agent.learn(_rollout(rng, 1.5))  # persistently over the aim
        integrals.append(float(agent.slack_integral[0]))
    assert all(b < a for a, b in zip(integrals[:3], integrals[1:4], strict=True))
    assert integrals[-1] == pytest.approx(-0.25)  # clipped
    for _ in range(2):
        agent.learn(_rollout(rng, 0.2))  # under the aim: it unwinds at once
    assert float(agent.slack_integral[0]) > -0.25
    obs = torch.as_tensor(rng.uniform(-1, 1, (16, 1)).astype(np.float32))
    obs_k = obs.unsqueeze(0).expand(4, -1, -1).reshape(64, -1)
    gen = torch.Generator()
    gen.set_state(agent.torch_gen.get_state())
    with torch.no_grad():
        mu, std = agent.actor_ref(obs)
        acts = agent.actor_ref.to_unit(mu + std * torch.randn((4, *mu.shape), generator=gen)).reshape(64, -1)
        level = float(agent.critics[1](obs_k, acts).mean())
        gap = level - float(agent.critics[1](obs, agent.actor_ref.to_unit(mu)).mean())
    d = float(agent.reference_thresholds(obs, obs_k)[0])
    expected = 0.5 * (0.9 + gap - agent.measured_cost[0]) + agent.slack_integral[0]
    assert agent._aim_gap[0] == pytest.approx(gap, abs=1e-5)
    assert d - level == pytest.approx(expected, abs=1e-5)
