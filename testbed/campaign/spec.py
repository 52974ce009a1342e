"""Campaign specs: a YAML file saying what to measure, validated completely before anything runs.

Example (every key shown; ``campaigns/default.yaml`` is the one ``make run`` uses)::

    name: default
    model: default                  # "default" = the embedded model, else a diffusers folder (relative to the spec)
    device: {es: cpu, ue: cpu}      # torch device of each local node
    prompts: ["a red apple on a table"]   # or prompts_file: prompts.txt (one prompt per line)
    negative_prompt: ""
    seeds: [0, 1]
    image: {height_px: null, width_px: null, guidance_scale: 5.0, scheduler: null, wire_dtype: float16,
            vae_tiling: false}  # vae_tiling: the UE decodes in tiles (bounded memory on small boards)
    schemes: [meg, ceg, ue_local]
    grid:
      n_steps: [4, 8]               # N
      es_steps: [null]              # k; null means k = N (the UE only decodes)
      merge_ratio: [0.0, 0.5]       # beta (MEG only)
      merge_method: [global_l2]     # MEG only: global_l2 (default) | global (the paper's rule) | window
      tome_ratio_es: [0.0]
      tome_ratio_ue: [0.0]
      link_model: [awgn]
      distance_m: [200, 300]        # or snr_db: [...] (exactly one of the two)
      tx_mode: [analog]
      decoder: [base, distilled]    # UE decoder of MEG / UE-local (absent: each UE's own --decoder)
    reference: {n_steps: 12}        # N_max of the quality reference (beta = 0, no tomesd, noiseless)
    repetitions: 2
    warmup: 1                       # unrecorded requests per scheme before measuring
    cooldown_s: 0.0                 # pause after each request
    order: {randomize: true, seed: 0}
    nodes: local                    # or {es: tcp://..., ue: [tcp://...], channel_pub: tcp://... | null}
    link_config: null               # the broker's link file for local runs (relative to the spec)
    profiles: {es: null, ue: null}  # firmware profile names (null: auto-detect the probes)
    timeouts: {request_s: 600, heartbeat_s: 1.0, dead_after_s: 10}
    retries: 1
    keep_images: all                # all | first | none  (first: repetition 0 only)
    curve: null                     # or {keys_dir: DIR}: CURVE keys from `megbed keys generate`

Every problem is collected and reported together, each naming its key (``grid.merge_ratio[2]``), so a researcher
fixes a spec in one go. Nothing is started before :func:`load_spec` returns.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from dataclasses import replace as _replace
from pathlib import Path
from typing import Any

from megbed.channel_emu.config import LinkConfig, LinkConfigError
from megbed.megwire.safe_yaml import YamlError, load_yaml_file
from megbed.megwire.validation import collect, line, short
from megbed.testbed.campaign.errors import SpecError
from megbed.testbed.campaign.spec_schema import (  # noqa: F401 - the vocabularies, re-exported for the spec's users
    DECODERS,
    KEEP_IMAGES,
    LINK_MODELS,
    MAX_BETA,
    MAX_TOME,
    RUN_NAME_RE,
    SCHEMES,
    TX_MODES,
    WIRE_DTYPES,
    CampaignFile,
    Grid,
    Image,
)
from megbed.testbed.ldm.merge_methods import DEFAULT_MERGE_METHOD
from megbed.testbed.request import NO_LINK, Request

MAX_PROMPTS_FILE_BYTES = 16 * 1024 * 1024
TOP_KEYS = set(CampaignFile.model_fields)
GRID_KEYS = set(Grid.model_fields)
IMAGE_KEYS = set(Image.model_fields)


@dataclass(frozen=True)
class Timeouts:
    """Seconds: a whole request, between heartbeats, silence after which a node is declared dead."""

    request_s: float = 600.0
    heartbeat_s: float = 1.0
    dead_after_s: float = 10.0


@dataclass(frozen=True)
class NodeAddresses:
    """Where the nodes are; ``local`` means the runner starts ES, broker and UE itself on 127.0.0.1."""

    local: bool = True
    es: str | None = None
    ue: tuple[str, ...] = ()
    channel_pub: str | None = None


@dataclass(frozen=True)
class Point:
    """One grid point: the request its prompts x seeds x repetitions share (fields that do not apply to the scheme
    are neutral), without prompt, seed or ids.

    Attributes
    ----------
    request : Request
        The point's configuration as a request template (``prompt=""``, ``seed=0``, no ids).
    decoder_axis : bool
        The grid has a decoder axis (the id then includes ``request.decoder``).
    method_axis : bool
        The grid names merge methods (the id then includes ``request.merge_method`` when beta > 0).
    """

    request: Request
    decoder_axis: bool = False
    method_axis: bool = False

    def __getattr__(self, name: str) -> Any:
        # A point reads as its request (point.scheme, point.n_steps, ...): one set of names for the configuration.
        if name.startswith("__") or name in ("request", "decoder_axis", "method_axis"):
            raise AttributeError(name)
        return getattr(self.request, name)

    @property
    def point_id(self) -> str:
        """Stable 12-hex id of the configuration (same point, same id, in every run and on resume)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        """The fields the id hashes, in the layout ids have always been computed from (runs resume by them)."""
        r = self.request
        out: dict[str, Any] = {
            "scheme": r.scheme, "n_steps": r.n_steps, "es_steps": r.es_steps, "merge_ratio": r.merge_ratio,
            "tome_ratio_es": r.tome_ratio_es, "tome_ratio_ue": r.tome_ratio_ue, "link": r.link_meta(),
        }
        if self.decoder_axis:  # ids of points without a decoder axis stay what they were before it existed
            out["decoder"] = r.decoder
        if self.method_axis and r.merge_ratio > 0.0:  # likewise for the merge-method axis
            out["merge_method"] = r.merge_method
        return out


