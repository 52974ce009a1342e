"""``megbed generate``: run one split generation in this process and report per-stage wall times and bytes sent.

Example::

    megbed generate "a red cube on a table" --model ./sd15 --n-steps 8 --es-steps 8 --merge-ratio 0.5 --seed 1 \
        --out cube.png

The request flags are the request contract's fields (:class:`megbed.testbed.request.Request`, the dataset's column names),
with its defaults; ``--es-steps K`` < ``--n-steps N`` makes it a hybrid split (the UE finishes steps K..N);
``--scheme ceg`` sends the PNG image instead, ``--scheme ue_local`` runs everything on the UE side. ``--decoder``
takes what ``megbed node ue --decoder`` takes: ``base``, ``distilled``, ``auto`` or a decoder folder.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from megbed.megwire.vocab import MAX_MERGE_RATIO, PRESETS, WIRE_DTYPES
from megbed.testbed.cli.main import CliError
from megbed.testbed.ldm.merge_methods import MERGE_METHODS
from megbed.testbed.request import SCHEDULER_NAMES, Request

# The request's defaults: the CLI's are these (a test keeps them equal).
REQUEST_DEFAULTS = {f.name: f.default for f in fields(Request)}

# (field, flag, earlier spellings kept as hidden aliases, argparse options, help). The flag is the field's name.
REQUEST_FLAGS: tuple[tuple[str, str, tuple[str, ...], dict, str], ...] = (
    ("n_steps", "--n-steps", ("--steps", "-n"), {"type": int}, "N, denoising steps"),
    ("es_steps", "--es-steps", ("--split", "-k"), {"type": int},
     "k, steps on the ES (default N: the UE only decodes; k < N: hybrid)"),
    ("merge_ratio", "--merge-ratio", ("--merge", "-b"), {"type": float},
     f"beta, latent merge ratio in [0, {MAX_MERGE_RATIO:g}]"),
    ("merge_method", "--merge-method", (), {"choices": MERGE_METHODS},
     "how tokens merge (global = the paper's rule, window = window-local)"),
    ("tome_ratio_es", "--tome-ratio-es", ("--tome-es",), {"type": float}, "tomesd ratio in the ES U-Net (0 = off)"),
    ("tome_ratio_ue", "--tome-ratio-ue", ("--tome-ue",), {"type": float}, "tomesd ratio in the UE U-Net (0 = off)"),
    ("seed", "--seed", (), {"type": int}, "seed (noise, ancestral samplers, merge layout)"),
    ("scheduler", "--scheduler", (), {}, f"{', '.join(SCHEDULER_NAMES)}; empty: the model's own"),
    ("guidance_scale", "--guidance-scale", ("--guidance",), {"type": float}, "classifier-free guidance scale"),
    ("negative_prompt", "--negative-prompt", (), {}, "negative prompt"),
    ("height_px", "--height-px", ("--height",), {"type": int}, "image height in px (default: the model's)"),
    ("width_px", "--width-px", ("--width",), {"type": int}, "image width in px (default: the model's)"),
    ("wire_dtype", "--wire-dtype", (), {"choices": WIRE_DTYPES}, "dtype of latent values on the wire"),
    ("decoder", "--decoder", ("--ue-decoder",), {},
     "the UE's decoder: base, distilled (<model>/ue_decoder), auto (the gate between them) or a decoder folder "
     "(relative paths are looked up in the model first); empty: base"),
)
FLAG_OF = {name: flag for name, flag, *_ in REQUEST_FLAGS}


def _default_model() -> Path | None:
    from megbed.testbed.assets import default_model_dir

    folder = default_model_dir()
    return folder if (folder / "model_index.json").is_file() else None


def register(sub) -> None:
    p = sub.add_parser("generate", help="run one split generation in-process; print stage times and handoff bytes",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", help="text prompt")
    p.add_argument("--model", type=Path, default=None,
                   help="diffusers model folder (default: the embedded default model, once installed)")
    for name, flag, aliases, options, text in REQUEST_FLAGS:
        default = REQUEST_DEFAULTS[name]
        shown = "" if default in (None, "") else f" (default {default})"
        p.add_argument(flag, dest=name, default=default, help=text + shown, **options)
        if aliases:  # the spellings README and scripts used before the flags followed the contract
            p.add_argument(*aliases, dest=name, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **options)
    p.add_argument("--vae-tiling", action="store_true", default=REQUEST_DEFAULTS["vae_tiling"],
                   help="decode with VAE tiling (bounded decoder memory on memory-bound UEs)")
    p.add_argument("--scheme", choices=PRESETS, default=REQUEST_DEFAULTS["scheme"],
                   help="split preset (default meg; hybrid = meg with --es-steps < --n-steps)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=("float16", "float32"), default=None,
                   help="model precision (default: float16 on CUDA, float32 on CPU)")
    p.add_argument("--out", "-o", type=Path, required=True, help="output PNG file")
    p.set_defaults(func=run)


def request_of(args: argparse.Namespace) -> Request:
    """The request the flags describe (validated by the contract; its error names the flag)."""
    from megbed.testbed.request import RequestError

    values = {name: getattr(args, name) for name, *_ in REQUEST_FLAGS}
    try:
        return Request(prompt=args.prompt, scheme="meg" if args.scheme == "hybrid" else args.scheme,
                       vae_tiling=bool(args.vae_tiling), request_id="cli", **values)
    except RequestError as exc:
        raise CliError(f"{FLAG_OF.get(exc.field, exc.field)}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    model_dir = args.model or _default_model()
    if model_dir is None:
        raise CliError("no --model given and the embedded default model is not installed "
                       "(testbed/assets/default_model/model_index.json is missing)")
    out = args.out.expanduser()
    if out.suffix.lower() != ".png":
        raise CliError(f"--out {out}: the output is a PNG file, name it *.png")
    if not out.parent.is_dir():
        raise CliError(f"--out {out}: folder {out.parent} does not exist")

    request = request_of(args)

    import torch

    from megbed.testbed.ldm.errors import LdmError
    from megbed.testbed.ldm.merging import MergeError
    from megbed.testbed.ldm.model import load_pipeline, named_decoder, set_vae_tiling
    from megbed.testbed.ldm.png import write_png
    from megbed.testbed.ldm.runner import run_split
    from megbed.testbed.ldm.stages import image_to_uint8

    try:
        dtype = getattr(torch, args.dtype) if args.dtype else None
        model = load_pipeline(model_dir, device=args.device, dtype=dtype)
        decoder = None
        if request.decoder not in ("", "base"):  # the UE's decoder only: the ES (CEG) keeps the pipeline's VAE
            decoder = named_decoder(model_dir, request.decoder, device=model.device, dtype=model.dtype,
                                    latent_channels=model.latent_channels, vae_scale_factor=model.vae_scale_factor,
                                    base=model.base_decoder if request.decoder == "auto" else None)
        if request.vae_tiling:
            model.set_vae_tiling(True)
            for part in (decoder, getattr(decoder, "distilled", None)):  # a folder's decoder, or the gate's
                vae = getattr(part, "vae", None)
                if vae is not None:
                    set_vae_tiling(vae, True)
        result = run_split(request, model, scheme=args.scheme, ue_decoder=decoder)
    except (LdmError, MergeError) as exc:
        raise CliError(str(exc)) from exc
    except RuntimeError as exc:  # torch: bad device string, out of memory, ...
        raise CliError(f"generation failed: {exc}") from exc

    req = result.request
    print(f"model {model_dir} ({model.family}, {model.device}, {str(model.dtype).removeprefix('torch.')}); "
          f"scheme {result.plan.scheme}{' (hybrid)' if result.plan.hybrid else ''}; scheduler {req.scheduler}; "
          f"N={req.n_steps} k={req.es_steps} beta={req.merge_ratio:g} ({req.merge_method}) tome es/ue={req.tome_ratio_es:g}/"
          f"{req.tome_ratio_ue:g}; {req.width_px}x{req.height_px}")
    print(f"{'node':<4}  {'stage':<13}  {'latency_s':>10}")
    for t in result.timings:
        print(f"{t.node:<4}  {t.stage:<13}  {t.latency_s:>10.4f}")
    total = sum(t.latency_s for t in result.timings)
    print(f"{'':<4}  {'total':<13}  {total:>10.4f}")
    if result.transfer_nbytes is not None:
        what = "handoff" if result.plan.transfer == "handoff_frame" else "image frame"
        frame = result.sent_frame
        parts = ", ".join(f"{name} {arr.nbytes} B" for name, arr in frame.buffers.items())
        print(f"{what}: {result.transfer_nbytes} bytes ({parts}; header and framing "
              f"{result.transfer_nbytes - frame.payload_nbytes} B)")
    else:
        print("nothing sent (ue_local)")
    write_png(out, image_to_uint8(result.image))
    print(f"image: {out}")
    return 0
