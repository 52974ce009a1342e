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
from collections.abc import Callable, Iterable, Mapping
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


def context(info: ValidationInfo, key: str, default: Any = None) -> Any:
    """A value of the validation context (a spec's folder, whether paths must exist)."""
    return (info.context or {}).get(key, default)


# --- errors -----------------------------------------------------------------------------------------------------

_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "string_type": "a string", "bool_type": "true or false",
    "list_type": "a list", "tuple_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
    "model_attributes_type": "a mapping", "none_required": "null",
}


def _message(err: Mapping[str, Any]) -> str:
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}, got {short(got)}"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "literal_error":
        return f"{short(got)} is not one of {ctx.get('expected', '').replace(chr(39), '')}"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()), "")
        return f"{short(got)} is outside the allowed range (must be {bounds[kind]} {limit})"
    if kind == "string_pattern_mismatch":
        return f"{short(got)} does not match {ctx.get('pattern')}"
    if kind == "multiple_of":
        return f"{short(got)} is not a multiple of {ctx.get('multiple_of')}"
    if kind == "finite_number":
        return f"must be finite, got {short(got)}"
    if kind == "too_short":
        return "must list at least one value" if ctx.get("min_length") == 1 else \
            f"must hold at least {ctx.get('min_length')} values"
    if kind == "too_long":
        return f"must hold at most {ctx.get('max_length')} values"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"]))
    return err["msg"]


def key_path(loc: Iterable[Any], prefix: str = "") -> str:
    """``("grid", "merge_ratio", 2)`` -> ``grid.merge_ratio[2]``."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the (sub)model at ``loc`` accepts, to list beside an unknown key."""
    hint: Any = model
    for part in loc:
        hint = _unwrap(hint)
        if isinstance(hint, type) and issubclass(hint, BaseModel) and isinstance(part, str):
            field = hint.model_fields.get(part)
            hint = field.annotation if field else None
        elif isinstance(part, int):
            hint = next(iter(typing.get_args(hint)), None)
    hint = _unwrap(hint)
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return [f.alias or name for name, f in hint.model_fields.items()]
    return []


def _unwrap(hint: Any) -> Any:
    while True:
        origin = typing.get_origin(hint)
        if origin is Annotated:
            hint = typing.get_args(hint)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            models = [a for a in args if isinstance(_unwrap(a), type) and issubclass(_unwrap(a), BaseModel)]
            hint = models[0] if models else args[0]
        else:
            return hint


def problems_of(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> list[tuple[tuple, str]]:
    """``(loc, "key.path: message")`` for each error of ``exc`` (one per location, bounded)."""
    out: list[tuple[tuple, str]] = []
    seen: set[tuple] = set()
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if loc in seen:
            continue
        seen.add(loc)
        message = _message(err)
        if err["type"] == "extra_forbidden":
            message = f"unknown {getattr(model, 'key_word', 'key')}"
            allowed = _allowed_keys(model, loc[:-1])
            message += f" (allowed: {', '.join(sorted(allowed))})" if allowed else ""
        out.append((loc, line(key_path(loc, prefix), message)))
    return out


def line(key: str, message: str) -> str:
    """One bounded problem line ``key: message``."""
    text = " ".join(f"{key[:120]}: {message}".split())
    return text if len(text) <= MAX_LINE_CHARS else f"{text[:260]}...{text[-120:]}"


def _prune(data: Any, loc: tuple) -> bool:
    """Remove the value at ``loc`` (or its nearest existing parent) from ``data``; False when nothing could go."""
    path: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(part, int) \
                and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        else:
            break
    if not path:
        return False
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    if isinstance(parent, list):
        parent[path[-1]] = _PRUNED
    else:
        del parent[path[-1]]
    return True


_PRUNED = object()


def _drop_pruned(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_pruned(v) for k, v in node.items()}
    if isinstance(node, list):
        kept = [_drop_pruned(v) for v in node if v is not _PRUNED]
        return kept
    return node


def collect(model: type[M], data: Any, *, context: Mapping[str, Any] | None = None,
            prefix: str = "") -> tuple[M | None, list[str]]:
    """Validate ``data``; return the model (None when invalid) and every problem.

    The model of the *valid* part is also returned when there were problems: the bad values are pruned and the rest
    validated again (up to :data:`MAX_ROUNDS` times), so checks that compare fields (``k <= N``) still run on what is
    valid, as a hand-written checker would. Problems under an already reported key are not repeated.
    """
    problems: list[str] = []
    reported: list[tuple] = []
    work = copy.deepcopy(data) if isinstance(data, dict | list) else data
    for _ in range(MAX_ROUNDS):
        try:
            validated = model.model_validate(work, context=dict(context or {}))
        except ValidationError as exc:
            pruned = False
            for loc, text in problems_of(exc, model, prefix):
                field = tuple(p for p in loc if not isinstance(p, int))
                if not any(field[: len(r)] == r for r in reported):
                    problems.append(text)
                pruned = _prune(work, loc) or pruned
            reported.extend(tuple(p for p in loc if not isinstance(p, int)) for loc, _ in problems_of(exc, model))
            if not pruned:
                return None, problems
            work = _drop_pruned(work)
        else:
            return validated, problems
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