@dataclass(frozen=True)
class CampaignSpec:
    """A validated campaign (see the module docstring for the YAML form)."""

    name: str
    model: str
    model_dir: Path
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    schemes: tuple[str, ...]
    grid: dict[str, tuple]
    negative_prompt: str = ""
    device: dict[str, str] = field(default_factory=lambda: {"es": "cpu", "ue": "cpu"})
    height_px: int | None = None
    width_px: int | None = None
    guidance_scale: float = 5.0
    scheduler: str | None = None
    wire_dtype: str = "float16"
    vae_tiling: bool = False  # the UE decodes with VAE tiling (memory-bound UEs)
    reference_n_steps: int = 12
    repetitions: int = 1
    warmup: int = 1
    cooldown_s: float = 0.0
    randomize: bool = True
    order_seed: int = 0
    nodes: NodeAddresses = NodeAddresses()
    link_config: Path | None = None
    profiles: dict[str, str | None] = field(default_factory=lambda: {"es": None, "ue": None})
    timeouts: Timeouts = Timeouts()
    retries: int = 1
    keep_images: str = "all"
    curve_keys_dir: Path | None = None
    source: str = "<spec>"
    raw: dict[str, Any] = field(default_factory=dict)

    # --- the grid ---------------------------------------------------------------------------------------------------

    def links(self) -> list[dict[str, Any]]:
        """The grid's link conditions as request fields (``link_model``, ``tx_mode``, ``distance_m``,
        ``snr_db_set``)."""
        g = self.grid
        if g.get("distance_m"):
            return [{"link_model": m, "tx_mode": t, "distance_m": float(d), "snr_db_set": None}
                    for m, d, t in itertools.product(g["link_model"], g["distance_m"], g["tx_mode"])]
        return [{"link_model": m, "tx_mode": t, "distance_m": None, "snr_db_set": float(s)}
                for m, s, t in itertools.product(g["link_model"], g["snr_db"], g["tx_mode"])]

    def point(self, scheme: str, n_steps: int, es_steps: int, merge_ratio: float = 0.0, tome_ratio_es: float = 0.0,
              tome_ratio_ue: float = 0.0, link: Mapping[str, Any] | None = None, decoder: str | None = None,
              merge_method: str | None = None) -> Point:
        """A grid point of this campaign (its image settings, the given configuration). ``decoder`` /
        ``merge_method`` None: no such axis (the UE's own decoder, the default method)."""
        no_link = {"link_model": NO_LINK, "tx_mode": NO_LINK, "distance_m": None, "snr_db_set": None}
        request = Request(
            prompt="", scheme=scheme, n_steps=int(n_steps), es_steps=int(es_steps), merge_ratio=float(merge_ratio),
            merge_method=merge_method or DEFAULT_MERGE_METHOD, tome_ratio_es=float(tome_ratio_es),
            tome_ratio_ue=float(tome_ratio_ue), negative_prompt=self.negative_prompt, height_px=self.height_px,
            width_px=self.width_px, guidance_scale=self.guidance_scale, scheduler=self.scheduler or "",
            wire_dtype=self.wire_dtype, vae_tiling=self.vae_tiling, decoder=decoder or "", **(link or no_link))
        return Point(request, decoder_axis=decoder is not None, method_axis=merge_method is not None)

    def points(self) -> list[Point]:
        """Every grid point, schemes in spec order; parameters that do not apply to a scheme are collapsed."""
        g = self.grid
        out: list[Point] = []
        seen: set[str] = set()

        def add(point: Point) -> None:
            if point.point_id not in seen:
                seen.add(point.point_id)
                out.append(point)

        decoders = g.get("decoder", (None,))
        for scheme in self.schemes:
            # CEG may run at fewer N (grid.ceg_n_steps): its image airtime dominates a campaign's wall time.
            for n in (g.get("ceg_n_steps") or g["n_steps"]) if scheme == "ceg" else g["n_steps"]:
                if scheme == "meg":
                    for k, beta, method, te, tu, link, dec in itertools.product(
                            g["es_steps"], g["merge_ratio"], g.get("merge_method", (None,)), g["tome_ratio_es"],
                            g["tome_ratio_ue"], self.links(), decoders):
                        kk = n if k is None else k
                        # The UE's tomesd ratio only matters when it denoises; no merge method merges nothing.
                        method = None if method is None or float(beta) == 0.0 else method
                        add(self.point("meg", n, kk, beta, te, tu if kk < n else 0.0, link, dec, method))
                elif scheme == "ceg":
                    # CEG sends the image: no UE decoder runs.
                    for te, link in itertools.product(g["tome_ratio_es"], self.links()):
                        add(self.point("ceg", n, n, 0.0, te, 0.0, link))
                else:
                    for tu, dec in itertools.product(g["tome_ratio_ue"], decoders):
                        add(self.point("ue_local", n, 0, 0.0, 0.0, tu, None, dec))
        return out

    def node_plans(self) -> dict[str, list[str]]:
        """The plans each role serves in this campaign (``--plans`` of its nodes: the model folder is checked for
        their components at start-up, before the first request). The ES always serves ``reference``."""
        used: list[str] = []
        for p in self.points():
            plan = "hybrid" if p.scheme == "meg" and p.es_steps < p.n_steps else p.scheme
            if plan not in used:
                used.append(plan)
        return {"es": [p for p in used if p != "ue_local"] + ["reference"], "ue": used}

    def requests(self) -> list[Request]:
        """Every request (point x prompt x seed x repetition) in a stable, unshuffled order."""
        out = []
        for point in self.points():
            pid = point.point_id
            for (pi, prompt), seed, rep in itertools.product(enumerate(self.prompts), self.seeds,
                                                             range(self.repetitions)):
                out.append(self.request_for(point, prompt, seed, rep, f"{pid}-p{pi}-s{seed}-r{rep}"))
        return out

    def request_for(self, point: Point, prompt: str, seed: int, repetition: int, request_id: str) -> Request:
        """The point's request for one prompt x seed x repetition."""
        return _replace(point.request, prompt=prompt, seed=int(seed), repetition=int(repetition),
                        request_id=request_id, point_id=point.point_id)

    def resolved(self) -> dict[str, Any]:
        """The spec with defaults filled in, as JSON-able data (recorded in the run manifest and hashed)."""
        out = {
            "name": self.name, "model": self.model if self.model == "default" else str(self.model_dir),
            "model_dir": str(self.model_dir), "prompts": list(self.prompts),
            "seeds": list(self.seeds), "schemes": list(self.schemes),
            "grid": {k: list(v) for k, v in self.grid.items()}, "negative_prompt": self.negative_prompt,
            "device": dict(self.device), "height_px": self.height_px, "width_px": self.width_px,
            "guidance_scale": self.guidance_scale, "scheduler": self.scheduler, "wire_dtype": self.wire_dtype,
            "reference_n_steps": self.reference_n_steps, "repetitions": self.repetitions, "warmup": self.warmup,
            "cooldown_s": self.cooldown_s, "randomize": self.randomize, "order_seed": self.order_seed,
            "nodes": asdict(self.nodes) | {"ue": list(self.nodes.ue)},
            "link_config": None if self.link_config is None else str(self.link_config),
            "profiles": dict(self.profiles), "timeouts": asdict(self.timeouts), "retries": self.retries,
            "keep_images": self.keep_images,
            "curve_keys_dir": None if self.curve_keys_dir is None else str(self.curve_keys_dir),
        }
        if self.vae_tiling:  # only when set: hashes of specs without it stay what they were
            out["vae_tiling"] = True
        return out

    def frozen(self) -> dict[str, Any]:
        """The spec as YAML data with every path absolute and the prompts inlined: validating it again gives the
        same :meth:`resolved` configuration from any folder (what a run directory keeps for resume)."""
        grid = {k: list(v) for k, v in self.grid.items()}
        if "snr_db" in grid:
            grid.pop("distance_m", None)
        nodes: Any = "local" if self.nodes.local else {"es": self.nodes.es, "ue": list(self.nodes.ue),
                                                       "channel_pub": self.nodes.channel_pub}
        return {
            "name": self.name, "model": self.model if self.model == "default" else str(self.model_dir),
            "device": dict(self.device), "prompts": list(self.prompts), "negative_prompt": self.negative_prompt,
            "seeds": list(self.seeds),
            "image": {"height_px": self.height_px, "width_px": self.width_px, "guidance_scale": self.guidance_scale,
                      "scheduler": self.scheduler, "wire_dtype": self.wire_dtype},
            "schemes": list(self.schemes), "grid": grid, "reference": {"n_steps": self.reference_n_steps},
            "repetitions": self.repetitions, "warmup": self.warmup, "cooldown_s": self.cooldown_s,
            "order": {"randomize": self.randomize, "seed": self.order_seed}, "nodes": nodes,
            "link_config": None if self.link_config is None else str(self.link_config),
            "profiles": dict(self.profiles), "timeouts": asdict(self.timeouts), "retries": self.retries,
            "keep_images": self.keep_images,
            "curve": None if self.curve_keys_dir is None else {"keys_dir": str(self.curve_keys_dir)},
        }

    def tx_power_dbm(self) -> float:
        """The ES's transmit power of the link (dBm): the link config's, else the emulator's default (the paper's
        30 dBm). Used for the link rows' modeled transmit energy (P_tx x airtime)."""
        config = LinkConfig.load(self.link_config) if self.link_config is not None else LinkConfig()
        return float(config.pathloss.tx_power_dbm)

    def config_hash(self) -> str:
        """SHA-256 of the resolved configuration, as the run manifest records it."""
        from megbed.measurements.manifest import config_hash

        return config_hash(self.resolved())


