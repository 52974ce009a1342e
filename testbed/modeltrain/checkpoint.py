"""Training checkpoints: tensors in safetensors, everything else in JSON. Nothing is ever unpickled.

A checkpoint of a phase is ``ckpt_<step>.safetensors`` (module weights ``model.<name>.<param>``, EMA weights
``ema.<name>.<param>``, optimizer tensors ``optim.<param index>.<key>``) plus ``ckpt_<step>.json`` (step, timings,
metrics, optimizer hyper-parameters and scalars, the byte size of the tensor file). ``latest.json`` names the
newest complete checkpoint and is written last (atomically), so a crash mid-save leaves the previous one usable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

LATEST = "latest.json"
FORMAT = "megbed-train-ckpt/1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or does not match the modules it is loaded into."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``state`` (JSON), ``modules`` / ``ema`` (name -> state dict), ``optim`` (state dict)."""

    state: dict[str, Any]
    modules: dict[str, dict[str, torch.Tensor]]
    ema: dict[str, dict[str, torch.Tensor]]
    optim: dict[str, Any] | None


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _flat(prefix: str, named: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {}
    for name, sd in named.items():
        for k, v in sd.items():
            out[f"{prefix}.{name}.{k}"] = v.detach().to("cpu").contiguous().clone()
    return out


def _optim_split(sd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{int(idx)}.{k}"] = v.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(int(idx)), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(folder: str | Path, step: int, *, modules: Mapping[str, torch.nn.Module],
                    ema: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
                    optimizer: torch.optim.Optimizer | None = None, state: Mapping[str, Any] | None = None,
                    keep: int = 1) -> Path:
    """Write checkpoint ``step`` into ``folder`` and point ``latest.json`` at it; keep the newest ``keep``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _flat("model", {n: m.state_dict() for n, m in modules.items()})
    if ema:
        tensors.update(_flat("ema", ema))
    meta: dict[str, Any] = {"format": FORMAT, "step": int(step), "state": dict(state or {}),
                            "modules": sorted(modules), "ema": sorted(ema or {}), "optim": None}
    if optimizer is not None:
        opt_tensors, opt_meta = _optim_split(optimizer.state_dict())
        tensors.update(opt_tensors)
        meta["optim"] = opt_meta
    stem = f"ckpt_{int(step):07d}"
    weights = folder / f"{stem}.safetensors"
    tmp = weights.with_name(weights.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "step": str(int(step))})
    os.replace(tmp, weights)
    meta["tensor_file"] = weights.name
    meta["tensor_file_bytes"] = weights.stat().st_size
    _atomic_write_text(folder / f"{stem}.json", json.dumps(meta, indent=1, sort_keys=True))
    _atomic_write_text(folder / LATEST, json.dumps({"checkpoint": f"{stem}.json", "step": int(step)}))
    old = sorted(p for p in folder.glob("ckpt_*.json") if p.stem != stem)
    for p in old[: max(0, len(old) - (keep - 1))]:
        p.unlink(missing_ok=True)
        (folder / f"{p.stem}.safetensors").unlink(missing_ok=True)
    return folder / f"{stem}.json"


def has_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / LATEST).is_file()


def load_checkpoint(folder: str | Path) -> Checkpoint:
    """Read the checkpoint ``latest.json`` names.

    Raises
    ------
    CheckpointError
        No ``latest.json``, a missing or truncated tensor file, or a format this code does not read.
    """
    folder = Path(folder)
    try:
        latest = json.loads((folder / LATEST).read_text(encoding="utf-8"))
        meta = json.loads((folder / latest["checkpoint"]).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"no checkpoint in {folder}: {exc.filename} is missing") from exc
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint index in {folder} is unreadable: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder}: checkpoint format {meta.get('format')!r}, expected {FORMAT!r}")
    weights = folder / meta["tensor_file"]
    if not weights.is_file():
        raise CheckpointError(f"checkpoint tensor file {weights} is missing")
    if weights.stat().st_size != meta["tensor_file_bytes"]:
        raise CheckpointError(f"checkpoint tensor file {weights} has {weights.stat().st_size} bytes, "
                              f"expected {meta['tensor_file_bytes']} (truncated?)")
    tensors = load_file(str(weights))
    modules: dict[str, dict[str, torch.Tensor]] = {n: {} for n in meta["modules"]}
    ema: dict[str, dict[str, torch.Tensor]] = {n: {} for n in meta["ema"]}
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        kind, _, rest = key.partition(".")
        if kind == "optim":
            idx, _, name = rest.partition(".")
            opt_state.setdefault(int(idx), {})[name] = value
            continue
        name, _, param = rest.partition(".")
        (modules if kind == "model" else ema)[name][param] = value
    optim = None
    if meta["optim"] is not None:
        for idx, scalars in meta["optim"]["scalars"].items():
            opt_state.setdefault(int(idx), {}).update(scalars)
        optim = {"state": opt_state, "param_groups": meta["optim"]["param_groups"]}
    return Checkpoint({"step": meta["step"], **meta["state"]}, modules, ema, optim)


def restore_modules(ckpt: Checkpoint, modules: Mapping[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load weights (strictly) and optimizer state into live objects.

    Raises
    ------
    CheckpointError
        A module missing from the checkpoint, or tensors that do not fit (architecture changed).
    """
    for name, module in modules.items():
        if name not in ckpt.modules:
            raise CheckpointError(f"checkpoint has no weights for {name!r} (it holds {sorted(ckpt.modules)})")
        try:
            module.load_state_dict(ckpt.modules[name], strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint weights for {name!r} do not fit the model: {exc}") from exc
    if optimizer is not None:
        if ckpt.optim is None:
            raise CheckpointError("checkpoint holds no optimizer state")
        try:
            optimizer.load_state_dict(ckpt.optim)
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint optimizer state does not fit: {exc}") from exc
