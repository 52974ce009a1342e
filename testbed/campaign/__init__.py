"""Calibration campaigns: a validated YAML spec, its grid, and the runner that sweeps it over the testbed nodes."""
