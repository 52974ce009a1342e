"""What the trainer needs of a learning algorithm, and the rollout it hands over."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from megbed.megwire.validation import ConfigModel, tuple_of
from megbed.testbed.policy.limits import Constraints
from megbed.testbed.policy.nets import GaussianActor


class LearnerConfigError(ValueError):
    """A learner setting is unknown or invalid; the message names it."""


# MLP hidden sizes: at least one layer, each of at least one unit.
HiddenSizes = tuple_of(Annotated[int, Field(ge=1)], min_length=1)
Gains = tuple_of(Annotated[float, Field(ge=0.0)], min_length=3, max_length=3)  # (K_P, K_I, K_D)


class LearnerConfig(ConfigModel):
    """Hyperparameters of a learner: an unknown or mistyped setting raises :class:`LearnerConfigError` naming it."""

    error = LearnerConfigError
    key_word = "setting"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """The defaults updated by ``data`` (a checkpoint's ``config`` or the CLI's ``--set`` overrides)."""
        return cls.parse(data, what=f"{cls.__name__} settings")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


@dataclass
class Rollout:
    """Complete episodes collected with the current policy, in time order (N transitions).

    Attributes
    ----------
    obs, obs_next : ndarray, shape (N, ds)
    act : ndarray, shape (N, da)
        Raw learner actions (before squashing / clipping and scaling to the environment).
    reward : ndarray, shape (N,)
    cost : ndarray, shape (N, m)
        Constrained costs in units of their per-request limit.
    terminated, done : ndarray of bool, shape (N,)
        ``done`` = terminated or truncated (episode end).
    logp : ndarray, shape (N,)
        Log-probability of ``act`` under the collecting policy.
    """

    obs: np.ndarray
    act: np.ndarray
    reward: np.ndarray
    cost: np.ndarray
    obs_next: np.ndarray
    terminated: np.ndarray
    done: np.ndarray
    logp: np.ndarray


class Learner(ABC):
    """A constrained RL algorithm behind the common trainer.

    Subclasses own their networks and optimisers, update on each :class:`Rollout`, and round-trip their whole state
    through tensors (safetensors) and JSON (no pickle).
    """

    algo: str = "base"
    actor: GaussianActor

    config_type: type[LearnerConfig] = LearnerConfig

    def __init__(self, obs_dim: int, act_dim: int, constraints: Constraints, config: LearnerConfig | None = None,
                 seed: int = 0) -> None:
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.constraints = constraints
        self.n_costs = len(constraints.constrained)
        self.cfg = config if config is not None else self.config_type()
        self.seed = int(seed)
        self.torch_gen = torch.Generator().manual_seed(self.seed)
        self.np_rng = np.random.default_rng(self.seed)
        torch.manual_seed(self.seed)  # the networks start from the seed
        self.build()

    @abstractmethod
    def build(self) -> None:
        """Create the networks, optimisers and state from ``self.cfg`` (called once by ``__init__``)."""

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> tuple[np.ndarray, float]:
        """Raw action in the learner's space for one observation, and its log-probability."""
        o = torch.as_tensor(np.asarray(obs, dtype=np.float32)).unsqueeze(0)
        mu, std = self.actor(o)
        if deterministic:
            return mu[0].numpy().astype(np.float32), 0.0
        a = mu + std * torch.randn(mu.shape, generator=self.torch_gen)
        logp = (-0.5 * ((a - mu) / std).pow(2) - std.log() - 0.5 * np.log(2 * np.pi)).sum(-1)
        return a[0].numpy().astype(np.float32), float(logp[0])

    def unit_action(self, raw: np.ndarray) -> np.ndarray:
        """Executed action in [-1, 1]^d for a raw action (tanh or clip, see :class:`GaussianActor`)."""
        with torch.no_grad():
            return self.actor.to_unit(torch.as_tensor(np.asarray(raw, dtype=np.float32))).numpy()

    @abstractmethod
    def learn(self, rollout: Rollout) -> dict[str, float]:
        """Update on freshly collected episodes; returns statistics for the training log."""

    @abstractmethod
    def multipliers(self) -> dict[str, float]:
        """Current Lagrange multipliers per constrained cost (and other duals), for the log."""

    @abstractmethod
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the learner's state (networks, optimisers, RNG)."""

    @abstractmethod
    def state_json(self) -> dict:
        """Every non-tensor piece of the learner's state (counters, duals, config)."""

    @abstractmethod
    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Restore what :meth:`state_tensors` and :meth:`state_json` saved."""

    def _networks(self) -> tuple[dict[str, torch.nn.Module], dict[str, torch.optim.Optimizer]]:
        """The modules and optimisers a checkpoint holds, by the name their tensors are keyed under."""
        raise NotImplementedError

    def _network_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors of every module and optimiser of :meth:`_networks` (``<name>.<param>``, ``<name>.state.*``)."""
        modules, optims = self._networks()
        t: dict[str, torch.Tensor] = {}
        for name, module in modules.items():
            t.update(module_tensors(name, module))
        for name, opt in optims.items():
            t.update(optimizer_state(name, opt)[0])
        return t

    def _optimizer_json(self) -> dict[str, dict]:
        """The JSON half of each optimiser's state, keyed by its name."""
        return {name: optimizer_state(name, opt)[1] for name, opt in self._networks()[1].items()}

    def _load_networks(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Restore what :meth:`_network_tensors` and :meth:`_optimizer_json` saved."""
        modules, optims = self._networks()
        for name, module in modules.items():
            load_module(name, module, tensors)
        for name, opt in optims.items():
            load_optimizer_state(name, opt, tensors, meta[name])

    def _rng_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        return {"rng.torch": self.torch_gen.get_state()}, {"np_rng": _jsonable(self.np_rng.bit_generator.state)}

    def _load_rng(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.torch_gen.set_state(tensors["rng.torch"])
        self.np_rng.bit_generator.state = meta["np_rng"]


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (np.integer,)):
        return int(obj)
    return obj


def optimizer_state(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser's state split into tensors (keyed ``prefix.state.<param>.<name>``) and JSON."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.state.{pid}.{name}"] = value.detach().clone().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_state(prefix: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    head = prefix + ".state."
    for key, value in tensors.items():
        if key.startswith(head):
            pid, name = key[len(head):].split(".", 1)
            state.setdefault(int(pid), {})[name] = value.clone()
    for pid, extra in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def load_module(prefix: str, module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    head = prefix + "."
    sd = {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}
    module.load_state_dict(sd)
