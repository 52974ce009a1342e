"""CVPO's env steps per wall- and CPU-second before and after issue 17's speed work, side by side in one run.

* ``before``: FSRL's settings as the code ran them before (``--preset paper``; the E-step dual by autograd and
  Adam, the M-step duals by a torch optimiser created per update: ``fused_duals=False``), 0.2 updates per step,
  1 torch thread.
* ``fused``: the same settings with the E-step dual's gradient in closed form on the precomputed Q values and the
  M-step duals' Adam written out (``fused_duals=True``).
* ``after``: the default preset's update-to-data ratio (0.1 updates per step) on top, threads chosen by
  :func:`megbed.testbed.policy.trainer.auto_threads` (1 when the load average leaves no core idle).

Each config trains CVPO on :class:`megbed.testbed.policy.reference_cmdps.PricedLinkCMDP` for ``--steps`` env steps with
the warm-up off (every update is a full CVPO update, the steady state), 3 rounds interleaved; the figure is the
median rate. Whether learning is equal at the new ratio is benchmarks/policy_known_optimum.py's question
(env steps to 95 % of the optimum).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np

from megbed.testbed.policy.api import make_learner
from megbed.testbed.policy.limits import Constraints
from megbed.testbed.policy.reference_cmdps import PricedLinkCMDP
from megbed.testbed.policy.trainer import Trainer, TrainOptions, auto_threads

CONFIGS = {
    "before": ({"fused_duals": False, "warmup_steps": 0}, 1),
    "fused": ({"fused_duals": True, "warmup_steps": 0}, 1),
    "after": ({"fused_duals": True, "warmup_steps": 0, "update_per_step": 0.1}, "auto"),
}


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rate(name: str, steps: int) -> tuple[float, float, int]:
    overrides, threads = CONFIGS[name]
    env = PricedLinkCMDP()
    cons = Constraints.from_mapping(env.cost_names, env.limits, env.episode_length)
    learner = make_learner("cvpo", 1, 2, cons, 0, overrides)
    n_threads = auto_threads(learner) if threads == "auto" else threads
    opts = TrainOptions(total_steps=steps, eval_every=0, final_eval_episodes=1, progress=False,
                        checkpoint_every=10**6, torch_threads=n_threads)
    trainer = Trainer(learner, env, cons, tempfile.mkdtemp(prefix="rate-"), opts)
    w, c = time.perf_counter(), cpu_s()
    res = trainer.run()
    wall, cpu = time.perf_counter() - w, cpu_s() - c
    return res.env_steps / wall, res.env_steps / cpu, n_threads


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1280)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    print(f"# load {os.getloadavg()}  cores {os.cpu_count()}  steps {args.steps}  rounds {args.rounds}", flush=True)
    results: dict[str, list] = {k: [] for k in CONFIGS}
    for r in range(args.rounds):
        for name in CONFIGS:
            results[name].append(rate(name, args.steps))
            print(f"round {r} {name:7s} {results[name][-1][0]:7.1f} steps/wall-s {results[name][-1][1]:7.1f} "
                  f"steps/CPU-s threads {results[name][-1][2]}", flush=True)
    base_w = np.median([x[0] for x in results["before"]])
    base_c = np.median([x[1] for x in results["before"]])
    print("| config | env steps / wall-s | env steps / CPU-s | vs before (wall) | vs before (CPU) |")
    print("|---|---|---|---|---|")
    for name, xs in results.items():
        w, c = np.median([x[0] for x in xs]), np.median([x[1] for x in xs])
        print(f"| {name} | {w:.1f} | {c:.1f} | {w / base_w:.2f}x | {c / base_c:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
