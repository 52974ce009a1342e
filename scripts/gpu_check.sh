#!/usr/bin/env bash
# The GPU run (issue 18), ready for the day a GPU machine is lent: installs the carried wheels, then runs every
# GPU measurement megbed promises, each step bounded in time, into $OUT/gpu_report.json and $OUT/gpu_check.log.
# The steps, their budgets and how each was sized: scripts/gpu_check.py's docstring (sum 550 s; one overall
# deadline of 535 s after the start keeps the whole run, install included, under 9 minutes).
#
# With the device tool (see /work/.library/device/README.md; the lent machine reaches no registry):
#   1. here, once, in the repository root:  scripts/gpu_wheels.sh      (.whl/, ~8 MB, git-ignored)
#   2. run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=600)
#      600 s leaves ~65 s of margin over the script's own 535 s deadline for the start-up of python; a rerun,
#      if one is needed, must fit the session's remaining device time (15 min in all; status says what is left).
#   3. the files come back under files_at: gpu_report.json, gpu_check.log, campaign_default.html,
#      campaign_sdxl.html. Commit gpu_report.json as benchmarks/results/gpu_<gpu-name>.json (the name is in the
#      report's "commit_as", e.g. gpu_nvidia-h100-80gb-hbm3.json) and quote its "summary" in the issue's note.
#
# Rehearsal on a CPU machine (every step skips its CUDA part with the reason; nothing is installed):
#   .venv/bin/python scripts/gpu_check.py --no-install --rehearse --out /tmp/gpu_check
#   (make test runs the lighter --smoke variant: tests/integration/test_gpu_check.py)
#
# Environment: OUT (default runs/gpu_check), PYTHON (default python3: on the lent machine the one that holds its
# CUDA torch). Extra arguments go to scripts/gpu_check.py (e.g. --steps nvml ldm_stages, --deadline-s 300).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/runs/gpu_check}
export OUT
exec "${PYTHON:-python3}" scripts/gpu_check.py --out "$OUT" "$@"
