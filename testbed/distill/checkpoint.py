"""Training checkpoints as safetensors + JSON (never pickle): enough to continue a run bit for bit.

One folder per checkpoint, written atomically (temp folder, then rename)::

    checkpoints/step-000050/
        weights.safetensors     trainable decoder weights (float32)
        optimizer.safetensors   AdamW state tensors, keyed "<param index>.<name>" (step, exp_avg, exp_avg_sq)
        state.json              step, config, param names, optimizer param groups, grad-scaler state, run summary

Everything else a step depends on is a pure function of (config, step): the batch draws, the link noise and the
learning rate, so restoring these files is enough for the next step to be identical.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from megbed.testbed.distill.errors import CheckpointError

CHECKPOINT_FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a ``state.json``), oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and d.is_dir() and (d / "state.json").is_file():
            out.append((int(m.group(1)), d))
    return sorted(out)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"{idx}.{name}"] = value.detach().to("cpu").contiguous()
    groups = []
    for g in sd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
    return tensors, groups


def save_checkpoint(run_dir: str | Path, step: int, weights: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` and drop all but the newest ``keep``.

    Parameters
    ----------
    run_dir : path
    step : int
        Optimiser steps done.
    weights : dict
        Trainable weights (CPU tensors).
    optimizer : torch.optim.Optimizer
    state : dict
        JSON-able run state (config, names, scaler, summary); ``step`` and the optimizer's param groups are added.
    keep : int
        Checkpoints kept (>= 1).
    """
    from safetensors.torch import save_file

    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        save_file(weights, str(tmp / "weights.safetensors"))
        opt_tensors, groups = _optimizer_tensors(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        full = {**state, "format": CHECKPOINT_FORMAT, "step": int(step), "param_groups": groups}
        (tmp / "state.json").write_text(json.dumps(full, indent=1, sort_keys=True), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in list_checkpoints(run_dir)[:-max(int(keep), 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def read_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} has no readable state.json: {exc}") from exc
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state.get('format')}, this code reads "
                              f"{CHECKPOINT_FORMAT}")
    return state


def load_checkpoint(path: str | Path, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor],
                                                                                dict[str, Any]]:
    """Restore the optimizer from checkpoint ``path``; returns ``(trainable weights, state.json)``.

    Raises
    ------
    CheckpointError
        Missing / unreadable files, or optimizer state that does not fit ``optimizer``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    state = read_state(path)
    try:
        weights = load_file(str(path / "weights.safetensors"))
        flat = load_file(str(path / "optimizer.safetensors"))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        idx, _, name = key.partition(".")
        per_param.setdefault(int(idx), {})[name] = value
    groups = []
    for g in state["param_groups"]:
        groups.append({k: (tuple(v) if k == "betas" else v) for k, v in g.items()})
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"optimizer state in {path} does not fit this run: {exc}") from exc
    return weights, state
