"""The megbed dataset schema: tidy rows, one per request x node x stage, units in column names.

This module is the single source of truth for column names (their table is ``columns.toml`` beside it, read at
import). Writers (campaign runner, orchestrator) and readers (analysis, policy environment) import it; nothing else
spells column names out.

Row granularity: a request (``request_id``) produces one row per (``node``, ``stage``) it went through, plus one
``stage == "end_to_end"`` row on ``node == "orchestrator"`` holding the whole request's latency, summed energy and
quality. Times are on the orchestrator's monotonic timeline (remote stamps mapped through clock sync).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

try:  # Python 3.11+; tomli is the same parser, for 3.10 (JetPack 6)
    import tomllib  # novermin (tomli below on 3.10)
except ModuleNotFoundError:  # pragma: no cover - exercised under Python 3.10
    import tomli as tomllib

from megbed.megwire.vocab import SCHEMES, STAGES  # noqa: F401 - the dataset's vocabularies, read as schema.STAGES

SCHEMA_VERSION = "1.0"

NODES = ("es", "ue", "channel", "orchestrator")
ENERGY_METHODS = ("counter", "integrated", "modeled", "none")

# Families of columns, one per rail: energy_mj_<rail> (gross) and energy_net_mj_<rail> (idle subtracted).
ENERGY_PREFIX = "energy_mj_"
ENERGY_NET_PREFIX = "energy_net_mj_"


@dataclass(frozen=True)
class Column:
    """One column of the dataset.

    Attributes
    ----------
    name : str
        Column name; units are in the name.
    kind : str
        ``"string"``, ``"int"``, ``"float"`` or ``"bool"``.
    required : bool
        Must be present in every dataset.
    description : str
        What it holds, with its unit.
    """

    name: str
    kind: str
    required: bool
    description: str


KINDS = ("string", "int", "float", "bool")


def _load_columns() -> tuple[Column, ...]:
    """The column table: ``columns.toml`` beside this module, one line a column in the dataset's order (data, so
    that tools outside Python read the same contract)."""
    table = tomllib.loads(Path(__file__).with_name("columns.toml").read_text(encoding="utf-8"))
    columns = tuple(Column(name, c["kind"], c.get("required", False), c["description"]) for name, c in table.items())
    odd = [c.name for c in columns if c.kind not in KINDS]
    if odd:  # a typo in the data file must not pass as an unknown kind that no dtype matches
        raise ValueError(f"columns.toml: unknown kind in {', '.join(odd)}")
    return columns


COLUMNS: tuple[Column, ...] = _load_columns()

COLUMN_BY_NAME = {c.name: c for c in COLUMNS}
REQUIRED = tuple(c.name for c in COLUMNS if c.required)


class SchemaError(ValueError):
    """A dataset does not match the schema; the message lists every problem found."""


def column_kind(name: str) -> str | None:
    """The kind of a known column (rail columns included), or None for an unknown one."""
    if name in COLUMN_BY_NAME:
        return COLUMN_BY_NAME[name].kind
    if name.startswith((ENERGY_PREFIX, ENERGY_NET_PREFIX)):
        return "float"
    return None


def energy_column(rail: str) -> str:
    """Gross energy column of a rail key, e.g. ``energy_mj_vdd_in``."""
    return ENERGY_PREFIX + rail


def energy_net_column(rail: str) -> str:
    """Idle-subtracted energy column of a rail key, e.g. ``energy_net_mj_vdd_in``."""
    return ENERGY_NET_PREFIX + rail


def rail_columns(columns: Iterable[str]) -> list[str]:
    """The per-rail gross energy columns present, e.g. ``energy_mj_vdd_in`` (``energy_mj_total`` excluded)."""
    return [c for c in columns if c.startswith(ENERGY_PREFIX) and c != "energy_mj_total"]


def _kind_ok(kind: str, dtype) -> bool:
    import pandas as pd

    api = pd.api.types
    if kind == "string":
        return api.is_string_dtype(dtype) or api.is_object_dtype(dtype)
    if kind == "int":
        return api.is_integer_dtype(dtype)
    if kind == "float":
        return api.is_float_dtype(dtype) or api.is_integer_dtype(dtype)
    if kind == "bool":
        return api.is_bool_dtype(dtype)
    return False


def problems(df, *, strict_extra: bool = False) -> list[str]:
    """Everything wrong with a dataframe against the schema (empty list when it conforms).

    Parameters
    ----------
    df : pandas.DataFrame
        Rows of a dataset.
    strict_extra : bool
        Also report columns the schema does not know.
    """
    found: list[str] = []
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        found.append(f"missing required columns: {', '.join(missing)}")
    for name in df.columns:
        kind = column_kind(name)
        if kind is None:
            if strict_extra:
                found.append(f"unknown column {name!r}")
            continue
        if not _kind_ok(kind, df[name].dtype):
            found.append(f"column {name!r} should be {kind}, found {df[name].dtype}")
    for name, allowed in (("scheme", SCHEMES), ("node", NODES), ("energy_method", ENERGY_METHODS)):
        if name in df.columns:
            bad = sorted(set(df[name].dropna().astype(str)) - set(allowed))
            if bad:
                found.append(f"column {name!r} has values outside {allowed}: {bad}")
    return found


def validate(df, *, strict_extra: bool = False) -> None:
    """Raise :class:`SchemaError` listing every problem, or return quietly."""
    found = problems(df, strict_extra=strict_extra)
    if found:
        raise SchemaError("dataset does not match schema v" + SCHEMA_VERSION + ":\n  - " + "\n  - ".join(found))
