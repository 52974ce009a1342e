"""Per-thread scratch arrays the emulator's fast paths reuse from one delivery to the next."""

from __future__ import annotations

import threading

import numpy as np

_scratch = threading.local()


def pool(name: str, n: int, dtype: type = np.float32) -> np.ndarray:
    """This thread's scratch array ``name`` of ``n`` elements of ``dtype`` (float32 unless given; one dtype per
    name, names unique across modules; contents undefined).

    Reused across deliveries: fresh 64-256 KB arrays per delivery cost page faults and cold caches (the fp16 cast,
    the noise and the equaliser ran 2-3x slower inside a delivery than alone). Nothing pooled is ever returned.
    """
    pools = getattr(_scratch, "arrays", None)
    if pools is None:
        pools = _scratch.arrays = {}
    a = pools.get(name)
    if a is None or a.size < n:
        a = pools[name] = np.empty(max(int(n), 0 if a is None else 2 * a.size), dtype)
    return a[:n]
