"""``megbed model slice``: a partial model folder holding only what one node role's plans need.

The result is an ordinary diffusers folder (``model_index.json`` lists the left-out components as ``[null, null]``)
plus ``megbed_slice.json`` (role, plans, kept components, and the U-Net / VAE geometry a node without those weights
still needs), so it loads with :func:`megbed.testbed.ldm.model.load_pipeline` like the whole model. The copy is written to a
temporary folder beside ``OUT_DIR`` and renamed into place at the end: a failure leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from megbed.testbed.ldm.components import (
    ROLE_PLANS,
    SLICE_FILE,
    UE_DECODER,
    UNUSED_COMPONENTS,
    check_components,
    family_of,
    present_components,
)
from megbed.testbed.ldm.model import ModelLoadError, _read_model_index

# Geometry keys a node reads from a component it does not hold (LdmModel._config).
UNET_GEOMETRY = ("in_channels", "sample_size", "time_cond_proj_dim", "down_block_types")
VAE_GEOMETRY = ("latent_channels", "block_out_channels", "scaling_factor")


def _folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def _geometry(model_dir: Path, name: str, keys: tuple[str, ...]) -> dict[str, Any] | None:
    path = model_dir / name / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {k: config[k] for k in keys if k in config}


def slice_model(model_dir: str | Path, out_dir: str | Path, *, role: str, plans: list[str] | None = None,
                decoder: str | None = None) -> dict[str, Any]:
    """Write ``out_dir`` with the components ``role`` needs for ``plans``; return what ``megbed_slice.json`` says.

    Parameters
    ----------
    model_dir : path
        A whole (or already sliced) diffusers folder of an SD / SDXL pipeline.
    out_dir : path
        Must not exist, or be an empty folder.
    role : str
        ``es`` or ``ue``.
    plans : list of str, optional
        Default: every plan of the role (:data:`megbed.testbed.ldm.components.ROLE_PLANS`).
    decoder : str, optional
        The UE decoder the plans use (``base``, ``distilled``, ``auto``); ``ue_decoder/`` is kept for a UE whenever the
        source has it.

    Raises
    ------
    ModelLoadError
        Not a diffusers folder of a supported pipeline, an ``out_dir`` that is not empty, or an unknown role/plan.
    megbed.testbed.ldm.components.MissingComponentError
        The source lacks a component the plans need.
    """
    model_dir, out_dir = Path(model_dir).expanduser(), Path(out_dir).expanduser()
    index = _read_model_index(model_dir)
    if role not in ROLE_PLANS:
        raise ModelLoadError(f"--role must be es or ue, not {role!r}")
    plans = list(plans or ROLE_PLANS[role])
    try:
        need = check_components(model_dir, index, role, plans, decoder)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ModelLoadError(f"{out_dir} exists and is not an empty folder; choose a new OUT_DIR")
    keep = [name for name in need if name != UE_DECODER]
    if role == "ue" and UE_DECODER in present_components(model_dir, index) and any(
            p != "ceg" for p in plans):
        keep.append(UE_DECODER)
    family = family_of(index)
    new_index = {}
    for key, value in index.items():
        is_component = isinstance(value, list) and not key.startswith("_")
        if is_component and key not in keep and key not in UNUSED_COMPONENTS:
            new_index[key] = [None, None]
        else:
            new_index[key] = value
    info: dict[str, Any] = {
        "role": role, "plans": plans, "decoder": decoder or "base", "family": family,
        "components": sorted(keep), "needed_by": {k: v for k, v in need.items()},
        "source": str(model_dir.resolve()),
        "unet_config": _geometry(model_dir, "unet", UNET_GEOMETRY),
        "vae_config": _geometry(model_dir, "vae", VAE_GEOMETRY),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name in keep:
            shutil.copytree(model_dir / name, tmp / name)
        for extra in model_dir.glob("*.json"):
            if extra.name not in ("model_index.json", SLICE_FILE):
                shutil.copy2(extra, tmp / extra.name)
        (tmp / "model_index.json").write_text(json.dumps(new_index, indent=2) + "\n", encoding="utf-8")
        info["size_mb"] = round(_folder_mb(tmp), 3)
        info["source_size_mb"] = round(_folder_mb(model_dir), 3)
        (tmp / SLICE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info