# --- validation: the file's shape is checked by the models of spec_schema; here what compares keys or reads files --


class _Problems:
    """Problems found so far; a check on a key already reported (its value was invalid) adds nothing."""

    def __init__(self, found: list[str]) -> None:
        self.lines = list(found)
        self._keys = {self._field(text.split(": ", 1)[0]) for text in found}

    @staticmethod
    def _field(key: str) -> str:
        return re.sub(r"\[\d+\]", "", key)

    def bad(self, key: str, message: str) -> None:
        if self._field(key) not in self._keys:
            self.lines.append(line(key, message))


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False where the OS refuses the name itself (too long, bad bytes) instead of raising."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _is_dir(path: Path) -> bool:
    """``path.is_dir()``, False where the OS refuses the name itself."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _resolve_path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def resolve_model(model: str, base: Path) -> Path:
    """``default`` -> the embedded default model's folder; anything else is a path (relative to the spec)."""
    if model == "default":
        from megbed.testbed.assets import default_model_dir

        return default_model_dir()
    return _resolve_path(base, model)




def _check_profile(found: _Problems, key: str, name: str) -> None:
    if name.startswith("emulate:"):  # an emulated UE (megbed.testbed.campaign.emulate)
        if key != "profiles.ue":
            found.bad(key, "only the UE can be emulated (emulate:<profile> or emulate:<factor>x)")
            return
        from megbed.testbed.campaign.emulate import EmulationError, parse_emulation

        try:
            parse_emulation(name, key)
        except EmulationError as exc:
            found.bad(key, str(exc).removeprefix(f"{key}: "))
        return
    from megbed.firmware_profiles import load_profile

    try:
        load_profile(name)
    except Exception as exc:  # noqa: BLE001 - every loader failure is a spec problem to report
        found.bad(key, f"profile {short(name)} cannot be loaded: {exc}")


