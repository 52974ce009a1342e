"""The shape of a campaign YAML file, as pydantic models: the checks of every single key and the published JSON
Schema (``megbed campaign schema`` -> ``campaigns/campaign.schema.json``) come from these declarations.

Checks that compare keys (``k <= N``), read files (model folder, prompts file, link file, profiles) or depend on the
spec's folder live in :mod:`megbed.testbed.campaign.spec`; see its docstring for the file layout with every key.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema

from megbed.channel_emu.config import MODELS as LINK_MODELS
from megbed.channel_emu.config import MODES as TX_MODES
from megbed.megwire.validation import StrictModel, Text, integer, number, section, short, values_of
from megbed.megwire.vocab import MAX_MERGE_RATIO as MAX_BETA
from megbed.megwire.vocab import MAX_TOME_RATIO as MAX_TOME
from megbed.megwire.vocab import SCHEMES, WIRE_DTYPES
from megbed.testbed.ldm.merge_methods import MERGE_METHODS

KEEP_IMAGES = ("all", "first", "none")
DECODERS = ("base", "distilled", "auto")
# A run's folder is RUNS/<timestamp>-<name>: the name must stay one plain path component.
RUN_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")

Steps = integer(1, 1000)


def _run_name(value: str) -> str:
    if not RUN_NAME_RE.fullmatch(value):
        raise ValueError(f"{short(value)} is not a plain run name (1-64 of letters, digits, '.', '_', '-', not "
                         "starting with '.' or '-'): it names the run's folder under --runs")
    return value


def _torch_device(value: str) -> str:
    if not (value in ("cpu", "mps") or value.startswith("cuda")):
        raise ValueError(f"{short(value)} is not a torch device (cpu, cuda, cuda:N, mps)")
    return value


def _scheduler(value: str) -> str:
    from megbed.testbed.ldm.schedulers import SCHEDULERS

    if value not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {short(value)}; known: {', '.join(sorted(SCHEDULERS))}")
    return value


def _zmq_address(value: str) -> str:
    if not value.startswith(("tcp://", "ipc://", "inproc://")):
        raise ValueError(f"{short(value)} is not a ZeroMQ address (tcp://HOST:PORT)")
    return value


def _nodes_local(value: Any) -> Any:
    if value == "local":
        return None
    if not isinstance(value, dict):
        raise ValueError(f"must be 'local' or a mapping {{es, ue, channel_pub}}, got {short(value)}")
    return value


RunName = Annotated[Text, AfterValidator(_run_name), WithJsonSchema({"type": "string", "pattern": f"^{RUN_NAME_RE.pattern}$"})]
TorchDevice = Annotated[Text, AfterValidator(_torch_device), WithJsonSchema({"type": "string", "pattern": "^(cpu|mps|cuda.*)$"})]
Pixels = Annotated[int, Field(ge=8, le=8192, multiple_of=8)]
Address = Annotated[Text, AfterValidator(_zmq_address), WithJsonSchema({"type": "string", "pattern": "^(tcp|ipc|inproc)://"})]
Name = Annotated[Text, Field(min_length=1)]


class Device(StrictModel):
    """Torch device of each local node."""

    es: TorchDevice = "cpu"
    ue: TorchDevice = "cpu"


class Image(StrictModel):
    """Image size (null: the model's), CFG scale, sampler (null: the model's), wire dtype, UE VAE tiling."""

    height_px: Pixels | None = None
    width_px: Pixels | None = None
    guidance_scale: number(0.0, 100.0) = 5.0
    scheduler: Annotated[Text, AfterValidator(_scheduler)] | None = None
    wire_dtype: Literal[WIRE_DTYPES] = "float16"
    vae_tiling: bool = False


class Grid(StrictModel):
    """The axes of the campaign grid (each a list; a single value is a list of one)."""

    n_steps: values_of(Steps) = [8]
    ceg_n_steps: values_of(Steps) | None = None
    es_steps: values_of(integer(0, 1000) | None) = [None]
    merge_ratio: values_of(number(0.0, MAX_BETA)) = [0.0]
    merge_method: values_of(Literal[MERGE_METHODS]) | None = None
    tome_ratio_es: values_of(number(0.0, MAX_TOME)) = [0.0]
    tome_ratio_ue: values_of(number(0.0, MAX_TOME)) = [0.0]
    link_model: values_of(Literal[LINK_MODELS]) = ["awgn"]
    distance_m: values_of(number(1.0, 1e6)) | None = None
    snr_db: values_of(number(-50.0, 80.0)) | None = None
    tx_mode: values_of(Literal[TX_MODES]) = ["analog"]
    decoder: values_of(Literal[DECODERS]) | None = None


class Reference(StrictModel):
    """N_max of the quality reference (beta = 0, no tomesd, noiseless); null: max(12, largest N)."""

    n_steps: Steps | None = None


class Order(StrictModel):
    randomize: bool = True
    seed: integer(0, 2**32 - 1) = 0


class Nodes(StrictModel):
    """Remote nodes: the ES, the UEs and the channel broker's publisher (null: none)."""

    es: Address
    ue: values_of(Address)
    channel_pub: Address | None = None


class Profiles(StrictModel):
    """Firmware profile names (null: auto-detect the probes); the UE may be ``emulate:<profile>|<factor>x``."""

    es: Name | None = None
    ue: Name | None = None


class Timeouts(StrictModel):
    request_s: number(0.1, 86400.0) = 600.0
    heartbeat_s: number(0.01, 60.0) = 1.0
    dead_after_s: number(0.05, 3600.0) = 10.0


class Curve(StrictModel):
    keys_dir: Text


class CampaignFile(StrictModel):
    """A campaign spec file (``megbed campaign check FILE`` validates one; see ``megbed.testbed.campaign.spec``)."""

    model_config = StrictModel.model_config | {"title": "megbed campaign spec"}

    name: RunName | None = None
    model: Text = "default"
    device: section(Device) = Device()
    prompts: values_of(Text) | None = None
    prompts_file: Text | None = None
    negative_prompt: Text = ""
    seeds: values_of(integer(0, 2**63 - 1)) = [0]
    image: section(Image) = Image()
    schemes: values_of(Literal[SCHEMES]) = list(SCHEMES)
    grid: Grid
    reference: section(Reference) = Reference()
    repetitions: integer(1, 100000) = 1
    warmup: integer(0, 1000) = 1
    cooldown_s: number(0.0, 3600.0) = 0.0
    order: section(Order) = Order()
    nodes: Annotated[Nodes | None, BeforeValidator(_nodes_local, json_schema_input_type=Literal["local"] | Nodes)] = None
    link_config: Text | None = None
    profiles: section(Profiles) = Profiles()
    timeouts: section(Timeouts) = Timeouts()
    retries: integer(0, 100) = 1
    keep_images: Literal[KEEP_IMAGES] = "all"
    curve: Curve | None = None


def campaign_json_schema() -> dict[str, Any]:
    """The JSON Schema (Draft 2020-12) of a campaign file."""
    schema = CampaignFile.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
