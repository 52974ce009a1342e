"""Split plans: which node (``"es"`` / ``"ue"``) runs which stage, in order, and what travels between them.

Presets (:func:`plan_for`):

==========  ==========================================================  ==================================
scheme      ES                                                          UE
==========  ==========================================================  ==================================
meg, k = N  text_encode, denoise[0,N), merge, serialize                 deserialize, unmerge, decode
meg, k < N  (text_encode,) denoise[0,k), merge, serialize (*hybrid*)    deserialize, unmerge, text_encode,
                                                                        denoise[k,N), decode
ceg         text_encode, denoise[0,N), decode, image_encode             image_decode
ue_local    --                                                          text_encode, denoise[0,N), decode
==========  ==========================================================  ==================================

``"hybrid"`` is accepted as a preset name for MEG with k < N; the plan's ``scheme`` stays ``"meg"`` (the dataset's
scheme column) and ``hybrid`` is True. With k = 0 the ES encodes no text: it only draws the initial noise.
"""

from __future__ import annotations

from dataclasses import dataclass

from megbed.megwire import Frame
from megbed.megwire.vocab import NODE_STAGES, PRESETS, SCHEMES
from megbed.testbed.ldm.model import LatentDecoder, LdmModel
from megbed.testbed.ldm.stages import (
    IMAGE_KIND,
    DecodeStage,
    DenoiseStage,
    DeserializeStage,
    ImageDecodeStage,
    ImageEncodeStage,
    MergeStage,
    SerializeStage,
    Stage,
    StageError,
    TextEncodeStage,
    UnmergeStage,
)
from megbed.testbed.request import Request, RequestError

NODES = ("es", "ue")
STAGE_NAMES = NODE_STAGES


@dataclass(frozen=True)
class SplitPlan:
    """The stages each node runs, in order.

    Attributes
    ----------
    scheme : str
        ``"meg"``, ``"ceg"`` or ``"ue_local"`` (the dataset's scheme column).
    es, ue : tuple[str, ...]
        Stage names per node, in execution order.
    hybrid : bool
        MEG with k < N (the UE finishes the denoising steps).
    """

    scheme: str
    es: tuple[str, ...]
    ue: tuple[str, ...]
    hybrid: bool = False

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise RequestError(f"unknown scheme {self.scheme!r}; known: {', '.join(SCHEMES)}")
        unknown = sorted(set(self.es + self.ue) - set(STAGE_NAMES))
        if unknown:
            raise RequestError(f"split plan names unknown stages {unknown}")

    def stages_of(self, node: str) -> tuple[str, ...]:
        if node not in NODES:
            raise ValueError(f"node must be one of {NODES}, got {node!r}")
        return self.es if node == "es" else self.ue

    def nodes_of(self, stage: str) -> tuple[str, ...]:
        """Nodes that run ``stage`` (``text_encode`` / ``denoise`` run on both in a hybrid split)."""
        return tuple(node for node in NODES if stage in self.stages_of(node))

    @property
    def transfer(self) -> str | None:
        """State name of the frame that travels ES -> UE (``"handoff_frame"``, ``"image_frame"``, or None)."""
        if "serialize" in self.es:
            return "handoff_frame"
        if "image_encode" in self.es:
            return "image_frame"
        return None


def plan_for(scheme: str, request: Request) -> SplitPlan:
    """The preset plan of ``scheme`` (``meg``, ``hybrid``, ``ceg``, ``ue_local``) for ``request``'s N and k.

    Raises
    ------
    RequestError
        Unknown preset, or ``hybrid`` with k = N.
    """
    k, n = request.es_steps, request.n_steps
    if scheme == "hybrid":
        if k >= n:
            raise RequestError(f"hybrid split needs k < N, got k={k}, N={n}")
        scheme = "meg"
    if scheme == "meg":
        if k == n:
            return SplitPlan("meg", ("text_encode", "denoise", "merge", "serialize"),
                             ("deserialize", "unmerge", "decode"))
        es = ("denoise", "merge", "serialize") if k == 0 else ("text_encode", "denoise", "merge", "serialize")
        return SplitPlan("meg", es, ("deserialize", "unmerge", "text_encode", "denoise", "decode"), hybrid=True)
    if scheme == "ceg":
        return SplitPlan("ceg", ("text_encode", "denoise", "decode", "image_encode"), ("image_decode",))
    if scheme == "ue_local":
        return SplitPlan("ue_local", (), ("text_encode", "denoise", "decode"))
    raise RequestError(f"unknown scheme {scheme!r}; known presets: {', '.join(PRESETS)}")


def ue_plan_for_frame(frame: Frame) -> SplitPlan:
    """The plan a UE follows for a frame it received (a handoff -> MEG, an image -> CEG)."""
    request = Request.from_meta(frame.meta.get("request"), runtime=True)
    return plan_for("ceg" if frame.kind == IMAGE_KIND else "meg", request)


def build_stages(plan: SplitPlan, node: str, model: LdmModel | None, *,
                 decoder: LatentDecoder | None = None) -> list[Stage]:
    """Stage objects for ``node``'s part of ``plan``.

    Parameters
    ----------
    plan : SplitPlan
    node : str
        ``"es"`` or ``"ue"``.
    model : LdmModel or None
        This node's model (None only for a node whose stages need none: the CEG UE).
    decoder : LatentDecoder, optional
        Decoder for this node's decode stage (e.g. a distilled UE decoder); default ``model.decoder``.
    """
    names = plan.stages_of(node)
    needs_model = set(names) - {"merge", "unmerge", "image_encode", "image_decode"} - ({"decode"} if decoder else set())
    if model is None and needs_model:
        raise StageError(f"stages {sorted(needs_model)} on the {node.upper()} need a loaded model")
    stages: list[Stage] = []
    for name in names:
        if name == "text_encode":
            stages.append(TextEncodeStage(model))
        elif name == "denoise":
            stop = "split" if (plan.scheme == "meg" and node == "es") else "end"
            stages.append(DenoiseStage(model, stop=stop, tome_node=node))
        elif name == "merge":
            stages.append(MergeStage())
        elif name == "serialize":
            stages.append(SerializeStage(model))
        elif name == "deserialize":
            stages.append(DeserializeStage(model))
        elif name == "unmerge":
            stages.append(UnmergeStage())
        elif name == "decode":
            stages.append(DecodeStage(decoder if decoder is not None else model.decoder))
        elif name == "image_encode":
            stages.append(ImageEncodeStage())
        elif name == "image_decode":
            stages.append(ImageDecodeStage(model.device if model is not None else "cpu"))
        else:  # pragma: no cover - SplitPlan validates names
            raise StageError(f"no stage named {name!r}")
    return stages
