"""``megbed generate``: run one split generation in this process and report per-stage wall times and bytes sent.

Example::

    megbed generate "a red cube on a table" --model ./sd15 --steps 8 --split 8 --merge 0.5 --seed 1 --out cube.png

``--split K`` < ``--steps N`` makes it a hybrid split (the UE finishes steps K..N); ``--scheme ceg`` sends the
PNG image instead, ``--scheme ue_local`` runs everything on the UE side.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from megbed.testbed.cli.main import CliError
from megbed.testbed.ldm.merge_methods import DEFAULT_MERGE_METHOD, MERGE_METHODS


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
    p.add_argument("--steps", "-n", type=int, default=8, help="N, denoising steps (default 8)")
    p.add_argument("--split", "-k", type=int, default=None, help="K, steps on the ES (default N: UE only decodes)")
    p.add_argument("--merge", "-b", type=float, default=0.0, help="beta, latent merge ratio in [0, 0.75]")
    p.add_argument("--merge-method", choices=MERGE_METHODS, default=DEFAULT_MERGE_METHOD,
                   help=f"how tokens merge (default {DEFAULT_MERGE_METHOD}; global = the paper's rule, "
                        "window = window-local)")
    p.add_argument("--tome-es", type=float, default=0.0, help="tomesd ratio in the ES U-Net (0 = off)")
    p.add_argument("--tome-ue", type=float, default=0.0, help="tomesd ratio in the UE U-Net (0 = off)")
    p.add_argument("--seed", type=int, default=0, help="seed (noise, ancestral samplers, merge layout)")
    p.add_argument("--scheduler", default=None, help="ddim, euler, euler_a, dpmpp_2m, unipc, lcm "
                                                     "(default: the model's own)")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--negative-prompt", default=None, help="negative prompt")
    p.add_argument("--height", type=int, default=None, help="image height in px (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="image width in px (default: the model's)")
    p.add_argument("--wire-dtype", choices=("float16", "float32"), default="float16",
                   help="dtype of latent values on the wire (default float16)")
    p.add_argument("--scheme", choices=("meg", "hybrid", "ceg", "ue_local"), default="meg",
                   help="split preset (default meg; hybrid = meg with --split < --steps)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=("float16", "float32"), default=None,
                   help="model precision (default: float16 on CUDA, float32 on CPU)")
    p.add_argument("--ue-decoder", default=None,
                   help="decoder folder for the UE (AutoencoderKL; relative paths are looked up in the model first)")
    p.add_argument("--vae-tiling", action="store_true",
                   help="decode with VAE tiling (bounded decoder memory on memory-bound UEs)")
    p.add_argument("--out", "-o", type=Path, required=True, help="output PNG file")
    p.set_defaults(func=run)


def _write_png_atomic(image, out: Path) -> None:
    from megbed.testbed.ldm.stages import image_to_png

    data = image_to_png(image.cpu()).tobytes()
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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

    import torch

    from megbed.testbed.ldm.merging import MergeError
    from megbed.testbed.ldm.model import load_decoder, load_pipeline
    from megbed.testbed.ldm.request import GenerationRequest, LdmError
    from megbed.testbed.ldm.runner import run_split

    try:
        request = GenerationRequest(
            prompt=args.prompt, num_steps=args.steps, split_step=args.split, merge_ratio=args.merge, seed=args.seed,
            merge_method=args.merge_method,
            negative_prompt=args.negative_prompt, height=args.height, width=args.width, guidance_scale=args.guidance,
            scheduler=args.scheduler, tome_ratio_es=args.tome_es, tome_ratio_ue=args.tome_ue,
            wire_dtype=args.wire_dtype, request_id="cli",
        )
        dtype = getattr(torch, args.dtype) if args.dtype else None
        model = load_pipeline(model_dir, device=args.device, dtype=dtype)
        decoder = None
        if args.ue_decoder:
            candidate = Path(model_dir) / args.ue_decoder
            decoder = load_decoder(candidate if candidate.is_dir() else Path(args.ue_decoder), device=model.device,
                                   dtype=model.dtype)
        if args.vae_tiling:
            model.set_vae_tiling(True)
            if decoder is not None:
                from megbed.testbed.ldm.model import set_vae_tiling

                set_vae_tiling(decoder.vae, True)
        result = run_split(request, model, scheme=args.scheme, ue_decoder=decoder)
    except (LdmError, MergeError) as exc:
        raise CliError(str(exc)) from exc
    except RuntimeError as exc:  # torch: bad device string, out of memory, ...
        raise CliError(f"generation failed: {exc}") from exc

    req = result.request
    print(f"model {model_dir} ({model.family}, {model.device}, {str(model.dtype).removeprefix('torch.')}); "
          f"scheme {result.plan.scheme}{' (hybrid)' if result.plan.hybrid else ''}; scheduler {req.scheduler}; "
          f"N={req.num_steps} k={req.k} beta={req.merge_ratio:g} ({req.merge_method}) tome es/ue={req.tome_ratio_es:g}/"
          f"{req.tome_ratio_ue:g}; {req.width}x{req.height}")
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
    _write_png_atomic(result.image, out)
    print(f"image: {out}")
    return 0
