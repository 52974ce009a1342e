"""Which pipeline components a node's role and plans need, and loading them one at a time, when first needed.

A UE that only decodes (MEG with k = N) needs the VAE, not the U-Net and text encoders that make up most of an SD /
SDXL pipeline (SDXL: a 2.6 B-parameter U-Net and two text encoders next to a 50 M-parameter VAE decoder). The table
below follows the stages of :func:`megbed.testbed.ldm.plan.plan_for`:

=========  ===================================================  ================================================
plan       ES                                                   UE
=========  ===================================================  ================================================
meg        text encoder(s) + tokenizer(s), U-Net, scheduler     VAE (``base`` / ``auto`` decoder)
hybrid     the same                                             VAE, U-Net, scheduler, text encoder(s) +
                                                                tokenizer(s) (the conditioning never travels)
ceg        the same + VAE                                       nothing (the image arrives encoded)
ue_local   --                                                   text encoder(s) + tokenizer(s), U-Net, scheduler,
                                                                VAE
reference  text encoder(s) + tokenizer(s), U-Net, scheduler,    --
           VAE (the ES renders quality references)
=========  ===================================================  ================================================

A decoder named ``distilled`` needs ``ue_decoder/`` instead of the VAE; ``auto`` needs both.

A *partial* model folder (``megbed model slice``) is an ordinary diffusers folder whose ``model_index.json`` lists
the left-out components as ``[null, null]``; ``megbed_slice.json`` records the role, plans and the U-Net geometry a
U-Net-less node still needs (latent channels, native size).

This module imports neither torch nor diffusers at import time (``megbed doctor`` checks folders with it on a board
whose torch may be missing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megbed.megwire.vocab import PRESETS
from megbed.testbed.ldm.errors import LdmError, MissingComponentError

ROLES = ("es", "ue")
# What a node can be loaded for: the split presets, and the ES's quality references (rendered as UE-local).
PLANS = (*PRESETS, "reference")
ROLE_PLANS = {"es": (*(p for p in PRESETS if p != "ue_local"), "reference"), "ue": PRESETS}
SLICE_FILE = "megbed_slice.json"
UE_DECODER = "ue_decoder"
# model_index.json keys that are pipeline components megbed never uses (loaded as None).
UNUSED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """``from_pretrained``'s dtype keyword for diffusers: it renamed ``torch_dtype`` to ``dtype`` (deprecating the
    old name); speak whichever the installed version knows."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def text_components(family: str) -> tuple[str, ...]:
    """Text encoder(s) and tokenizer(s) of an ``sd`` or ``sdxl`` pipeline."""
    base = ("text_encoder", "tokenizer")
    return base + ("text_encoder_2", "tokenizer_2") if family == "sdxl" else base


def decoder_components(decoder: str | None) -> tuple[str, ...]:
    """What a UE decoder name needs: ``base`` -> vae, ``distilled`` -> ue_decoder, ``auto`` -> both."""
    name = str(decoder or "base")
    if name == "distilled":
        return (UE_DECODER,)
    if name == "auto":
        return ("vae", UE_DECODER)
    # base, or a decoder folder outside the model: the base VAE is still the reference / fallback.
    return ("vae",)


def required_components(family: str, role: str, plan: str, decoder: str | None = None) -> tuple[str, ...]:
    """The components ``role`` needs to run its part of ``plan`` (see the module table).

    Raises
    ------
    ValueError
        Unknown role or a plan this role does not run.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if plan not in ROLE_PLANS[role]:
        raise ValueError(f"the {role.upper()} serves plans {', '.join(ROLE_PLANS[role])}, not {plan!r}")
    text, denoise = text_components(family), ("unet", "scheduler")
    if role == "es":
        return text + denoise + (("vae",) if plan in ("ceg", "reference") else ())
    if plan == "ceg":
        return ()
    if plan == "meg":
        return decoder_components(decoder)
    return text + denoise + decoder_components(decoder)


def components_for(family: str, role: str, plans: tuple[str, ...] | list[str],
                   decoder: str | None = None) -> dict[str, str]:
    """``{component: first plan that needs it}`` for a role serving ``plans`` (order kept)."""
    need: dict[str, str] = {}
    for plan in plans:
        for name in required_components(family, role, plan, decoder):
            need.setdefault(name, plan)
    return need


def family_of(index: dict[str, Any]) -> str:
    return "sdxl" if index.get("_class_name") == "StableDiffusionXLPipeline" else "sd"


def present_components(model_dir: Path, index: dict[str, Any]) -> set[str]:
    """Components ``model_dir`` can load: listed (not null) in model_index.json with a subfolder, + ue_decoder."""
    present = set()
    for name, entry in index.items():
        if name.startswith("_") or name in UNUSED_COMPONENTS or not isinstance(entry, list):
            continue
        if entry and entry[0] is not None and (model_dir / name).is_dir():
            present.add(name)
    if (model_dir / UE_DECODER / "config.json").is_file():
        present.add(UE_DECODER)
    return present


def check_components(model_dir: Path, index: dict[str, Any], role: str, plans: tuple[str, ...] | list[str],
                     decoder: str | None = None) -> dict[str, str]:
    """Raise :class:`MissingComponentError` naming each missing component and the plan that needs it.

    Returns the needed ``{component: plan}``.
    """
    need = components_for(family_of(index), role, plans, decoder)
    present = present_components(model_dir, index)
    missing = [(name, plan) for name, plan in need.items() if name not in present]
    if missing:
        what = "; ".join(f"component '{name}' (needed by the {role.upper()} for plan '{plan}')"
                         for name, plan in missing)
        sliced = read_slice(model_dir)
        hint = (f" -- {model_dir} is a slice for role {sliced.get('role')!r}, plans {sliced.get('plans')}; "
                "slice again with these plans (`megbed model slice MODEL OUT --role ... --plans ...`)"
                if sliced else "")
        raise MissingComponentError(f"{model_dir} lacks {what}{hint}")
    return need


def read_slice(model_dir: Path) -> dict[str, Any]:
    """The folder's ``megbed_slice.json`` ({} for a whole model or an unreadable file)."""
    try:
        data = json.loads((Path(model_dir) / SLICE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_component(model_dir: Path, index: dict[str, Any], name: str, *, device: Any, dtype: Any) -> Any:
    """Load one pipeline component from its subfolder (never the network), on ``device`` in ``dtype``.

    Raises
    ------
    MissingComponentError
        Not listed in model_index.json or no subfolder.
    LdmError
        An unknown library / class, or a load failure.
    """
    entry = index.get(name)
    folder = model_dir / name
    if not isinstance(entry, list) or len(entry) != 2 or entry[0] is None or not folder.is_dir():
        raise MissingComponentError(f"{model_dir} has no component '{name}'")
    library, cls_name = entry
    if library not in ("diffusers", "transformers"):
        raise LdmError(f"{model_dir}/model_index.json: component '{name}' from unsupported library {library!r}")
    import importlib

    module = importlib.import_module(library)
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise LdmError(f"component '{name}': {library} has no class {cls_name!r}")
    try:
        if name.startswith("tokenizer"):
            return cls.from_pretrained(folder, local_files_only=True)
        if name == "scheduler":
            return cls.from_pretrained(folder)
        kwargs = dtype_kwarg(dtype) if library == "diffusers" else {"torch_dtype": dtype}
        module_obj = cls.from_pretrained(folder, local_files_only=True, use_safetensors=True, **kwargs)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise LdmError(f"cannot load component '{name}' from {folder}: {exc}") from exc
    return module_obj.to(device).eval()