def _read_prompts_file(found: _Problems, path: Path) -> list[str]:
    """The prompts of the file (one a line, ``#`` comments), or [] with the problem recorded (missing, a folder,
    too big, binary, not UTF-8, empty)."""
    if _is_dir(path):
        found.bad("prompts_file", f"{path} is a directory, not a file of prompts")
        return []
    if not _is_file(path):
        found.bad("prompts_file", f"{path} does not exist")
        return []
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_PROMPTS_FILE_BYTES + 1)
    except OSError as exc:
        found.bad("prompts_file", f"cannot read {path}: {exc.strerror or exc}")
        return []
    if len(data) > MAX_PROMPTS_FILE_BYTES:
        found.bad("prompts_file", f"{path} is larger than {MAX_PROMPTS_FILE_BYTES} bytes")
        return []
    if b"\x00" in data:
        found.bad("prompts_file", f"{path} is a binary file, not UTF-8 text with one prompt per line")
        return []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        found.bad("prompts_file", f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})")
        return []
    prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        found.bad("prompts_file", f"{path} holds no prompt")
    return prompts


def _check_decoders(found: _Problems, decoders: list[str], model_dir: Path) -> None:
    wants = {"distilled", "auto"} & set(decoders)
    if wants and not _is_dir(model_dir / "ue_decoder"):
        found.bad("grid.decoder", f"{model_dir} has no distilled UE decoder (ue_decoder/); train one with "
                                  f"`megbed distill train --install` or leave {sorted(wants)} out")
    elif "auto" in wants:
        from megbed.testbed.ldm.gate import read_gate

        try:
            gate = read_gate(model_dir / "ue_decoder")
        except (ValueError, OSError) as exc:
            gate, why = None, f"its gate is unreadable ({exc})"
        else:
            why = "it has no calibrated gate (run `megbed distill calibrate`)"
        if gate is None:
            found.bad("grid.decoder", f"'auto' needs the distilled decoder's gate: {model_dir}/ue_decoder: {why}")


