"""Procedural shape scenes with known ground truth: the training data and the judge of the embedded default model.

Modules:

* ``vocab``: the named colors, shapes, sizes and positions (the grammar's words and their geometry).
* ``scene``: ``ShapeObject`` / ``Scene`` dataclasses, seeded scene sampling, the train / held-out split.
* ``captions``: scene -> caption (the grammar) and caption -> named objects (``parse_caption``).
* ``render``: ``render(scene, size_px)`` -> anti-aliased RGB image.
* ``dataset``: ``generate(n, seed, split)`` -> images + captions; ``heldout_prompts(n)`` -> the fixed eval set.
* ``score``: the pixel-statistics scorer: where is the named shape, and in which color (``score_image``).
"""
