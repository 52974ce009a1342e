"""The testbed's shared vocabularies, each defined here once.

Every layer names schemes, stages and wire dtypes: the dataset schema (``measurements``), the request contract and
runtime (``testbed``), the campaign spec. They live in ``megwire``, the base package every other one may import, so
that no layer copies another's tuple. The link vocabulary (small-scale models, transmission modes, SNR range) is the
channel emulator's own and lives in :mod:`megbed.channel_emu.config`.
"""

from __future__ import annotations

# Generation schemes (the dataset's ``scheme`` column): split MEG, image-sending CEG, everything on the UE.
SCHEMES = ("meg", "ceg", "ue_local")
# Split presets a request or a node's --plans can name (megbed.testbed.ldm.plan.plan_for): the schemes plus
# "hybrid", MEG where the UE finishes the denoising steps (its dataset scheme stays "meg").
PRESETS = ("meg", "hybrid", "ceg", "ue_local")

# Stages a dataset row can be for, in pipeline order (the order tables and figures list them in).
STAGES = (
    "text_encode", "denoise", "merge", "serialize", "link", "deserialize", "unmerge", "decode",
    "image_encode", "image_decode", "end_to_end",
)
# The stages a node runs itself: ``link`` is the channel's and ``end_to_end`` the orchestrator's.
NODE_STAGES = tuple(s for s in STAGES if s not in ("link", "end_to_end"))

# Dtypes of latent values on the wire.
WIRE_DTYPES = ("float16", "float32")

# Merge cap: at most 1 - 1/(2x2) of the latent tokens can be merged away (each kept token absorbs at most three
# others in a 2x2 stride), for the latent merge (beta) and tomesd inside the U-Net alike.
MAX_MERGE_RATIO = 0.75
MAX_TOME_RATIO = 0.75
