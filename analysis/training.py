"""Policy training logs (CVPO, PPO-Lagrangian, ...) found anywhere under a run directory.

The policy trainer writes, into its output folder, ``train_log.csv`` (appended every iteration) and
``train_log.parquet`` (rewritten at each checkpoint), one row per iteration with ``iteration, env_steps,
reward_mean, cost_mean_<cost>, cost_ratio_<cost>, episode_violation_rate``, the learner's multipliers
(``lambda_<cost>``, CVPO's ``eta``, ...), its losses, ``eval_*`` figures and ``wall_s``; and ``train_summary.json``
naming the algorithm. The CSV is the fresher of the two (the Parquet file lags by up to one checkpoint interval),
so the longer one is used.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

LOG_NAMES = ("train_log.csv", "train_log.parquet")
MAX_DEPTH = 4
SKIP_DIRS = {"dataset", "traces", "images", "report", "models"}  # large data folders never hold training logs


def _algo(folder: Path, run_dir: Path) -> str:
    for name, keys in (("train_summary.json", ("algo",)), ("checkpoint/state.json", ("learner", "algo"))):
        path = folder / name
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                for k in keys:
                    data = data[k]
                return str(data)
            except (json.JSONDecodeError, KeyError, TypeError):
                pass
    rel = folder.relative_to(run_dir)
    return rel.name if rel.parts else "policy"


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


def read_training_logs(run_dir: Path) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Every training log under ``run_dir`` (at most four folders deep), keyed by algorithm.

    Returns
    -------
    logs : dict of str to pandas.DataFrame
        Sorted by ``iteration``. Two runs of one algorithm are keyed ``algo``, ``algo (folder)``.
    problems : list of str
        Logs that could not be read or lack the ``iteration`` column.
    """
    folders: set[Path] = set()
    roots = [run_dir] + [p for p in sorted(run_dir.iterdir()) if p.is_dir() and p.name not in SKIP_DIRS]
    for i, root in enumerate(roots):
        for name in LOG_NAMES:
            # the run folder itself is looked at only at its top level; its data folders are never walked
            paths = [root / name] if i == 0 else root.rglob(name)
            for path in paths:
                if path.is_file() and len(path.relative_to(run_dir).parts) <= MAX_DEPTH + 1:
                    folders.add(path.parent)
    logs: dict[str, pd.DataFrame] = {}
    problems: list[str] = []
    for folder in sorted(folders):
        candidates = []
        for name in LOG_NAMES:
            path = folder / name
            if not path.is_file():
                continue
            try:
                candidates.append((_read(path), path))
            except Exception as exc:  # noqa: BLE001 - a half-written log is reported, not fatal
                problems.append(f"training log {path} unreadable: {exc}")
        if not candidates:
            continue
        df, path = max(candidates, key=lambda c: len(c[0]))
        if "iteration" not in df.columns:
            problems.append(f"training log {path} has no 'iteration' column; ignored")
            continue
        df = df.sort_values("iteration").reset_index(drop=True)
        algo = _algo(folder, run_dir)
        key = algo if algo not in logs else f"{algo} ({folder.relative_to(run_dir)})"
        df.attrs["source"] = str(path)
        logs[key] = df
    return logs, problems
