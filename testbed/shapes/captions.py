"""The caption grammar: scene -> caption, and caption -> the named objects it asks for.

Grammar (one or two objects joined by "and")::

    caption  := object position [ "and" object position ]
    object   := ("a" | "an") [size] color shape
    size     := "small" | "large"
    position := "on the left" | "on the right" | "at the top" | "at the bottom" | "in the center" | "in the middle"

e.g. "a large red circle on the left and a small blue square at the top". The parser is lenient about case,
punctuation and extra whitespace, and strict about meaning: every object needs exactly one color, one shape and
one position.
"""

from __future__ import annotations

import re

import numpy as np

from megbed.testbed.shapes.errors import CaptionError
from megbed.testbed.shapes.scene import NamedObject, Scene, SceneError, check_objects
from megbed.testbed.shapes.vocab import COLORS, POSITION_PHRASES, POSITIONS, SHAPES, SIZES

_VOWELS = "aeiou"


def _article(word: str) -> str:
    return "an" if word[0] in _VOWELS else "a"


def object_phrase(obj: NamedObject, include_size: bool = True, center_phrase: str = "in the center") -> str:
    """``"a large red circle on the left"``."""
    words = ([obj.size] if include_size and obj.size else []) + [obj.color, obj.shape]
    position = center_phrase if obj.position == "center" else POSITIONS[obj.position].phrase
    return f"{_article(words[0])} {' '.join(words)} {position}"


def caption(scene: Scene | tuple[NamedObject, ...] | list[NamedObject],
            rng: np.random.Generator | None = None) -> str:
    """The caption of a scene: canonical when ``rng`` is None (objects in drawing order, sizes named).

    With ``rng`` (training captions), the phrasing varies: the object order is shuffled, a size is left out one
    time in five, and the center is sometimes "in the middle".
    """
    objects = list(scene.named if isinstance(scene, Scene) else scene)
    if rng is None:
        return " and ".join(object_phrase(o) for o in objects)
    if len(objects) > 1 and rng.uniform() < 0.5:
        objects.reverse()
    phrases = []
    for o in objects:
        phrases.append(object_phrase(o, include_size=bool(rng.uniform() >= 0.2),
                                     center_phrase="in the middle" if rng.uniform() < 0.3 else "in the center"))
    return " and ".join(phrases)


def normalize(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces."""
    return " ".join(re.sub(r"[^a-z]+", " ", text.lower()).split())


def parse_caption(text: str) -> tuple[NamedObject, ...]:
    """The objects a caption of the grammar names, in caption order.

    Raises
    ------
    CaptionError
        A part without exactly one color, one shape and one position phrase, an unknown word, or a composition
        the grammar does not allow (see :func:`megbed.testbed.shapes.scene.check_objects`).
    """
    words = normalize(text).split()
    if not words:
        raise CaptionError("empty caption")
    parts: list[list[str]] = [[]]
    for w in words:
        if w == "and":
            parts.append([])
        else:
            parts[-1].append(w)
    objects = []
    for part in parts:
        objects.append(_parse_object(part, text))
    try:
        check_objects(objects)
    except SceneError as exc:
        raise CaptionError(f"{text!r}: {exc}") from exc
    return tuple(objects)


def _parse_object(words: list[str], text: str) -> NamedObject:
    joined = " ".join(words)
    positions = [name for phrase, name in POSITION_PHRASES.items() if re.search(rf"\b{phrase}\b", joined)]
    for phrase in POSITION_PHRASES:
        joined = re.sub(rf"\b{phrase}\b", " ", joined)
    rest = joined.split()
    colors = [w for w in rest if w in COLORS]
    shapes = [w for w in rest if w in SHAPES]
    sizes = [w for w in rest if w in SIZES]
    unknown = [w for w in rest if w not in COLORS and w not in SHAPES and w not in SIZES and w not in ("a", "an")]
    if unknown:
        raise CaptionError(f"{text!r}: unknown word(s) {', '.join(repr(w) for w in unknown)}")
    for kind, found in (("color", colors), ("shape", shapes), ("position", positions)):
        if len(found) != 1:
            raise CaptionError(f"{text!r}: each object needs exactly one {kind}, found {found or 'none'} "
                               f"in {' '.join(words)!r}")
    if len(sizes) > 1:
        raise CaptionError(f"{text!r}: more than one size in {' '.join(words)!r}")
    return NamedObject(shapes[0], colors[0], sizes[0] if sizes else None, positions[0])
