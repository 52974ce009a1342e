"""Configuration files on pydantic v2: one strict base model, reusable field types, and errors that name the key.

Why pydantic: maintained, one declaration gives both the checks and a JSON Schema (editors validate and complete
campaign and link files from it), every error carries its location (``grid.merge_ratio[2]``), and pydantic-core ships
wheels for Python 3.10 / 3.11 on manylinux aarch64 (the Jetson and Raspberry Pi boards run the nodes).

Every config of the project (campaign spec, link, distillation and training recipes, learners) is a
:class:`StrictModel`; :func:`collect` validates a document and returns *every* problem as one line
``key.path[i]: what is wrong``, so a researcher fixes a file in one go.
"""

from __future__ import annotations

import copy
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WrapValidator,
)
from typing_extensions import Self

M = TypeVar("M", bound=BaseModel)
MAX_LINE_CHARS = 400  # one problem is one bounded line: a 20 kB value must not become a 20 kB message
MAX_ROUNDS = 6  # prune-and-revalidate rounds (each removes at least one bad leaf)


class StrictModel(BaseModel):
    """No unknown keys, no type coercion ("1" is not 1, true is not 1), no inf/nan."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, validate_default=False)


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (a config value may be huge or deeply nested)."""
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlevel, r.maxlist, r.maxdict = limit, limit, 3, 6, 6
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- field types ------------------------------------------------------------------------------------------------


def _keep_int(value: Any, handler: Callable[[Any], Any]) -> Any:
    # Checked as a float (range, finiteness) but an integer stays an integer: a campaign's `distance_m: [200]` is
    # hashed and written back as 200, not 200.0 (run manifests and point ids depend on it).
    checked = handler(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else checked


def number(lo: float | None = None, hi: float | None = None, *, gt: float | None = None,
           lt: float | None = None) -> Any:
    """A finite number in ``[lo, hi]`` (bounds ``gt``/``lt`` exclusive); integers are kept as integers."""
    return Annotated[float, Field(ge=lo, le=hi, gt=gt, lt=lt), WrapValidator(_keep_int)]


def integer(lo: int | None = None, hi: int | None = None) -> Any:
    """An integer (not a bool, not a float) in ``[lo, hi]``."""
    return Annotated[int, Field(ge=lo, le=hi)]


# Ranges every config uses. Positive is a float field's range (an integer given becomes a float, as a plain ``float``
# field makes it), unlike :func:`number`, which keeps an integer an integer.
Count = integer(1)
Index = integer(0)
Positive = Annotated[float, Field(gt=0.0)]


def _no_nul(value: str) -> str:
    if "\x00" in value:  # no prompt, name or path holds one; the OS refuses it in paths
        raise ValueError("holds a NUL character")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]


def _as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]  # a single value stands for a one-item list


def _unique(values: list) -> list:
    if len({short(v, 10**6) for v in values}) != len(values):
        raise ValueError("lists a value twice")
    return values


def values_of(item: Any) -> Any:
    """A non-empty list without repeats of ``item``; a single value is read as a list of one."""
    return Annotated[list[item], Field(min_length=1), BeforeValidator(_as_list, json_schema_input_type=item | Annotated[list[item], Field(min_length=1)]),
                     AfterValidator(_unique)]


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value  # JSON, YAML and --set give lists


def tuple_of(item: Any, *, min_length: int | None = None, max_length: int | None = None) -> Any:
    """A tuple of ``item`` (a list is accepted: what JSON gives back of a saved tuple)."""
    return Annotated[tuple[item, ...], BeforeValidator(_as_tuple), Field(min_length=min_length, max_length=max_length)]


def not_below(other: str) -> AfterValidator:
    """The value must be >= the setting ``other`` (declared before it), when that one is valid."""
    def check(value: Any, info: ValidationInfo) -> Any:
        low = info.data.get(other)
        if low is not None and value < low:
            raise ValueError(f"{short(value)} is below {other}={short(low)}")
        return value

    return AfterValidator(check)


def not_above(other: str) -> AfterValidator:
    """The value must be <= the setting ``other`` (declared before it), when that one is valid."""
    def check(value: Any, info: ValidationInfo) -> Any:
        high = info.data.get(other)
        if high is not None and value > high:
            raise ValueError(f"{short(value)} exceeds {other}={short(high)}")
        return value

    return AfterValidator(check)


def _none_to_empty(value: Any) -> Any:
    return {} if value is None else value


def section(model: type[BaseModel]) -> Any:
    """A nested section whose ``null`` means "all defaults"."""
    return Annotated[model, BeforeValidator(_none_to_empty, json_schema_input_type=model | None)]


# --- errors -----------------------------------------------------------------------------------------------------

_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "string_type": "a string", "bool_type": "true or false",
    "list_type": "a list", "tuple_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
    "model_attributes_type": "a mapping", "none_required": "null",
}
_TEMPLATES = {  # pydantic's error type -> our wording ({got}: the value, the rest from the error's context)
    "missing": "is required", "literal_error": "{got} is not one of {expected}", "finite_number": "must be finite, got {got}",
    "greater_than_equal": "{got} is outside the allowed range (must be >= {ge})",
    "greater_than": "{got} is outside the allowed range (must be > {gt})",
    "less_than_equal": "{got} is outside the allowed range (must be <= {le})",
    "less_than": "{got} is outside the allowed range (must be < {lt})",
    "string_pattern_mismatch": "{got} does not match {pattern}", "multiple_of": "{got} is not a multiple of {multiple_of}",
    "too_short": "must hold at least {min_length} values", "string_too_short": "must not be empty", "too_long": "must hold at most {max_length} values",
}


