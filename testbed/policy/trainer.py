"""The training loop shared by CVPO and PPO-Lagrangian: collect, learn, log, evaluate, checkpoint, resume.

One *iteration* collects ``episodes_per_collect`` complete episodes with the stochastic policy, hands them to the
learner, and writes one row to the training log (``train_log.csv``, appended as it goes, and ``train_log.parquet``
at each checkpoint): environment steps, mean reward per request, mean cost per request and its ratio to the limit,
the fraction of episodes over a limit, multipliers, losses, the deterministic evaluation's figures, wall time.

Episode ``k`` of a run is reset with a seed derived from ``(seed, k)``, and the learner's RNGs live in its state, so
a run resumed from a checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from megbed.megwire.validation import ConfigModel, Count, Index, Positive
from megbed.testbed.policy.checkpoint import CheckpointError, export_policy, load_checkpoint, save_checkpoint
from megbed.testbed.policy.evaluate import episode_seeds, run_episodes, summarise
from megbed.testbed.policy.learner import Learner, Rollout
from megbed.testbed.policy.limits import Constraints
from megbed.testbed.policy.nets import ActionScaler

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
POLICY_DIR = "policy"
LOG_CSV = "train_log.csv"
LOG_PARQUET = "train_log.parquet"


class TrainOptionsError(ValueError):
    """A training option is unknown or out of range; the message names it."""


class TrainOptions(ConfigModel):
    """How long and how observably to train (validated: an unknown or out-of-range option raises
    :class:`TrainOptionsError` naming it, before anything is trained or written).

    Attributes
    ----------
    total_steps : int
        Environment steps (requests) to collect in all (rounded up to whole iterations).
    seed : int
        Seeds episodes and evaluation.
    episodes_per_collect : int
        Episodes per iteration.
    eval_every : int
        Deterministic evaluation every this many iterations (0: never, except at the end).
    eval_episodes : int
        Episodes per evaluation during training (fixed seeds, so evaluations are comparable).
    final_eval_episodes : int
        Episodes of the final evaluation (its mean costs carry 95 % CIs over episodes).
    checkpoint_every : int
        Checkpoint every this many iterations (and at the end).
    progress : bool
        Show a rich progress bar.
    max_wall_s : float, optional
        Stop after the iteration during which this much training wall time (s) has passed.
    torch_threads : int or "auto", optional
        Intra-op threads for torch while training (restored afterwards). ``"auto"`` (:func:`auto_threads`): all
        idle cores when an update's largest matrix product is big enough to split (CVPO's K x B critic pass), else
        1. On a busy machine a second thread mostly waits: on the shared 2-core box at load ~10, CVPO's update took
        ~15x the CPU time with 2 threads (spinning), so "idle" is judged by the load average.
    """

    error = TrainOptionsError
    key_word = "option"

    total_steps: Count
    seed: Index = 0
    episodes_per_collect: Count = 10
    eval_every: Index = 1
    eval_episodes: Count = 4
    checkpoint_every: Count = 10
    progress: bool = True
    max_wall_s: Positive | None = None
    torch_threads: Count | Literal["auto"] | None = "auto"
    final_eval_episodes: Count = 50


@dataclass
class TrainResult:
    """What a run produced."""

    out_dir: Path
    iterations: int
    env_steps: int
    wall_s: float
    log: list[dict] = field(default_factory=list)
    final_eval: dict = field(default_factory=dict)
    constraints: Constraints | None = None


class _Policy:
    """Deterministic view of a learner, for evaluation."""

    def __init__(self, learner: Learner, scaler: ActionScaler) -> None:
        self.learner, self.scaler, self.name = learner, scaler, learner.algo

    def action(self, obs, state=None):
        return self.scaler.to_env(self.learner.unit_action(self.learner.act(obs, deterministic=True)[0]))


def collect(env, learner: Learner, scaler: ActionScaler, constraints: Constraints, seeds: list[int]
            ) -> tuple[Rollout, list[dict]]:
    """Run one episode per seed with the stochastic policy; returns the rollout and per-episode statistics."""
    obs_l, act_l, rew_l, cost_l, next_l, term_l, done_l, logp_l = [], [], [], [], [], [], [], []
    episodes = []
    for s in seeds:
        obs, _ = env.reset(seed=int(s))
        ep_reward, ep_cost, n = 0.0, np.zeros(len(constraints.cost_names)), 0
        while True:
            raw, logp = learner.act(obs)
            nxt, reward, terminated, truncated, info = env.step(scaler.to_env(learner.unit_action(raw)))
            if "cost" not in info:
                raise ValueError("the environment's step info has no 'cost' entry (FSRL / Safety-Gymnasium convention)")
            cost = np.atleast_1d(np.asarray(info["cost"], dtype=np.float64))
            if len(cost) != len(constraints.cost_names):
                raise ValueError(f"info['cost'] has {len(cost)} entries; expected {len(constraints.cost_names)}")
            obs_l.append(obs)
            act_l.append(raw)
            rew_l.append(reward)
            cost_l.append(constraints.normalise(cost))
            next_l.append(nxt)
            term_l.append(terminated)
            done_l.append(terminated or truncated)
            logp_l.append(logp)
            ep_reward += reward
            ep_cost += cost
            n += 1
            obs = nxt
            if terminated or truncated:
                break
        episodes.append({"reward_sum": ep_reward, "length": n, "cost_mean": ep_cost / n})
    rollout = Rollout(
        obs=np.asarray(obs_l, dtype=np.float32), act=np.asarray(act_l, dtype=np.float32),
        reward=np.asarray(rew_l, dtype=np.float32), cost=np.asarray(cost_l, dtype=np.float32).reshape(len(obs_l), -1),
        obs_next=np.asarray(next_l, dtype=np.float32), terminated=np.asarray(term_l, dtype=bool),
        done=np.asarray(done_l, dtype=bool), logp=np.asarray(logp_l, dtype=np.float32),
    )
    return rollout, episodes


class Trainer:
    """Train ``learner`` on ``env`` under ``constraints``, writing into ``out_dir``.

    Parameters
    ----------
    learner : Learner
        CVPO or PPO-Lagrangian (or any :class:`Learner`).
    env : gymnasium.Env
        Box actions; ``info["cost"]`` per step in the order of ``constraints.cost_names``.
    constraints : Constraints
        Per-request limits.
    out_dir : path
        Receives ``checkpoint/``, ``policy/``, ``train_log.csv`` / ``.parquet`` and ``train_summary.json``.
    options : TrainOptions
    eval_env : gymnasium.Env, optional
        Environment for deterministic evaluations (default: ``env``; evaluation episodes use their own seeds).
    env_spec : dict, optional
        How to rebuild the environment; stored with the exported policy.
    """

    def __init__(self, learner: Learner, env, constraints: Constraints, out_dir: str | Path, options: TrainOptions,
                 eval_env=None, env_spec: dict | None = None) -> None:
        self.learner = learner
        self.env = env
        self.eval_env = eval_env or env
        self.constraints = constraints
        self.out = Path(out_dir)
        self.opt = options
        self.env_spec = env_spec or {}
        self.scaler = ActionScaler(env.action_space.low, env.action_space.high)
        self.iteration = 0
        self.env_steps = 0
        self.episodes = 0
        self.wall_s = 0.0
        self.rows: list[dict] = []
        self.eval_seeds = episode_seeds(options.seed, options.eval_episodes, offset=1_000_000)

    # ---------------------------------------------------------------- persistence
    def _meta(self) -> dict:
        return {"iteration": self.iteration, "env_steps": self.env_steps, "episodes": self.episodes,
                "wall_s": self.wall_s, "seed": self.opt.seed, "constraints": self.constraints.to_json(),
                "env_spec": self.env_spec, "learner": self.learner.state_json()}

    def save(self) -> None:
        save_checkpoint(self.out / CHECKPOINT_DIR, self.learner.state_tensors(), self._meta())
        self._write_parquet()

    def resume(self) -> bool:
        """Load the checkpoint in ``out_dir`` if there is one; returns whether it did."""
        ckpt = self.out / CHECKPOINT_DIR
        if not (ckpt / "state.json").is_file():
            return False
        tensors, meta = load_checkpoint(ckpt)
        if meta["learner"].get("algo") != self.learner.algo:
            raise CheckpointError(f"{ckpt} holds a {meta['learner'].get('algo')} run, not {self.learner.algo}")
        if meta["constraints"] != self.constraints.to_json():
            raise CheckpointError(f"{ckpt} was trained under {meta['constraints']}, not {self.constraints.to_json()}")
        if int(meta["seed"]) != self.opt.seed:
            raise CheckpointError(f"{ckpt} was trained with seed {meta['seed']}, not {self.opt.seed}")
        self.learner.load_state(tensors, meta["learner"])
        self.iteration, self.env_steps = int(meta["iteration"]), int(meta["env_steps"])
        self.episodes, self.wall_s = int(meta["episodes"]), float(meta["wall_s"])
        self.rows = [r for r in self._read_csv() if int(r["iteration"]) <= self.iteration]
        self._rewrite_csv()
        log.info("resumed %s at iteration %d (%d steps)", ckpt, self.iteration, self.env_steps)
        return True

    def _read_csv(self) -> list[dict]:
        path = self.out / LOG_CSV
        if not path.is_file():
            return []
        with path.open(newline="", encoding="utf-8") as fh:
            return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(fh)]

    def _rewrite_csv(self) -> None:
        path = self.out / LOG_CSV
        if not self.rows:
            path.unlink(missing_ok=True)
            return
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)

    def _append_csv(self, row: dict) -> None:
        path = self.out / LOG_CSV
        if self._csv_keys is not None and path.is_file() and set(row) <= set(self._csv_keys):
            with path.open("a", newline="", encoding="utf-8") as fh:
                csv.DictWriter(fh, fieldnames=self._csv_keys).writerow(row)
        else:  # first row, or new columns (first evaluation, ...): rewrite with the wider header
            self._csv_keys = list(dict.fromkeys(k for r in self.rows for k in r))
            self._rewrite_csv()

    _csv_keys: list[str] | None = None

    def _write_parquet(self) -> None:
        if not self.rows:
            return
        import pandas as pd

        pd.DataFrame(self.rows).to_parquet(self.out / LOG_PARQUET, index=False)

    # ---------------------------------------------------------------- the loop
    def evaluate(self, episodes: int | None = None) -> dict:
        seeds = self.eval_seeds if episodes is None else episode_seeds(self.opt.seed, episodes, offset=1_000_000)
        records = run_episodes(self.eval_env, _Policy(self.learner, self.scaler), len(seeds), seeds=seeds)
        return summarise(records, self.constraints)

    def final_evaluation(self) -> dict:
        """The trained policy on ``final_eval_episodes`` episodes, with the oracle's reward where one exists."""
        out = self.evaluate(self.opt.final_eval_episodes)
        oracle = oracle_reward(self.eval_env, self.constraints, self.opt.final_eval_episodes, self.opt.seed)
        if oracle is not None:
            out["oracle_reward_mean"] = oracle
        return out

    def run(self, resume: bool = False) -> TrainResult:
        import torch

        previous = torch.get_num_threads()
        threads = auto_threads(self.learner) if self.opt.torch_threads == "auto" else self.opt.torch_threads
        if threads:
            torch.set_num_threads(int(threads))
        try:
            return self._run(resume)
        finally:
            torch.set_num_threads(previous)

    def _run(self, resume: bool) -> TrainResult:
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume()
        elif (self.out / CHECKPOINT_DIR / "state.json").is_file():
            raise CheckpointError(f"{self.out} already holds a training run; resume it or choose another --out")
        self._csv_keys = list(dict.fromkeys(k for r in self.rows for k in r)) or None
        progress = _progress(self.opt.progress)
        task = progress.add_task(self.learner.algo, total=self.opt.total_steps, completed=min(self.env_steps,
                                                                                                  self.opt.total_steps))
        final_eval: dict = {}
        with progress:
            while self.env_steps < self.opt.total_steps:
                t0 = time.perf_counter()
                seeds = episode_seeds(self.opt.seed, self.opt.episodes_per_collect, offset=self.episodes)
                rollout, eps = collect(self.env, self.learner, self.scaler, self.constraints, seeds)
                stats = self.learner.learn(rollout)
                self.iteration += 1
                self.env_steps += len(rollout.obs)
                self.episodes += len(eps)
                row = self._row(eps, stats)
                if self.opt.eval_every and self.iteration % self.opt.eval_every == 0:
                    final_eval = self.evaluate()
                    row.update({f"eval_{k}": v for k, v in final_eval.items()})
                self.wall_s += time.perf_counter() - t0
                row["wall_s"] = self.wall_s
                self.rows.append(row)
                self._append_csv(row)
                if self.iteration % max(self.opt.checkpoint_every, 1) == 0:
                    self.save()
                progress.update(task, completed=min(self.env_steps, self.opt.total_steps),
                                description=self._describe(row))
                if self.opt.max_wall_s is not None and self.wall_s >= self.opt.max_wall_s:
                    log.info("stopping at the wall-time budget (%.0f s)", self.opt.max_wall_s)
                    break
        final_eval = self.final_evaluation()
        self.save()
        self.export()
        summary = {"algo": self.learner.algo, "iterations": self.iteration, "env_steps": self.env_steps,
                   "wall_s": self.wall_s, "final_eval": final_eval, "constraints": self.constraints.to_json(),
                   "multipliers": self.learner.multipliers()}
        (self.out / "train_summary.json").write_text(json.dumps(summary, indent=1, default=float), encoding="utf-8")
        return TrainResult(self.out, self.iteration, self.env_steps, self.wall_s, self.rows, final_eval,
                           self.constraints)

    def export(self) -> None:
        actor = self.learner.actor
        conditioned = bool(getattr(actor, "conditioned_sigma", True))
        hidden = [m.out_features for m in actor.trunk.modules() if hasattr(m, "out_features")]
        export_policy(self.out / POLICY_DIR, actor, algo=self.learner.algo, obs_dim=self.learner.obs_dim,
                      act_dim=self.learner.act_dim, hidden=hidden, conditioned_sigma=conditioned, squash=actor.squash,
                      action_low=self.env.action_space.low, action_high=self.env.action_space.high,
                      constraints=self.constraints, env_spec=self.env_spec,
                      extra={"env_steps": self.env_steps, "seed": self.opt.seed,
                             "config": self.learner.cfg.to_dict() if hasattr(self.learner, "cfg") else {}})

    def _row(self, eps: list[dict], stats: dict) -> dict:
        c = self.constraints
        row: dict = {"iteration": self.iteration, "env_steps": self.env_steps, "episodes": self.episodes,
                     "reward_mean": float(np.mean([e["reward_sum"] / e["length"] for e in eps]))}
        cost_means = np.array([e["cost_mean"] for e in eps])  # (E, n_costs)
        over = np.zeros(len(eps), dtype=bool)
        for name in c.cost_names:
            row[f"cost_mean_{name}"] = float(cost_means[:, c.cost_names.index(name)].mean())
        for name, lim in zip(c.constrained, c.limits, strict=True):
            per_ep = cost_means[:, c.cost_names.index(name)]
            row[f"cost_ratio_{name}"] = float(per_ep.mean() / lim)
            over |= per_ep > lim
        row["episode_violation_rate"] = float(over.mean())
        row.update(self.learner.multipliers())
        row.update({k: v for k, v in stats.items() if k not in row})
        return row

    def _describe(self, row: dict) -> str:
        parts = [self.learner.algo, f"r={row['reward_mean']:.3g}"]
        for name in self.constraints.constrained:
            parts.append(f"{name}/lim={row[f'cost_ratio_{name}']:.2f}")
        return " ".join(parts)


