"""``megbed distill``: train, evaluate and install the merge- and noise-robust UE decoder.

Examples::

    # the embedded default model on the CPU (caches ES latents first, then trains; resumable)
    megbed distill train --run runs/distill --install
    # an SD-1.5 folder on a GPU, with a prompt file and the paper's Gaussian noise
    megbed distill train --model ./sd15 --run runs/sd15 --prompts prompts.txt --device cuda --amp bf16 \\
        --model-dtype float16 --noise sigma --crop-latent 32 --guidance 7.5
    # the base-vs-distilled distortion table on held-out prompts (written as CSV too)
    megbed distill eval --decoder distilled --out distortion.csv
    megbed distill install runs/distill/ue_decoder
    # fit the 'auto' gate (base decoder for clean latents, distilled for noisy / heavily merged ones)
    megbed distill calibrate --decoder distilled

A UE then picks its decoder with ``megbed node ue --decoder base|distilled|auto`` (``distilled`` =
``<model>/ue_decoder``; ``auto`` = the calibrated gate between the two).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import types
import typing
from pathlib import Path
from typing import Any

from megbed.megwire.vocab import WIRE_DTYPES
from megbed.testbed.cli.main import CliError

DEFAULT_SNRS_DB = (20.0, 10.0, 5.0, 0.0, -4.0)  # as megbed.testbed.distill.evaluate (kept here: --help imports no torch)


def _default_model() -> Path | None:
    from megbed.testbed.assets import default_model_dir

    folder = default_model_dir()
    return folder if (folder / "model_index.json").is_file() else None


def _model_dir(args: argparse.Namespace) -> Path:
    folder = args.model or _default_model()
    if folder is None:
        raise CliError("no --model given and the embedded default model is not installed")
    return Path(folder)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


# --- recipe flags (shared by train and precompute), derived from the recipe's fields --------------------------------

# A setting's flag is its name (``--n-min`` sets n_min), but for the spellings scripts and the README already use.
_FLAG_OF = {"guidance_scale": "--guidance", "tome_ratio_es": "--tome-es", "noise.kind": "--noise"}
# Two noise settings given together, and the link mapping read from a file (both below, by hand).
_NOISE_RANGES = {"--sigma-range": ("sigma_min", "sigma_max", ("MIN", "MAX")),
                 "--snr-range": ("snr_min_db", "snr_max_db", ("MIN_DB", "MAX_DB"))}


def _bare(annotation: Any) -> Any:
    """``annotation`` without ``Annotated[...]`` and without ``| None``."""
    while True:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is typing.Annotated:
            annotation = args[0]
        elif origin in (typing.Union, types.UnionType):
            annotation = next(a for a in args if a is not type(None))
        else:
            return annotation


def _flag_options(field: Any) -> dict[str, Any]:
    """argparse options of one recipe field: its type or choices, its count, its help (the field's description)."""
    kind = _bare(field.annotation)
    if kind is bool:
        return {"action": "store_true", "help": field.description}
    default = field.get_default()
    shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
    options: dict[str, Any] = {"help": field.description + ("" if default is None else f" (default {shown})")}
    if typing.get_origin(kind) is typing.Literal:
        return options | {"choices": typing.get_args(kind)}
    if typing.get_origin(kind) is tuple:
        count = {type(m).__name__: m for m in field.metadata}
        return options | {"type": _bare(typing.get_args(kind)[0]), "nargs": count["MaxLen"].max_length}
    return options | {"type": kind}


def _recipe_flags() -> dict[str, tuple[str, str, Any]]:
    """``{flag: (section, setting, field)}`` for every recipe setting with a flag of its own (section ``r`` for
    :class:`DistillConfig`, ``n`` for its ``noise``); the noise ranges and ``--link-config`` are added by hand."""
    from megbed.testbed.distill.config import DistillConfig, NoiseConfig

    by_hand = {name for lo_hi in _NOISE_RANGES.values() for name in lo_hi[:2]} | {"link"}
    flags = {}
    for section, model, prefix in (("r", DistillConfig, ""), ("n", NoiseConfig, "noise.")):
        for name, field in model.model_fields.items():
            if name != "noise" and name not in (by_hand if section == "n" else ()):
                flags[_FLAG_OF.get(prefix + name, "--" + name.replace("_", "-"))] = (section, name, field)
    return flags


def _add_recipe(p: argparse.ArgumentParser) -> None:
    from megbed.testbed.distill.config import NoiseConfig

    g = p.add_argument_group("recipe (unset flags keep the run's saved config, else the defaults)")
    g.add_argument("--config", type=Path, default=None, help="a DistillConfig JSON file to start from")
    for flag, (section, name, field) in _recipe_flags().items():
        options = _flag_options(field)
        if "type" in options:
            options["metavar"] = name.upper()
        g.add_argument(flag, dest=f"{section}_{name}", default=None, **options)
    noise = NoiseConfig.model_fields
    for flag, (lo, hi, metavar) in _NOISE_RANGES.items():
        g.add_argument(flag, dest=f"range_{lo}", type=float, nargs=2, metavar=metavar, default=None,
                       help=f"{noise[lo].description}; {noise[hi].description} (default {noise[lo].default} "
                            f"{noise[hi].default})")
    g.add_argument("--link-config", type=Path, default=None,
                   help="channel_emu link file (YAML/TOML/JSON) for --noise snr|link (default: the paper's link)")


def _recipe(args: argparse.Namespace, run_dir: Path | None) -> Any:
    from megbed.channel_emu.config import LinkConfig, LinkConfigError
    from megbed.testbed.distill.config import DistillConfig, DistillConfigError

    try:
        if args.config is not None:
            cfg = DistillConfig.load(args.config)
        elif run_dir is not None and (run_dir / "config.json").is_file():
            cfg = DistillConfig.load(run_dir / "config.json")
        else:
            cfg = DistillConfig()
        changes: dict[str, Any] = {}
        noise: dict[str, Any] = {}
        for section, name, _ in _recipe_flags().values():
            value = getattr(args, f"{section}_{name}", None)
            if value is not None:
                (changes if section == "r" else noise)[name] = value
        for lo, hi, _ in _NOISE_RANGES.values():
            pair = getattr(args, f"range_{lo}")
            if pair is not None:
                noise[lo], noise[hi] = pair
        if args.link_config is not None:
            noise["link"] = LinkConfig.load(args.link_config).to_dict()
        if noise:
            changes["noise"] = noise
        return cfg.replace(**changes) if changes else cfg
    except (DistillConfigError, LinkConfigError) as exc:
        raise CliError(str(exc)) from exc


def _load_model(model_dir: Path, device: str, dtype_name: str) -> Any:
    import torch

    from megbed.testbed.ldm.errors import LdmError
    from megbed.testbed.ldm.model import load_pipeline

    try:
        return load_pipeline(model_dir, device=device, dtype=getattr(torch, dtype_name))
    except LdmError as exc:
        raise CliError(str(exc)) from exc


def _cache_for(cfg: Any, model: Any, folder: Path, progress: bool) -> Any:
    from megbed.testbed.distill.cache import LatentCacheError, build_cache
    from megbed.testbed.distill.prompts import PromptSourceError, training_prompts

    try:
        prompts = training_prompts(cfg.prompts, cfg.num_prompts + cfg.val_prompts, cfg.prompt_seed)
        if len(prompts) < cfg.val_prompts + 1:
            raise CliError(f"{cfg.prompts} gives {len(prompts)} prompts; need more than --val-prompts "
                           f"{cfg.val_prompts}")
        return build_cache(folder, model, prompts, steps=cfg.step_choices(), n_ref=cfg.reference_steps,
                           guidance_scale=cfg.guidance_scale, scheduler=cfg.scheduler,
                           tome_ratio_es=cfg.tome_ratio_es, progress=progress)
    except (LatentCacheError, PromptSourceError) as exc:
        raise CliError(str(exc)) from exc


# --- subcommands -----------------------------------------------------------------------------------------------------

def run_precompute(args: argparse.Namespace) -> int:
    cfg = _recipe(args, args.run)
    model = _load_model(_model_dir(args), cfg.device, cfg.model_dtype)
    cache = _cache_for(cfg, model, args.cache or args.run / "cache", not args.no_progress)
    print(f"latent cache {cache.root}: {len(cache)} prompts x N={cache.steps}, latents {list(cache.latent_shape)}, "
          f"images {list(cache.image_shape)}, {cache.precompute_s:.1f} s of generation")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from megbed.testbed.distill.checkpoint import CheckpointError
    from megbed.testbed.distill.config import DistillConfigError
    from megbed.testbed.distill.decoder import install_decoder
    from megbed.testbed.distill.train import Distiller
    from megbed.testbed.ldm.errors import LdmError

    run_dir: Path = args.run
    cfg = _recipe(args, run_dir)
    model_dir = _model_dir(args)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    model = _load_model(model_dir, cfg.device, cfg.model_dtype)
    progress = not args.no_progress
    cache = _cache_for(cfg, model, args.cache or run_dir / "cache", progress)
    try:
        dist = Distiller(model, cache, cfg, run_dir, init_decoder=args.init_decoder, log_line=print)
        summary = dist.fit(resume=not args.no_resume, progress=progress)
        if args.install:
            summary["installed"] = str(install_decoder(summary["exported"], model_dir))
    except (DistillConfigError, CheckpointError, LdmError) as exc:
        raise CliError(str(exc)) from exc
    v0, v1 = summary["val_initial"], summary["val_final"]
    print(f"trained {summary['steps']} steps ({summary['samples']} samples) in {summary['train_wall_s']:.0f} s "
          f"({summary['samples_per_s']:.2f} samples/s on {summary['device']}); cache {summary['precompute_s']:.0f} s")
    if v0 and v1:
        print(f"validation PSNR {v0['val_psnr_db']:.2f} dB (base) -> {v1['val_psnr_db']:.2f} dB (distilled)")
    print(f"decoder: {summary['exported']}" + (f" (installed as {summary['installed']})" if args.install else ""))
    return 0


def _eval_cache_dir(model: Any, prompts: list, steps: list[int], n_ref: int, guidance: float,
                    scheduler: str | None) -> Path:
    from megbed.testbed.distill.cache import make_key

    key = make_key(model, prompts, steps, n_ref, guidance, scheduler, 0.0, "float32")
    return Path(tempfile.gettempdir()) / "megbed-distill-eval" / key.digest()


def _model_and_decoder(args: argparse.Namespace) -> tuple[Any, Path, Any]:
    """``(model, decoder folder, distilled decoder)`` of ``eval`` / ``calibrate`` (``--model``, ``--decoder``,
    ``--threads``, ``--device``, ``--model-dtype``); a decoder that cannot load or fit is a :class:`CliError`."""
    from megbed.testbed.ldm.errors import LdmError
    from megbed.testbed.ldm.model import check_decoder_fits, decoder_folder, load_decoder

    model_dir = _model_dir(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = _load_model(model_dir, args.device, args.model_dtype)
    folder = decoder_folder(model_dir, args.decoder)
    try:
        distilled = load_decoder(folder, device=model.device, dtype=model.dtype)
        check_decoder_fits(distilled, latent_channels=model.latent_channels, vae_scale_factor=model.vae_scale_factor,
                           where=f"decoder folder {folder}")
    except LdmError as exc:
        raise CliError(str(exc)) from exc
    return model, folder, distilled


def run_eval(args: argparse.Namespace) -> int:
    from megbed.channel_emu.config import LinkConfig, LinkConfigError
    from megbed.testbed.distill.cache import LatentCacheError, build_cache
    from megbed.testbed.distill.config import NoiseConfig
    from megbed.testbed.distill.evaluate import conditions, evaluate, format_tables, summarize
    from megbed.testbed.distill.link import TrainingLink
    from megbed.testbed.distill.prompts import PromptSourceError, heldout_prompts
    from megbed.testbed.ldm.errors import LdmError
    from megbed.testbed.ldm.gate import gated_decoder

    model, folder, distilled = _model_and_decoder(args)
    try:
        link = TrainingLink(NoiseConfig(kind="snr", link=LinkConfig.load(args.link_config).to_dict()
                                        if args.link_config else {}), args.wire_dtype)
        prompts = heldout_prompts(args.prompts, args.num_prompts)
        steps = sorted(set(args.steps) | {args.n_ref})
        cache_dir = args.cache or _eval_cache_dir(model, prompts, steps, args.n_ref, args.guidance, args.scheduler)
        cache = build_cache(cache_dir, model, prompts, steps=steps, n_ref=args.n_ref, guidance_scale=args.guidance,
                            scheduler=args.scheduler, target_dtype="float32", progress=not args.no_progress)
    except (LdmError, LinkConfigError, LatentCacheError, PromptSourceError) as exc:
        raise CliError(str(exc)) from exc
    conds = conditions(args.snr_db, args.sigma or ())
    decoders = {"base": model.base_decoder, "distilled": distilled}
    try:
        auto = gated_decoder(model.base_decoder, distilled, folder)
    except (ValueError, OSError) as exc:
        raise CliError(f"{folder}/distill.json: bad gate: {exc}") from exc
    if auto is not None:
        decoders["auto"] = auto
    rows = evaluate(cache, decoders, steps=steps, betas=args.betas,
                    conds=conds, link=link, seed=args.seed, progress=not args.no_progress)
    table_steps = args.table_steps or [n for n in steps if n != args.n_ref] or steps
    print(format_tables(rows, table_steps))
    if "auto" in decoders:
        print("\n'auto' (the calibrated gate) vs base\n")
        print(format_tables(rows, table_steps, "base", "auto"))
    out = args.out or (folder / "distortion.csv")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        summarize(rows, table_steps).to_csv(out, index=False)
        if args.rows:
            rows.to_csv(args.rows, index=False)
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc}") from exc
    print(f"\nsummary written to {out}" + (f", per-image rows to {args.rows}" if args.rows else ""))
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from megbed.channel_emu.config import LinkConfigError
    from megbed.testbed.distill.cache import LatentCacheError, build_cache
    from megbed.testbed.distill.config import NoiseConfig
    from megbed.testbed.distill.evaluate import conditions, evaluate
    from megbed.testbed.distill.gate_fit import GateFitError, fit_gate
    from megbed.testbed.distill.link import TrainingLink
    from megbed.testbed.distill.prompts import PromptSourceError, training_prompts
    from megbed.testbed.ldm.errors import LdmError
    from megbed.testbed.ldm.gate import GATE_KEY

    model, folder, distilled = _model_and_decoder(args)
    meta_path = folder / "distill.json"
    try:
        # Training-distribution prompts under a seed of their own: neither the decoder's training prompts nor the
        # held-out prompts of `megbed distill eval`.
        prompts = training_prompts(args.prompts, args.num_prompts, args.prompt_seed)
        steps = sorted(set(args.steps) | {args.n_ref})
        cache_dir = args.cache or _eval_cache_dir(model, prompts, steps, args.n_ref, args.guidance, None)
        cache = build_cache(cache_dir, model, prompts, steps=steps, n_ref=args.n_ref, guidance_scale=args.guidance,
                            target_dtype="float32", progress=not args.no_progress)
        link = TrainingLink(NoiseConfig(kind="snr"), args.wire_dtype)
    except (LdmError, LinkConfigError, LatentCacheError, PromptSourceError) as exc:
        raise CliError(str(exc)) from exc
    conds = conditions(args.snr_db)  # noiseless first
    rows = evaluate(cache, {"base": model.base_decoder, "distilled": distilled},
                    steps=[n for n in steps if n != args.n_ref], betas=args.betas, conds=conds, link=link,
                    seed=args.seed, progress=not args.no_progress)
    try:
        rule, summary = fit_gate(rows)
    except GateFitError as exc:
        raise CliError(str(exc)) from exc
    info = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    info[GATE_KEY] = {**rule.to_json(), "calibration": {
        **summary, "prompts_source": args.prompts, "prompt_seed": args.prompt_seed, "steps": list(args.steps),
        "n_ref": args.n_ref, "betas": list(args.betas), "snr_db": ["noiseless", *args.snr_db],
        "link": "channel_emu analog AWGN, MMSE", "wire_dtype": args.wire_dtype}}
    try:
        meta_path.write_text(json.dumps(info, indent=1), encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {meta_path}: {exc}") from exc
    beta_txt = "never" if rule.merge_ratio_min == float("inf") else f"beta >= {rule.merge_ratio_min:g}"
    print(f"gate for {folder}: distilled when the latent's noise ratio > {rule.noise_ratio_max:.4f} or {beta_txt}")
    print(f"on {summary['latents']} latents of {summary['prompts']} calibration prompts, mean -ln MSE: base "
          f"{summary['neg_log_mse_base']:.3f}, distilled {summary['neg_log_mse_distilled']:.3f}, gate "
          f"{summary['neg_log_mse_gate']:.3f} (per-latent best {summary['neg_log_mse_best_per_latent']:.3f}); "
          f"distilled used for {summary['share_distilled']:.0%}")
    print(f"written to {meta_path}")
    return 0


def run_install(args: argparse.Namespace) -> int:
    from megbed.testbed.distill.decoder import install_decoder
    from megbed.testbed.ldm.errors import LdmError

    try:
        target = install_decoder(args.decoder_dir, _model_dir(args))
    except LdmError as exc:
        raise CliError(str(exc)) from exc
    meta = target / "distill.json"
    info = json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {}
    size = sum(p.stat().st_size for p in target.iterdir() if p.is_file())
    print(f"installed {args.decoder_dir} as {target} ({size / 1e6:.2f} MB; "
          f"{info.get('summary', {}).get('steps', '?')} training steps)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("distill", help="train / evaluate / install the distilled UE decoder",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = p.add_subparsers(dest="distill_command", metavar="ACTION")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    t = dsub.add_parser("train", help="cache ES latents, train, export RUN/ue_decoder (resumable)")
    t.add_argument("--model", type=Path, default=None, help="diffusers model folder (default: the embedded model)")
    t.add_argument("--run", type=Path, required=True, help="run folder (config, cache, checkpoints, log, decoder)")
    t.add_argument("--cache", type=Path, default=None, help="latent cache folder (default RUN/cache)")
    t.add_argument("--init-decoder", type=Path, default=None, help="start from this decoder folder, not the base VAE")
    t.add_argument("--no-resume", action="store_true", help="refuse to continue existing checkpoints")
    t.add_argument("--install", action="store_true", help="copy the result into <model>/ue_decoder")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_recipe(t)
    t.set_defaults(func=run_train)

    c = dsub.add_parser("precompute", help="only cache the ES latents and reference images")
    c.add_argument("--model", type=Path, default=None, help="diffusers model folder (default: the embedded model)")
    c.add_argument("--run", type=Path, required=True, help="run folder")
    c.add_argument("--cache", type=Path, default=None, help="latent cache folder (default RUN/cache)")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_recipe(c)
    c.set_defaults(func=run_precompute)

    e = dsub.add_parser("eval", help="distortion table base vs distilled on held-out prompts (prints, writes CSV)")
    e.add_argument("--model", type=Path, default=None, help="diffusers model folder (default: the embedded model)")
    e.add_argument("--decoder", default="distilled",
                   help="'distilled' (<model>/ue_decoder) or a decoder folder (e.g. RUN/ue_decoder)")
    e.add_argument("--prompts", default="shapes", help="'shapes' (the fixed held-out set) or a prompt file")
    e.add_argument("--num-prompts", type=int, default=32, help="held-out prompts (default 32)")
    e.add_argument("--steps", type=_ints, default=[4, 7, 10],
                   help="ES step counts N to evaluate (default 4,7,10: 7 is not among the default training N)")
    e.add_argument("--n-ref", type=int, default=12, help="reference steps (default 12)")
    e.add_argument("--table-steps", type=_ints, default=None, help="N averaged in the table (default: all < n-ref)")
    e.add_argument("--betas", type=_floats, default=[0.0, 0.25, 0.5, 0.75], help="merge ratios")
    e.add_argument("--snr-db", type=_floats, default=list(DEFAULT_SNRS_DB),
                   help="analog-link SNRs in dB (default 20,10,5,0,-4; noiseless is always included; the paper's "
                        "link spans -4.4..+2.2 dB)")
    e.add_argument("--sigma", type=_floats, default=None, help="also the paper's Gaussian noise at these std")
    e.add_argument("--link-config", type=Path, default=None, help="link file for the SNR conditions (default AWGN)")
    e.add_argument("--guidance", type=float, default=5.0, help="CFG scale (default 5)")
    e.add_argument("--scheduler", default=None, help="sampler (default: the model's own)")
    e.add_argument("--wire-dtype", choices=WIRE_DTYPES, default="float16")
    e.add_argument("--seed", type=int, default=0, help="seed of the noise draws")
    e.add_argument("--device", default="cpu", help="torch device")
    e.add_argument("--model-dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    e.add_argument("--cache", type=Path, default=None, help="held-out latent cache folder (default: a temp folder "
                                                           "keyed by model and settings)")
    e.add_argument("--out", type=Path, default=None, help="summary CSV (default <decoder>/distortion.csv)")
    e.add_argument("--rows", type=Path, default=None, help="also write the per-image rows to this CSV")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=run_eval)

    k = dsub.add_parser("calibrate", help="fit the 'auto' decoder's gate (base for clean latents, distilled for "
                                          "noisy / heavily merged ones) and store it in the decoder's distill.json")
    k.add_argument("--model", type=Path, default=None, help="diffusers model folder (default: the embedded model)")
    k.add_argument("--decoder", default="distilled", help="'distilled' (<model>/ue_decoder) or a decoder folder")
    k.add_argument("--prompts", default="shapes", help="'shapes' (training-distribution captions) or a prompt file")
    k.add_argument("--num-prompts", type=int, default=12, help="calibration prompts (default 12)")
    k.add_argument("--prompt-seed", type=int, default=7,
                   help="seed of the calibration prompts (default 7; distillation trains on seed 1)")
    k.add_argument("--steps", type=_ints, default=[4, 7, 10], help="ES steps N (default 4,7,10)")
    k.add_argument("--n-ref", type=int, default=12, help="reference steps (default 12)")
    k.add_argument("--betas", type=_floats, default=[0.0, 0.25, 0.5, 0.75], help="merge ratios")
    k.add_argument("--snr-db", type=_floats, default=[30.0, 20.0, 15.0, 10.0, 5.0, 0.0, -4.0],
                   help="link SNRs besides noiseless (default 30,20,15,10,5,0,-4)")
    k.add_argument("--guidance", type=float, default=5.0, help="CFG scale (default 5)")
    k.add_argument("--wire-dtype", choices=WIRE_DTYPES, default="float16")
    k.add_argument("--seed", type=int, default=0, help="seed of the noise draws")
    k.add_argument("--device", default="cpu", help="torch device")
    k.add_argument("--model-dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    k.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    k.add_argument("--cache", type=Path, default=None, help="latent cache folder (default: a temp folder)")
    k.add_argument("--no-progress", action="store_true", help="no progress bars")
    k.set_defaults(func=run_calibrate)

    i = dsub.add_parser("install", help="copy a decoder folder into <model>/ue_decoder (after a geometry check)")
    i.add_argument("decoder_dir", type=Path, help="an exported decoder folder (RUN/ue_decoder)")
    i.add_argument("--model", type=Path, default=None, help="diffusers model folder (default: the embedded model)")
    i.set_defaults(func=run_install)


__all__ = ["register"]
