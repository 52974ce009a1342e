"""Files shipped with megbed: the embedded default model lives in ``default_model/`` beside this file."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"


def default_model_dir() -> Path:
    """The diffusers folder of the embedded default model (shipped in the repository)."""
    return DEFAULT_MODEL_DIR
