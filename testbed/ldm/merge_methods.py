"""The merge-method vocabulary (torch-free: the wire protocol and campaign specs validate against it).

``global_l2`` -- global bipartite matching by squared distance (default; lowest distortion at equal bytes);
``global`` -- the paper's rule (tomesd's ``bipartite_soft_matching_random2d``, cosine, over all destinations);
``window`` -- each source may merge only into its own 2x2 window's destination (1 bit of side information per source).
See :mod:`megbed.testbed.ldm.merging`.
"""

from __future__ import annotations

MERGE_METHODS = ("global_l2", "global", "window")
DEFAULT_MERGE_METHOD = "global_l2"
# Methods whose side information carries a destination index per merged source.
GLOBAL_METHODS = ("global", "global_l2")

__all__ = ["DEFAULT_MERGE_METHOD", "GLOBAL_METHODS", "MERGE_METHODS"]
