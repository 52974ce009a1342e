"""A test double of the live testbed binding: answers run_request from a synthetic campaign's cost model."""

from __future__ import annotations

import numpy as np

from megbed.testbed.policy.costmodel import MeasuredCostModel


class FakeTestbed:
    """Implements megbed.testbed.policy.live.LiveTestbed; records every request it was asked to run."""

    def __init__(self, run_dir: str, seed: int = 0) -> None:
        self.model = MeasuredCostModel.from_run_dir(run_dir)
        self.rng = np.random.default_rng(seed)
        self.requests: list[tuple[int, float, float]] = []

    def run_request(self, n_steps: int, merge_ratio: float, state) -> dict:
        self.requests.append((n_steps, merge_ratio, float(state.snr_db)))
        out = self.model.sample((n_steps, merge_ratio), float(state.snr_db), self.rng)
        return {**out, "snr_db": float(state.snr_db), "request_id": f"live-{len(self.requests)}"}
