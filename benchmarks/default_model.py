"""The embedded default model: size, generation latency at 20 steps, and the quality trade-off vs N, beta, noise.

Everything runs through the project's runtime (``megbed.testbed.ldm``: ``load_pipeline``, ``Request``, the split
plans' stages, ``run_split``, ``merging``, ``metrics``, ``reference``), so the figures are those a campaign
measures.

* Size: parameters per component and bytes on disk (the whole folder, as shipped).
* Latency: one 128x128 image, 20 steps, the model's default sampler and guidance (CFG: a batch of 2 per U-Net
  call), on ``--threads`` CPU threads (default 2), median of ``--repeats`` after one warm-up: the whole generation on
  one node (``run_split(..., scheme="ue_local")``) with its per-stage split, and the stock ``pipe(...)`` call beside
  it. Wall time (``perf_counter_ns``) and process CPU time, with the load average (the CPU is shared, so wall times
  include other people's work; CPU time does not).
* Quality, against the ``--n-max``-step reference of the same prompt and seed (``local_reference``: beta 0,
  unsplit, stored at 8 bits as a campaign stores it, so the cell at N = N_max, beta 0 reads the 8-bit floor, ~59 dB),
  mean over ``--prompts`` held-out prompts of the shapes grammar:
  - -ln MSE and PSNR vs N in {2, 4, 8, 12, 20} and beta in {0, .25, .5, .75} (MEG with k = N: the ES's N-step
    latent is merged, serialised into a handoff frame in the float16 wire dtype, un-merged and decoded on the UE);
  - the same vs latent noise sigma in {0, .05, .1, .2, .32} added to the merged values on the wire (the paper's
    channel model, as ``megbed distill --noise sigma``; latents are in U-Net space, about unit std), at beta 0 and
    0.5.
  The ES half (text encoding + N denoising steps) runs once per prompt and N and its state is reused for every
  beta / sigma; the first prompt's result is checked bit-for-bit against a full ``run_split`` call.

Usage::

    python benchmarks/default_model.py                 # everything (about 10 minutes on 2 idle cores)
    python benchmarks/default_model.py --prompts 8     # quicker tables
    python benchmarks/default_model.py --skip-latency --json out.json
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning (a shared CPU otherwise loses most of its time to spinning).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megbed.megwire import Frame, pack, unpack  # noqa: E402
from megbed.testbed.assets import default_model_dir  # noqa: E402
from megbed.testbed.ldm.handoff import MERGE_PREFIX  # noqa: E402
from megbed.testbed.ldm.merging import merged_payload_nbytes  # noqa: E402
from megbed.testbed.ldm.metrics import neg_log_mse, psnr_db  # noqa: E402
from megbed.testbed.ldm.model import LdmModel, load_pipeline  # noqa: E402
from megbed.testbed.ldm.plan import build_stages, plan_for  # noqa: E402
from megbed.testbed.ldm.reference import ReferenceCache, local_reference  # noqa: E402
from megbed.testbed.ldm.runner import identity_link, run_node, run_split  # noqa: E402
from megbed.testbed.modeltrain.config import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_STEPS  # noqa: E402
from megbed.testbed.modeltrain.export import read_model_meta  # noqa: E402
from megbed.testbed.request import Request  # noqa: E402
from megbed.testbed.shapes.dataset import heldout_prompts  # noqa: E402

STEPS = (2, 4, 8, 12, 20)
BETAS = (0.0, 0.25, 0.5, 0.75)
SIGMAS = (0.0, 0.05, 0.1, 0.2, 0.32)
NOISE_BETAS = (0.0, 0.5)
LATENCY_PROMPT = "a large red circle on the left and a small blue square at the top"
_TOKENS = f"{MERGE_PREFIX}tokens"


# --- size ----------------------------------------------------------------------------------------------------------

def model_size(model_dir: Path, model: LdmModel) -> dict:
    """Parameters and on-disk bytes per component, and the folder's total bytes."""
    files = [p for p in model_dir.rglob("*") if p.is_file()]
    pipe = model.pipe
    per = {}
    for name in ("unet", "vae", "text_encoder"):
        module = getattr(pipe, name)
        per[name] = {"params": sum(p.numel() for p in module.parameters()),
                     "bytes": sum(p.stat().st_size for p in files if p.relative_to(model_dir).parts[0] == name)}
    per["vae_decoder_only"] = {"params": sum(p.numel() for p in pipe.vae.decoder.parameters())
                               + sum(p.numel() for p in pipe.vae.post_quant_conv.parameters())}
    return {"total_bytes": sum(p.stat().st_size for p in files),
            "total_params": sum(per[n]["params"] for n in ("unet", "vae", "text_encoder")), "components": per}


