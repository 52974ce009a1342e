"""Run tiny models on a set number of torch threads.

Tiny models run fastest on one thread, and on a shared CPU a second OpenMP thread spinning while it waits multiplies
CPU time (~50x slower on a 2-core box with other work running). Results depend on the thread count (the reduction
order), so fixtures that compute references use the same count as the tests that compare against them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Set ``torch.set_num_threads(n)`` inside the block and restore the previous count after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
