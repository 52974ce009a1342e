"""Where a run's model folder is: the diffusers folder its manifest (or ``model`` column) names, if it is on this
machine. Pure path logic over the manifest; counting the folder's FLOPs is the runtime's job
(:mod:`megbed.testbed.ldm.flops`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

MODEL_ROOTS_ENV = "MEGBED_MODEL_ROOTS"


def is_model_dir(path: Path) -> bool:
    return (path / "unet" / "config.json").is_file() and (path / "vae" / "config.json").is_file()


def _candidates(manifest: dict, model_name: str | None, run_dir: Path | None,
                named: Mapping[str, Path] | None = None) -> list[Path]:
    out: list[Path] = []
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    model = manifest.get("model")
    for value in (manifest.get("model_dir"), config.get("model_dir"),
                  model.get("path") if isinstance(model, dict) else None,
                  model.get("model_dir") if isinstance(model, dict) else None):
        if isinstance(value, str) and value:
            out.append(Path(value).expanduser())
    names = [n for n in (model_name, config.get("model"), model if isinstance(model, str) else None) if n]
    roots = [Path(p).expanduser() for p in os.environ.get(MODEL_ROOTS_ENV, "").split(os.pathsep) if p]
    if run_dir is not None:
        roots += [run_dir / "models", run_dir.parent / "models"]
    for name in names:
        p = Path(str(name)).expanduser()
        if p.is_absolute():
            out.append(p)
        else:
            out.extend(root / p for root in roots)
            if run_dir is not None:
                out.append(run_dir / p)
        if named and str(name) in named:  # e.g. the embedded "default" model, passed in by `megbed report`
            out.append(Path(named[str(name)]))
    return out


def find_model_dir(manifest: dict, model_name: str | None = None, run_dir: Path | None = None,
                   named: Mapping[str, Path] | None = None) -> tuple[Path | None, list[Path]]:
    """The first local diffusers folder the manifest (or the ``model`` column) points to.

    Looks at ``manifest['model_dir']``, ``manifest['config']['model_dir']``, ``manifest['model']['path']``, then the
    model name under ``$MEGBED_MODEL_ROOTS``, ``RUN_DIR/models`` and ``RUN_DIR/../models``, and ``named[name]``
    (folders the caller knows by name, e.g. ``{"default": <the embedded default model>}``).

    Returns
    -------
    found : Path or None
    tried : list of Path
        Every candidate, for the message when none is there.
    """
    tried = _candidates(manifest, model_name, run_dir, named)
    for path in tried:
        if is_model_dir(path):
            return path, tried
    return None, tried
