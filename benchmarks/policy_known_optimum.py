"""CVPO (default preset) vs CVPO (``--preset paper``, FSRL's settings) vs PPO-Lagrangian on CMDPs with known optima.

The CMDPs are :mod:`megbed.testbed.policy.reference_cmdps` (issue 17's family: 2-D action in [0, 1]^2, i.i.d. channel
quality, concave reward, costs linear in the action with a state-dependent price, binding constraints, 64-step
episodes; one with a single cost, one with two). Each run trains for ``--steps`` environment steps (or until
``--max-wall-s``) and reports, side by side:

* reward / optimum and mean cost / limit of the final deterministic policy, exactly (from the known model on a
  quadrature of the state) and measured on ``--eval-episodes`` episodes (mean cost with its 95 % CI);
* the share of evaluation episodes whose summed cost exceeds the episodic limit (T x the per-step limit);
* env steps until the exact reward first reaches 95 % of the optimum with every cost within its limit (+1 %);
* wall and CPU seconds of training; the multiplier trace (per collection) and its oscillation: the number of sign
  changes of its successive differences and its coefficient of variation over the second half of training.

``--ablation`` instead trains CVPO with the default preset minus one of its settings at a time.

Usage::

    python benchmarks/policy_known_optimum.py --cmdp priced --algos cvpo,paper,ppo-lag --seeds 0 --steps 50000
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from megbed.testbed.policy.api import GENERAL_OVERRIDES, effective_overrides, gym_env_spec, make_learner
from megbed.testbed.policy.evaluate import run_episodes, summarise
from megbed.testbed.policy.limits import Constraints
from megbed.testbed.policy.reference_cmdps import PricedLinkCMDP, TwoCostCMDP
from megbed.testbed.policy.trainer import Trainer, TrainOptions, _Policy

CMDPS = {"priced": PricedLinkCMDP, "twocost": TwoCostCMDP}
QUAD = (np.arange(400) + 0.5) / 400


def exact(learner, cls) -> tuple[float, np.ndarray]:
    """Expected reward per step and mean costs of the learner's deterministic policy, from the known model."""
    with torch.no_grad():
        mu, _ = learner.actor(torch.tensor(2 * QUAD - 1, dtype=torch.float32)[:, None])
        u = ((learner.actor.to_unit(mu) + 1) / 2).clamp(0, 1).numpy().astype(float)
    return float(cls.reward(u).mean()), cls.costs(QUAD, u).mean(0)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def oscillation(trace: np.ndarray) -> dict:
    half = trace[len(trace) // 2:]
    d = np.diff(half)
    flips = int(np.sum(np.sign(d[1:]) * np.sign(d[:-1]) < 0)) if len(d) > 1 else 0
    cv = float(np.std(half) / max(abs(np.mean(half)), 1e-9)) if len(half) else float("nan")
    return {"flips_2nd_half": flips, "steps_2nd_half": int(len(d)), "cv_2nd_half": cv}


def run_one(cmdp: str, variant: str, seed: int, steps: int, max_wall_s: float, eval_episodes: int,
            overrides: dict | None = None) -> dict:
    cls = CMDPS[cmdp]
    opt = cls.constrained_optimum()
    spec = gym_env_spec(f"megbed.testbed.policy.reference_cmdps:{cls.__name__}")
    algo = "ppo-lag" if variant == "ppo-lag" else "cvpo"
    preset = "paper" if variant == "paper" else "auto"
    ov = effective_overrides(algo, spec, overrides, preset)
    env, eval_env = cls(), cls()
    cons = Constraints.from_mapping(cls.cost_names, cls.limits, env.episode_length)
    learner = make_learner(algo, 1, 2, cons, seed, ov)
    limits = np.array([cls.limits[n] for n in cls.cost_names])
    trace: list[dict] = []
    original = learner.learn
    t_wall, t_cpu = time.perf_counter(), cpu_s()

    def learn(rollout):
        stats = original(rollout)
        r, c = exact(learner, cls)
        mult = learner.multipliers()
        trace.append({"env_steps": int(getattr(learner, "env_steps", 0)) or None, "reward_ratio": r / opt["reward"],
                      **{f"cost_ratio_{n}": float(v) for n, v in zip(cls.cost_names, c / limits, strict=True)},
                      **{k: float(v) for k, v in mult.items() if k.startswith(("lambda_", "threshold_scale_"))},
                      "wall_s": time.perf_counter() - t_wall})
        if len(trace) % 5 == 0:  # progress, so a run cut short still says where it was
            row = trace[-1]
            print(f"  .. {cmdp} {variant} s{seed} collection {len(trace)} "
                  + " ".join(f"{k}={v:.3f}" for k, v in row.items() if k != "env_steps" and v is not None),
                  file=sys.stderr, flush=True)
        return stats

    learner.learn = learn
    out = Path(tempfile.mkdtemp(prefix="kopt-"))
    options = TrainOptions(total_steps=steps, seed=seed, episodes_per_collect=learner.cfg.episodes_per_collect,
                           eval_every=0, eval_episodes=2, checkpoint_every=10**6, progress=False,
                           max_wall_s=max_wall_s)
    trainer = Trainer(learner, env, cons, out, options, eval_env=eval_env, env_spec=spec)
    res = trainer.run()
    wall, cpu = time.perf_counter() - t_wall, cpu_s() - t_cpu
    steps_done = res.env_steps
    per_collect = steps_done / max(len(trace), 1)
    for i, row in enumerate(trace):
        row["env_steps"] = int(round((i + 1) * per_collect))
    reached = next((row["env_steps"] for row in trace if row["reward_ratio"] >= 0.95
                    and all(row[f"cost_ratio_{n}"] <= 1.01 for n in cls.cost_names)), None)
    r, c = exact(learner, cls)
    records = run_episodes(eval_env, _Policy(learner, trainer.scaler), eval_episodes, seed=10_000 + seed)
    summ = summarise(records, cons)
    ep_sums = records.groupby("episode")[[f"cost_{n}" if not n.startswith("cost") else n
                                         for n in cls.cost_names]].sum().to_numpy()
    over = (ep_sums > limits * env.episode_length).any(axis=1).mean()
    lam_keys = [k for k in trace[-1] if k.startswith("lambda_")] if trace else []
    return {
        "cmdp": cmdp, "variant": variant, "seed": seed, "env_steps": steps_done, "wall_s": wall, "cpu_s": cpu,
        "reward_ratio_exact": r / opt["reward"],
        "cost_ratio_exact": {n: float(v) for n, v in zip(cls.cost_names, c / limits, strict=True)},
        "reward_ratio_eval": summ["reward_mean"] / opt["reward"],
        "cost_ratio_eval": {n: summ[f"cost_ratio_{n}"] for n in cls.cost_names},
        "cost_ci95_ratio_eval": {n: [summ[f"cost_ci_low_{n}"] / cls.limits[n], summ[f"cost_ci_high_{n}"] / cls.limits[n]]
                                 for n in cls.cost_names if f"cost_ci_low_{n}" in summ},
        "episodes_over_episodic_limit": float(over), "steps_to_95": reached,
        "oscillation": {k: oscillation(np.array([t[k] for t in trace])) for k in lam_keys},
        "multiplier_trace": {k: [round(t[k], 4) for t in trace] for k in lam_keys},
        "threshold_trace": {k: [round(t[k], 4) for t in trace] for k in (trace[-1] if trace else {})
                            if k.startswith("threshold_scale_")},
        "reward_trace": [round(t["reward_ratio"], 4) for t in trace],
        "cost_trace": {n: [round(t[f"cost_ratio_{n}"], 4) for t in trace] for n in cls.cost_names},
        "overrides": {k: (list(v) if isinstance(v, tuple) else v) for k, v in ov.items()},
    }


def fmt(row: dict) -> str:
    costs = " ".join(f"{n}={v:.3f}" for n, v in row["cost_ratio_exact"].items())
    ci = " ".join(f"{n}=[{a:.3f},{b:.3f}]" for n, (a, b) in row["cost_ci95_ratio_eval"].items())
    osc = " ".join(f"{k}:flips {o['flips_2nd_half']}/{o['steps_2nd_half']} cv {o['cv_2nd_half']:.2f}"
                   for k, o in row["oscillation"].items())
    return (f"{row['cmdp']:8s} {row['variant']:14s} s{row['seed']} steps {row['env_steps']:6d} "
            f"R/opt {row['reward_ratio_exact']:.3f} (eval {row['reward_ratio_eval']:.3f}) cost/lim {costs} "
            f"eval CI {ci} ep-over {row['episodes_over_episodic_limit']:.0%} to95 {row['steps_to_95']} "
            f"wall {row['wall_s']:.0f}s cpu {row['cpu_s']:.0f}s | {osc}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cmdp", default="priced,twocost")
    p.add_argument("--algos", default="cvpo,paper,ppo-lag", help="cvpo (default preset), paper, ppo-lag")
    p.add_argument("--seeds", default="0")
    p.add_argument("--steps", type=int, default=50_000)
    p.add_argument("--max-wall-s", type=float, default=600.0)
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--ablation", action="store_true", help="CVPO default minus one setting at a time")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="extra CVPO setting")
    p.add_argument("--json", type=Path, default=None, help="append each run's record (JSON lines)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    paper = {"threshold_rule": "fsrl", "warmup_steps": 0, "mu_max": None, "log_std_max": 2.0, "reward_norm": False,
             "update_per_step": 0.2, "cost_reference": "threshold", "cost_target": 1.0, "cost_slack_gain": 1.0,
             "cost_slack_integral": 0.0, "aim_mean_action": False, "mstep_kl_mu": 0.005,
             "mu_penalty": 0.0, "std_penalty": 0.0, "log_std_min": -20.0}
    runs: list[tuple[str, dict | None]] = []
    if args.ablation:
        runs = [("cvpo", extra or None)] + [(f"cvpo-no-{k}", {**extra, k: paper[k]})
                                            for k in GENERAL_OVERRIDES["cvpo"]]
    else:
        runs = [(a, extra if a == "cvpo" and extra else None) for a in args.algos.split(",")]
    print(f"# {time.strftime('%F %T')} load {' '.join(f'{x:.2f}' for x in __import__('os').getloadavg())}",
          flush=True)
    for cmdp in args.cmdp.split(","):
        print(f"# {cmdp}: optimum {CMDPS[cmdp].constrained_optimum()}", flush=True)
        for seed in (int(s) for s in args.seeds.split(",")):
            for name, ov in runs:
                variant = "cvpo" if name.startswith("cvpo-no-") else name
                row = run_one(cmdp, variant, seed, args.steps, args.max_wall_s, args.eval_episodes, ov)
                row["variant"] = name
                print(fmt(row), flush=True)
                if args.json:
                    with args.json.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps(row, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
