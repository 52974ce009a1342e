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
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from megbed.megwire.safe_yaml import YamlError, load_yaml_file
from megbed.testbed.ldm.merge_methods import DEFAULT_MERGE_METHOD, MERGE_METHODS
from megbed.testbed.nodes.protocol import LinkSpec, RequestSpec

SCHEMES = ("meg", "ceg", "ue_local")
LINK_MODELS = ("awgn", "rayleigh_block", "rayleigh_symbol", "tdl_a", "tdl_b", "tdl_c", "tdl_d", "tdl_e")
TX_MODES = ("analog", "coded", "abstraction", "shannon")
WIRE_DTYPES = ("float16", "float32")
KEEP_IMAGES = ("all", "first", "none")
MAX_BETA = 0.75
# A run's folder is RUNS/<timestamp>-<name>: the name must stay one plain path component.
RUN_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
MAX_PROMPTS_FILE_BYTES = 16 * 1024 * 1024
MAX_PROBLEMS_SHOWN = 30
MAX_TOME = 0.75

TOP_KEYS = {
    "name", "model", "device", "prompts", "prompts_file", "negative_prompt", "seeds", "image", "schemes", "grid",
    "reference", "repetitions", "warmup", "cooldown_s", "order", "nodes", "link_config", "profiles", "timeouts",
    "retries", "keep_images", "curve",
}
GRID_KEYS = {"n_steps", "es_steps", "merge_ratio", "merge_method", "tome_ratio_es", "tome_ratio_ue", "link_model",
             "distance_m", "snr_db", "tx_mode", "decoder", "ceg_n_steps"}
DECODERS = ("base", "distilled", "auto")
IMAGE_KEYS = {"height_px", "width_px", "guidance_scale", "scheduler", "wire_dtype", "vae_tiling"}


class SpecError(ValueError):
    """A campaign spec is invalid; ``problems`` lists every problem, each naming its key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        if len(problems) == 1:  # one problem, one line
            super().__init__(f"invalid campaign spec {source}: {problems[0]}")
        else:
            shown = problems[:MAX_PROBLEMS_SHOWN]
            more = len(problems) - len(shown)
            tail = f"\n  ... and {more} more problems" if more else ""
            super().__init__(f"invalid campaign spec {source}:\n  - " + "\n  - ".join(shown) + tail)


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
    """One grid point: a scheme and its configuration (fields that do not apply to the scheme are neutral)."""

    scheme: str
    n_steps: int
    es_steps: int
    merge_ratio: float
    tome_ratio_es: float
    tome_ratio_ue: float
    link: LinkSpec | None
    decoder: str | None = None
    merge_method: str | None = None

    @property
    def point_id(self) -> str:
        """Stable 12-hex id of the configuration (same point, same id, in every run and on resume)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["link"] = None if self.link is None else self.link.to_meta()
        if self.decoder is None:
            del out["decoder"]  # ids of points without a decoder axis stay what they were before it existed
        if self.merge_method is None:
            del out["merge_method"]  # likewise for the merge-method axis
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

    def links(self) -> list[LinkSpec]:
        g = self.grid
        if g.get("distance_m"):
            return [LinkSpec(m, t, float(d), None) for m, d, t in
                    itertools.product(g["link_model"], g["distance_m"], g["tx_mode"])]
        return [LinkSpec(m, t, None, float(s)) for m, s, t in
                itertools.product(g["link_model"], g["snr_db"], g["tx_mode"])]

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
                        add(Point("meg", n, kk, float(beta), float(te), float(tu) if kk < n else 0.0, link, dec,
                                  method))
                elif scheme == "ceg":
                    # CEG sends the image: no UE decoder runs.
                    for te, link in itertools.product(g["tome_ratio_es"], self.links()):
                        add(Point("ceg", n, n, 0.0, float(te), 0.0, link))
                else:
                    for tu, dec in itertools.product(g["tome_ratio_ue"], decoders):
                        add(Point("ue_local", n, 0, 0.0, 0.0, float(tu), None, dec))
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

    def requests(self) -> list[RequestSpec]:
        """Every request (point x prompt x seed x repetition) in a stable, unshuffled order."""
        out = []
        for point in self.points():
            pid = point.point_id
            for (pi, prompt), seed, rep in itertools.product(enumerate(self.prompts), self.seeds,
                                                             range(self.repetitions)):
                out.append(self.request_for(point, prompt, seed, rep, f"{pid}-p{pi}-s{seed}-r{rep}"))
        return out

    def request_for(self, point: Point, prompt: str, seed: int, repetition: int, request_id: str) -> RequestSpec:
        return RequestSpec(
            request_id=request_id, scheme=point.scheme, prompt=prompt, seed=int(seed), n_steps=point.n_steps,
            es_steps=point.es_steps, merge_ratio=point.merge_ratio, negative_prompt=self.negative_prompt,
            height_px=self.height_px, width_px=self.width_px, guidance_scale=self.guidance_scale,
            scheduler=self.scheduler or "", tome_ratio_es=point.tome_ratio_es, tome_ratio_ue=point.tome_ratio_ue,
            wire_dtype=self.wire_dtype, link=point.link, point_id=point.point_id, repetition=repetition,
            decoder=point.decoder or "", vae_tiling=self.vae_tiling,
            merge_method=point.merge_method or DEFAULT_MERGE_METHOD,
        )

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
        from megbed.channel_emu.config import LinkConfig

        config = LinkConfig.load(self.link_config) if self.link_config is not None else LinkConfig()
        return float(config.pathloss.tx_power_dbm)

    def config_hash(self) -> str:
        """SHA-256 of the resolved configuration, as the run manifest records it."""
        from megbed.measurements.manifest import config_hash

        return config_hash(self.resolved())


