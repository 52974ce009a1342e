"""Samplers that can be stopped after step k on one node and resumed bit-exactly on another.

Resuming is explicit (never ``pipe(latents=...)``, which rescales by ``init_noise_sigma``): the receiver rebuilds the
scheduler from its class and config, calls ``set_timesteps(N)`` and ``set_begin_index(k)``, restores the solver
history the sender had (DPM++ ``model_outputs`` / ``lower_order_nums``, UniPC ``last_sample`` / ``timestep_list`` /
``this_order``, ...) and, for samplers that draw noise while stepping, the noise generator's state. Each supported
sampler lists exactly which attributes carry that history (:class:`SchedulerSpec`); everything else in a scheduler
is a function of its config and N.

The noise generator is always a CPU ``torch.Generator`` (noise is drawn on the CPU and moved to the device, as
diffusers does for CPU generators), so its state is portable between an ES on a GPU and a UE on a CPU.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.utils.torch_utils import randn_tensor

from megbed.testbed.ldm.errors import SamplerStateError
from megbed.testbed.request import RequestError

_WIRE = {"float16": np.float16, "float32": np.float32}


def _never(config: Mapping[str, Any]) -> bool:
    return False


def _always(config: Mapping[str, Any]) -> bool:
    return True


def _dpm_sde(config: Mapping[str, Any]) -> bool:
    return config.get("algorithm_type") in ("sde-dpmsolver", "sde-dpmsolver++")


@dataclass(frozen=True)
class SchedulerSpec:
    """How to build one sampler and which of its attributes hold the history a resume needs.

    Attributes
    ----------
    name : str
        Short name used in requests and on the wire (``"dpmpp_2m"``).
    cls : type
        diffusers scheduler class.
    overrides : dict
        Config entries forced when the sampler is built from a model's scheduler config.
    value_lists : tuple[str, ...]
        Attributes holding ``list[Tensor | None]`` of latent-shaped float data (sent as channel ``values``).
    value_tensors : tuple[str, ...]
        Attributes holding one latent-shaped float tensor or None (``values``).
    side_lists : tuple[str, ...]
        Attributes holding ``list[Tensor | None]`` of 0-d timesteps (sent exactly, channel ``side``).
    scalars : tuple[str, ...]
        Integer / float attributes (carried in the JSON header).
    stochastic : callable
        ``config -> bool``: whether ``step`` draws noise from the generator.
    """

    name: str
    cls: type
    overrides: dict[str, Any] = field(default_factory=dict)
    value_lists: tuple[str, ...] = ()
    value_tensors: tuple[str, ...] = ()
    side_lists: tuple[str, ...] = ()
    scalars: tuple[str, ...] = ()
    stochastic: Callable[[Mapping[str, Any]], bool] = _never


SCHEDULERS: dict[str, SchedulerSpec] = {
    spec.name: spec
    for spec in (
        SchedulerSpec("ddim", DDIMScheduler),
        SchedulerSpec("euler", EulerDiscreteScheduler),
        SchedulerSpec("euler_a", EulerAncestralDiscreteScheduler, stochastic=_always),
        SchedulerSpec(
            "dpmpp_2m", DPMSolverMultistepScheduler,
            overrides={"algorithm_type": "dpmsolver++", "solver_order": 2},
            value_lists=("model_outputs",), scalars=("lower_order_nums",), stochastic=_dpm_sde,
        ),
        SchedulerSpec(
            "unipc", UniPCMultistepScheduler,
            value_lists=("model_outputs",), value_tensors=("last_sample",), side_lists=("timestep_list",),
            scalars=("lower_order_nums", "this_order"),
        ),
        SchedulerSpec("lcm", LCMScheduler, stochastic=_always),
    )
}
# megbed.testbed.request.SCHEDULER_NAMES names these for the request contract without importing diffusers (a test keeps
# the two equal).
_BY_CLASS = {spec.cls.__name__: spec for spec in SCHEDULERS.values()}


def spec_for_class(class_name: str) -> SchedulerSpec | None:
    """The spec whose diffusers class is ``class_name`` (``None`` when unsupported)."""
    return _BY_CLASS.get(class_name)


def resolve_scheduler_name(name: str | None, model_scheduler: Any) -> str:
    """The sampler a request will use: ``name``, or the model's own scheduler when ``name`` is None.

    Raises
    ------
    RequestError
        ``name`` is unknown, or it is None and the model's scheduler class is not one that can be split.
    """
    if name is not None:
        if name not in SCHEDULERS:
            raise RequestError(f"unknown scheduler {name!r}; known: {', '.join(sorted(SCHEDULERS))}")
        return name
    cls_name = type(model_scheduler).__name__
    spec = spec_for_class(cls_name)
    if spec is None:
        raise RequestError(
            f"the model's scheduler {cls_name} cannot be stopped and resumed between nodes; "
            f"choose one of {', '.join(sorted(SCHEDULERS))} (--scheduler)"
        )
    return spec.name


def build_scheduler(name: str, base_config: Mapping[str, Any]) -> Any:
    """A fresh scheduler of sampler ``name`` from a model's scheduler config (unknown keys are ignored).

    When the model's own scheduler already has this class, its config is kept as is (its solver order, sigmas
    schedule, ...); otherwise the spec's overrides apply on top of the shared noise-schedule entries.
    """
    spec = SCHEDULERS[name]
    config = dict(base_config)
    if config.get("_class_name") != spec.cls.__name__:
        config.update(spec.overrides)
    return spec.cls.from_config(config)


def _config_json(config: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in dict(config).items():
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, np.ndarray):
            value = value.tolist()
        out[key] = value
    return out


def _step_kwargs(scheduler: Any, generator: torch.Generator) -> dict[str, Any]:
    # As the stock pipelines do: eta = 0 for DDIM, the generator for samplers that accept one.
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = 0.0
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


@dataclass
class SamplerState:
    """A live sampler part-way through an N-step schedule (everything but the latents).

    Attributes
    ----------
    name : str
        Sampler name (key of :data:`SCHEDULERS`).
    scheduler : diffusers SchedulerMixin
        The scheduler, with ``set_timesteps(num_steps)`` done and its history up to ``step``.
    generator : torch.Generator
        CPU generator for the initial noise and any per-step noise.
    num_steps : int
        N.
    step : int
        Steps completed so far (the next step to run has this index).
    """

    name: str
    scheduler: Any
    generator: torch.Generator
    num_steps: int
    step: int = 0

    @property
    def spec(self) -> SchedulerSpec:
        return SCHEDULERS[self.name]

    @property
    def timesteps(self) -> torch.Tensor:
        return self.scheduler.timesteps

    @property
    def step_kwargs(self) -> dict[str, Any]:
        return _step_kwargs(self.scheduler, self.generator)

    @property
    def stochastic(self) -> bool:
        return self.spec.stochastic(self.scheduler.config)

    def initial_noise(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """x_T as the stock pipelines draw it: ``randn(generator) * init_noise_sigma``."""
        noise = randn_tensor(shape, generator=self.generator, device=device, dtype=dtype)
        return noise * self.scheduler.init_noise_sigma

    # --- snapshot / restore -----------------------------------------------------------------------------------

    def snapshot(self, wire_dtype: str = "float32", prefix: str = "solver.") -> tuple[dict, dict, dict]:
        """The history a resume needs, as ``(meta, buffers, channel_roles)``.

        ``meta`` is JSON (class, config, N, k, scalars, which list entries are set); ``buffers`` are raw arrays
        (latent-shaped history in ``wire_dtype``, timesteps and generator state exact); ``channel_roles`` maps each
        buffer name to ``"values"`` or ``"side"``.
        """
        spec, sch = self.spec, self.scheduler
        meta: dict[str, Any] = {
            "name": self.name, "class": type(sch).__name__, "config": _config_json(sch.config),
            "num_steps": self.num_steps, "step": self.step, "scalars": {}, "lists": {}, "tensors": {},
            "generator": False,
        }
        buffers: dict[str, np.ndarray] = {}
        roles: dict[str, str] = {}
        for attr in spec.scalars:
            value = getattr(sch, attr, None)
            meta["scalars"][attr] = value if value is None else (int(value) if isinstance(value, int) else float(value))
        for attr in spec.value_lists:
            items = list(getattr(sch, attr))
            meta["lists"][attr] = [item is not None for item in items]
            for i, item in enumerate(items):
                if item is not None:
                    name = f"{prefix}{attr}.{i}"
                    buffers[name] = item.detach().to("cpu", torch.float32).numpy().astype(_WIRE[wire_dtype])
                    roles[name] = "values"
        for attr in spec.value_tensors:
            item = getattr(sch, attr, None)
            meta["tensors"][attr] = item is not None
            if item is not None:
                name = f"{prefix}{attr}"
                buffers[name] = item.detach().to("cpu", torch.float32).numpy().astype(_WIRE[wire_dtype])
                roles[name] = "values"
        for attr in spec.side_lists:
            items = list(getattr(sch, attr))
            present = [item is not None for item in items]
            meta["lists"][attr] = present
            values = [torch.as_tensor(item).detach().cpu() for item in items if item is not None]
            dtype = values[0].dtype if values else self.timesteps.dtype
            name = f"{prefix}{attr}"
            buffers[name] = torch.stack(values).to(dtype).numpy() if values else np.zeros(0, np.int64)
            roles[name] = "side"
        if self.stochastic:
            meta["generator"] = True
            buffers[f"{prefix}generator"] = self.generator.get_state().numpy().copy()
            roles[f"{prefix}generator"] = "side"
        return meta, buffers, roles

    @classmethod
    def restore(
        cls,
        meta: Mapping[str, Any],
        buffers: Mapping[str, np.ndarray],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        prefix: str = "solver.",
    ) -> SamplerState:
        """Rebuild a sampler at step k from :meth:`snapshot` output, on ``device`` with history in ``dtype``.

        Raises
        ------
        SamplerStateError
            Unknown sampler, class mismatch, missing buffers, or a step outside [0, N].
        """
        try:
            name, cls_name, config = meta["name"], meta["class"], meta["config"]
            num_steps, step = int(meta["num_steps"]), int(meta["step"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SamplerStateError(f"sampler snapshot is missing or has a bad field: {exc}") from exc
        spec = SCHEDULERS.get(name)
        if spec is None or spec.cls.__name__ != cls_name:
            raise SamplerStateError(f"sampler {name!r} / class {cls_name!r} is not one this node can resume")
        if not 0 <= step <= num_steps or num_steps < 1:
            raise SamplerStateError(f"sampler snapshot at step {step} of {num_steps} is out of range")
        sch = spec.cls.from_config(config)
        sch.set_timesteps(num_steps, device=device)
        if len(sch.timesteps) != num_steps:
            raise SamplerStateError(f"{cls_name} built {len(sch.timesteps)} timesteps for N={num_steps}")
        if hasattr(sch, "set_begin_index"):
            sch.set_begin_index(step)

        def buffer(name: str) -> np.ndarray:
            if name not in buffers:
                raise SamplerStateError(f"sampler snapshot lacks buffer {name!r}")
            return buffers[name]

        def tensor(name: str) -> torch.Tensor:
            return torch.from_numpy(np.array(buffer(name), dtype=np.float32)).to(device=device, dtype=dtype)

        for attr, value in dict(meta.get("scalars", {})).items():
            if attr not in spec.scalars:
                raise SamplerStateError(f"sampler {name!r} has no scalar state {attr!r}")
            setattr(sch, attr, value)
        for attr in spec.value_lists:
            present = list(meta.get("lists", {}).get(attr, []))
            setattr(sch, attr, [tensor(f"{prefix}{attr}.{i}") if p else None for i, p in enumerate(present)])
        for attr in spec.value_tensors:
            setattr(sch, attr, tensor(f"{prefix}{attr}") if meta.get("tensors", {}).get(attr) else None)
        for attr in spec.side_lists:
            present = list(meta.get("lists", {}).get(attr, []))
            values = iter(torch.from_numpy(np.array(buffer(f"{prefix}{attr}"))).to(device))
            try:
                setattr(sch, attr, [next(values) if p else None for p in present])
            except StopIteration as exc:
                raise SamplerStateError(f"sampler buffer {prefix}{attr} has fewer entries than its mask") from exc
        generator = torch.Generator("cpu")
        if meta.get("generator"):
            state = buffer(f"{prefix}generator")
            if state.dtype != np.uint8:
                raise SamplerStateError(f"generator state must be uint8, got {state.dtype}")
            try:
                generator.set_state(torch.from_numpy(np.array(state)))
            except RuntimeError as exc:
                raise SamplerStateError(f"generator state rejected by torch: {exc}") from exc
        return cls(name, sch, generator, num_steps, step)


def new_sampler(name: str, base_config: Mapping[str, Any], num_steps: int, seed: int,
                device: torch.device | str = "cpu") -> SamplerState:
    """A sampler at step 0 of an N-step schedule, its generator seeded with ``seed``."""
    if num_steps < 1:
        raise RequestError(f"number of steps N={num_steps} must be >= 1")
    sch = build_scheduler(name, base_config)
    sch.set_timesteps(num_steps, device=device)
    if len(sch.timesteps) != num_steps:
        raise RequestError(f"{type(sch).__name__} cannot run N={num_steps} steps with this config "
                           f"(it built {len(sch.timesteps)} timesteps)")
    if hasattr(sch, "set_begin_index"):
        sch.set_begin_index(0)
    return SamplerState(name, sch, torch.Generator("cpu").manual_seed(int(seed)), num_steps, 0)
