"""Rasterise a scene: anti-aliased shapes (supersampled coverage inside each shape's box) over the background.

Each shape's coverage is computed on a ``SUPERSAMPLE``-times finer grid, only over the pixels of its bounding box,
and box-filtered to a per-pixel alpha; shapes are composited in order over the background. The gradient
background is exact at pixel centers, so it needs no supersampling.
"""

from __future__ import annotations

import math

import numpy as np

from megbed.testbed.shapes.scene import Background, Scene, ShapeObject

DEFAULT_SIZE_PX = 128
SUPERSAMPLE = 4


def shape_mask(obj: ShapeObject, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean coverage of one shape at sample points (``x`` [1, S], ``y`` [S, 1], fractions of the side).

    The triangle is isosceles and upright: apex at the top of the bounding box, base along its bottom.
    """
    dx, dy, r = x - obj.cx, y - obj.cy, obj.half_extent
    kind = obj.named.shape
    if kind == "circle":
        return dx * dx + dy * dy <= r * r
    if kind == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if kind == "triangle":
        return (dy <= r) & (np.abs(dx) <= (dy + r) / 2.0)
    raise ValueError(f"cannot draw shape {kind!r}")


def background_image(bg: Background, size_px: int) -> np.ndarray:
    """``[H, W, 3]`` float32: the plain tone, or the gradient normalised so it spans exactly rgb0 -> rgb1."""
    rgb0 = np.asarray(bg.rgb0, np.float32)
    if bg.kind == "plain":
        return np.broadcast_to(rgb0, (size_px, size_px, 3)).copy()
    if bg.kind != "gradient":
        raise ValueError(f"unknown background kind {bg.kind!r}")
    c = (np.arange(size_px, dtype=np.float32) + 0.5) / size_px
    ux, uy = math.cos(bg.angle_rad), math.sin(bg.angle_rad)
    proj = c[None, :] * ux + c[:, None] * uy
    corners = [cx * ux + cy * uy for cx in (0.0, 1.0) for cy in (0.0, 1.0)]
    lo, hi = min(corners), max(corners)
    t = ((proj - lo) / max(hi - lo, 1e-6)).astype(np.float32)[..., None]
    return rgb0 + (np.asarray(bg.rgb1, np.float32) - rgb0) * t


def coverage(obj: ShapeObject, size_px: int, supersample: int = SUPERSAMPLE) -> tuple[slice, slice, np.ndarray]:
    """Fractional coverage of one shape over the pixels of its bounding box: ``(rows, cols, alpha [h, w])``."""
    r = obj.half_extent
    x0 = max(int(math.floor((obj.cx - r) * size_px)) - 1, 0)
    x1 = min(int(math.ceil((obj.cx + r) * size_px)) + 1, size_px)
    y0 = max(int(math.floor((obj.cy - r) * size_px)) - 1, 0)
    y1 = min(int(math.ceil((obj.cy + r) * size_px)) + 1, size_px)
    if x1 <= x0 or y1 <= y0:
        return slice(0, 0), slice(0, 0), np.zeros((0, 0), np.float32)
    side = size_px * supersample
    xs = (np.arange(x0 * supersample, x1 * supersample, dtype=np.float32) + 0.5) / side
    ys = (np.arange(y0 * supersample, y1 * supersample, dtype=np.float32) + 0.5) / side
    mask = shape_mask(obj, xs[None, :], ys[:, None]).astype(np.float32)
    alpha = mask.reshape(y1 - y0, supersample, x1 - x0, supersample).mean(axis=(1, 3))
    return slice(y0, y1), slice(x0, x1), alpha


def render_float(scene: Scene, size_px: int = DEFAULT_SIZE_PX, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Render to ``[size_px, size_px, 3]`` float32 in [0, 1]."""
    img = background_image(scene.background, size_px)
    for obj in scene.objects:
        rows, cols, alpha = coverage(obj, size_px, supersample)
        a = alpha[..., None]
        img[rows, cols] = img[rows, cols] * (1.0 - a) + np.asarray(obj.rgb, np.float32) * a
    return img


def render(scene: Scene, size_px: int = DEFAULT_SIZE_PX, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Render a scene to ``[size_px, size_px, 3]`` uint8 RGB (shapes painted in order over the background)."""
    return np.clip(np.rint(render_float(scene, size_px, supersample) * 255.0), 0, 255).astype(np.uint8)
