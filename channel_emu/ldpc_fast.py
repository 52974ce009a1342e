"""Sionna's 5G LDPC decoder on a numba min-sum core: the ``impl = "sionna"``, ``decoder.kind = "fast"`` pairing.

Sionna's ``LDPC5GDecoder`` does two things: 5G rate recovery (de-interleaving, un-puncturing, filler bits, HARQ
redundancy-version combining, graph pruning) and flooding belief propagation on the lifted parity-check matrix.
:class:`FastLDPC5GDecoder` keeps the first exactly as Sionna does it and replaces the second by
:class:`SerialMinSum`: normalised min-sum (alpha = 0.7, as :data:`megbed.channel_emu.ldpc_nr.ALPHA`; base graph 2 offset as
:func:`megbed.channel_emu.ldpc_nr.minsum_offset`) on a row-serial schedule (each check row uses the freshest
posteriors, which converges in about half the iterations of flooding), early stop per codeword at the first valid
syndrome, codewords in parallel. (``LDPC5GDecoder.call`` ends in ``super().call(llr_5g)``; the class order makes
that call land in :class:`_FastCore`.) Same inputs, outputs and HARQ modes as Sionna's decoder.

The fast chain (``impl = "fast"``) uses :mod:`megbed.channel_emu.ldpc_nr` instead, whose quasi-cyclic layered decoder runs
the same schedule as Z-wide vectors and gives the same decisions several times faster.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp
import torch
from sionna.phy.fec.ldpc import LDPC5GDecoder, LDPC5GEncoder
from sionna.phy.fec.ldpc.decoding import LDPCBPDecoder

from megbed.channel_emu.ldpc_nr import minsum_offset
from megbed.channel_emu.numba_setup import prefer_workqueue

prefer_workqueue()


@numba.njit(inline="always")
def _checks_hold(post, row_ptr, cols):
    """Whether every parity check (CSR rows ``row_ptr``, ``cols``) holds for the hard decisions of ``post``."""
    for r in range(row_ptr.size - 1):
        par = 0
        for e in range(row_ptr[r], row_ptr[r + 1]):
            if post[cols[e]] < 0:
                par ^= 1
        if par:
            return False
    return True


def _minsum_kernel_py(llr, row_ptr, cols, num_iter, alpha, offset, hard, iters):  # pragma: no cover - compiled by numba
    """Serial-schedule (row by row) normalised min-sum with early stopping, one codeword per outer iteration.

    llr [B, N] float32 (log p0/p1); row_ptr [M+1], cols [E] (CSR of the parity-check matrix); writes hard [B, N]
    uint8 and iters [B] int32.
    """
    batch, n = llr.shape
    m = row_ptr.size - 1
    num_edges = cols.size
    max_deg = np.diff(row_ptr).max()
    for b in numba.prange(batch):
        post = llr[b].copy()
        msg = np.zeros(num_edges, np.float32)
        tmp = np.empty(max_deg, np.float32)
        used = 0
        # Stop as soon as every check holds for the current hard decisions (after num_iter iterations anyway).
        while used < num_iter and not _checks_hold(post, row_ptr, cols):
            for r in range(m):
                start, stop = row_ptr[r], row_ptr[r + 1]
                min1 = np.float32(np.inf)
                min2 = np.float32(np.inf)
                arg = -1
                sgn = 0
                for e in range(start, stop):
                    t = post[cols[e]] - msg[e]
                    tmp[e - start] = t
                    a = abs(t)
                    if a < min1:
                        min2 = min1
                        min1 = a
                        arg = e
                    elif a < min2:
                        min2 = a
                    if t < 0:
                        sgn ^= 1
                for e in range(start, stop):
                    t = tmp[e - start]
                    mag = max(alpha * (min2 if e == arg else min1) - offset, np.float32(0.0))
                    neg = sgn ^ (1 if t < 0 else 0)
                    new = -mag if neg else mag
                    msg[e] = new
                    post[cols[e]] = t + new
            used += 1
        iters[b] = used
        for i in range(n):
            hard[b, i] = 1 if post[i] < 0 else 0


_minsum_kernel = numba.njit(parallel=True, cache=True, fastmath=False)(_minsum_kernel_py)


class SerialMinSum:
    """Row-by-row (serial-C schedule) normalised min-sum with early stopping, compiled by numba.

    The fastest CPU core here: each check row uses the freshest posteriors (like layered decoding, at row
    granularity), each codeword stops at its first valid syndrome, codewords run in parallel threads.
    ``decode(llr [B, N] float32 log p0/p1) -> uint8 [B, N]``; ``last_iterations`` holds each codeword's iterations.
    """

    def __init__(self, pcm, z: int = 1, num_iter: int = 20, alpha: float = 0.7, offset: float = 0.0) -> None:
        h = sp.csr_matrix(pcm, dtype=np.int8)
        h.sort_indices()
        self.num_checks, self.num_vars = h.shape
        self.num_iter, self.alpha, self.offset = int(num_iter), np.float32(alpha), np.float32(offset)
        self.row_ptr = h.indptr.astype(np.int64)
        self.cols = h.indices.astype(np.int64)
        self.last_iterations: np.ndarray = np.zeros(0, np.int32)

    def decode(self, llr: np.ndarray, num_iter: int | None = None) -> np.ndarray:
        llr = np.ascontiguousarray(llr, dtype=np.float32)
        hard = np.empty(llr.shape, np.uint8)
        iters = np.zeros(llr.shape[0], np.int32)
        _minsum_kernel(llr, self.row_ptr, self.cols, self.num_iter if num_iter is None else int(num_iter),
                       self.alpha, self.offset, hard, iters)
        self.last_iterations = iters
        return hard


def make_core(pcm, z: int, num_iter: int = 20, alpha: float = 0.7, offset: float = 0.0):
    """The BP core for Sionna's rate recovery: numba's :class:`SerialMinSum`."""
    return SerialMinSum(pcm, z, num_iter, alpha, offset)


class _FastCore(LDPCBPDecoder):
    """Replaces Sionna's flooding BP by :class:`SerialMinSum` (hard outputs only)."""

    def __init__(self, pcm, *args, lifting_z: int = 1, minsum_offset: float = 0.0, **kwargs) -> None:
        super().__init__(pcm, *args, **kwargs)
        self.core = make_core(pcm, lifting_z, num_iter=self._num_iter, offset=minsum_offset)

    def call(self, llr_ch: torch.Tensor, /, *, num_iter: int | None = None, msg_v2c=None):
        if not self._hard_out or self._return_state:
            raise ValueError("the fast decoder gives hard decisions only (hard_out=True, return_state=False)")
        shape = llr_ch.shape
        logits = llr_ch.reshape(-1, self._num_vns)
        if self._llr_max is not None:
            logits = logits.clamp(-self._llr_max, self._llr_max)
        # Sionna passes logits log p(1)/p(0); the core takes LLRs log p(0)/p(1).
        llr = (-logits).detach().cpu().numpy().astype(np.float32, copy=False)
        hard = self.core.decode(llr, num_iter)
        return torch.from_numpy(hard.astype(np.float32)).to(llr_ch.device).reshape(shape)


class FastLDPC5GDecoder(LDPC5GDecoder, _FastCore):
    """Sionna's ``LDPC5GDecoder`` (rate recovery, HARQ combining) on the serial min-sum core.

    Method resolution order: FastLDPC5GDecoder -> LDPC5GDecoder -> _FastCore -> LDPCBPDecoder, so the
    ``super().call(llr_5g)`` at the end of ``LDPC5GDecoder.call`` runs :meth:`_FastCore.call`.
    """

    def __init__(self, encoder: LDPC5GEncoder, num_iter: int = 20, harq_mode: bool = False, **kwargs) -> None:
        super().__init__(encoder, num_iter=num_iter, harq_mode=harq_mode, hard_out=True, return_infobits=True,
                         lifting_z=encoder.z, minsum_offset=minsum_offset(encoder._bg), device="cpu", **kwargs)

    @property
    def last_iterations(self) -> np.ndarray:
        return self.core.last_iterations
