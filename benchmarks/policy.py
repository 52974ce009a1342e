"""CVPO vs PPO-Lagrangian vs the oracle vs fixed schemes on a campaign dataset, side by side.

    python benchmarks/policy.py [RUN_DIR] [--limit latency_s=3 --limit energy_j=300] [--budget-s 600] [--json OUT]

Without RUN_DIR the newest ``runs/*`` campaign with a dataset is used; when there is none, a SYNTHETIC dataset
(megbed.testing.parametric_campaign, the paper's setting modelled, not measured) is generated and the output says so.

For each learner: mean reward per request of the final deterministic policy and its ratio to the oracle's, cost per
request over its limit, ``violation`` (by how much the expected cost exceeds the limit, the CMDP constraint),
the fraction of evaluation episodes and of requests over a limit, the environment steps until the evaluation curve
first reaches >= 95 % of the oracle's reward with every cost within 5 % of its limit *and stays there*, and the
training wall time on this machine (2 CPU cores, one torch thread). Goals for CVPO: <= 5 % violation, >= 95 % of
the oracle's reward, <= 10 min.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def find_default_run() -> Path | None:
    runs = sorted((ROOT / "runs").glob("*/dataset"), key=lambda p: p.stat().st_mtime, reverse=True)
    return runs[0].parent if runs else None


def steps_to_converge(log: list[dict], oracle_reward: float, names: list[str], window: int = 2) -> int | None:
    """First env step from which the (window-averaged) evaluation stays >= 95 % of the oracle, costs <= 1.05."""
    rows = [r for r in log if "eval_reward_mean" in r]
    ok = []
    for i in range(len(rows)):
        w = rows[max(0, i - window + 1): i + 1]
        reward = sum(r["eval_reward_mean"] for r in w) / len(w)
        costs = [sum(r[f"eval_cost_ratio_{n}"] for r in w) / len(w) for n in names]
        ok.append(reward >= 0.95 * oracle_reward and all(c <= 1.05 for c in costs))
    for i in range(len(rows)):
        if all(ok[i:]):
            return int(rows[i]["env_steps"])
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", help="campaign run directory (default: newest runs/*, else synthetic)")
    ap.add_argument("--limit", action="append", metavar="COST=VALUE", help="per-request limit (repeatable)")
    ap.add_argument("--algos", default="cvpo,ppo-lag",
                    help="comma-separated: cvpo, ppo-lag, cvpo-paper (CVPO with exactly the paper's settings)")
    ap.add_argument("--budget-s", type=float, default=600.0, help="training wall-time budget per learner (s)")
    ap.add_argument("--steps", type=int, default=200_000, help="training step cap per learner")
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--eval-episodes", type=int, default=8)
    ap.add_argument("--final-episodes", type=int, default=50)
    ap.add_argument("--channel", choices=("process", "dataset", "auto"), default="auto")
    ap.add_argument("--set", action="append", default=[], metavar="ALGO.KEY=VALUE",
                    help="learner setting, e.g. cvpo.gamma=0.9 (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="folder for the training runs (default: a temporary one)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    import torch

    from megbed.testbed.cli.policy import _value, parse_limits
    from megbed.testbed.policy.api import build_env, meg_env_spec, resolve_policy, train_policy
    from megbed.testbed.policy.checkpoint import LearnedPolicy
    from megbed.testbed.policy.costmodel import MeasuredCostModel
    from megbed.testbed.policy.evaluate import run_episodes, summarise
    from megbed.testbed.policy.limits import Constraints
    from megbed.testbed.policy.quick import default_limits

    torch.set_num_threads(1)
    synthetic_note = None
    run_dir = Path(args.run_dir) if args.run_dir else find_default_run()
    if run_dir is None:
        from megbed.testing.parametric_campaign import write_synthetic_campaign

        run_dir = write_synthetic_campaign(Path(tempfile.mkdtemp(prefix="megbed-synthetic-")), seed=args.seed)
        synthetic_note = "no campaign dataset found: using a SYNTHETIC dataset (megbed.testing.parametric_campaign), not a measurement"
        print(f"NOTE: {synthetic_note}\n      {run_dir}")
    from megbed.testbed.policy.quick import fixed_decoder

    fixed = fixed_decoder(run_dir)  # a campaign comparing decoders: the distilled one's rows
    model = MeasuredCostModel.from_run_dir(run_dir, fixed=fixed)
    if model.source.get("synthetic") and synthetic_note is None:
        synthetic_note = f"{run_dir} is a SYNTHETIC dataset (its manifest says so), not a measurement"
        print(f"NOTE: {synthetic_note}")
    limits = parse_limits(args.limit) if args.limit else (
        {"latency_s": 3.0, "energy_j": 300.0} if model.source.get("synthetic") else default_limits(model))
    channel = "process" if args.channel == "auto" else args.channel  # the emulator is always installed
    spec = meg_env_spec(run_dir, channel=channel, costs=tuple(limits), fixed=fixed)
    eval_env = build_env(spec, seed=args.seed + 1, cost_model=model)
    cons = Constraints.from_mapping(eval_env.cost_names, limits, eval_env.episode_length)
    names = list(cons.constrained)
    print(f"dataset {run_dir}: {model.describe()['requests']} requests, grid "
          + ", ".join(f"{k}={v}" for k, v in model.describe()["axes"].items()))
    print(f"limits per request: {limits}; channel: {channel}; CPU cores: {os.cpu_count()}, torch threads: 1, "
          f"load average {os.getloadavg()[0]:.1f} (the machine is shared: wall times include contention)")

    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    for name in ("oracle", "oracle:per_request", "fixed:best_fixed", "fixed:max_quality", "fixed:N=8,beta=0.5"):
        try:
            policy = resolve_policy(name, eval_env, cons)
        except ValueError as exc:
            print(f"{name}: skipped ({exc})")
            continue
        results[name] = summarise(run_episodes(eval_env, policy, args.final_episodes, seed=args.seed), cons)
    print(f"baselines evaluated in {time.perf_counter() - t0:.0f} s")
    oracle_reward = results["oracle"]["reward_mean"]

    overrides: dict[str, dict] = {}
    for item in args.set:
        key, value = item.split("=", 1)
        algo, setting = key.split(".", 1)
        overrides.setdefault(algo, {})[setting] = _value(value)
    out_root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="megbed-policy-bench-"))
    for algo in [a for a in args.algos.split(",") if a]:
        out = out_root / algo
        base_algo, preset = (algo[: -len("-paper")], "paper") if algo.endswith("-paper") else (algo, "auto")
        print(f"training {algo} (budget {args.budget_s:.0f} s, at most {args.steps} steps) -> {out}")
        result = train_policy(base_algo, spec, limits, out, steps=args.steps, seed=args.seed,
                              overrides=overrides.get(algo), preset=preset, progress=sys.stderr.isatty(),
                              eval_every=args.eval_every, eval_episodes=args.eval_episodes, checkpoint_every=20,
                              max_wall_s=args.budget_s, eval_env=eval_env,
                              env=build_env(spec, seed=args.seed, cost_model=model))
        policy = LearnedPolicy.load(out / "policy")
        summary = summarise(run_episodes(eval_env, policy, args.final_episodes, seed=args.seed), cons)
        summary.update(env_steps=result.env_steps, wall_s=result.wall_s,
                       steps_to_converge=steps_to_converge(result.log, oracle_reward, names),
                       load_avg_after=os.getloadavg()[0])
        results[algo] = summary

    header = f"{'policy':22s} {'reward':>8s} {'vs oracle':>9s} " + " ".join(f"{n + '/lim':>11s}" for n in names)
    header += f" {'violation':>9s} {'ep. over':>8s} {'req. over':>9s} {'steps':>8s} {'to 95%':>8s} {'wall s':>7s}"
    print("\n" + header)
    for key, s in results.items():
        line = f"{key:22s} {s['reward_mean']:8.4f} {s['reward_mean'] / oracle_reward:9.1%} "
        line += " ".join(f"{s[f'cost_ratio_{n}']:11.3f}" for n in names)
        line += f" {s['violation']:9.1%} {s['episode_violation_rate']:8.0%} {s['request_violation_rate']:9.0%}"
        conv = s.get("steps_to_converge")
        line += f" {s.get('env_steps', ''):>8} {conv if conv is not None else ('-' if 'env_steps' in s else ''):>8}"
        line += f" {s['wall_s']:7.0f}" if "wall_s" in s else ""
        print(line)
    if synthetic_note:
        print(f"\n{synthetic_note}")
    if args.json:
        Path(args.json).write_text(json.dumps({"run_dir": str(run_dir), "synthetic": bool(synthetic_note),
                                               "limits": limits, "channel": channel, "results": results,
                                               "overrides": overrides}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
