"""High-level entry points: build environments from specs, train a policy, evaluate policies.

An *environment spec* is a JSON-able dict that rebuilds the environment a policy was trained on:

* ``{"type": "meg", "dataset": RUN_DIR, "channel": "process" | "dataset", "channel_config": {...} | None,
  "scheme": "meg", "energy_scope": "total", "fixed": {}, "extra_action_columns": [], "airtime": "auto",
  "episode_length": 64, "reward": "neg_log_mse", "costs": [...] | None, "n_mapping": "uniform",
  "n_choices": "all", "obs_extras": []}`` -- the MEG CMDP on a campaign dataset;
* ``{"type": "gym", "entry": "module:Class", "kwargs": {...}, "episode_length": T | None}`` -- any gymnasium
  environment with a Box action space that reports ``info["cost"]``.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from megbed.testbed.policy.limits import Constraints

log = logging.getLogger(__name__)

ALGOS = ("cvpo", "ppo-lag")

# Settings applied on the MEG environment on top of each algorithm's defaults (the paper's / FSRL's), unless the
# paper preset is asked for.
# * gamma 0.5: the MEG CMDP is a contextual bandit in its costs -- the channel is exogenous and a request's latency,
#   energy and quality depend on its own state and action only -- so every discount has the same optimal policy,
#   and the discount only sets how hard the critics' job is. CVPO constrains Q_c, whose level at gamma = 0.97 is ~33x
#   the per-request cost: a 3 % error in the learned level moves the effective limit by ~100 %. Measured on the
#   synthetic campaign (benchmarks/policy.py) and on the known-optimum test CMDP: at 0.97 the multipliers overshoot
#   to their cap while the cost critics lag, the policy collapses onto the cheapest corner and never recovers.
# * warmup_steps 2560 (4 collections of 10 episodes): uniform random actions, critics only. On the measured
#   default campaign, whose quality is not monotone in beta (the distilled decoder does better at beta 0.75 than at
#   0.5 at low SNR), the first E-steps on critics fitted to ~600 samples sent the policy to (N_min, beta_max), a
#   local optimum it never left: 87.5 % of the oracle's reward with half of each limit unused, at 10,000 and at
#   27,000 steps alike.
# * mu_max 3: the pre-tanh mean of the squashed policy is bounded (megbed.testbed.policy.nets); unbounded it ran off to
#   |u| ~ 8 at a corner, where every sample executes the same action and the E-step has nothing left to compare.
# * log_std_max 0.5: once the policy sits on the boundary of the box (N_max or beta 0 are often optimal) the samples
#   beyond it all execute the boundary action and the weighted likelihood spreads the std over them; with the mean
#   bounded the std grew to its cap e^2 within ten updates and the costs oscillated 5-19 % over their limits; capped
#   at e^0.5 the policy settles within 1 % of the oracle, ~3 % under the limits.
#
# GENERAL_OVERRIDES: what made the MEG preset work, on every environment under ``--preset auto`` (issue 17; the
# ablation is benchmarks/policy_known_optimum.py --ablation):
# * threshold_rule "stationary": the CMDP's constraint is the per-step limit on the expected mean cost; FSRL's rule
#   aims at 0.858 x the limit at gamma 0.97, T 64 (megbed.testbed.policy.limits).
# * warmup_steps, mu_max, log_std_max: as above. On the priced-link CMDP without them the cost multiplier
#   hit its cap within 2-3 collections and the action spread fell from ~1.6 to < 0.1 (collapse onto a cheap corner).
# * reward_norm: rewards in units of their spread in the first (random) collection, as costs are in units of their
#   limit, so the multipliers are O(1) and the dual's step and cap mean the same on every environment.
# * update_per_step 0.1 (64 updates per 640-step collection, FSRL: 0.2): half the compute per env step; the
#   benchmark's steps-to-95 % shows what it costs in learning (benchmarks/policy_known_optimum.py).
# * log_std_max -1 (std <= 0.37 before tanh; MEG keeps its validated e^0.5): the learner constrains the *stochastic*
#   policy's cost, but the optimum -- and FSRL's evaluation (``deterministic_eval``) -- is the mean action. With the
#   cap at e^0.5 the priced-link CMDP's std sat on the cap (the clamp passes no gradient back) in half the states:
#   the deterministic policy then used 13 % less than the limit that its stochastic self met (cost 0.87 vs 1.00 x
#   the limit) and reached 79 % of the optimum at 20k env steps, 93 % at 45k; capped at e^-1 the two costs agree
#   within 2-3 % and it reached 96 % at 16k. Ablation (seed 0, exact reward / cost of the mean action at 12.8k / 19.2k
#   env steps): cap e^0.5 0.76 / 0.79 at cost 0.84 / 0.88; cap e^-1 0.94 / 0.97 at 1.02 / 1.01; cap e^-1.5 0.87 /
#   0.93 at 0.93 / 1.02; cap e^-1 with a 4x slower E-step dual 0.90 / 0.86 (its cost swung 1.41 -> 0.33 between);
#   with cap e^0.5: 10x the std's KL bound 0.83 at 0.82, 5x the E-step's KL bound 0.87 at 0.96 (12.8k).
#   Not enough on its own: at 50k env steps the end point still swung with the multipliers (0.90-1.02 of the
#   optimum at 0.88-1.13 x the limits over both reference CMDPs x 3 seeds; benchmarks/results/
#   policy_known_optimum_i17.txt).
# * cost_reference "collected" (issue 17, final): the E-step holds E_q[Q_c] below the *collecting policy's*
#   E[Q_c] on the same batch plus the measured slack k (aim - m), m the mean cost per step the environment reported
#   for the last collection (CPO's first-order bound with the realised cost; megbed.testbed.policy.cvpo). Q_c's
#   absolute level is ~33x the per-step cost at gamma 0.97, so a few per cent of critic error in it moved the
#   realised cost by tens of per cent and the multiplier swung between 0 and its cap; two Q_c values of the same
#   critic on the same batch cancel that error, and m closes the loop on what the environment measured.
#   cost_slack_gain 0.5 (the policy takes up half of one collection's measured gap: m carries ~2-3 % sampling
#   noise), cost_slack_integral 0.2 (removes the steady offset the first-order step leaves; clipped, anti-windup),
#   aim_mean_action (evaluation executes the mean action; its cost differs from the stochastic policy's by a few
#   per cent where the optimum is on the box's edge -- the gap comes from the same critic).
# * mstep_kl_mu 0.001 (FSRL 0.005): the mean moves at most ~0.045 std per update, ~2.9 std per 64-update collection
#   instead of ~6.4: at 0.005 the mean crossed the whole box on one collection's critic, overshot into the squash's
#   saturation (tanh' ~ 0.01 at |mu| 3, where all K samples execute the same action and the E-step sees no
#   difference between them) and stayed there: one action dimension bang-bang between the box's edges.
# * cost_target 0.98: the aim is 2 % under the limit, so that the evaluated mean cost stays within its limit
#   (CI) despite the run-to-run spread. The reward is concave, but not flat at the optimum: at 0.98 x the limit the
#   reference CMDPs' optimum is 98.8 % of the one at the limit (97 % at 0.95; reference_cmdps.constrained_optimum).
#   The exact constraint stays selectable: ``--set cost_target=1``.
#   Ablation: benchmarks/results/policy_ablation_i17.md. At 50k env steps (3 seeds x both reference CMDPs,
#   benchmarks/results/policy_known_optimum_i17.txt) every mean-action cost ended within 0.98-1.03 x its limit
#   (before: 0.88-1.13) and the multiplier's cv fell on 4 of the 6 runs, but only 3 of the 6 runs ended at >= 95 % of the
#   optimum (0.88-0.99): the remaining gap is the policy's shape (an action dimension parked at a box edge), not its
#   cost (addressed by the head penalties below).
# * mu_penalty 1, std_penalty 1, log_std_min -2.5 (issue 17, i17d): why the policy fell back after reaching 95 %.
#   Past mu_max the soft bound's tanh, and past log_std_max the clamp, pass no gradient, so the actor's raw heads
#   ran off unchecked: on the failing seeds the mean head reached -24 (mu_max 3) and the log-std head sat above its
#   cap in every state (std pinned at e^-1), the mean action became a step between the box's edges (u 0.00 -> 1.00
#   over x 0.4 -> 0.8 where the optimum goes 0.18 -> 0.71), and the executed samples at the edges all did the same
#   action, so neither critic nor E-step could pull it back. A quadratic penalty on each head's excess over its bound
#   (nets.GaussianActor.forward_with_excess) keeps both inside, where the likelihood's gradient reaches them; once
#   the std can shrink it needs a floor (e^-2.5): without one it fell to e^-5..-6, the M-step's mean bound (in
#   units of the std) froze the mean and the reward drifted back to 0.95. Ablation: policy_ablation_i17.md.
#   At 50k env steps (both reference CMDPs x 3 seeds) all 6 runs ended at 0.953-0.986 of the optimum with every
#   mean-action cost at 0.983-1.006 x its limit (before: 0.879-0.988, 3 of 6 under 95 %; policy_known_optimum_i17.txt).
GENERAL_OVERRIDES: dict[str, dict] = {
    "cvpo": {"threshold_rule": "stationary", "warmup_steps": 2560, "mu_max": 3.0, "log_std_max": -1.0,
             "reward_norm": True, "update_per_step": 0.1, "cost_reference": "collected", "cost_target": 0.98,
             "cost_slack_gain": 0.5, "cost_slack_integral": 0.2, "aim_mean_action": True, "mstep_kl_mu": 0.001,
             "mu_penalty": 1.0, "std_penalty": 1.0, "log_std_min": -2.5},
    "ppo-lag": {},
}
# The settings MEG keeps at FSRL's values until the measured campaign (benchmarks/policy.py) is rerun with them.
_MEG_AS_VALIDATED = {"reward_norm": False, "update_per_step": 0.2, "log_std_max": 0.5, "cost_reference": "threshold",
                     "cost_target": 1.0, "cost_slack_gain": 1.0, "cost_slack_integral": 0.0, "aim_mean_action": False,
                     "mstep_kl_mu": 0.005, "mu_penalty": 0.0, "std_penalty": 0.0, "log_std_min": -20.0}  # nets.LOG_STD_MIN
MEG_OVERRIDES: dict[str, dict] = {
    # reward_norm, the update-to-data ratio, the std cap and the E-step's cost reference stay at the values the
    # measured campaign was validated with (benchmarks/policy.py) until it is rerun with them.
    "cvpo": {**GENERAL_OVERRIDES["cvpo"], "gamma": 0.5, **_MEG_AS_VALIDATED},
    "ppo-lag": {},
}
PRESETS = ("auto", "paper")


def meg_env_spec(run_dir: str | Path, *, channel: str = "process", channel_config: dict | None = None,
                 scheme: str = "meg", energy_scope: str = "total", fixed: dict | None = None,
                 extra_action_columns: tuple[str, ...] = (), airtime: str = "auto", episode_length: int = 64,
                 reward: str = "neg_log_mse", costs: tuple[str, ...] | None = None, n_mapping: str = "uniform",
                 n_choices: str = "all", obs_extras: tuple[str, ...] = ()) -> dict:
    """The spec of a MEG environment on a campaign run directory (see the module docstring)."""
    return {"type": "meg", "dataset": str(Path(run_dir).resolve()), "channel": channel,
            "channel_config": channel_config, "scheme": scheme, "energy_scope": energy_scope, "fixed": dict(fixed or {}),
            "extra_action_columns": list(extra_action_columns), "airtime": airtime, "episode_length": episode_length,
            "reward": reward, "costs": list(costs) if costs else None, "n_mapping": n_mapping, "n_choices": n_choices,
            "obs_extras": list(obs_extras)}


def gym_env_spec(entry: str, kwargs: dict | None = None, episode_length: int | None = None) -> dict:
    """The spec of any gymnasium environment ``module:Class`` that reports ``info["cost"]``."""
    if ":" not in entry:
        raise ValueError(f"--env must be 'module:Class', got {entry!r}")
    return {"type": "gym", "entry": entry, "kwargs": dict(kwargs or {}), "episode_length": episode_length}


def build_env(spec: dict, *, seed: int | None = None, cost_model=None):
    """Build the environment a spec describes (``cost_model`` reuses an already fitted model)."""
    kind = spec.get("type")
    if kind == "meg":
        from megbed.testbed.policy.env import make_meg_env

        kwargs: dict[str, Any] = {"episode_length": spec.get("episode_length", 64),
                                  "reward": spec.get("reward", "neg_log_mse"),
                                  "n_mapping": spec.get("n_mapping", "uniform"),
                                  "n_choices": spec.get("n_choices", "all"),
                                  "obs_extras": tuple(spec.get("obs_extras", ()))}
        if spec.get("costs"):
            kwargs["costs"] = tuple(spec["costs"])
        return make_meg_env(spec["dataset"], cost_model=cost_model, channel=spec.get("channel", "process"),
                            channel_config=spec.get("channel_config"), seed=seed, scheme=spec.get("scheme", "meg"),
                            energy_scope=spec.get("energy_scope", "total"), fixed=spec.get("fixed") or None,
                            extra_action_columns=tuple(spec.get("extra_action_columns", ())),
                            airtime=spec.get("airtime", "auto"), **kwargs)
    if kind == "gym":
        module, name = spec["entry"].split(":", 1)
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load environment {spec['entry']}: {exc}") from exc
        env = cls(**spec.get("kwargs", {}))
        import gymnasium as gym

        if not isinstance(env.action_space, gym.spaces.Box):
            raise ValueError(f"{spec['entry']} has a {type(env.action_space).__name__} action space; a Box is needed")
        return env
    raise ValueError(f"unknown environment spec type {kind!r}")


def cost_names_of(env) -> tuple[str, ...]:
    """The names of ``info["cost"]``'s entries: ``env.cost_names`` if declared, else probed from one step."""
    names = getattr(env.unwrapped, "cost_names", None)
    if names:
        return tuple(names)
    env.reset(seed=0)
    _, _, _, _, info = env.step(env.action_space.sample())
    if "cost" not in info:
        raise ValueError("the environment's step info has no 'cost' entry (FSRL / Safety-Gymnasium convention)")
    n = len(np.atleast_1d(info["cost"]))
    return ("cost",) if n == 1 else tuple(f"cost_{i}" for i in range(n))


