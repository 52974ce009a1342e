"""``python -m megbed.testbed.modeltrain --out DIR [--seed S] [--resume] [--install]``: train the default model."""

import os
import sys

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other jobs, spinning threads burn the
# cores they wait for (measured here: 9x more CPU time per step under load). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from megbed.testbed.modeltrain.runner import main  # noqa: E402

sys.exit(main())
