"""Checkpoints and exported policies: safetensors for tensors, JSON for everything else -- never pickle.

A checkpoint directory holds ``state.safetensors`` and ``state.json``; both are written to temporary names and
renamed, JSON last, so a checkpoint whose JSON exists is complete. An exported policy (``policy.safetensors`` +
``policy.json``) holds only the actor and what is needed to run it: sizes, action bounds, the constraints and the
environment it was trained on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from megbed.testbed.policy.limits import Constraints
from megbed.testbed.policy.nets import ActionScaler, GaussianActor

POLICY_FORMAT = "megbed-policy"
POLICY_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint or exported policy is missing, incomplete or of another format."""


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(directory: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write ``state.safetensors`` then ``state.json`` into ``directory`` (created if needed)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    _atomic_write(d / "state.safetensors", lambda p: save_file(clean, str(p)))
    _atomic_write(d / "state.json", lambda p: p.write_text(json.dumps(meta, indent=1), encoding="utf-8"))
    return d


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    d = Path(directory)
    if not (d / "state.json").is_file() or not (d / "state.safetensors").is_file():
        raise CheckpointError(f"no complete checkpoint in {d} (state.json and state.safetensors)")
    meta = json.loads((d / "state.json").read_text(encoding="utf-8"))
    return load_file(str(d / "state.safetensors")), meta


def export_policy(directory: str | Path, actor: GaussianActor, *, algo: str, obs_dim: int, act_dim: int,
                  hidden, conditioned_sigma: bool, squash: bool, action_low, action_high, constraints: Constraints,
                  env_spec: dict, extra: dict | None = None) -> Path:
    """Write a deployable policy: actor weights and a JSON description."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in actor.state_dict().items()}
    _atomic_write(d / "policy.safetensors", lambda p: save_file(tensors, str(p)))
    meta = {
        "format": POLICY_FORMAT, "version": POLICY_VERSION, "algo": algo, "obs_dim": int(obs_dim),
        "act_dim": int(act_dim), "hidden": list(hidden), "conditioned_sigma": bool(conditioned_sigma),
        "squash": bool(squash), "mu_max": getattr(actor, "mu_max", None),
        "action_low": [float(x) for x in np.asarray(action_low).reshape(-1)],
        "action_high": [float(x) for x in np.asarray(action_high).reshape(-1)],
        "constraints": constraints.to_json(), "env": env_spec, **(extra or {}),
    }
    _atomic_write(d / "policy.json", lambda p: p.write_text(json.dumps(meta, indent=1), encoding="utf-8"))
    return d


class LearnedPolicy:
    """A trained actor acting deterministically (its mean) on observations.

    Attributes
    ----------
    name : str
        ``<algo>`` of the policy.
    meta : dict
        The ``policy.json`` content (constraints, environment spec, ...).
    """

    def __init__(self, actor: GaussianActor, meta: dict) -> None:
        self.actor = actor.eval()
        self.meta = meta
        self.name = meta.get("algo", "learned")
        self.scaler = ActionScaler(meta["action_low"], meta["action_high"])

    @classmethod
    def load(cls, directory: str | Path) -> LearnedPolicy:
        """Load ``policy.json`` + ``policy.safetensors`` from ``directory`` (or its ``policy/`` subfolder)."""
        d = Path(directory)
        if not (d / "policy.json").is_file() and (d / "policy" / "policy.json").is_file():
            d = d / "policy"
        if not (d / "policy.json").is_file():
            raise CheckpointError(f"{directory} holds no exported policy (policy.json)")
        meta = json.loads((d / "policy.json").read_text(encoding="utf-8"))
        if meta.get("format") != POLICY_FORMAT:
            raise CheckpointError(f"{d / 'policy.json'} is not a {POLICY_FORMAT} file")
        if int(meta.get("version", 0)) > POLICY_VERSION:
            raise CheckpointError(f"policy format version {meta['version']} is newer than this megbed understands")
        actor = GaussianActor(meta["obs_dim"], meta["act_dim"], tuple(meta["hidden"]),
                              conditioned_sigma=meta["conditioned_sigma"], squash=meta.get("squash", True),
                              mu_max=meta.get("mu_max"))
        if not (d / "policy.safetensors").is_file():
            raise CheckpointError(f"{d} lacks policy.safetensors")
        actor.load_state_dict(load_file(str(d / "policy.safetensors")))
        return cls(actor, meta)

    @torch.no_grad()
    def action(self, obs: np.ndarray, state=None) -> np.ndarray:
        """Environment action for one observation (``state`` is ignored: the policy sees only ``obs``)."""
        mu, _ = self.actor(torch.as_tensor(np.asarray(obs, dtype=np.float32)).unsqueeze(0))
        return self.scaler.to_env(self.actor.to_unit(mu[0]).numpy())