def episode_length_of(env, spec: dict | None = None) -> int:
    """T: the spec's ``episode_length``, ``env.episode_length``, or the registered ``max_episode_steps``."""
    for value in ((spec or {}).get("episode_length"), getattr(env.unwrapped, "episode_length", None),
                  getattr(getattr(env, "spec", None), "max_episode_steps", None)):
        if value:
            return int(value)
    raise ValueError("cannot tell the episode length of this environment: pass --episode-length")


def make_learner(algo: str, obs_dim: int, act_dim: int, constraints: Constraints, seed: int,
                 overrides: dict | None = None):
    """A fresh CVPO or PPO-Lagrangian learner with the default settings updated by ``overrides``."""
    if algo == "cvpo":
        from megbed.testbed.policy.cvpo import CVPO, CVPOConfig

        cfg = CVPOConfig.from_dict(overrides or {})
        return CVPO(obs_dim, act_dim, constraints, cfg, seed=seed)
    if algo == "ppo-lag":
        from megbed.testbed.policy.ppo_lag import PPOLagConfig, PPOLagrangian

        cfg = PPOLagConfig.from_dict(overrides or {})
        return PPOLagrangian(obs_dim, act_dim, constraints, cfg, seed=seed)
    raise ValueError(f"algo must be one of {ALGOS}, not {algo!r}")


