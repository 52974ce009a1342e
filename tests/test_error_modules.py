"""Each package's error types live in its ``errors`` module and stay importable from the modules that raise them."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# errors module -> {module that raises the type: the types it re-imports}
MOVED = {
    "megbed.megwire.errors": {
        "megbed.megwire.frames": ["FrameError"],
        "megbed.megwire.sockets": ["FrameError", "LinkTimeout"],
        "megbed.megwire.safe_yaml": ["YamlError"],
        "megbed.megwire": ["FrameError", "LinkTimeout"],
    },
    "megbed.testbed.ldm.errors": {
        "megbed.testbed.ldm.components": ["LdmError", "MissingComponentError"],
        "megbed.testbed.ldm.feature_metrics": ["FeatureMetricError"],
        "megbed.testbed.ldm.flops": ["FlopCountError"],
        "megbed.testbed.ldm.handoff": ["HandoffError"],
        "megbed.testbed.ldm.merging": ["MergeError"],
        "megbed.testbed.ldm.metrics": ["MetricError"],
        "megbed.testbed.ldm.model": ["ModelLoadError", "DecoderMismatchError"],
        "megbed.testbed.ldm.schedulers": ["SamplerStateError"],
        "megbed.testbed.ldm.stages": ["StageError"],
    },
    "megbed.testbed.campaign.errors": {
        "megbed.testbed.campaign.emulate": ["EmulationError"],
        "megbed.testbed.campaign.runner": ["CampaignError"],
        "megbed.testbed.campaign.spec": ["SpecError"],
    },
    "megbed.testbed.distill.errors": {
        "megbed.testbed.distill.cache": ["LatentCacheError"],
        "megbed.testbed.distill.checkpoint": ["CheckpointError"],
        "megbed.testbed.distill.config": ["DistillConfigError"],
        "megbed.testbed.distill.gate_fit": ["GateFitError"],
        "megbed.testbed.distill.prompts": ["PromptSourceError"],
    },
    "megbed.testbed.shapes.errors": {
        "megbed.testbed.shapes.captions": ["CaptionError"],
        "megbed.testbed.shapes.scene": ["SceneError"],
    },
}


@pytest.mark.parametrize(("errors_module", "old_module", "name"), [
    (errors, old, name) for errors, olds in MOVED.items() for old, names in olds.items() for name in names])
def test_an_error_type_is_the_same_class_from_its_old_module(errors_module, old_module, name):
    cls = getattr(importlib.import_module(errors_module), name)
    assert isinstance(cls, type) and issubclass(cls, Exception)
    assert getattr(importlib.import_module(old_module), name) is cls


@pytest.mark.parametrize("errors_module", sorted(MOVED))
def test_an_errors_module_defines_only_errors_and_imports_only_error_modules(errors_module):
    """So any module of its package can import it without an import cycle."""
    module = importlib.import_module(errors_module)
    path = ROOT / Path(*errors_module.split(".")[1:]).with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert all(m == "__future__" or m.endswith(".errors") for m in imported), imported
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes and all(issubclass(getattr(module, c), Exception) for c in classes)
    assert set(classes) <= set(module.__all__)
