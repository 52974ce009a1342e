"""The error types of the ldm runtime live here: every exception a ``megbed.testbed.ldm`` module raises.

The module imports nothing of the runtime (only megwire's error types, which import nothing), so every ldm module can
raise them without importing another (the request contract and the schedulers both raise them). Each type is also
importable from the module that raises it (``FlopCountError`` from ``flops``, ``StageError`` from ``stages``, ...).
"""

from __future__ import annotations

from megbed.megwire.errors import FrameError


class LdmError(ValueError):
    """Base of the runtime's user-facing errors; the message names the problem."""


class MissingComponentError(Exception):
    """A component a plan needs is not in the model folder (e.g. a sliced folder for another role)."""


class FeatureMetricError(ValueError):
    """Weights were given but cannot be used (missing files, wrong model kind)."""


class FlopCountError(RuntimeError):
    """FLOPs could not be counted for a model folder (missing config, unsupported architecture)."""


class HandoffError(LdmError, FrameError):
    """A handoff that cannot be used: truncated/corrupted bytes, another format version, missing or bad fields."""


class MergeError(ValueError):
    """Bad merge input (ratio, latent shape) or a merge map that does not fit its tokens."""


class MetricError(ValueError):
    """Images that cannot be compared (shape mismatch, values outside [0, 1], too small for MS-SSIM)."""


class ModelLoadError(LdmError):
    """A model folder that is missing, not a diffusers pipeline, or of an unsupported kind."""


class DecoderMismatchError(ModelLoadError):
    """A decoder whose latent channels or upsampling factor differ from the model's (its images would not fit)."""


class SamplerStateError(LdmError):
    """A sampler snapshot that cannot be resumed (unknown class, missing history, wrong step)."""


class StageError(LdmError):
    """A stage called without a required input, or with inputs that do not fit together."""


__all__ = [
    "DecoderMismatchError", "FeatureMetricError", "FlopCountError", "HandoffError", "LdmError", "MergeError",
    "MetricError", "MissingComponentError", "ModelLoadError", "SamplerStateError", "StageError",
]