def _grid(found: _Problems, g: Grid, schemes: list[str]) -> dict[str, tuple]:
    """The grid's axes as tuples, in the order the run manifest has always listed them."""
    min_n = min(g.n_steps)
    for i, k in enumerate(g.es_steps):
        if k is not None and k > min_n:
            found.bad(f"grid.es_steps[{i}]", f"k={k} exceeds the smallest N={min_n} in grid.n_steps")
    grid: dict[str, tuple] = {"n_steps": tuple(g.n_steps)}
    if g.ceg_n_steps is not None:  # absent: CEG runs at every n_steps
        grid["ceg_n_steps"] = tuple(g.ceg_n_steps)
    grid |= {"es_steps": tuple(g.es_steps), "merge_ratio": tuple(g.merge_ratio)}
    if g.merge_method is not None:
        grid["merge_method"] = tuple(g.merge_method)
    grid |= {"tome_ratio_es": tuple(g.tome_ratio_es), "tome_ratio_ue": tuple(g.tome_ratio_ue),
             "link_model": tuple(g.link_model), "tx_mode": tuple(g.tx_mode)}
    if g.decoder is not None:
        grid["decoder"] = tuple(g.decoder)
    if g.distance_m is not None and g.snr_db is not None:
        found.bad("grid.distance_m", "give distance_m or snr_db, not both")
    if g.snr_db is not None:
        grid["snr_db"] = tuple(g.snr_db)
    else:
        if g.distance_m is None and any(s in ("meg", "ceg") for s in schemes):
            found.bad("grid.distance_m", "the link needs distance_m (path loss) or snr_db (fixed SNR)")
        grid["distance_m"] = tuple(g.distance_m or (250.0,))
    return grid