def auto_threads(learner: Learner, min_rows: int = 4096) -> int:
    """Threads for torch: the cores the load average leaves idle (at least 1) when the learner's largest batched
    pass has at least ``min_rows`` rows (CVPO: K x B sampled actions), else 1."""
    import os

    cfg = getattr(learner, "cfg", None)
    rows = int(getattr(cfg, "batch_size", 0)) * int(getattr(cfg, "sample_actions", 1))
    if rows < min_rows:
        return 1
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return 1
    return max(1, min(cores, int(cores - load + 0.5)))


def oracle_reward(env, constraints: Constraints, episodes: int, seed: int) -> float | None:
    """The oracle's mean reward per step on ``env``: a closed-form optimum the environment offers
    (``optimal_reward(limits)``), else the CMDP oracle of a dataset environment run for ``episodes``; None if
    neither exists."""
    fn = getattr(env.unwrapped, "optimal_reward", None)
    if callable(fn):
        return float(fn(constraints.as_dict))
    if hasattr(env.unwrapped, "cost_model"):
        from megbed.testbed.policy.baselines import OraclePolicy

        policy = OraclePolicy(env.unwrapped, constraints, mode="cmdp")
        return float(run_episodes(env, policy, episodes, seed=seed)["reward"].mean())
    return None


def _num(v: str):
    if v == "":  # a column this row did not have (an actor loss during critic warm-up): missing, not text
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() and not math.isinf(f) else f


def _progress(enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                    TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled, transient=False)
