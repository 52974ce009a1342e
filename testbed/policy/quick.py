"""A short CVPO run on a campaign and its evaluation against the oracle and fixed schemes (for ``make run``)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Training goes on (within the time budget) until the policy is within its limits AND this close to the oracle.
ORACLE_SHARE_GOAL = 0.95
KEPT_POLICY = "policy_within_limits"  # under the output folder: the best round that ended within its limits
BASELINES = ("oracle", "oracle:per_request", "fixed:best_fixed", "fixed:max_quality")


def default_limits(cost_model) -> dict[str, float]:
    """Limits that bind on this campaign: the median over grid points of the cell-mean latency (and energy)."""
    stats = cost_model.cell_statistics()
    limits = {"latency_s": float(np.median(stats["latency_s_mean"]))}
    if cost_model.has_energy and "energy_j_mean" in stats:
        limits["energy_j"] = float(np.median(stats["energy_j_mean"]))
    return limits


def quick_train_and_evaluate(run_dir: str | Path, out_dir: str | Path | None = None, *,
                             limits: dict[str, float] | None = None, steps: int = 6400, max_wall_s: float = 90.0,
                             seed: int = 0, episodes: int = 50, channel: str = "auto",
                             overrides: dict | None = None, progress: bool = False) -> dict:
    """Train CVPO briefly on ``run_dir``'s dataset and evaluate it beside the oracle and fixed schemes.

    Parameters
    ----------
    run_dir : path
        Campaign run directory.
    out_dir : path, optional
        Where the training run and evaluation go (default: ``run_dir/policy``; a temporary folder if that exists
        and holds another run).
    limits : dict, optional
        Per-request limits, e.g. ``{"latency_s": 3.0}``; default: :func:`default_limits`.
    steps, max_wall_s : int, float
        Training length: ``steps`` requests, then, while the policy's mean costs are not within their limits or its
        reward is under :data:`ORACLE_SHARE_GOAL` of the oracle's (judged on ``episodes`` evaluation episodes),
        ``steps`` more at a time, until about ``max_wall_s`` seconds of training have passed. The summary says plainly whether the policy ended within its limits.
    seed : int
    episodes : int
        Evaluation episodes per policy.
    channel : {"auto", "process", "dataset"}
        Channel states; ``auto``: the emulator's process (as ``process``; the policy extra brings it).
    overrides : dict, optional
        CVPO settings to change (e.g. ``{"hidden": (64, 64)}``).

    Returns
    -------
    dict
        ``limits``, ``train`` (steps, iterations, wall_s, multipliers), ``policies`` (per policy: reward_mean,
        cost_mean_*, cost_ratio_*, violation, episode_violation_rate, request_violation_rate),
        ``cvpo_reward_vs_oracle`` (CVPO's mean reward / the oracle's), ``synthetic``, ``out_dir``.
    """
    from megbed.testbed.policy.api import build_env, meg_env_spec, resolve_policy, train_policy
    from megbed.testbed.policy.checkpoint import LearnedPolicy
    from megbed.testbed.policy.costmodel import MeasuredCostModel
    from megbed.testbed.policy.evaluate import cmdp_summary_lines, cmdp_verdict, run_episodes, summarise
    from megbed.testbed.policy.limits import Constraints

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "policy"
    if (out / "checkpoint").exists():
        out = Path(tempfile.mkdtemp(prefix="megbed-policy-"))
    fixed = fixed_decoder(run_dir)
    cost_model = MeasuredCostModel.from_run_dir(run_dir, fixed=fixed)
    derived = not limits
    limits = dict(limits) if limits else default_limits(cost_model)
    spec = meg_env_spec(run_dir, channel="process" if channel == "auto" else channel,
                        costs=tuple(limits), fixed=fixed)
    env = build_env(spec, seed=seed, cost_model=cost_model)
    eval_env = build_env(spec, seed=seed + 1, cost_model=cost_model)
    constraints = Constraints.from_mapping(env.cost_names, limits, env.episode_length)
    # Train, check the CMDP's constraints, and keep training while they are broken and the budget lasts.
    # The policy of the best round within its limits is kept: a later round of a still-moving multiplier may end over.
    target, rounds, kept = steps, 0, None
    while True:
        result = train_policy("cvpo", spec, limits, out / "train", steps=target, seed=seed, progress=progress,
                              overrides=overrides, eval_every=0, max_wall_s=max_wall_s, env=env, eval_env=eval_env,
                              resume=rounds > 0, final_eval_episodes=episodes)
        rounds += 1
        within, _ = cmdp_verdict(result.final_eval, constraints)
        oracle_now = result.final_eval.get("oracle_reward_mean")
        share = result.final_eval.get("reward_mean", 0.0) / oracle_now if oracle_now else 1.0
        if within and (kept is None or share > kept[1]):
            shutil.rmtree(out / KEPT_POLICY, ignore_errors=True)
            shutil.copytree(out / "train" / "policy", out / KEPT_POLICY)
            kept = (result.env_steps, share)
        if (within and share >= ORACLE_SHARE_GOAL) or result.wall_s >= max_wall_s:
            break
        log.info("policy %s after %d steps (%.1f %% of the oracle's reward); training on (%.0f of %.0f s used)",
                 "within its limits" if within else "over its limits", result.env_steps, 100 * share,
                 result.wall_s, max_wall_s)
        target = result.env_steps + steps
    final, policy_steps = out / "train" / "policy", result.env_steps
    if kept is not None and not within:
        log.info("the last round ended over its limits: evaluating the round of %d steps, within them", kept[0])
        final, policy_steps = out / KEPT_POLICY, kept[0]
    policies = {"cvpo": LearnedPolicy.load(final)}
    for name in BASELINES:
        policies[name] = resolve_policy(name, eval_env, constraints)
    summaries, frames = {}, []
    for name, policy in policies.items():
        records = run_episodes(eval_env, policy, episodes, seed=seed)
        records["policy"] = name
        frames.append(records)
        summaries[name] = summarise(records, constraints)
    import pandas as pd

    pd.concat(frames, ignore_index=True).to_parquet(out / "outcomes.parquet", index=False)
    oracle_r = summaries["oracle"]["reward_mean"]
    # Whether the channel state matters: the oracle's action where the link is worst and where it is best.
    oracle_ends = policies["oracle"].near_and_far()
    summary = {
        "run_dir": str(run_dir), "out_dir": str(out), "synthetic": bool(cost_model.source.get("synthetic", False)),
        "limits": limits, "limits_derived": derived, "channel": spec["channel"],
        "train": {"steps": result.env_steps, "policy_steps": policy_steps, "policy": str(final),
                  "iterations": result.iterations, "wall_s": result.wall_s,
                  "budget_s": max_wall_s,
                  "multipliers": {k: float(v) for k, v in (result.log[-1] if result.log else {}).items()
                                  if k.startswith("lambda_")}},
        "policies": summaries,
        "cvpo_reward_vs_oracle": summaries["cvpo"]["reward_mean"] / oracle_r if oracle_r else float("nan"),
        "within_limits": cmdp_verdict(summaries["cvpo"], constraints)[0],
        "training_rounds": rounds,
        "oracle_near_far": oracle_ends,
        "summary_lines": [*cmdp_summary_lines(f"CVPO ({policy_steps} steps)", summaries["cvpo"], constraints,
                                              oracle_r), _oracle_line(oracle_ends)],
        "wall_s": time.perf_counter() - t0,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float), encoding="utf-8")
    return summary


def _oracle_line(ends: dict[str, dict[str, float]]) -> str:
    def one(end: str) -> str:
        values = ", ".join(f"{k} {v:g}" for k, v in ends[end].items() if k != "snr_db")
        return f"{end} (SNR {ends[end]['snr_db']:.1f} dB): {values}"

    same = {k: v for k, v in ends["far"].items() if k != "snr_db"} == {
        k: v for k, v in ends["near"].items() if k != "snr_db"}
    return (f"  oracle's action {'(the same at both ends)' if same else 'by channel state'}: {one('far')}; "
            f"{one('near')}")


def fixed_decoder(run_dir: Path) -> dict | None:
    """The policy chooses N and beta, not the UE's decoder: a campaign that compared decoders is trained on the rows
    of the decoder a deployed UE runs -- ``auto`` (the gate) when measured, else ``distilled`` -- else on the one it
    has."""
    from megbed.testbed.policy.data import read_campaign_rows

    rows = read_campaign_rows(run_dir)
    if "decoder" not in rows:
        return None
    decoders = set(rows.loc[rows["scheme"] == "meg", "decoder"].dropna())
    if len(decoders) <= 1:
        return None
    for preferred in ("auto", "distilled"):
        if preferred in decoders:
            return {"decoder": preferred}
    return {"decoder": sorted(decoders)[0]}
