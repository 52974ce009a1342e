"""The request contract (megbed.testbed.request.Request): one type from campaign to wire to runtime to dataset column."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

from megbed.megwire import Frame, from_parts, to_parts, vocab
from megbed.testbed.request import FIELDS, OPTIONAL_ON_WIRE, Request, RequestError

ROOT = Path(__file__).resolve().parents[1]
LINK = {"link_model": "awgn", "tx_mode": "analog", "distance_m": 200.0, "snr_db_set": None}


def _meg(**kw) -> Request:
    base = dict(prompt="a red apple", scheme="meg", seed=7, n_steps=8, es_steps=4, merge_ratio=0.5,
                merge_method="window", tome_ratio_es=0.25, tome_ratio_ue=0.5, guidance_scale=6.0, scheduler="ddim",
                negative_prompt="blurry", height_px=64, width_px=96, wire_dtype="float32", vae_tiling=True,
                decoder="distilled", request_id="p1-p0-s7-r2", point_id="p1", repetition=2, **LINK)
    base.update(kw)
    return Request(**base)


# --- round trip ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("request_", [
    _meg(),
    _meg(es_steps=None, merge_ratio=0.0),
    _meg(scheme="ceg", es_steps=None, merge_ratio=0.0, merge_method="none", distance_m=None, snr_db_set=12.5),
    _meg(scheme="ue_local", es_steps=0, merge_ratio=0.0),
    Request("only a prompt"),
])
def test_round_trip_through_meta_json_and_a_frame(request_):
    meta = request_.to_meta()
    assert tuple(meta) == FIELDS
    assert Request.from_meta(meta) == request_
    assert Request.from_meta(json.loads(json.dumps(meta))) == request_
    frame = from_parts(to_parts(Frame("request", meta={"request": meta})))
    assert Request.from_meta(frame.meta["request"]) == request_
    assert request_.replace() == request_


def test_handoffs_carry_the_runtime_fields_only():
    from megbed.testbed.request import RUNTIME_FIELDS

    req = _meg()
    meta = req.runtime_meta()
    assert tuple(meta) == RUNTIME_FIELDS and "link_model" not in meta and "point_id" not in meta
    back = Request.from_meta(meta, runtime=True)
    assert {f: getattr(back, f) for f in RUNTIME_FIELDS} == meta
    with pytest.raises(RequestError, match="missing field 'point_id'"):
        Request.from_meta(meta)  # a node's request must say which grid point it is for
    with pytest.raises(RequestError, match="missing field 'n_steps'"):
        Request.from_meta({k: v for k, v in meta.items() if k != "n_steps"}, runtime=True)


def test_fields_that_do_not_apply_are_neutral_as_the_dataset_records_them():
    ceg = _meg(scheme="ceg")
    assert (ceg.es_steps, ceg.merge_ratio, ceg.merge_method) == (8, 0.0, "none")
    local = _meg(scheme="ue_local")
    assert (local.es_steps, local.merge_ratio, local.link_model, local.tx_mode, local.distance_m) == \
        (0, 0.0, "none", "none", None)
    assert _meg(es_steps=None).es_steps == 8 and not _meg(es_steps=None).ue_denoises and _meg().ue_denoises
    cols = local.columns()
    assert math.isnan(cols["distance_m"]) and math.isnan(cols["snr_db_set"]) and cols["link_model"] == "none"
    ref = _meg().reference(12)
    assert (ref.n_steps, ref.es_steps, ref.merge_ratio, ref.tome_ratio_es, ref.tome_ratio_ue, ref.has_link) == \
        (12, 12, 0.0, 0.0, 0.0, False)
    assert _meg().link_meta() == {"link_model": "awgn", "tx_mode": "analog", "distance_m": 200.0, "snr_db": None}


def test_columns_are_dataset_columns_of_the_schema_kinds():
    from megbed.measurements import schema

    kinds = {c.name: c.kind for c in schema.COLUMNS}
    pytype = {"string": str, "int": int, "float": float, "bool": bool}
    cols = _meg().columns()
    assert set(cols) == set(FIELDS) - {"decoder", "negative_prompt"}
    for name, value in cols.items():
        assert name in kinds, f"{name} is not a dataset column"
        assert isinstance(value, pytype[kinds[name]]), (name, value)


# --- one error type, naming the field --------------------------------------------------------------------------------


BAD = [
    ("prompt", 3), ("negative_prompt", None), ("scheme", "split"), ("seed", -1), ("seed", 2**63), ("seed", 1.0),
    ("seed", True), ("n_steps", 0), ("n_steps", 1001), ("n_steps", "8"), ("es_steps", 9), ("es_steps", -1),
    ("merge_ratio", 0.8), ("merge_ratio", math.nan), ("merge_ratio", "0.5"), ("merge_ratio", True),
    ("merge_method", "nearest"), ("merge_method", 3), ("tome_ratio_es", 0.9), ("tome_ratio_ue", -0.1),
    ("guidance_scale", math.inf), ("guidance_scale", 101.0), ("scheduler", "pndm"), ("scheduler", None),
    ("height_px", 60), ("height_px", 64.0), ("width_px", 8200), ("wire_dtype", "bfloat16"), ("vae_tiling", "yes"),
    ("decoder", 3), ("decoder", "x" * 300), ("link_model", "nope"), ("tx_mode", "digital"), ("distance_m", 0.0),
    ("distance_m", "far"), ("snr_db_set", 95.0), ("request_id", "r" * 257), ("request_id", 5), ("point_id", None),
    ("repetition", -1), ("repetition", 1.5),
]


@pytest.mark.parametrize("field, value", BAD, ids=[f"{f}={v!r}"[:40] for f, v in BAD])
def test_every_bad_field_is_one_error_naming_it(field, value):
    other = {"distance_m": None} if field == "snr_db_set" else {}  # a fixed-SNR link: no distance
    with pytest.raises(RequestError, match=f"'{field}'") as built:
        _meg(**other, **{field: value})
    assert built.value.field == field
    with pytest.raises(RequestError, match=f"'{field}'") as parsed:
        Request.from_meta({**_meg().to_meta(), **other, field: value})
    assert parsed.value.field == field
    if field != "request_id":
        assert parsed.value.request_id == "p1-p0-s7-r2"


def test_a_link_needs_exactly_one_of_distance_and_snr():
    with pytest.raises(RequestError, match="exactly one of distance_m and snr_db_set") as exc:
        _meg(snr_db_set=10.0)
    assert exc.value.field == "distance_m"
    with pytest.raises(RequestError, match="exactly one"):
        _meg(distance_m=None)


def test_missing_and_unknown_fields_and_non_objects():
    meta = _meg().to_meta()
    link_fields = ("link_model", "tx_mode", "distance_m", "snr_db_set")
    local = {k: v for k, v in _meg(scheme="ue_local").to_meta().items() if k not in link_fields}
    assert Request.from_meta(local).link_model == "none"  # a UE-local request may leave its link out
    for name in FIELDS:
        partial = {k: v for k, v in meta.items() if k != name}
        if name in OPTIONAL_ON_WIRE and name not in link_fields:
            assert Request.from_meta(partial).request_id == "p1-p0-s7-r2"  # a peer from before the field
        elif name not in OPTIONAL_ON_WIRE:
            with pytest.raises(RequestError, match=f"missing field '{name}'") as exc:
                Request.from_meta(partial)
            assert exc.value.field == name
    with pytest.raises(RequestError, match="unknown field 'colour'") as exc:
        Request.from_meta({**meta, "colour": 1})
    assert exc.value.field == "colour"
    for bad in (None, [], "request", 3):
        with pytest.raises(RequestError, match="must be an object"):
            Request.from_meta(bad)


def test_nodes_translate_the_error_into_a_bad_request_naming_the_field():
    from megbed.testbed.nodes import protocol as P

    frame = P.request_frame(_meg(), 1)
    frame.meta["request"]["merge_ratio"] = 0.9
    with pytest.raises(P.ProtocolError, match="request.request: field 'merge_ratio'") as exc:
        P.parse_request_meta(frame)
    assert exc.value.code == P.CODE_BAD_REQUEST and exc.value.request_id == "p1-p0-s7-r2"
    linkless = P.request_frame(_meg(link_model="none", tx_mode="none", distance_m=None), 1)
    with pytest.raises(P.ProtocolError, match="needs a link"):
        P.parse_request_meta(linkless)
    assert P.parse_request_meta(P.request_frame(_meg(), 1)) == _meg()
    assert P.request_frame(_meg(), 1).meta["link"]["distance_m"] == 200.0  # what the broker reads


# --- the CLI follows the contract ----------------------------------------------------------------------------------


def test_generate_flags_and_defaults_are_the_contract_s():
    from megbed.testbed.cli.generate import REQUEST_DEFAULTS, REQUEST_FLAGS, request_of
    from megbed.testbed.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["generate", "a cat", "--out", "x.png"])
    request = request_of(args)
    assert request == Request("a cat", request_id="cli")  # every CLI default is the contract's
    assert REQUEST_DEFAULTS["guidance_scale"] == request.guidance_scale == 5.0
    for name, flag, _, _, _ in REQUEST_FLAGS:
        assert flag == "--" + name.replace("_", "-")  # flags are the dataset column names
    old = parser.parse_args(["generate", "a cat", "--out", "x.png", "--steps", "6", "--split", "3", "--merge", "0.25",
                             "--tome-es", "0.5", "--guidance", "7.5", "--height", "64", "--ue-decoder", "auto"])
    new = parser.parse_args(["generate", "a cat", "--out", "x.png", "--n-steps", "6", "--es-steps", "3",
                             "--merge-ratio", "0.25", "--tome-ratio-es", "0.5", "--guidance-scale", "7.5",
                             "--height-px", "64", "--decoder", "auto"])
    assert request_of(old) == request_of(new) and request_of(new).decoder == "auto"


def test_generate_help_shows_only_the_contract_spellings(capsys):
    from megbed.testbed.cli.main import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    text = capsys.readouterr().out
    assert "--n-steps" in text and "--merge-ratio" in text and "--decoder" in text
    for old in ("--steps", "--split", "--merge ", "--ue-decoder", "--guidance "):
        assert old not in text


# --- vocabularies defined once; no request <-> schedulers cycle --------------------------------------------------


def test_vocabularies_are_the_shared_objects():
    from megbed.channel_emu import config as link_config
    from megbed.measurements import schema
    from megbed.testbed.campaign import spec
    from megbed.testbed.ldm import merging, plan
    from megbed.testbed.ldm.schedulers import SCHEDULERS
    from megbed.testbed.request import LINK_MODELS, SCHEDULER_NAMES, TX_MODES

    assert schema.SCHEMES is vocab.SCHEMES and spec.SCHEMES is vocab.SCHEMES and plan.SCHEMES is vocab.SCHEMES
    assert schema.STAGES is vocab.STAGES and set(plan.STAGE_NAMES) == set(vocab.STAGES) - {"link", "end_to_end"}
    assert spec.WIRE_DTYPES is vocab.WIRE_DTYPES and set(merging._WIRE_DTYPES) == set(vocab.WIRE_DTYPES)
    assert merging.MAX_BETA == spec.MAX_BETA == vocab.MAX_MERGE_RATIO
    assert spec.LINK_MODELS is LINK_MODELS is link_config.MODELS and spec.TX_MODES is TX_MODES is link_config.MODES
    assert tuple(SCHEDULERS) == SCHEDULER_NAMES


def _literal_copies() -> list[str]:
    """Module-level assignments that spell a shared vocabulary (or the 0.75 cap) out instead of importing it."""
    from megbed.channel_emu.config import MODELS, MODES

    shared = {vocab.SCHEMES, vocab.STAGES, vocab.WIRE_DTYPES, MODELS, MODES}
    home = {ROOT / "megwire" / "vocab.py", ROOT / "channel_emu" / "config.py"}
    found = []
    for package in ("megwire", "measurements", "testbed", "channel_emu", "analysis", "benchmarks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path in home:
                continue
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
                    continue
                try:
                    value = ast.literal_eval(node.value)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    continue
                if (isinstance(value, tuple) and value in shared) or value == 0.75:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_module_copies_a_vocabulary():
    assert _literal_copies() == []


def test_the_request_does_not_import_the_runtime():
    assert not (ROOT / "testbed" / "ldm" / "request.py").exists()
    tree = ast.parse((ROOT / "testbed" / "request.py").read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "collections.abc", "dataclasses", "operator", "typing", "math",
                        "megbed.channel_emu.config", "megbed.megwire.vocab", "megbed.testbed.ldm.errors", "megbed.testbed.ldm.merge_methods"}


# --- from_meta's cache of validated configurations ---------------------------------------------------------------


def _outcome(meta: dict, *, warm: bool):
    """What from_meta gives for ``meta``: with its configuration cached (``warm``) or the full check alone."""
    from megbed.testbed import request as R

    R._VALID_CONFIGS.clear()
    if warm:
        Request.from_meta(_meg().to_meta())
        good = dict(meta, **{f: v for f, v in _meg().to_meta().items() if f in R.PER_REQUEST_FIELDS})
        try:
            Request.from_meta(good)  # a request of the same configuration with good per-request fields
        except RequestError:
            pass  # a bad configuration is never cached
        assert R._VALID_CONFIGS
    try:
        return ("ok", Request.from_meta(meta).to_meta())
    except RequestError as exc:
        return ("error", type(exc), exc.field, str(exc), exc.request_id)


BAD_PER_REQUEST = [("request_id", 5), ("request_id", "x" * 257), ("request_id", "a\x00b"), ("prompt", None),
                   ("prompt", ["a"]), ("negative_prompt", 3), ("seed", -1), ("seed", 2**63), ("seed", 1.0),
                   ("seed", True), ("point_id", 7), ("point_id", "\x00"), ("repetition", -2), ("repetition", "1"),
                   ("repetition", 2**31)]


@pytest.mark.parametrize(("name", "value"), BAD_PER_REQUEST)
def test_a_cached_configuration_checks_every_per_request_field_as_the_full_check_does(name, value):
    meta = dict(_meg().to_meta(), **{name: value})
    assert _outcome(meta, warm=True) == _outcome(meta, warm=False)
    assert _outcome(meta, warm=True)[0] == "error"
    # Two bad fields: the first in the full check's order is named.
    both = dict(meta, repetition=-1) if name != "repetition" else dict(meta, seed=-1)
    assert _outcome(both, warm=True) == _outcome(both, warm=False)


def test_a_cached_configuration_gives_the_same_request_and_tells_1_from_1_0_and_true():
    meta = _meg(seed=11, request_id="other", prompt="a blue cube").to_meta()
    assert _outcome(meta, warm=True) == _outcome(meta, warm=False)
    assert _outcome(meta, warm=True)[0] == "ok"
    for name, value in (("n_steps", 8.0), ("vae_tiling", 1), ("height_px", True), ("merge_ratio", [0.5]),
                        ("guidance_scale", float("nan"))):
        bad = dict(meta, **{name: value})
        assert _outcome(bad, warm=True) == _outcome(bad, warm=False)
        assert _outcome(bad, warm=True)[0] == "error"
    # -0.0 and 0.0 are one value, recorded one way whichever came first.
    neg = dict(meta, merge_ratio=-0.0)
    assert math.copysign(1.0, Request.from_meta(neg).merge_ratio) == 1.0
    assert math.copysign(1.0, Request(**neg).merge_ratio) == 1.0