def validate_spec(data: Any, *, base_dir: Path, source: str = "<spec>", check_paths: bool = True) -> CampaignSpec:
    """Validate parsed YAML; raises :class:`SpecError` listing every problem.

    Parameters
    ----------
    data : Any
        The parsed YAML document.
    base_dir : Path
        Folder relative paths are resolved against (the spec's folder).
    check_paths : bool
        Whether the model folder, prompts file and link config must exist.
    """
    if not isinstance(data, Mapping):
        raise SpecError(source, [f"(top level): must be a mapping of keys, got {type(data).__name__}"])
    f, shape_problems = collect(CampaignFile, dict(data))
    if f is None:
        raise SpecError(source, shape_problems)
    found = _Problems(shape_problems)
    # No name: the file's stem made safe (an explicit name must already be one).
    name = f.name or re.sub(r"[^A-Za-z0-9._-]", "_", Path(source).stem).lstrip(".-")[:64] or "campaign"
    model_dir = resolve_model(f.model, base_dir)
    if check_paths and not _is_file(model_dir / "model_index.json"):
        found.bad("model", f"{model_dir} is not a diffusers model folder (no model_index.json)")
    prompts: list[str] = []
    if (f.prompts is None) == (f.prompts_file is None):
        found.bad("prompts", "give exactly one of prompts (a list) and prompts_file")
    elif f.prompts is not None:
        prompts = f.prompts
    else:
        prompts = _read_prompts_file(found, _resolve_path(base_dir, f.prompts_file))
    grid = _grid(found, f.grid, f.schemes)
    if check_paths and f.grid.decoder is not None:
        _check_decoders(found, f.grid.decoder, model_dir)
    max_n = max(f.grid.n_steps)
    ref_n = f.reference.n_steps if f.reference.n_steps is not None else max(12, max_n)
    if ref_n < max_n:
        found.bad("reference.n_steps", f"N_max={ref_n} is below the largest N={max_n} in grid.n_steps")
    link_config = None if f.link_config is None else _resolve_path(base_dir, f.link_config)
    if link_config is not None and check_paths and not _is_file(link_config):
        found.bad("link_config", f"{link_config} does not exist")
    elif link_config is not None and _is_file(link_config):
        try:
            LinkConfig.load(link_config)
        except LinkConfigError as exc:
            found.bad("link_config", f"{link_config}: {exc}")
    for role in ("es", "ue"):
        if getattr(f.profiles, role) is not None:
            _check_profile(found, f"profiles.{role}", getattr(f.profiles, role))
    t = f.timeouts
    if t.dead_after_s < 2 * t.heartbeat_s:
        found.bad("timeouts.dead_after_s", f"{t.dead_after_s} s must be at least two heartbeat periods "
                                           f"({2 * t.heartbeat_s} s)")
    curve_dir = None if f.curve is None else _resolve_path(base_dir, f.curve.keys_dir)
    if curve_dir is not None and check_paths and not _is_dir(curve_dir):
        found.bad("curve.keys_dir", f"{curve_dir} does not exist (create it with `megbed keys generate`)")
    if found.lines:
        raise SpecError(source, found.lines)
    n = f.nodes
    nodes = NodeAddresses() if n is None else NodeAddresses(False, n.es, tuple(n.ue), n.channel_pub)
    return CampaignSpec(
        name=name, model=f.model, model_dir=model_dir, prompts=tuple(prompts), seeds=tuple(f.seeds),
        schemes=tuple(f.schemes), grid=grid, negative_prompt=f.negative_prompt, device=f.device.model_dump(),
        height_px=f.image.height_px, width_px=f.image.width_px, guidance_scale=float(f.image.guidance_scale),
        scheduler=f.image.scheduler, wire_dtype=f.image.wire_dtype, vae_tiling=f.image.vae_tiling,
        reference_n_steps=ref_n, repetitions=f.repetitions, warmup=f.warmup, cooldown_s=float(f.cooldown_s),
        randomize=f.order.randomize, order_seed=f.order.seed, nodes=nodes, link_config=link_config,
        profiles=f.profiles.model_dump(), retries=f.retries, keep_images=f.keep_images,
        timeouts=Timeouts(float(t.request_s), float(t.heartbeat_s), float(t.dead_after_s)),
        curve_keys_dir=curve_dir, source=source, raw=json.loads(json.dumps(dict(data), default=str)),
    )



def read_spec_yaml(path: str | Path) -> Any:
    """The parsed YAML of a spec file (bounded, duplicate keys refused; raises :class:`SpecError`)."""
    try:
        return load_yaml_file(path)
    except YamlError as exc:
        text = str(exc)
        prefix = f"{path}: "
        raise SpecError(str(path), [text[len(prefix):] if text.startswith(prefix) else text]) from None


def load_spec(path: str | Path, *, check_paths: bool = True) -> CampaignSpec:
    """Read and validate a campaign YAML file (raises :class:`SpecError`)."""
    path = Path(path)
    data = read_spec_yaml(path)
    return validate_spec(data, base_dir=path.resolve().parent, source=str(path), check_paths=check_paths)