def _message(err: Mapping[str, Any]) -> str:
    kind, ctx, got = err["type"], dict(err.get("ctx") or {}), short(err.get("input"))
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}, got {got}"
    if kind == "too_short" and ctx.get("min_length") == 1:
        return "must list at least one value"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"]))
    ctx["expected"] = str(ctx.get("expected", "")).replace("'", "")
    return _TEMPLATES[kind].format(got=got, **ctx) if kind in _TEMPLATES else err["msg"]


def _key(loc: tuple) -> str:
    """``("grid", "merge_ratio", 2)`` -> ``grid.merge_ratio[2]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "(top level)"


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the (sub)model at ``loc`` accepts, to list beside an unknown key."""
    hint: Any = model
    for part in (*loc, None):
        hint = _unwrap(hint)
        if isinstance(hint, type) and issubclass(hint, BaseModel) and isinstance(part, str):
            hint = getattr(hint.model_fields.get(part), "annotation", None)
        elif isinstance(part, int):
            hint = next(iter(typing.get_args(hint)), None)
    return sorted(hint.model_fields) if isinstance(hint, type) and issubclass(hint, BaseModel) else []


def _unwrap(hint: Any) -> Any:
    """The model (or item type) under Annotated[...] and Optional[...]."""
    while typing.get_origin(hint) in (Annotated, typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        models = [a for a in args if isinstance(_unwrap(a), type) and issubclass(_unwrap(a), BaseModel)]
        hint = args[0] if typing.get_origin(hint) is Annotated or not models else models[0]
    return hint


def problems_of(exc: ValidationError, model: type[BaseModel]) -> list[tuple[tuple, str]]:
    """``(loc, "key.path: message")`` for each error of ``exc`` (the first per location, bounded)."""
    out: dict[tuple, str] = {}
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if loc not in out and err["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(model, loc[:-1]))
            out[loc] = line(_key(loc), f"unknown {getattr(model, 'key_word', 'key')}" +
                            (f" (allowed: {allowed})" if allowed else ""))
        elif loc not in out:
            out[loc] = line(_key(loc), _message(err))
    return list(out.items())


def line(key: str, message: str) -> str:
    """One bounded problem line ``key: message``."""
    text = " ".join(f"{key[:120]}: {message}".split())
    return text if len(text) <= MAX_LINE_CHARS else f"{text[:260]}...{text[-120:]}"


def _prune(data: Any, locs: list[tuple]) -> bool:
    """Remove the values at ``locs`` (or their nearest existing parents) from ``data``; False when none could go.
    Deepest and last list items first, so that removing one does not move the next."""
    pruned = False
    for loc in sorted(locs, key=lambda lc: [(0, p) if isinstance(p, int) else (1, str(p)) for p in lc], reverse=True):
        parent, node, last = None, data, None
        for part in loc:
            if isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(part, int) \
                    and 0 <= part < len(node):
                parent, node, last = node, node[part], part
            else:
                break
        if parent is not None:
            del parent[last]
            pruned = True
    return pruned


def _field(loc: tuple) -> tuple:
    return tuple(p for p in loc if not isinstance(p, int))


def collect(model: type[M], data: Any) -> tuple[M | None, list[str]]:
    """Validate ``data``; return the model (None when invalid) and every problem.

    The model of the *valid* part is also returned when there were problems: the bad values are pruned and the rest
    validated again (up to :data:`MAX_ROUNDS` times), so checks that compare fields (``k <= N``) still run on what is
    valid, as a hand-written checker would. Problems under an already reported key are not repeated.
    """
    problems: list[str] = []
    reported: list[tuple] = []
    work = copy.deepcopy(data)
    for _ in range(MAX_ROUNDS):
        try:
            return model.model_validate(work), problems
        except ValidationError as exc:
            found = problems_of(exc, model)
        problems += [text for loc, text in found if not any(_field(loc)[: len(r)] == r for r in reported)]
        reported += [_field(loc) for loc, _ in found]
        if not _prune(work, [loc for loc, _ in found]):
            break
    return None, problems


class _RaisesOwnError(type(BaseModel)):
    # Keyword construction (LinkConfig(process={...})) raises the config's own error. Done here, not in __init__:
    # pydantic calls an overridden __init__ while validating nested sections, which would nest the messages.
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            raise cls.error("; ".join(text for _, text in problems_of(exc, cls))) from None


class ConfigModel(StrictModel, metaclass=_RaisesOwnError):
    """A config whose every failure -- from a file, a mapping or keyword arguments -- is one ``error`` naming the
    key(s), never a pydantic ``ValidationError`` (callers catch their own error type)."""

    error: ClassVar[type[Exception]] = ValueError
    key_word: ClassVar[str] = "key"  # what an unknown one is called in messages ("unknown setting")

    @classmethod
    def parse(cls, data: Any, *, what: str = "configuration") -> Self:
        """Validate a parsed document (every problem listed, ``; ``-separated)."""
        if not isinstance(data, Mapping):
            raise cls.error(f"{what} must be a mapping, got {type(data).__name__}")
        validated, problems = collect(cls, dict(data))
        if problems or validated is None:
            raise cls.error("; ".join(problems) or f"invalid {what}")
        return validated