# --- latency -------------------------------------------------------------------------------------------------------

def _timed(fn) -> tuple[float, float]:
    t0, c0 = time.perf_counter_ns(), time.process_time_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e9, (time.process_time_ns() - c0) / 1e9


def latency(model: LdmModel, steps: int, guidance: float, repeats: int) -> dict:
    """Median wall / CPU seconds of a whole generation, through the runtime and through the stock pipeline."""
    def request(seed: int) -> Request:
        return Request(LATENCY_PROMPT, n_steps=steps, guidance_scale=guidance, seed=seed)

    stage_s: dict[str, list[float]] = {}

    def runtime_once(seed: int) -> None:
        res = run_split(request(seed), model, scheme="ue_local")
        for t in res.timings:
            stage_s.setdefault(t.stage, []).append(t.latency_s)

    def stock_once(seed: int) -> None:
        model.pipe(LATENCY_PROMPT, num_inference_steps=steps, guidance_scale=guidance,
                   generator=torch.Generator().manual_seed(seed), output_type="np")

    out = {"steps": steps, "guidance_scale": guidance, "load_avg_1min_before": os.getloadavg()[0]}
    for name, once in (("runtime", runtime_once), ("stock_pipeline", stock_once)):
        once(0)  # warm-up (allocator, oneDNN kernels)
        stage_s.clear()
        walls, cpus = zip(*(_timed(lambda i=i, f=once: f(i + 1)) for i in range(repeats)), strict=True)
        out[name] = {"wall_s": list(walls), "cpu_s": list(cpus), "wall_s_median": statistics.median(walls),
                     "cpu_s_median": statistics.median(cpus)}
        if name == "runtime":
            out[name]["stage_wall_s_median"] = {k: statistics.median(v) for k, v in stage_s.items()}
    out["load_avg_1min_after"] = os.getloadavg()[0]
    return out


# --- quality -------------------------------------------------------------------------------------------------------

def gaussian_link(sigma: float, seed: int):
    """A link adding N(0, sigma^2) to the merged values of a handoff frame, in the wire dtype (the paper's channel;
    the same draw as ``megbed.testbed.distill.link`` for ``--noise sigma``)."""
    if sigma <= 0:
        return identity_link

    def link(frame: Frame) -> Frame:
        sent = np.asarray(frame.buffers[_TOKENS])
        rng = np.random.default_rng(seed)
        x = sent.astype(np.float32)
        y = (x + np.float32(sigma) * rng.standard_normal(x.shape, dtype=np.float32)).astype(sent.dtype)
        return Frame(kind=frame.kind, meta=dict(frame.meta), buffers={**frame.buffers, _TOKENS: y},
                     version=frame.version)

    return link


class MegSweep:
    """MEG with k = N for one prompt and N: the ES's text encoding and denoising run once, then every (beta, sigma)
    goes through the ES's merge + serialize stages, the wire (bytes), the link and the UE's stages."""

    def __init__(self, model: LdmModel, request: Request) -> None:
        self.model = model
        self.request = model.resolve(request.replace(es_steps=None, merge_ratio=0.0))
        plan = plan_for("meg", self.request)
        es = build_stages(plan, "es", model)
        names = [s.name for s in es]
        cut = names.index("merge")
        self.es_tail = es[cut:]
        self.ue = build_stages(plan, "ue", model)
        self.es_state, _ = run_node(es[:cut], {"request": self.request}, "es")

    def image(self, beta: float, sigma: float, noise_seed: int) -> torch.Tensor:
        state = {**self.es_state, "request": self.request.replace(merge_ratio=float(beta))}
        es_state, _ = run_node(self.es_tail, state, "es")
        received = gaussian_link(sigma, noise_seed)(unpack(pack(es_state["handoff_frame"])))
        ue_state, _ = run_node(self.ue, {"handoff_frame": received}, "ue")
        return ue_state["image"].float().cpu()


