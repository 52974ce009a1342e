"""Feature-merging methods side by side: handoff bytes, NMSE after un-merge, decoded-image distortion, time; the
payload-distortion frontier.

Latent sets
-----------
* ``smooth``: SDXL-shaped smooth random latents, ``[4, 128, 128]`` (4,096 tokens of 16 values): i.i.d. Gaussian
  noise blurred by a Gaussian of ``--blur-px`` latent pixels (default 2) per channel, then scaled to unit std.
* ``real``: the embedded default model's ES latents (``[4, 16, 16]``) after N = ``--n-steps`` (8) denoising steps for
  ``--real`` (8) held-out prompts of the shapes grammar, produced by the runtime's own ES stages.

Per latent set, method (``megbed.testbed.ldm.merging.MERGE_METHODS``) and beta in {0.25, 0.5, 0.75}, each latent goes
through the runtime's path one request at a time: ``merge`` -> ``Handoff.build`` -> bytes (float16 wire) ->
``Handoff.from_bytes`` -> ``unmerge``. Reported (means over the latents):

* ``bytes``: ``len(handoff.to_bytes())`` -- header, kept tokens, merge map and destination indices (what the link
  carries and the airtime counts); ``side`` = map + index bytes alone;
* ``nmse``: ``|unmerged - latent|^2 / |latent|^2`` (float16 wire included);
* ``-lnMSE``: -ln MSE of the decoded image against the decode of the *unmerged* latent by the same model's stock VAE
  (``base``); for the real latents also the distilled UE decoder and the ``auto`` gate (each against the stock
  decode of the unmerged latent). For ``smooth`` the decode is a 32x32-latent centre crop of the (whole-latent)
  merged / un-merged latent through the default model's VAE (a 1024-px decode takes ~20 s on this CPU; there is
  no SDXL VAE in the box);
* ``merge_ms`` / ``unmerge_ms``: wall time of ``merge`` and of ``from_bytes + unmerge`` (median over latents,
  1 torch thread).

Frontier: NMSE against handoff bytes over beta in 0.05 .. 0.75 for every method (``--out``/merging_frontier.png),
and the comparison the issue asks for -- each method's NMSE interpolated (in bytes) at the default method's byte
counts.

Report-only variant (not a wire format): ``global_l2`` with its destination indices entropy-coded by an ideal
zeroth-order coder of the source's *offset* to its destination in windows (the bytes it would need).

Usage::

    python benchmarks/merging.py                        # ~3-5 minutes on 2 cores
    python benchmarks/merging.py --smooth 1 --real 4 --out /tmp/merging
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megbed.testbed.ldm.handoff import Handoff  # noqa: E402
from megbed.testbed.ldm.merge_methods import DEFAULT_MERGE_METHOD, MERGE_METHODS  # noqa: E402
from megbed.testbed.ldm.merging import merge, unmerge  # noqa: E402
from megbed.testbed.request import Request  # noqa: E402

BETAS = (0.25, 0.5, 0.75)
FRONTIER_BETAS = tuple(round(0.05 * i, 2) for i in range(1, 16))
CROP = 32  # latent pixels of the decoded centre crop of a smooth latent


def smooth_latents(n: int, blur_px: float, seed: int = 0) -> torch.Tensor:
    """``[n, 4, 128, 128]`` float32: Gaussian noise blurred by ``blur_px`` (std, latent pixels), unit std."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n * 4, 1, 128, 128, generator=g)
    half = int(math.ceil(3 * blur_px))
    k = torch.exp(-torch.arange(-half, half + 1, dtype=torch.float32) ** 2 / (2 * blur_px**2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (half, half, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, half, half), mode="reflect"), k.view(1, 1, -1, 1))
    x = x.reshape(n, 4, 128, 128)
    return x / x.std(dim=(1, 2, 3), keepdim=True)


