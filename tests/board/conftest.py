"""The board tests reuse the measurement tests' fake sysfs trees (tests/measurements/meas_helpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "measurements"))
