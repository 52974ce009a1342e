"""Renderer, grammar, split and scorer of the shape scenes (the default model's data and judge)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from megbed.testbed.shapes.captions import CaptionError, caption, parse_caption
from megbed.testbed.shapes.dataset import generate, heldout_prompts
from megbed.testbed.shapes.render import render
from megbed.testbed.shapes.scene import NamedObject, SceneError, make_scene, sample_scene, split_of
from megbed.testbed.shapes.score import adherence, classify_pixels, score_image
from megbed.testbed.shapes.vocab import COLORS, POSITIONS, SHAPES, SIZES, WORDS


def test_vocabulary_covers_the_issue():
    assert {"circle", "square", "triangle"} <= set(SHAPES)
    assert {"red", "green", "blue", "yellow", "white", "black", "orange", "purple"} <= set(COLORS)
    assert set(SIZES) == {"small", "large"}
    assert {"left", "right", "top", "bottom", "center"} <= set(POSITIONS)
    assert min(math.dist(COLORS[a], COLORS[b]) for a, b in itertools.combinations(COLORS, 2)) >= 0.4
    assert "and" in WORDS and "middle" in WORDS


def test_generate_is_deterministic_and_seeded():
    a, b, c = generate(6, seed=3), generate(6, seed=3), generate(6, seed=4)
    assert a.images.shape == (6, 128, 128, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert not np.array_equal(a.images, c.images)


def test_train_and_heldout_never_share_a_scene_key():
    train = generate(300, seed=0, split="train")
    held = generate(60, seed=0, split="heldout")
    assert all(s.split == "train" for s in train.scenes)
    assert all(s.split == "heldout" for s in held.scenes)
    assert not {s.key() for s in train.scenes} & {s.key() for s in held.scenes}
    # the key is order-free: reversing a pair cannot move it across the split
    pair = next(s for s in held.scenes if len(s.objects) == 2)
    assert split_of(tuple(reversed(pair.named))) == "heldout"


def test_heldout_prompts_fixed_distinct_and_parseable():
    ev = heldout_prompts(64)
    assert ev == heldout_prompts(64)
    assert len({e.prompt for e in ev}) == 64
    assert sum(len(e.objects) == 1 for e in ev) == 32
    for e in ev:
        assert parse_caption(e.prompt) == e.objects
        assert split_of(e.objects) == "heldout"


def test_caption_roundtrip_with_varied_phrasing():
    rng = np.random.default_rng(1)
    for _ in range(200):
        scene = sample_scene(rng)
        text = caption(scene, rng)
        parsed = parse_caption(text)
        want = {(o.shape, o.color, o.position) for o in scene.named}
        assert {(o.shape, o.color, o.position) for o in parsed} == want
        for o in parsed:
            assert o.size is None or o.size == next(n.size for n in scene.named if n.color == o.color)
    assert parse_caption("A Large RED circle, on the LEFT.") == (NamedObject("circle", "red", "large", "left"),)
    assert caption([NamedObject("circle", "orange", None, "center")]) == "an orange circle in the center"


@pytest.mark.parametrize("bad", ["", "a red circle", "a red blue circle on the left", "a zebra on the left",
                                 "a red circle on the left and a red square on the right",
                                 "a red circle in the center and a blue square on the left"])
def test_parse_rejects_non_grammar(bad):
    with pytest.raises(CaptionError):
        parse_caption(bad)


def test_make_scene_rejects_overlapping_compositions():
    with pytest.raises(SceneError):
        make_scene([NamedObject("circle", "red", "small", "left"), NamedObject("square", "blue", "small", "left")])


def test_scorer_is_right_on_clean_renders():
    ds = generate(120, seed=7, split="train")
    rates = adherence(score_image(im, sc.named) for im, sc in zip(ds.images, ds.scenes, strict=True))
    assert rates.color == 1.0 and rates.position == 1.0
    assert rates.size >= 0.98 and rates.shape >= 0.98


def test_scorer_rejects_wrong_color_and_position():
    scene = make_scene([NamedObject("circle", "red", "large", "left")], np.random.default_rng(0))
    img = render(scene)
    assert score_image(img, [NamedObject("circle", "red", "large", "left")]).all_correct
    wrong_color = score_image(img, [NamedObject("circle", "blue", "large", "left")]).objects[0]
    assert not wrong_color.color_ok and not wrong_color.position_ok
    wrong_place = score_image(img, [NamedObject("circle", "red", "large", "right")]).objects[0]
    assert wrong_place.color_ok and not wrong_place.position_ok and wrong_place.found_position == "left"


def test_scorer_on_noise_and_blank_images():
    rng = np.random.default_rng(0)
    target = [NamedObject("circle", "red", "small", "center")]
    blank = np.full((128, 128, 3), 128, np.uint8)
    assert not score_image(blank, target).objects[0].color_ok
    noise = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    assert not score_image(noise, target).objects[0].position_ok
    # a float CHW tensor-like input is accepted
    chw = np.moveaxis(render(make_scene(target)), -1, 0).astype(np.float32) / 255
    assert score_image(chw, target).all_correct
    assert classify_pixels(blank).counts["red"] == 0