def effective_overrides(algo: str, env_spec: dict, overrides: dict | None, preset: str = "auto") -> dict:
    """The settings changed from the algorithm's (paper) defaults: under ``preset == "auto"`` ``MEG_OVERRIDES`` on
    the MEG environment and ``GENERAL_OVERRIDES`` on any other; none under ``"paper"``; then the caller's
    ``overrides`` on top."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, not {preset!r}")
    table = MEG_OVERRIDES if env_spec.get("type") == "meg" else GENERAL_OVERRIDES
    base = dict(table.get(algo, {})) if preset == "auto" else {}
    return {**base, **(overrides or {})}


def train_policy(algo: str, env_spec: dict, limits: dict[str, float], out_dir: str | Path, *, steps: int,
                 seed: int = 0, overrides: dict | None = None, preset: str = "auto", resume: bool = False,
                 progress: bool = True, eval_every: int = 1, eval_episodes: int = 4, checkpoint_every: int = 10,
                 max_wall_s: float | None = None, env=None, eval_env=None, final_eval_episodes: int = 50):
    """Train ``algo`` on the environment of ``env_spec`` under per-request ``limits``; returns a TrainResult.

    ``preset="auto"`` applies :data:`MEG_OVERRIDES` on the MEG environment; ``"paper"`` keeps the paper's settings
    exactly. ``overrides`` change settings on top. ``env`` / ``eval_env`` may be passed already built (they must
    match the spec).
    """
    overrides = effective_overrides(algo, env_spec, overrides, preset)
    from megbed.testbed.policy.trainer import Trainer, TrainOptions

    # Checked before the environment is built (a dataset may take a while to load): a bad option fails at once.
    options = TrainOptions(total_steps=steps, seed=seed, eval_every=eval_every, eval_episodes=eval_episodes,
                           checkpoint_every=checkpoint_every, progress=progress, max_wall_s=max_wall_s,
                           final_eval_episodes=final_eval_episodes)
    env = env if env is not None else build_env(env_spec, seed=seed)
    if eval_env is None:
        cost_model = getattr(env.unwrapped, "cost_model", None)
        eval_env = build_env(env_spec, seed=seed + 1, cost_model=cost_model)
    constraints = Constraints.from_mapping(cost_names_of(env), limits, episode_length_of(env, env_spec))
    learner = make_learner(algo, env.observation_space.shape[0], env.action_space.shape[0], constraints, seed,
                           overrides)
    options = options.model_copy(update={"episodes_per_collect": learner.cfg.episodes_per_collect})  # a Count too
    trainer = Trainer(learner, env, constraints, out_dir, options, eval_env=eval_env, env_spec=env_spec)
    return trainer.run(resume=resume)


def resolve_policy(name: str, env, constraints: Constraints | None):
    """A policy by name: a trained policy directory, ``oracle``, ``oracle:per_request`` or ``fixed:<scheme>``."""
    from megbed.testbed.policy.baselines import FixedPolicy, OraclePolicy
    from megbed.testbed.policy.checkpoint import LearnedPolicy

    if name in ("oracle", "oracle:cmdp", "oracle:per_request"):
        if constraints is None:
            raise ValueError("the oracle needs limits")
        if not hasattr(env.unwrapped, "cost_model"):
            raise ValueError("the oracle needs the dataset environment's cost model")
        return OraclePolicy(env.unwrapped, constraints, mode="per_request" if name.endswith("per_request") else "cmdp")
    if name.startswith("fixed:"):
        return FixedPolicy.parse(env.unwrapped, name[len("fixed:"):], constraints)
    if Path(name).exists():
        return LearnedPolicy.load(name)
    raise ValueError(f"unknown policy {name!r}: a trained policy directory, oracle, oracle:per_request, "
                     "fixed:max_quality, fixed:min_cost, fixed:best_fixed or fixed:N=8,beta=0.5")
