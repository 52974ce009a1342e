"""The in-process split runner: both halves of a plan in one process, the frame going through bytes in between.

Measurement and the channel plug in without changes here:

* ``stage_hook(node, stage) -> context manager`` wraps every stage call (probes: power windows, timestamps);
* ``link(frame) -> frame`` is applied to the frame travelling ES -> UE (the channel emulator corrupts the
  ``values`` buffers there and writes ``meta["delivery"]``).

Each half is runnable alone (:func:`run_node`), which is what the ES / UE node processes do: the ES from the
request, the UE from the frame it received.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from megbed.megwire import Frame, pack, unpack
from megbed.testbed.ldm.model import LatentDecoder, LdmModel, device_sync
from megbed.testbed.ldm.plan import SplitPlan, build_stages, plan_for
from megbed.testbed.ldm.stages import Stage
from megbed.testbed.request import Request

StageHook = Callable[[str, str], contextlib.AbstractContextManager]
Link = Callable[[Frame], Frame]


def no_hook(node: str, stage: str) -> contextlib.AbstractContextManager:
    """The default stage hook: does nothing."""
    return contextlib.nullcontext()


def identity_link(frame: Frame) -> Frame:
    """The default link: a noiseless channel."""
    return frame


@dataclass(frozen=True)
class StageTiming:
    """Wall time of one stage call on one node (device synchronised before both stamps).

    Attributes
    ----------
    node : str
        ``"es"`` or ``"ue"``.
    stage : str
        Stage name.
    latency_s : float
        Duration in seconds (``perf_counter_ns``).
    """

    node: str
    stage: str
    latency_s: float


def run_node(stages: Sequence[Stage], state: Mapping[str, Any], node: str, *, stage_hook: StageHook | None = None,
             device: torch.device | str | None = None) -> tuple[dict[str, Any], list[StageTiming]]:
    """Run one node's stages in order on ``state``.

    Parameters
    ----------
    stages : sequence of Stage
        From :func:`~megbed.testbed.ldm.plan.build_stages`.
    state : mapping
        Initial state: ``{"request": ...}`` on the ES (and UE-local), ``{"handoff_frame": ...}`` or
        ``{"image_frame": ...}`` on the UE.
    node : str
        Passed to ``stage_hook``.
    stage_hook : callable, optional
        ``(node, stage) -> context manager`` entered around each stage.
    device : optional
        Synchronised before each timestamp so GPU work is counted in its stage.

    Returns
    -------
    (dict, list[StageTiming])
        The final state and one timing per stage.
    """
    hook = stage_hook or no_hook
    state = dict(state)
    timings = []
    for stage in stages:
        with hook(node, stage.name):
            device_sync(device)
            t0 = time.perf_counter_ns()
            out = stage(state)
            device_sync(device)
            t1 = time.perf_counter_ns()
        state.update(out)
        timings.append(StageTiming(node, stage.name, (t1 - t0) / 1e9))
    return state, timings


@dataclass
class SplitResult:
    """What one in-process split run produced.

    Attributes
    ----------
    image : torch.Tensor
        ``[1, 3, H, W]`` float32 in [0, 1], on the UE.
    request : Request
        The resolved request.
    plan : SplitPlan
    timings : list[StageTiming]
        ES stages then UE stages.
    transfer_nbytes : int or None
        Bytes of the frame that travelled (``len(pack(frame))``: the handoff, or the PNG image for CEG).
    sent_frame, received_frame : Frame or None
        The frame as the ES sent it and as the UE got it (after ``link``).
    es_state, ue_state : dict
        Final states of both halves (latents, sampler, handoff, ...).
    """

    image: torch.Tensor
    request: Request
    plan: SplitPlan
    timings: list[StageTiming] = field(default_factory=list)
    transfer_nbytes: int | None = None
    sent_frame: Frame | None = None
    received_frame: Frame | None = None
    es_state: dict[str, Any] = field(default_factory=dict)
    ue_state: dict[str, Any] = field(default_factory=dict)

    @property
    def handoff_nbytes(self) -> int | None:
        """Alias of ``transfer_nbytes`` for MEG plans."""
        return self.transfer_nbytes


def run_split(
    request: Request,
    es_model: LdmModel,
    ue_model: LdmModel | None = None,
    *,
    scheme: str = "meg",
    plan: SplitPlan | None = None,
    stage_hook: StageHook | None = None,
    link: Link | None = None,
    ue_decoder: LatentDecoder | None = None,
) -> SplitResult:
    """Run a request through both halves of a split in this process.

    Parameters
    ----------
    request : Request
    es_model : LdmModel
        The ES's model.
    ue_model : LdmModel, optional
        The UE's model (default: the ES's; the U-Net's tomesd patch is switched per stage).
    scheme : str
        Preset when ``plan`` is None: ``meg`` (hybrid when k < N), ``hybrid``, ``ceg``, ``ue_local``.
    plan : SplitPlan, optional
        An explicit plan.
    stage_hook : callable, optional
        ``(node, stage) -> context manager`` around every stage call.
    link : callable, optional
        ``Frame -> Frame`` applied to the travelling frame after it was packed to bytes and unpacked.
    ue_decoder : LatentDecoder, optional
        The UE's decoder (default: ``ue_model.decoder``).
    """
    ue_model = ue_model or es_model
    request = es_model.resolve(request)
    plan = plan or plan_for(scheme, request)
    link = link or identity_link
    es_stages = build_stages(plan, "es", es_model)
    ue_stages = build_stages(plan, "ue", ue_model, decoder=ue_decoder)
    es_state, timings = run_node(es_stages, {"request": request}, "es", stage_hook=stage_hook,
                                 device=es_model.device)
    result = SplitResult(image=torch.empty(0), request=request, plan=plan, es_state=es_state)
    key = plan.transfer
    if key is None:
        ue_input: dict[str, Any] = {"request": request}
    else:
        sent = es_state[key]
        data = pack(sent)
        result.transfer_nbytes = len(data)
        received = link(unpack(data))
        result.sent_frame, result.received_frame = sent, received
        ue_input = {key: received}
    ue_state, ue_timings = run_node(ue_stages, ue_input, "ue", stage_hook=stage_hook, device=ue_model.device)
    result.timings = timings + ue_timings
    result.ue_state = ue_state
    result.image = ue_state["image"]
    return result
