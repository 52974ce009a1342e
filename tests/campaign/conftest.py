from __future__ import annotations

import pytest


@pytest.fixture
def fake_model(tmp_path):
    """A folder that passes the spec's model check (the synthetic engine loads no weights)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    return model

