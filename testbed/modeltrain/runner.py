"""The training entry point: ``python -m megbed.testbed.modeltrain --out DIR`` (also ``megbed model train``).

Runs the phases in order -- tokenizer, vae, latents, unet, export -- in one output folder that holds the recipe
(``config.json``), each phase's checkpoints and results, and ``train_state.json`` (which phases are done and the
wall / CPU time each took). ``--resume`` continues an interrupted run from its last checkpoints, with the recipe
stored in the folder; a folder holding a run is never overwritten without ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PHASES = ("tokenizer", "vae", "latents", "unet", "export")
STATE_FILE = "train_state.json"
CONFIG_FILE = "config.json"


class TrainError(RuntimeError):
    """A training run that cannot start or continue (existing folder, recipe mismatch, missing phase output)."""


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["vae.steps=5", "unet.lr=1e-4"]`` -> ``{"vae.steps": 5, "unet.lr": 0.0001}`` (values parsed as JSON)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TrainError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = _parse_value(value.strip())
    return out


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def prepare_run(out_dir: Path, cfg, resume: bool):
    """Create ``out_dir`` with the recipe, or check it on ``resume``; returns the recipe to use."""
    from megbed.testbed.modeltrain.config import TrainConfig

    cfg_path = out_dir / CONFIG_FILE
    if cfg_path.is_file():
        stored = TrainConfig.from_dict(_read_json(cfg_path))
        if not resume:
            raise TrainError(f"{out_dir} already holds a training run; pass --resume to continue it, or choose "
                             "another --out")
        if cfg is not None and cfg.to_dict() != stored.to_dict():
            raise TrainError(f"the recipe given differs from the one stored in {cfg_path}; resume without "
                             "--seed/--set, or start a new --out")
        return stored
    if resume and out_dir.exists() and any(out_dir.iterdir()):
        raise TrainError(f"--resume: {out_dir} holds no {CONFIG_FILE}; it is not a training folder")
    cfg = cfg or TrainConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(cfg_path, cfg.to_dict())
    return cfg


def train(out_dir: str | Path, *, cfg=None, resume: bool = False, phases: tuple[str, ...] = PHASES,
          install: Path | None = None, log: Callable[[str], None] | None = None,
          threads: int | None = 2) -> dict[str, Any]:
    """Run (or resume) the training phases; returns ``train_state.json``'s content.

    Parameters
    ----------
    out_dir : path
        The run folder.
    cfg : TrainConfig, optional
        The recipe for a new run (default recipe when None); on resume it must equal the stored one.
    resume : bool
        Continue the run in ``out_dir``.
    phases : tuple of str
        Phases to run (in :data:`PHASES` order); earlier phases must be done already.
    install : path, optional
        Also copy the exported model there (e.g. ``megbed.testbed.assets.default_model_dir()``).
    threads : int, optional
        ``torch.set_num_threads`` (2: the budget's two CPU cores).
    """
    import torch

    from megbed.testbed.modeltrain.progress import stdout_log

    log = log or stdout_log
    if threads:
        torch.set_num_threads(int(threads))
    out_dir = Path(out_dir)
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise TrainError(f"unknown phase(s) {', '.join(sorted(unknown))}; phases: {', '.join(PHASES)}")
    cfg = prepare_run(out_dir, cfg, resume)
    state_path = out_dir / STATE_FILE
    state = _read_json(state_path) or {"phases": {}}
    state["config_seed"] = cfg.seed
    log(f"[train] out {out_dir} seed {cfg.seed} threads {torch.get_num_threads()} "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')} phases {','.join(phases)}")

    def mark(phase: str, info: dict[str, Any]) -> None:
        state["phases"][phase] = {"done": True, **info}
        _write_json(state_path, state)

    def need(phase: str) -> None:
        if not state["phases"].get(phase, {}).get("done"):
            raise TrainError(f"phase {phase!r} has not been run in {out_dir}; run it first (--phases)")

    for phase in PHASES:
        if phase not in phases:
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        if phase == "tokenizer":
            from megbed.testbed.modeltrain.tokenizer import write_tokenizer
            from megbed.testbed.shapes.vocab import WORDS

            write_tokenizer(out_dir / "tokenizer", list(WORDS), cfg.text.max_length)
            mark(phase, {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0})
        elif phase == "vae":
            from megbed.testbed.modeltrain.vae_train import train_vae

            final = train_vae(cfg, out_dir, log=log)
            mark(phase, _read_json(final / "train_report.json"))
        elif phase == "latents":
            need("vae")
            latents = _load_latents(cfg, out_dir, log)
            mark(phase, {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                         "n_images": len(latents)})
        elif phase == "unet":
            need("tokenizer")
            need("latents")
            from megbed.testbed.modeltrain.unet_train import train_unet

            latents = _load_latents(cfg, out_dir, log)
            scale = float(_read_json(out_dir / "vae_final" / "config.json")["scaling_factor"])
            final = train_unet(cfg, out_dir, latents, scale, log=log)
            mark(phase, _read_json(final / "train_report.json"))
        elif phase == "export":
            for p in ("tokenizer", "vae", "unet"):
                need(p)
            from megbed.testbed.modeltrain.export import export_pipeline

            times = {p: {k: v for k, v in state["phases"][p].items() if k in ("wall_s", "cpu_s")}
                     for p in ("tokenizer", "vae", "latents", "unet") if p in state["phases"]}
            model = export_pipeline(out_dir, out_dir / "model", cfg, times=times)
            mark(phase, {"model_dir": str(model), "wall_s": time.perf_counter() - t0,
                         "cpu_s": time.process_time() - c0})
            if install is not None:
                export_pipeline(out_dir, install, cfg, times=times)
                log(f"[export] installed into {install}")
            log(f"[export] model written to {model}")
    total_wall = sum(v.get("wall_s", 0.0) for v in state["phases"].values())
    total_cpu = sum(v.get("cpu_s", 0.0) for v in state["phases"].values())
    state["total"] = {"wall_s": total_wall, "cpu_s": total_cpu}
    _write_json(state_path, state)
    log(f"[train] phases done: {', '.join(p for p in PHASES if state['phases'].get(p, {}).get('done'))}; "
        f"total {total_wall:.0f} s wall, {total_cpu:.0f} cpu-s")
    return state


def _load_latents(cfg, out_dir: Path, log):
    from diffusers import AutoencoderKL

    from megbed.testbed.modeltrain.data import build_latent_set

    vae = AutoencoderKL.from_pretrained(out_dir / "vae_final", local_files_only=True)
    return build_latent_set(vae, out_dir / "latents", n_images=cfg.unet.dataset_images, seed=cfg.seed,
                            size_px=cfg.image_size_px, pair_fraction=cfg.unet.pair_fraction,
                            batch=cfg.unet.encode_batch, log=log)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options (shared by ``python -m megbed.testbed.modeltrain`` and ``megbed model train``)."""
    parser.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, results, model/)")
    parser.add_argument("--seed", type=int, default=None, help="seed of a new run (default 0)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoints")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated phases to run, in order (default: all of {','.join(PHASES)})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for a new run, e.g. --set vae.steps=5 (repeatable)")
    parser.add_argument("--install", action="store_true",
                        help="also install the exported model as megbed's default model (testbed/assets)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")


def run_from_args(args: argparse.Namespace, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Start or resume a run from parsed :func:`add_arguments` options."""
    from megbed.testbed.modeltrain.config import TrainConfig

    overrides = parse_overrides(args.overrides)
    cfg = None
    if args.seed is not None or overrides:
        base = TrainConfig(seed=args.seed if args.seed is not None else 0)
        try:
            cfg = base.with_overrides(**overrides)
        except (ValueError, TypeError) as exc:
            raise TrainError(f"bad --set: {exc}") from exc
    elif args.resume:
        cfg = None
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    install = None
    if args.install:
        from megbed.testbed.assets import default_model_dir

        install = default_model_dir()
    return train(args.out, cfg=cfg, resume=args.resume, phases=phases, install=install, log=log,
                 threads=args.threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megbed.testbed.modeltrain", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run_from_args(args)
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def clean_run(out_dir: str | Path) -> None:
    """Delete a run folder (used by tests)."""
    shutil.rmtree(out_dir, ignore_errors=True)