def quality_tables(model: LdmModel, n_prompts: int, guidance: float, n_max: int, cache: ReferenceCache,
                   log=print) -> dict:
    """Mean -ln MSE and PSNR against the n_max-step reference, per (N, beta) and per (beta, N, sigma)."""
    prompts = heldout_prompts(n_prompts)
    by_beta = {n: {b: [] for b in BETAS} for n in STEPS}
    by_sigma = {b: {n: {s: [] for s in SIGMAS} for n in STEPS} for b in NOISE_BETAS}
    t0 = time.perf_counter()
    checked = False
    for i, p in enumerate(prompts):
        req = Request(p.prompt, n_steps=n_max, seed=p.seed, guidance_scale=guidance)
        ref = local_reference(model, req, n_max, cache)
        for n in STEPS:
            sweep = MegSweep(model, req.replace(n_steps=n))
            images: dict[tuple[float, float], torch.Tensor] = {}
            for b in sorted(set(BETAS) | set(NOISE_BETAS)):
                for s in SIGMAS if b in NOISE_BETAS else (0.0,):
                    images[b, s] = sweep.image(b, s, noise_seed=1000 * p.seed + n)
            if not checked:
                # The sweep must be the runtime's MEG path exactly: compare one case with a full run_split.
                b, s = 0.5, 0.1
                full = run_split(sweep.request.replace(merge_ratio=b), model, scheme="meg",
                                 link=gaussian_link(s, 1000 * p.seed + n)).image.float().cpu()
                if not torch.equal(full, images[b, s]):
                    raise RuntimeError("the reused ES state does not reproduce run_split bit-for-bit")
                checked = True
            for (b, s), img in images.items():
                score = (float(neg_log_mse(img, ref)[0]), float(psnr_db(img, ref)[0]))
                if s == 0.0 and b in BETAS:
                    by_beta[n][b].append(score)
                if b in NOISE_BETAS:
                    by_sigma[b][n][s].append(score)
        log(f"  quality: prompt {i + 1}/{len(prompts)} done ({time.perf_counter() - t0:.0f} s)")

    def mean(scores: list[tuple[float, float]]) -> list[float]:
        arr = np.asarray(scores, dtype=np.float64)
        return [float(arr[:, 0].mean()), float(arr[:, 1].mean())]

    latent_shape = (model.latent_channels, *[d // model.vae_scale_factor for d in model.default_size()])
    return {
        "n_prompts": n_prompts, "n_max": n_max, "guidance_scale": guidance,
        "scheduler": model.resolve(Request("", n_steps=1)).scheduler,
        "wall_s": time.perf_counter() - t0,
        "payload_bytes_by_beta": {b: merged_payload_nbytes(latent_shape, b) for b in BETAS},
        "by_beta": {n: {b: mean(v) for b, v in row.items()} for n, row in by_beta.items()},
        "by_sigma": {b: {n: {s: mean(v) for s, v in row.items()} for n, row in t.items()} for b, t in by_sigma.items()},
    }


def print_tables(q: dict) -> None:
    print(f"\nQuality vs the {q['n_max']}-step reference (same prompt and seed, beta 0), mean over {q['n_prompts']} "
          f"held-out prompts, {q['scheduler']}, guidance {q['guidance_scale']}: -ln MSE / PSNR dB "
          "(N = N_max at beta 0 differs from the reference only by the float16 wire)")
    print("| N \\ beta | " + " | ".join(f"{b:g}" for b in BETAS) + " |")
    print("|---|" + "---|" * len(BETAS))
    for n, row in q["by_beta"].items():
        print(f"| {n} | " + " | ".join(f"{v[0]:.2f} / {v[1]:.1f}" for v in row.values()) + " |")
    print("handoff payload bytes (float16 values + merge map): "
          + ", ".join(f"beta {b:g}: {v}" for b, v in q["payload_bytes_by_beta"].items()))
    for b, table in q["by_sigma"].items():
        print(f"\nLatent noise sigma on the merged values, beta {b:g}: -ln MSE / PSNR dB")
        print("| N \\ sigma | " + " | ".join(f"{s:g}" for s in SIGMAS) + " |")
        print("|---|" + "---|" * len(SIGMAS))
        for n, row in table.items():
            print(f"| {n} | " + " | ".join(f"{v[0]:.2f} / {v[1]:.1f}" for v in row.values()) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: the embedded model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="timed generations per path (after one warm-up)")
    ap.add_argument("--prompts", type=int, default=16, help="held-out prompts in the quality tables")
    ap.add_argument("--n-max", type=int, default=max(STEPS), help="steps of the reference image (default 20)")
    ap.add_argument("--ref-cache", type=Path, default=None,
                    help="reference-image cache folder (default: a temporary folder)")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.n_max < max(STEPS):
        ap.error(f"--n-max must be >= {max(STEPS)} (the largest N of the table)")
    torch.set_num_threads(args.threads)
    model_dir = (args.model or default_model_dir()).resolve()
    meta = read_model_meta(model_dir)
    steps = int(meta.get("default_num_inference_steps", DEFAULT_NUM_STEPS))
    guidance = float(meta.get("default_guidance_scale", DEFAULT_GUIDANCE_SCALE))
    model = load_pipeline(model_dir, device="cpu", dtype=torch.float32)
    scheduler = model.resolve(Request("", n_steps=1)).scheduler
    out: dict = {"model": str(model_dir), "threads": torch.get_num_threads(),
                 "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "scheduler": scheduler,
                 "scheduler_class": type(model.pipe.scheduler).__name__, "default_steps": steps,
                 "guidance_scale": guidance, "cpu_count": os.cpu_count()}
    size = model_size(model_dir, model)
    out["size"] = size
    print(f"model {model_dir}: {out['scheduler_class']} ({scheduler}), default {steps} steps, guidance {guidance}, "
          f"{model.default_size()[0]}x{model.default_size()[1]} px")
    print(f"size on disk: {size['total_bytes'] / 1e6:.2f} MB, {size['total_params'] / 1e6:.3f} M params")
    for name, v in size["components"].items():
        extra = f", {v['bytes'] / 1e6:.2f} MB" if "bytes" in v else ""
        print(f"  {name}: {v['params'] / 1e6:.3f} M params{extra}")
    if not args.skip_latency:
        lat = latency(model, 20, guidance, args.repeats)
        out["latency"] = lat
        print(f"\ngeneration latency, 128x128, 20 steps, guidance {guidance} (CFG), {out['threads']} threads "
              f"(OMP_WAIT_POLICY={out['omp_wait_policy']}), median of {args.repeats}; load average "
              f"{lat['load_avg_1min_before']:.1f} -> {lat['load_avg_1min_after']:.1f}")
        for name in ("runtime", "stock_pipeline"):
            r = lat[name]
            print(f"  {name}: {r['wall_s_median']:.3f} s wall ({', '.join(f'{w:.3f}' for w in r['wall_s'])}), "
                  f"{r['cpu_s_median']:.3f} cpu-s")
        print("  runtime stages (median wall s): "
              + ", ".join(f"{k} {v:.3f}" for k, v in lat["runtime"]["stage_wall_s_median"].items()))
    if not args.skip_quality:
        with tempfile.TemporaryDirectory(prefix="megbed-refs-") as tmp:
            cache = ReferenceCache(args.ref_cache or tmp)
            q = quality_tables(model, args.prompts, guidance, args.n_max, cache)
        out["quality"] = q
        print_tables(q)
        print(f"(quality tables: {q['wall_s']:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