def real_latents(model, n: int, n_steps: int) -> torch.Tensor:
    """The ES's latents after ``n_steps`` for ``n`` held-out prompts: ``[n, C, h, w]``."""
    from megbed.testbed.ldm.plan import build_stages, plan_for
    from megbed.testbed.ldm.runner import run_node
    from megbed.testbed.modeltrain.config import DEFAULT_GUIDANCE_SCALE
    from megbed.testbed.shapes.dataset import heldout_prompts

    out = []
    for p in heldout_prompts(n):
        req = model.resolve(Request(p.prompt, n_steps=n_steps, seed=p.seed,
                                    guidance_scale=DEFAULT_GUIDANCE_SCALE))
        es = build_stages(plan_for("meg", req), "es", model)
        cut = [s.name for s in es].index("merge")
        state, _ = run_node(es[:cut], {"request": req}, "es")
        out.append(state["latents"].float().cpu())
    return torch.cat(out)


def send(x: torch.Tensor, beta: float, method: str, seed: int) -> dict:
    """One latent ``[1, C, H, W]`` through merge -> handoff bytes -> un-merge."""
    req = Request("bench", n_steps=1, merge_ratio=beta, seed=seed, merge_method=method,
                  wire_dtype="float16")
    t0 = time.perf_counter_ns()
    merged = merge(x, beta, seed, method)
    t1 = time.perf_counter_ns()
    data = Handoff.build(req, merged, None).to_bytes()
    t2 = time.perf_counter_ns()
    back = Handoff.from_bytes(data)
    y = unmerge(back.merged)
    t3 = time.perf_counter_ns()
    side = int(merged.merge_map.nbytes + merged.dst_map.nbytes)
    nmse = float(((y - x) ** 2).sum() / (x**2).sum())
    return {"y": y, "bytes": len(data), "side": side, "nmse": nmse, "merge_ms": (t1 - t0) / 1e6,
            "unmerge_ms": (t3 - t2) / 1e6, "merged": merged}