# --- validation -----------------------------------------------------------------------------------------------------


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (a spec value may be huge or deeply nested)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlevel, r.maxlist, r.maxdict = limit, limit, 3, 6, 6
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, key: str, message: str) -> None:
        text = " ".join(f"{_short(key, 120) if not isinstance(key, str) else key[:120]}: {message}".split())
        # A problem is one bounded line: a 20 kB path or prompt in the spec must not become a 20 kB message.
        self.problems.append(text if len(text) <= 400 else f"{text[:260]}...{text[-120:]}")

    def unknown(self, key: str, data: Mapping, allowed: set[str]) -> None:
        for extra in sorted(set(data) - allowed, key=str):
            self.bad(f"{key}.{extra}" if key else str(extra), f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def number(self, key: str, value: Any, lo: float, hi: float, *, integer: bool = False) -> Any:
        ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type:
            self.bad(key, f"must be {'an integer' if integer else 'a number'}, got {_short(value)}")
            return None
        # Compare before float(): an integer of 400 digits is out of range, not an OverflowError.
        if not lo <= value <= hi or not math.isfinite(float(value)):
            self.bad(key, f"{_short(value)} is outside [{lo}, {hi}]")
            return None
        return value

    def string(self, key: str, value: Any, choices: tuple[str, ...] | None = None) -> str | None:
        if not isinstance(value, str):
            self.bad(key, f"must be a string, got {_short(value)}")
            return None
        if "\x00" in value:  # no prompt, name or path holds one; the OS refuses it in paths
            self.bad(key, "holds a NUL character")
            return None
        if choices is not None and value not in choices:
            self.bad(key, f"{_short(value)} is not one of {', '.join(choices)}")
            return None
        return value

    def values(self, key: str, value: Any, check: Callable[[str, Any], Any], *, allow_empty: bool = False) -> tuple:
        if not isinstance(value, list):
            value = [value]
        if not value and not allow_empty:
            self.bad(key, "must list at least one value")
        out = []
        for i, item in enumerate(value):
            got = check(f"{key}[{i}]", item)
            if got is not None or item is None:
                out.append(got)
        if len({json.dumps(v) for v in out}) != len(out):
            self.bad(key, "lists a value twice")
        return tuple(out)


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


def _check_profile(chk: _Checker, key: str, name: Any) -> None:
    if not isinstance(name, str) or not name:
        chk.bad(key, f"must be a profile name, got {_short(name)}")
        return
    if name.startswith("emulate:"):  # an emulated UE (megbed.testbed.campaign.emulate)
        if key != "profiles.ue":
            chk.bad(key, "only the UE can be emulated (emulate:<profile> or emulate:<factor>x)")
            return
        from megbed.testbed.campaign.emulate import EmulationError, parse_emulation

        try:
            parse_emulation(name, key)
        except EmulationError as exc:
            chk.bad(key, str(exc).removeprefix(f"{key}: "))
        return
    try:
        from megbed.firmware_profiles import load_profile
    except ImportError:
        return  # the loader has not landed: profiles are checked again when the nodes start
    try:
        load_profile(name)
    except Exception as exc:  # noqa: BLE001 - every loader failure is a spec problem to report
        chk.bad(key, f"profile {_short(name)} cannot be loaded: {exc}")


def _read_prompts_file(chk: _Checker, path: Path) -> str | None:
    """The prompts file's text, or None with the problem recorded (missing, a folder, too big, binary, not UTF-8)."""
    if _is_dir(path):
        chk.bad("prompts_file", f"{path} is a directory, not a file of prompts")
        return None
    if not _is_file(path):
        chk.bad("prompts_file", f"{path} does not exist")
        return None
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_PROMPTS_FILE_BYTES + 1)
    except OSError as exc:
        chk.bad("prompts_file", f"cannot read {path}: {exc.strerror or exc}")
        return None
    if len(data) > MAX_PROMPTS_FILE_BYTES:
        chk.bad("prompts_file", f"{path} is larger than {MAX_PROMPTS_FILE_BYTES} bytes")
        return None
    if b"\x00" in data:
        chk.bad("prompts_file", f"{path} is a binary file, not UTF-8 text with one prompt per line")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        chk.bad("prompts_file", f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})")
        return None


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
    chk = _Checker()
    if not isinstance(data, Mapping):
        raise SpecError(source, [f"(top level): must be a mapping of keys, got {type(data).__name__}"])
    chk.unknown("", data, TOP_KEYS)
    d = dict(data)

    # No name: the file's stem made safe (an explicit name must already be one).
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(source).stem).lstrip(".-")[:64] or "campaign"
    name = chk.string("name", d.get("name", stem))
    if name is None:
        name = "campaign"
    elif not RUN_NAME_RE.fullmatch(name):
        chk.bad("name", f"{_short(name)} is not a plain run name (1-64 of letters, digits, '.', '_', '-', not "
                        "starting with '.' or '-'): it names the run's folder under --runs")
        name = "campaign"
    model = chk.string("model", d.get("model", "default")) or "default"
    model_dir = resolve_model(model, base_dir)
    if check_paths and not _is_file(model_dir / "model_index.json"):
        chk.bad("model", f"{model_dir} is not a diffusers model folder (no model_index.json)")

    device = d.get("device", {"es": "cpu", "ue": "cpu"})
    if not isinstance(device, Mapping):
        chk.bad("device", "must be a mapping {es: DEVICE, ue: DEVICE}")
        device = {}
    chk.unknown("device", device, {"es", "ue"})
    dev = {"es": "cpu", "ue": "cpu"}
    for role in ("es", "ue"):
        if role in device:
            value = chk.string(f"device.{role}", device[role])
            if value is not None and not (value == "cpu" or value.startswith("cuda") or value == "mps"):
                chk.bad(f"device.{role}", f"{_short(value)} is not a torch device (cpu, cuda, cuda:N, mps)")
            elif value is not None:
                dev[role] = value

    prompts: list[str] = []
    if ("prompts" in d) == ("prompts_file" in d):
        chk.bad("prompts", "give exactly one of prompts (a list) and prompts_file")
    elif "prompts" in d:
        prompts = list(chk.values("prompts", d["prompts"], chk.string))
    else:
        pf = chk.string("prompts_file", d["prompts_file"])
        if pf is not None:
            path = _resolve_path(base_dir, pf)
            text = _read_prompts_file(chk, path)
            if text is not None:
                prompts = [line.strip() for line in text.splitlines()
                           if line.strip() and not line.lstrip().startswith("#")]
                if not prompts:
                    chk.bad("prompts_file", f"{path} holds no prompt")
    negative = chk.string("negative_prompt", d.get("negative_prompt", "")) or ""
    seeds = chk.values("seeds", d.get("seeds", [0]), lambda k, v: chk.number(k, v, 0, 2**63 - 1, integer=True))

    image = d.get("image", {}) or {}
    if not isinstance(image, Mapping):
        chk.bad("image", "must be a mapping")
        image = {}
    chk.unknown("image", image, IMAGE_KEYS)
    height = width = None
    for key in ("height_px", "width_px"):
        value = image.get(key)
        if value is not None:
            value = chk.number(f"image.{key}", value, 8, 8192, integer=True)
            if value is not None and value % 8:
                chk.bad(f"image.{key}", f"{value} is not a multiple of 8")
        if key == "height_px":
            height = value
        else:
            width = value
    guidance = chk.number("image.guidance_scale", image.get("guidance_scale", 5.0), 0.0, 100.0)
    scheduler = image.get("scheduler")
    if scheduler is not None:
        scheduler = chk.string("image.scheduler", scheduler)
        if scheduler is not None:
            try:
                from megbed.testbed.ldm.schedulers import SCHEDULERS
            except ImportError:
                SCHEDULERS = None  # noqa: N806 - the runtime checks again when it lands
            if SCHEDULERS is not None and scheduler not in SCHEDULERS:
                chk.bad("image.scheduler", f"unknown scheduler {_short(scheduler)}; known: {', '.join(sorted(SCHEDULERS))}")
    wire = chk.string("image.wire_dtype", image.get("wire_dtype", "float16"), WIRE_DTYPES) or "float16"
    vae_tiling = image.get("vae_tiling", False)
    if not isinstance(vae_tiling, bool):
        chk.bad("image.vae_tiling", f"must be true or false, not {vae_tiling!r}")
        vae_tiling = False

    schemes = chk.values("schemes", d.get("schemes", list(SCHEMES)), lambda k, v: chk.string(k, v, SCHEMES))

    grid_in = d.get("grid")
    grid: dict[str, tuple] = {}
    if not isinstance(grid_in, Mapping):
        chk.bad("grid", "missing or not a mapping")
        grid_in = {}
    chk.unknown("grid", grid_in, GRID_KEYS)
    grid["n_steps"] = chk.values("grid.n_steps", grid_in.get("n_steps", [8]),
                                 lambda k, v: chk.number(k, v, 1, 1000, integer=True))

    if grid_in.get("ceg_n_steps") is not None:  # absent: CEG runs at every n_steps
        grid["ceg_n_steps"] = chk.values("grid.ceg_n_steps", grid_in["ceg_n_steps"],
                                         lambda k, v: chk.number(k, v, 1, 1000, integer=True))

    def es_step(k: str, v: Any) -> Any:
        return None if v is None else chk.number(k, v, 0, 1000, integer=True)

    grid["es_steps"] = chk.values("grid.es_steps", grid_in.get("es_steps", [None]), es_step)
    min_n = min((n for n in grid["n_steps"] if n is not None), default=None)
    for i, k in enumerate(grid["es_steps"]):
        if k is not None and min_n is not None and k > min_n:
            chk.bad(f"grid.es_steps[{i}]", f"k={k} exceeds the smallest N={min_n} in grid.n_steps")
    grid["merge_ratio"] = chk.values("grid.merge_ratio", grid_in.get("merge_ratio", [0.0]),
                                     lambda k, v: chk.number(k, v, 0.0, MAX_BETA))
    if "merge_method" in grid_in:
        grid["merge_method"] = chk.values("grid.merge_method", grid_in["merge_method"],
                                          lambda k, v: chk.string(k, v, MERGE_METHODS))
    for key in ("tome_ratio_es", "tome_ratio_ue"):
        grid[key] = chk.values(f"grid.{key}", grid_in.get(key, [0.0]), lambda k, v: chk.number(k, v, 0.0, MAX_TOME))
    grid["link_model"] = chk.values("grid.link_model", grid_in.get("link_model", ["awgn"]),
                                    lambda k, v: chk.string(k, v, LINK_MODELS))
    grid["tx_mode"] = chk.values("grid.tx_mode", grid_in.get("tx_mode", ["analog"]),
                                 lambda k, v: chk.string(k, v, TX_MODES))
    if "decoder" in grid_in:
        grid["decoder"] = chk.values("grid.decoder", grid_in["decoder"], lambda k, v: chk.string(k, v, DECODERS))
        wants = {"distilled", "auto"} & set(grid["decoder"])
        if check_paths and wants and not _is_dir(model_dir / "ue_decoder"):
            chk.bad("grid.decoder", f"{model_dir} has no distilled UE decoder (ue_decoder/); train one with "
                                    f"`megbed distill train --install` or leave {sorted(wants)} out")
        elif check_paths and "auto" in wants:
            from megbed.testbed.ldm.gate import read_gate

            try:
                gate = read_gate(model_dir / "ue_decoder")
            except (ValueError, OSError) as exc:
                gate, why = None, f"its gate is unreadable ({exc})"
            else:
                why = "it has no calibrated gate (run `megbed distill calibrate`)"
            if gate is None:
                chk.bad("grid.decoder", f"'auto' needs the distilled decoder's gate: {model_dir}/ue_decoder: {why}")
    has_d, has_s = "distance_m" in grid_in, "snr_db" in grid_in
    needs_link = any(s in ("meg", "ceg") for s in schemes)
    if has_d and has_s:
        chk.bad("grid.distance_m", "give distance_m or snr_db, not both")
    elif not has_d and not has_s:
        if needs_link:
            chk.bad("grid.distance_m", "the link needs distance_m (path loss) or snr_db (fixed SNR)")
        grid["distance_m"] = (250.0,)
    if has_d:
        grid["distance_m"] = chk.values("grid.distance_m", grid_in["distance_m"],
                                        lambda k, v: chk.number(k, v, 1.0, 1e6))
    elif has_s:
        grid["snr_db"] = chk.values("grid.snr_db", grid_in["snr_db"], lambda k, v: chk.number(k, v, -50.0, 80.0))

    ref = d.get("reference", {}) or {}
    if not isinstance(ref, Mapping):
        chk.bad("reference", "must be a mapping {n_steps: N_max}")
        ref = {}
    chk.unknown("reference", ref, {"n_steps"})
    max_n = max((n for n in grid["n_steps"] if n is not None), default=1)
    ref_n = chk.number("reference.n_steps", ref.get("n_steps", max(12, max_n)), 1, 1000, integer=True)
    if ref_n is not None and ref_n < max_n:
        chk.bad("reference.n_steps", f"N_max={ref_n} is below the largest N={max_n} in grid.n_steps")

    reps = chk.number("repetitions", d.get("repetitions", 1), 1, 100000, integer=True)
    warmup = chk.number("warmup", d.get("warmup", 1), 0, 1000, integer=True)
    cooldown = chk.number("cooldown_s", d.get("cooldown_s", 0.0), 0.0, 3600.0)
    order = d.get("order", {}) or {}
    if not isinstance(order, Mapping):
        chk.bad("order", "must be a mapping {randomize: BOOL, seed: INT}")
        order = {}
    chk.unknown("order", order, {"randomize", "seed"})
    randomize = order.get("randomize", True)
    if not isinstance(randomize, bool):
        chk.bad("order.randomize", f"must be true or false, got {_short(randomize)}")
    order_seed = chk.number("order.seed", order.get("seed", 0), 0, 2**32 - 1, integer=True)

    nodes = _nodes(chk, d.get("nodes", "local"))
    link_config = None
    if d.get("link_config") is not None:
        lc = chk.string("link_config", d["link_config"])
        if lc is not None:
            link_config = _resolve_path(base_dir, lc)
            if check_paths and not _is_file(link_config):
                chk.bad("link_config", f"{link_config} does not exist")
            elif _is_file(link_config):
                try:
                    from megbed.channel_emu.config import LinkConfig

                    LinkConfig.load(link_config)
                except Exception as exc:  # noqa: BLE001 - the emulator's own error names the bad key
                    chk.bad("link_config", f"{link_config}: {exc}")

    profiles_in = d.get("profiles") or {}
    profiles: dict[str, str | None] = {"es": None, "ue": None}
    if not isinstance(profiles_in, Mapping):
        chk.bad("profiles", "must be a mapping {es: PROFILE, ue: PROFILE} (null: auto-detect the probes)")
    else:
        chk.unknown("profiles", profiles_in, {"es", "ue"})
        for role in ("es", "ue"):
            if profiles_in.get(role) is not None:
                _check_profile(chk, f"profiles.{role}", profiles_in[role])
                if isinstance(profiles_in[role], str):
                    profiles[role] = profiles_in[role]

    to = d.get("timeouts", {}) or {}
    if not isinstance(to, Mapping):
        chk.bad("timeouts", "must be a mapping")
        to = {}
    chk.unknown("timeouts", to, {"request_s", "heartbeat_s", "dead_after_s"})
    t_req = chk.number("timeouts.request_s", to.get("request_s", 600.0), 0.1, 86400.0)
    t_hb = chk.number("timeouts.heartbeat_s", to.get("heartbeat_s", 1.0), 0.01, 60.0)
    t_dead = chk.number("timeouts.dead_after_s", to.get("dead_after_s", 10.0), 0.05, 3600.0)
    if t_hb is not None and t_dead is not None and t_dead < 2 * t_hb:
        chk.bad("timeouts.dead_after_s", f"{t_dead} s must be at least two heartbeat periods ({2 * t_hb} s)")
    retries = chk.number("retries", d.get("retries", 1), 0, 100, integer=True)
    keep = chk.string("keep_images", d.get("keep_images", "all"), KEEP_IMAGES) or "all"
    curve_dir = None
    curve = d.get("curve")
    if curve is not None:
        if not isinstance(curve, Mapping) or "keys_dir" not in curve:
            chk.bad("curve", "must be null or {keys_dir: DIR}")
        else:
            chk.unknown("curve", curve, {"keys_dir"})
            kd = chk.string("curve.keys_dir", curve["keys_dir"])
            if kd is not None:
                curve_dir = _resolve_path(base_dir, kd)
                if check_paths and not _is_dir(curve_dir):
                    chk.bad("curve.keys_dir", f"{curve_dir} does not exist (create it with `megbed keys generate`)")

    if chk.problems:
        raise SpecError(source, chk.problems)
    return CampaignSpec(
        name=name, model=model, model_dir=model_dir, prompts=tuple(prompts), seeds=tuple(seeds),
        schemes=tuple(schemes), grid=grid, negative_prompt=negative, device=dev, height_px=height, width_px=width,
        guidance_scale=float(guidance), scheduler=scheduler, wire_dtype=wire, vae_tiling=vae_tiling, reference_n_steps=int(ref_n),
        repetitions=int(reps), warmup=int(warmup), cooldown_s=float(cooldown), randomize=bool(randomize),
        order_seed=int(order_seed), nodes=nodes, link_config=link_config, profiles=profiles,
        timeouts=Timeouts(float(t_req), float(t_hb), float(t_dead)), retries=int(retries), keep_images=keep,
        curve_keys_dir=curve_dir, source=source, raw=json.loads(json.dumps(dict(d), default=str)),
    )


def _nodes(chk: _Checker, value: Any) -> NodeAddresses:
    if value == "local":
        return NodeAddresses(local=True)
    if not isinstance(value, Mapping):
        chk.bad("nodes", f"must be 'local' or a mapping {{es, ue, channel_pub}}, got {_short(value)}")
        return NodeAddresses()
    chk.unknown("nodes", value, {"es", "ue", "channel_pub"})

    def address(key: str, v: Any) -> str | None:
        v = chk.string(key, v)
        if v is not None and not v.startswith(("tcp://", "ipc://", "inproc://")):
            chk.bad(key, f"{_short(v)} is not a ZeroMQ address (tcp://HOST:PORT)")
            return None
        return v

    es = address("nodes.es", value.get("es"))
    ue = chk.values("nodes.ue", value.get("ue"), address)
    pub = value.get("channel_pub")
    pub = None if pub is None else address("nodes.channel_pub", pub)
    return NodeAddresses(local=False, es=es, ue=tuple(ue), channel_pub=pub)


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
