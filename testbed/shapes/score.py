"""The pixel-statistics scorer: does an image show the named shapes in the named colors at the named places?

For one image:

1. **Background model.** Each channel is fitted with a plane ``a + b x + c y`` (least squares) over a thin border
   strip, refitted once without the strip pixels that disagree with the first fit (a shape touching the border).
   The renderer's backgrounds (plain or linear gradient) are planes, so clean renders fit exactly.
2. **Foreground.** Pixels farther than ``FOREGROUND_DISTANCE`` (RGB, [0, 1] scale) from the background model.
3. **Color classes.** Each foreground pixel takes the nearest named color, or none when it is farther than
   ``MAX_COLOR_DISTANCE`` from all of them (blended edges, smudges).
4. **Per named object** (color ``c``, position ``p``): the largest 8-connected blob of class ``c`` pixels.
   *color correct*: the blob has at least ``MIN_BLOB_FRACTION`` of the smallest nominal shape area and ``c`` is
   among the ``k`` most frequent foreground classes for a prompt naming ``k`` objects; *position correct*: color
   correct and the anchor nearest to the blob's bounding-box center is ``p``. Size (blob area nearer to the small
   or the large nominal area, log scale) and shape (blob fill of its bounding box: triangle 0.5, circle 0.785,
   square 1) are reported as well.

A prompt naming the same color twice uses the blobs of that color in decreasing size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from megbed.testbed.shapes.scene import NamedObject
from megbed.testbed.shapes.vocab import COLORS, POSITIONS, SIZES

FOREGROUND_DISTANCE = 0.18
MAX_COLOR_DISTANCE = 0.40
BORDER_FRACTION = 0.025
MIN_BLOB_FRACTION = 0.3
OUTLIER_DISTANCE = 0.08

_COLOR_NAMES = tuple(COLORS)
_PALETTE = np.asarray([COLORS[c] for c in _COLOR_NAMES], np.float32)
_FILL = {"triangle": 0.5, "circle": math.pi / 4, "square": 1.0}
_EIGHT = np.ones((3, 3), bool)


def nominal_area_px(shape: str, size: str, side_px: int) -> float:
    """Area in pixels of a shape of a named size on a ``side_px`` image (before jitter)."""
    half = SIZES[size] * side_px
    return _FILL[shape] * 4.0 * half * half


def as_rgb_float(image: np.ndarray | object) -> np.ndarray:
    """``[H, W, 3]`` uint8, or float ``[H, W, 3]`` / ``[3, H, W]`` in [0, 1] (numpy, torch or PIL) -> float32 HWC.

    Raises
    ------
    ValueError
        Not an RGB image.
    """
    if hasattr(image, "detach"):
        image = image.detach().cpu().float().numpy()
    arr = np.asarray(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3] or [3, H, W], got shape {list(arr.shape)}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def fit_background(img: np.ndarray) -> np.ndarray:
    """The planar background model ``[H, W, 3]`` fitted on the border strip (see the module docstring)."""
    h, w, _ = img.shape
    b = max(2, int(round(BORDER_FRACTION * min(h, w))))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx, yy = (xx + 0.5) / w, (yy + 0.5) / h
    border = np.zeros((h, w), bool)
    border[:b], border[-b:], border[:, :b], border[:, -b:] = True, True, True, True
    design = np.stack([np.ones_like(xx), xx, yy], axis=-1)
    pick = border
    for _ in range(2):
        a = design[pick]
        coef, *_ = np.linalg.lstsq(a, img[pick], rcond=None)
        model = design @ coef
        resid = np.linalg.norm(img - model, axis=-1)
        keep = border & (resid <= OUTLIER_DISTANCE)
        if keep.sum() < 0.5 * border.sum():  # most of the border is not background: keep the first fit
            break
        pick = keep
    return model.astype(np.float32)


@dataclass(frozen=True)
class PixelClasses:
    """Per-pixel classes of one image: ``labels`` [H, W] int (-1 background, -2 unclassified foreground, else an
    index into :data:`COLORS`' order) and ``counts`` per color name (foreground pixels)."""

    labels: np.ndarray
    counts: dict[str, int]


def classify_pixels(image: np.ndarray | object) -> PixelClasses:
    """Background / named-color classes of every pixel (steps 1-3 of the module docstring)."""
    img = as_rgb_float(image)
    bg = fit_background(img)
    fg = np.linalg.norm(img - bg, axis=-1) > FOREGROUND_DISTANCE
    dist = np.linalg.norm(img[..., None, :] - _PALETTE, axis=-1)  # [H, W, K]
    nearest = dist.argmin(axis=-1)
    ok = np.take_along_axis(dist, nearest[..., None], axis=-1)[..., 0] <= MAX_COLOR_DISTANCE
    labels = np.where(fg, np.where(ok, nearest, -2), -1).astype(np.int64)
    counts = {name: int((labels == k).sum()) for k, name in enumerate(_COLOR_NAMES)}
    return PixelClasses(labels, counts)


@dataclass(frozen=True)
class ObjectScore:
    """The verdict on one named object.

    Attributes
    ----------
    target : NamedObject
        What the prompt asked for.
    color_ok, position_ok : bool
        See the module docstring.
    size_ok, shape_ok : bool or None
        None when the color was not found (or, for size, when the prompt names no size).
    blob_px : int
        Pixels of the blob taken for the object (0 when none).
    center : tuple[float, float] or None
        Bounding-box center of the blob, fractions of the side (x right, y down).
    found_position, found_size, found_shape : str or None
        Nearest anchor, nearer nominal size, fill-ratio shape class of the blob.
    """

    target: NamedObject
    color_ok: bool
    position_ok: bool
    size_ok: bool | None
    shape_ok: bool | None
    blob_px: int
    center: tuple[float, float] | None
    found_position: str | None
    found_size: str | None
    found_shape: str | None


@dataclass(frozen=True)
class ImageScore:
    objects: tuple[ObjectScore, ...]
    color_counts: dict[str, int]

    @property
    def all_correct(self) -> bool:
        return all(o.color_ok and o.position_ok for o in self.objects)


def _nearest_position(cx: float, cy: float) -> str:
    return min(POSITIONS.values(), key=lambda p: (p.x - cx) ** 2 + (p.y - cy) ** 2).name


def _shape_of(fill: float) -> str:
    if fill < 0.64:
        return "triangle"
    return "circle" if fill < 0.89 else "square"


def _size_of(shape: str, area_px: float, side_px: int) -> str:
    small, large = nominal_area_px(shape, "small", side_px), nominal_area_px(shape, "large", side_px)
    return "small" if area_px <= math.sqrt(small * large) else "large"


def score_image(image: np.ndarray | object, objects: Sequence[NamedObject]) -> ImageScore:
    """Score one image against the objects its prompt names (see the module docstring)."""
    classes = classify_pixels(image)
    labels = classes.labels
    h, w = labels.shape
    side = min(h, w)
    min_blob = MIN_BLOB_FRACTION * min(nominal_area_px(s, "small", side) for s in _FILL)
    ranked = [c for c, n in sorted(classes.counts.items(), key=lambda kv: -kv[1]) if n > 0]
    top = set(ranked[: len(objects)])
    used: dict[str, int] = {}
    blobs_by_color: dict[str, list[tuple[int, tuple[slice, slice], np.ndarray]]] = {}
    out = []
    for obj in objects:
        if obj.color not in blobs_by_color:
            mask = labels == _COLOR_NAMES.index(obj.color)
            lab, n = ndimage.label(mask, structure=_EIGHT)
            sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
            boxes = ndimage.find_objects(lab)
            order = np.argsort(-sizes, kind="stable")
            blobs_by_color[obj.color] = [(int(sizes[i]), boxes[i], lab[boxes[i]] == i + 1) for i in order]
        k = used.get(obj.color, 0)
        used[obj.color] = k + 1
        blobs = blobs_by_color[obj.color]
        if k >= len(blobs) or blobs[k][0] < min_blob or obj.color not in top:
            out.append(ObjectScore(obj, False, False, None, None, blobs[k][0] if k < len(blobs) else 0,
                                   None, None, None, None))
            continue
        area, (rows, cols), _ = blobs[k]
        cx = (cols.start + cols.stop) / 2.0 / w
        cy = (rows.start + rows.stop) / 2.0 / h
        fill = area / float((rows.stop - rows.start) * (cols.stop - cols.start))
        found_pos, found_shape = _nearest_position(cx, cy), _shape_of(fill)
        found_size = _size_of(found_shape, area, side)
        out.append(ObjectScore(
            obj, True, found_pos == obj.position, None if obj.size is None else found_size == obj.size,
            found_shape == obj.shape, area, (cx, cy), found_pos, found_size, found_shape,
        ))
    return ImageScore(tuple(out), classes.counts)


@dataclass
class AdherenceRates:
    """Rates over all named objects of a set of scored images (and split by one- / two-shape prompts).

    ``color``, ``position``, ``size``, ``shape``: fraction of objects correct (size over objects whose prompt names
    a size); ``prompt_all``: fraction of images with every object's color and position correct.
    """

    n_images: int
    n_objects: int
    color: float
    position: float
    size: float
    shape: float
    prompt_all: float
    by_count: dict[int, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"n_images": self.n_images, "n_objects": self.n_objects, "color": self.color,
                "position": self.position, "size": self.size, "shape": self.shape, "prompt_all": self.prompt_all,
                "by_count": {str(k): v for k, v in self.by_count.items()}}


def _rates(scores: list[ImageScore]) -> dict[str, float]:
    objs = [o for s in scores for o in s.objects]
    sized = [o for o in objs if o.target.size is not None]

    def frac(items: list, pred) -> float:
        return float(np.mean([bool(pred(x)) for x in items])) if items else float("nan")

    return {
        "n_images": len(scores), "n_objects": len(objs),
        "color": frac(objs, lambda o: o.color_ok), "position": frac(objs, lambda o: o.position_ok),
        "size": frac(sized, lambda o: o.size_ok), "shape": frac(objs, lambda o: o.shape_ok),
        "prompt_all": frac(scores, lambda s: s.all_correct),
    }


def adherence(scores: Iterable[ImageScore]) -> AdherenceRates:
    """Aggregate :class:`ImageScore` s into rates (see :class:`AdherenceRates`)."""
    scores = list(scores)
    r = _rates(scores)
    by_count = {}
    for k in sorted({len(s.objects) for s in scores}):
        by_count[k] = _rates([s for s in scores if len(s.objects) == k])
    return AdherenceRates(r["n_images"], r["n_objects"], r["color"], r["position"], r["size"], r["shape"],
                          r["prompt_all"], by_count)