def offset_entropy_bytes(merged, r: int) -> float:
    """Bytes an ideal zeroth-order coder needs for the destination indices, coded as window offsets (dy, dx)
    between a merged source's own window and its destination's window."""
    if r == 0:
        return 0.0
    layout = merged.layout
    ww = -(-layout.grid_w // 2)
    mask = np.unpackbits(merged.merge_map, axis=1, count=layout.num_sources, bitorder="little")[0].astype(bool)
    own = layout.src_window[mask]
    dst = merged.merged_destinations()[0]
    off = (dst // ww - own // ww) * 100_000 + (dst % ww - own % ww)
    _, counts = np.unique(off, return_counts=True)
    p = counts / counts.sum()
    bits = float(-(counts * np.log2(p)).sum())
    # plus the code table: each distinct offset once (2 x 8 bits) and its count (12 bits)
    return (bits + len(counts) * 28) / 8


def neg_log_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-torch.log(((a.float() - b.float()) ** 2).mean().clamp_min(1e-12)))


def decode_crop(decoder, x: torch.Tensor, crop: bool, beta: float | None = None) -> torch.Tensor:
    if crop:
        h, w = x.shape[-2:]
        y0, x0 = (h - CROP) // 2, (w - CROP) // 2
        x = x[..., y0:y0 + CROP, x0:x0 + CROP]
    if beta is not None and getattr(decoder, "accepts_merge_ratio", False):
        return decoder.decode(x, merge_ratio=beta).float()
    return decoder.decode(x).float()


def run_set(name: str, latents: torch.Tensor, decoders: dict, crop: bool, methods, log) -> dict:
    rows, frontier = [], []
    ref = [decode_crop(decoders["base"], latents[i:i + 1], crop) for i in range(len(latents))] if decoders else []
    t0 = time.perf_counter()
    for beta in BETAS:
        for method in methods:
            per = [send(latents[i:i + 1], beta, method, seed=1000 + i) for i in range(len(latents))]
            row = {"set": name, "beta": beta, "method": method,
                   "bytes": statistics.mean(p["bytes"] for p in per), "side": statistics.mean(p["side"] for p in per),
                   "nmse": statistics.mean(p["nmse"] for p in per),
                   "merge_ms": statistics.median(p["merge_ms"] for p in per),
                   "unmerge_ms": statistics.median(p["unmerge_ms"] for p in per)}
            for dname, dec in decoders.items():
                row[f"nlmse_{dname}"] = statistics.mean(
                    neg_log_mse(decode_crop(dec, p["y"], crop, beta), ref[i]) for i, p in enumerate(per))
            if method == "global_l2":
                r = per[0]["merged"].num_merged
                ec = [p["bytes"] - (p["merged"].dst_map.nbytes) + offset_entropy_bytes(p["merged"], r) for p in per]
                row["bytes_entropy_coded"] = statistics.mean(ec)
            rows.append(row)
        log(f"  {name}: beta {beta} done ({time.perf_counter() - t0:.0f} s)")
    for method in methods:
        for beta in FRONTIER_BETAS:
            per = [send(latents[i:i + 1], beta, method, seed=1000 + i) for i in range(len(latents))]
            frontier.append({"set": name, "method": method, "beta": beta,
                             "bytes": statistics.mean(p["bytes"] for p in per),
                             "nmse": statistics.mean(p["nmse"] for p in per)})
    log(f"  {name}: frontier done ({time.perf_counter() - t0:.0f} s)")
    return {"rows": rows, "frontier": frontier}


def at_equal_bytes(frontier: list[dict], set_name: str, method: str, nbytes: float) -> float:
    """NMSE of ``method`` interpolated (linearly in bytes) at ``nbytes``; NaN outside its byte range."""
    pts = sorted((f["bytes"], f["nmse"]) for f in frontier if f["set"] == set_name and f["method"] == method)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if not xs[0] <= nbytes <= xs[-1]:
        return float("nan")
    return float(np.interp(nbytes, xs, ys))


def print_tables(result: dict, decoders: dict) -> None:
    for set_name in result["sets"]:
        rows = [r for r in result["rows"] if r["set"] == set_name]
        dcols = [d for d in decoders.get(set_name, ())]
        head = (f"{'beta':>5} {'method':<10} {'bytes':>9} {'side':>7} {'nmse':>8} "
                + "".join(f"{'-lnMSE ' + d:>17}" for d in dcols) + f" {'merge ms':>9} {'unmerge ms':>10}")
        print(f"\n[{set_name}] {result['sets'][set_name]}")
        print(head)
        for r in rows:
            print(f"{r['beta']:>5.2f} {r['method']:<10} {r['bytes']:>9.0f} {r['side']:>7.0f} {r['nmse']:>8.4f} "
                  + "".join(f"{r['nlmse_' + d]:>17.3f}" for d in dcols)
                  + f" {r['merge_ms']:>9.1f} {r['unmerge_ms']:>10.1f}")
        ec = [r for r in rows if "bytes_entropy_coded" in r]
        if ec:
            print("  global_l2 with ideal entropy-coded window offsets (report only): "
                  + ", ".join(f"beta {r['beta']:g}: {r['bytes_entropy_coded']:.0f} B (vs {r['bytes']:.0f})"
                              for r in ec))
        print(f"  at the default ({DEFAULT_MERGE_METHOD}) method's bytes, NMSE interpolated on each frontier:")
        for r in rows:
            if r["method"] != DEFAULT_MERGE_METHOD:
                continue
            cmp = {m: at_equal_bytes(result["frontier"], set_name, m, r["bytes"]) for m in result["methods"]}
            print(f"    beta {r['beta']:.2f} ({r['bytes']:.0f} B): "
                  + ", ".join(f"{m} {v:.4f}" for m, v in cmp.items()))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(result["sets"])
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4.2), squeeze=False)
    for ax, set_name in zip(axes[0], sets, strict=True):
        for method in result["methods"]:
            pts = sorted((f["bytes"], f["nmse"]) for f in result["frontier"]
                         if f["set"] == set_name and f["method"] == method)
            ax.plot([p[0] / 1e3 for p in pts], [p[1] for p in pts], marker="o", ms=3,
                    label=method + (" (default)" if method == DEFAULT_MERGE_METHOD else ""))
        ec = [r for r in result["rows"] if r["set"] == set_name and "bytes_entropy_coded" in r]
        if ec:
            ax.plot([r["bytes_entropy_coded"] / 1e3 for r in ec], [r["nmse"] for r in ec], "k+", ms=9,
                    label="global_l2, ideal entropy-coded offsets")
        ax.set_yscale("log")
        ax.set_xlabel("handoff bytes (kB, side information included)")
        ax.set_ylabel("NMSE after un-merge")
        ax.set_title(textwrap.fill(f"{set_name}: {result['sets'][set_name]}", 60), fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smooth", type=int, default=2, help="smooth SDXL-shaped latents (default 2)")
    ap.add_argument("--blur-px", type=float, default=2.0, help="blur std of the smooth latents (latent pixels)")
    ap.add_argument("--real", type=int, default=8, help="default-model latents (held-out prompts, default 8)")
    ap.add_argument("--n-steps", type=int, default=8, help="ES steps of the real latents (default 8)")
    ap.add_argument("--no-decode", action="store_true", help="skip the decoded-image column")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-merging"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    methods = list(MERGE_METHODS)
    result = {"methods": methods, "sets": {}, "rows": [], "frontier": []}
    decoders_by_set: dict[str, list[str]] = {}
    model = None
    if args.real or not args.no_decode:
        from megbed.testbed.assets import default_model_dir
        from megbed.testbed.ldm.gate import gated_decoder
        from megbed.testbed.ldm.model import UE_DECODER_SUBFOLDER, load_decoder, load_pipeline

        model_dir = default_model_dir()
        model = load_pipeline(model_dir, device="cpu", dtype=torch.float32)
        folder = model_dir / UE_DECODER_SUBFOLDER
        distilled = load_decoder(folder, device="cpu", dtype=torch.float32) if folder.is_dir() else None

    def add_set(name: str, lat, decs: dict, crop: bool) -> None:
        decoders_by_set[name] = list(decs)
        part = run_set(name, lat, decs, crop, methods, log)
        result["rows"] += part["rows"]
        result["frontier"] += part["frontier"]

    t0 = time.perf_counter()
    if args.smooth:
        lat = smooth_latents(args.smooth, args.blur_px)
        decs = {} if args.no_decode else {"base": model.base_decoder}
        result["sets"]["smooth"] = (f"{args.smooth} x [4,128,128], Gaussian blur {args.blur_px:g} px; decode: "
                                    f"{CROP}x{CROP} latent centre crop, default model's VAE")
        add_set("smooth", lat, decs, True)
    if args.real:
        lat = real_latents(model, args.real, args.n_steps)
        decs = {}
        if not args.no_decode:
            decs["base"] = model.base_decoder
            if distilled is not None:
                decs["distilled"] = distilled
                auto = gated_decoder(model.base_decoder, distilled, folder)
                if auto is not None:
                    decs["auto"] = auto
        result["sets"]["real"] = (f"default model, {args.real} held-out prompts x [{','.join(map(str, lat.shape[1:]))}]"
                                  f", N = {args.n_steps}")
        add_set("real", lat, decs, False)
    wall = time.perf_counter() - t0
    load = os.getloadavg()
    print(f"merging methods, float16 wire, {args.threads} torch thread(s), wall {wall:.0f} s, "
          f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (shared 2-core box)")
    print_tables(result, decoders_by_set)
    png = args.out / "merging_frontier.png"
    plot(result, png)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    (args.out / "merging.json").write_text(json.dumps({**result, "commit": commit, "wall_s": wall,
                                                       "loadavg": load}, indent=1))
    print(f"\nfrontier plot: {png}\nfigures: {args.out / 'merging.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
