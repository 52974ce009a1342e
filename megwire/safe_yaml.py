"""The one YAML loader of the project: safe tags only, bounded size and alias expansion, duplicate keys refused.

Every YAML file the project reads (campaign specs, link configs, recipes, channel configs) goes through
:func:`load_yaml_file` or :func:`load_yaml_text`. Plain ``yaml.safe_load`` is not enough for input from users or
from other hosts:

* **Alias bombs.** A 773-byte document of nested aliases (``b: [*a, *a, ...]`` nine levels deep) parses in
  microseconds into a graph of shared lists, but whatever walks it afterwards (validation, ``repr``, ``json.dumps``)
  sees 9^9 nodes. The loader counts the document's nodes *with aliases expanded* (a linear walk over the composed
  graph, memoised per node) and refuses documents over ``max_nodes``; a recursive alias (``&a [*a]``) is refused too.
* **Size and depth.** Files over ``max_bytes`` are refused before they are read whole; nesting deeper than Python's
  recursion allows is reported, not raised as ``RecursionError``.
* **Duplicate keys.** YAML says keys are unique, PyYAML keeps the last silently; here the second one is an error that
  names the key and both lines.
* **One-line errors.** Every failure is a :class:`YamlError` whose message is a single line naming the file, the line
  and the problem (PyYAML's own messages span several lines).

This module lives in megwire because megwire is the one package every layer may import (channel_emu included).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from megbed.megwire.errors import YamlError

MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_YAML_NODES = 200_000
MERGE_TAG = "tag:yaml.org,2002:merge"


def _where(mark: Any) -> str:
    return "" if mark is None else f"line {mark.line + 1}, column {mark.column + 1}: "


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _key_text(value: Any) -> str:
    return _one_line(repr(value), 80)


def expanded_size(root: Node, limit: int) -> int:
    """Number of nodes of ``root`` with every alias expanded, counted without expanding anything.

    Raises
    ------
    YamlError
        The count exceeds ``limit``, or an alias refers to a node that contains it (infinite expansion).
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise YamlError(f"{_where(node.start_mark)}recursive alias (the document would be infinite)")
        on_path.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            for child in node.value:
                total += size(child)
                if total > limit:
                    break
        elif isinstance(node, MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
                if total > limit:
                    break
        on_path.discard(key)
        if total > limit:
            raise YamlError(f"{_where(node.start_mark)}the document expands to more than {limit} nodes "
                            "(aliases included): refused")
        sizes[key] = total
        return total

    return size(root)


class LimitedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that bounds the expanded document size and refuses duplicate mapping keys."""

    max_nodes = MAX_YAML_NODES

    def construct_document(self, node: Node) -> Any:
        expanded_size(node, self.max_nodes)
        return super().construct_document(node)

    def construct_mapping(self, node: Node, deep: bool = False) -> dict:
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == MERGE_TAG:
                    continue  # merge keys may be overridden; complex keys are the base constructor's business
                key = self.construct_object(key_node, deep=False)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # unhashable: the base constructor reports it
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_key_text(key)} (first on line {first})", key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads 1e6 and 1.0e6 as strings: its floats need a dot and a signed exponent. A config file's
# `bandwidth_hz: 1.0e6` is a number to anyone writing it (and in YAML 1.2, JSON, TOML): resolve it as one.
LimitedSafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml_text(text: str, source: str = "<yaml>", *, max_nodes: int = MAX_YAML_NODES) -> Any:
    """Parse one YAML document with the limits above.

    Parameters
    ----------
    text : str
        The document.
    source : str
        Name used in error messages (the file's path).
    max_nodes : int
        Most nodes the document may hold with aliases expanded.

    Raises
    ------
    YamlError
        One line: ``SOURCE: line L, column C: PROBLEM``.
    """
    loader = None
    try:
        loader = LimitedSafeLoader(text)  # the reader already refuses control characters here
        loader.max_nodes = int(max_nodes)
        return loader.get_single_data()
    except YamlError as exc:
        raise YamlError(f"{source}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise YamlError(f"{source}: {_where(mark)}{_one_line(problem)}") from None
    except yaml.reader.ReaderError as exc:
        raise YamlError(f"{source}: character #x{exc.character:04x} at offset {exc.position} is not allowed in "
                        "YAML (binary data?)") from None
    except yaml.YAMLError as exc:
        raise YamlError(f"{source}: {_one_line(str(exc))}") from None
    except RecursionError:
        raise YamlError(f"{source}: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as exc:
        # Scalars PyYAML cannot convert: integers over Python's digit limit, impossible dates, ...
        raise YamlError(f"{source}: {_one_line(str(exc))}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_text_file(path: str | Path, *, kind: str = "YAML file", error: type[Exception] = YamlError,
                   max_bytes: int = MAX_YAML_BYTES) -> str:
    """Read a text file a user named: it must be a regular file of at most ``max_bytes`` of UTF-8 text.

    Every file of settings the project reads passes these guards before any parser sees it, so a directory, a
    missing file, a huge file or binary data all get the same one-line answer whatever the format.

    Parameters
    ----------
    path : str or Path
        The file.
    kind : str
        What the file is, for the messages (``"YAML file"``, ``"link configuration file"``).
    error : type of Exception
        Raised with one line naming the file and the problem: the caller's own error type, so the caller's callers
        catch one type whatever went wrong.
    max_bytes : int
        Largest accepted file (bytes); at most ``max_bytes + 1`` bytes are ever read.

    Returns
    -------
    str
        The decoded text.
    """
    path = Path(path)
    if path.is_dir():
        raise error(f"{path} is a directory, not a {kind}")
    if not path.exists():
        raise error(f"{path} does not exist")
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise error(f"{path} is larger than {max_bytes} bytes: not a {kind} this project reads")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def load_yaml_file(path: str | Path, *, max_bytes: int = MAX_YAML_BYTES, max_nodes: int = MAX_YAML_NODES) -> Any:
    """Read and parse a YAML file: it must be a regular file of at most ``max_bytes`` of UTF-8 text.

    Raises
    ------
    YamlError
        One line naming the file and the problem (missing, a directory, unreadable, too big, not UTF-8, bad YAML).
    """
    return load_yaml_text(read_text_file(path, max_bytes=max_bytes), str(path), max_nodes=max_nodes)
