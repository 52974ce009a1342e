"""The error types of the distillation package live here: bad settings, prompt sources, latent caches, checkpoints
and gate calibrations.

The module imports nothing, so every distill module can raise them without importing another. Each type is also
importable from the module that raises it (``DistillConfigError`` from ``config``, ``PromptSourceError`` from
``prompts``, ``LatentCacheError`` from ``cache``, ``CheckpointError`` from ``checkpoint``, ``GateFitError`` from
``gate_fit``).
"""

from __future__ import annotations


class LatentCacheError(ValueError):
    """A cache folder that belongs to another configuration, or whose files are missing or corrupted."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or written for another run."""


class DistillConfigError(ValueError):
    """A distillation setting is invalid; the message names the key (``noise.snr_min_db``) and the problem."""


class GateFitError(ValueError):
    """Rows that cannot calibrate a gate (missing decoders or columns, nothing scored)."""


class PromptSourceError(ValueError):
    """A prompt source that cannot be read or holds too few prompts."""


__all__ = ["CheckpointError", "DistillConfigError", "GateFitError", "LatentCacheError", "PromptSourceError"]
