"""``megbed model train|eval|slice``: the embedded default model's training, its adherence test, and partial folders.

* ``megbed model train --out DIR [--seed S] [--resume] [--install] [--set KEY=VALUE ...]``: run or resume the
  training phases (see :mod:`megbed.testbed.modeltrain.runner`); ``--install`` replaces the shipped default model.
* ``megbed model eval [--model DIR] [--prompts N] [--steps N] [--guidance G]``: generate the fixed held-out prompts
  and print the color-correct and position-correct rates measured by the pixel-statistics scorer.
* ``megbed model slice MODEL_DIR OUT_DIR --role ue|es [--plans meg,hybrid,...]``: a diffusers folder with only the
  components that role's plans need (:mod:`megbed.testbed.ldm.slicing`), for a board with little memory or storage.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# Before torch loads (when this module is imported first): idle OpenMP threads sleep instead of spinning, which
# on a shared CPU otherwise wastes most of the CPU time of training.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def register(sub) -> None:
    from megbed.testbed.modeltrain.runner import add_arguments

    parser = sub.add_parser("model", help="train or evaluate the embedded default model")
    cmds = parser.add_subparsers(dest="model_cmd", metavar="CMD")

    train = cmds.add_parser("train", help="train the default text-to-image model (VAE, then text encoder + U-Net)")
    add_arguments(train)
    train.set_defaults(func=_train)

    ev = cmds.add_parser("eval", help="prompt adherence on held-out prompts (color / position correct rates)")
    ev.add_argument("--model", type=Path, default=None, help="diffusers folder (default: the embedded model)")
    ev.add_argument("--prompts", type=int, default=64, help="number of held-out prompts (default 64)")
    ev.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's, 20)")
    ev.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's, 5.0)")
    ev.add_argument("--batch", type=int, default=8, help="prompts per pipeline call")
    ev.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ev.add_argument("--grid", type=Path, default=None, help="also save the generated images as one PNG")
    ev.add_argument("--json", type=Path, default=None, help="also write the rates and per-prompt verdicts as JSON")
    ev.add_argument("--verbose-prompts", action="store_true", help="print each prompt's verdict")
    ev.set_defaults(func=_eval)

    sl = cmds.add_parser("slice", help="write a partial model folder with only what a node role's plans need")
    sl.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="the whole diffusers model folder")
    sl.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="new folder to write (must not exist or be empty)")
    sl.add_argument("--role", choices=("ue", "es"), required=True, help="the node role the folder is for")
    sl.add_argument("--plans", default=None, metavar="PLAN,...",
                    help="plans to cover (UE: meg, hybrid, ceg, ue_local; ES: meg, hybrid, ceg, reference; "
                         "default: all of the role's)")
    sl.add_argument("--decoder", default=None, help="the UE decoder the plans use: base, distilled or auto")
    sl.set_defaults(func=_slice)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _slice(args) -> int:
    from megbed.testbed.cli.main import CliError
    from megbed.testbed.cli.node_common import parse_plans
    from megbed.testbed.ldm.components import MissingComponentError
    from megbed.testbed.ldm.errors import LdmError
    from megbed.testbed.ldm.slicing import slice_model

    plans = parse_plans(args.plans, args.role)
    try:
        info = slice_model(args.model_dir, args.out_dir, role=args.role, plans=plans, decoder=args.decoder)
    except (LdmError, MissingComponentError) as exc:
        raise CliError(str(exc)) from exc
    print(f"{args.out_dir}: {args.role.upper()} slice for plans {', '.join(info['plans'])}: "
          f"{', '.join(info['components'])} ({info['size_mb']:.1f} MB of {info['source_size_mb']:.1f} MB)")
    return 0


def _train(args) -> int:
    from megbed.testbed.cli.main import CliError
    from megbed.testbed.modeltrain.runner import TrainError, run_from_args

    try:
        state = run_from_args(args)
    except TrainError as exc:
        raise CliError(str(exc)) from exc
    return 0 if state else 1


def _eval(args) -> int:
    import time

    import torch

    from megbed.testbed.assets import default_model_dir
    from megbed.testbed.cli.main import CliError
    from megbed.testbed.modeltrain.config import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_STEPS
    from megbed.testbed.modeltrain.evaluate import (
        ModelFilesError,
        evaluate_adherence,
        load_sd_pipeline,
        save_grid,
    )
    from megbed.testbed.modeltrain.export import read_model_meta
    from megbed.testbed.shapes.dataset import heldout_prompts

    if args.prompts < 1:
        raise CliError(f"--prompts must be >= 1, got {args.prompts}")
    torch.set_num_threads(args.threads)
    model_dir = args.model or default_model_dir()
    meta = read_model_meta(model_dir)
    steps = args.steps or int(meta.get("default_num_inference_steps", DEFAULT_NUM_STEPS))
    guidance = args.guidance if args.guidance is not None else float(
        meta.get("default_guidance_scale", DEFAULT_GUIDANCE_SCALE))
    try:
        pipe = load_sd_pipeline(model_dir)
    except ModelFilesError as exc:
        raise CliError(str(exc)) from exc
    prompts = heldout_prompts(args.prompts)
    t0 = time.perf_counter()
    result = evaluate_adherence(pipe, prompts, steps=steps, guidance_scale=guidance, batch_size=args.batch)
    wall_s = time.perf_counter() - t0
    r = result.rates
    print(f"model {model_dir}")
    print(f"{len(prompts)} held-out prompts ({r.n_objects} named shapes), {steps} steps, guidance {guidance}, "
          f"{type(pipe.scheduler).__name__}, {wall_s:.1f} s")
    if args.verbose_prompts:
        for p, s in zip(result.prompts, result.scores, strict=True):
            marks = " ".join(f"[{'C' if o.color_ok else '-'}{'P' if o.position_ok else '-'}"
                             f"{'S' if o.shape_ok else '-'}]" for o in s.objects)
            print(f"  {marks} {p.prompt}")
    print(f"color correct:    {r.color:6.1%}")
    print(f"position correct: {r.position:6.1%}")
    print(f"size correct:     {r.size:6.1%}   shape correct: {r.shape:6.1%}   whole prompt: {r.prompt_all:6.1%}")
    for k, v in r.by_count.items():
        print(f"  {k}-shape prompts ({v['n_images']}): color {v['color']:.1%}, position {v['position']:.1%}")
    if args.grid:
        print(f"images: {save_grid(result.images, args.grid)}")
    if args.json:
        out = {"model": str(model_dir), "steps": steps, "guidance_scale": guidance, "wall_s": wall_s,
               "rates": r.as_dict(),
               "prompts": [{"prompt": p.prompt, "seed": p.seed,
                            "objects": [{"color_ok": o.color_ok, "position_ok": o.position_ok,
                                         "shape_ok": o.shape_ok, "size_ok": o.size_ok,
                                         "found_position": o.found_position} for o in s.objects]}
                           for p, s in zip(result.prompts, result.scores, strict=True)]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    sys.stdout.flush()
    return 0
