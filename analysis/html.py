"""The self-contained HTML report: figures embedded as base64 PNG, tables, provenance; no external resource."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from megbed.analysis.figures.registry import FigureContext
from megbed.analysis.load import RunData
from megbed.analysis.stats import Estimate
from megbed.analysis.tables import SETTING_COLUMNS, Comparison, scheme_label

MAX_GALLERY = 12
THUMB_PX = 256

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:2px solid #0072B2;padding-bottom:4px;margin-top:2em}
h3{margin-bottom:4px}.sub{color:#666;margin-top:4px}
table{border-collapse:collapse;font-size:.85em;margin:8px 0}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f4f8}td.l,th.l{text-align:left}tr:nth-child(even) td{background:#fafafa}
.fig{margin:18px 0 30px}.fig img{max-width:100%;height:auto;border:1px solid #eee}
.caption{font-size:.9em;color:#333}.notes{font-size:.85em;color:#555;margin:4px 0 0 0;padding-left:18px}
.box{border-left:4px solid #E69F00;background:#fff8e8;padding:8px 12px;margin:12px 0}
.bad{border-left-color:#C00000;background:#fdeaea}.good{border-left-color:#009E73;background:#eaf7f2}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:.8em}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.gallery figure{margin:0;width:180px;font-size:.75em;word-break:break-all}
.gallery img{width:180px;height:auto}.scroll{max-height:640px;overflow:auto;display:inline-block}.neg{color:#006d4f}.pos{color:#b00000}
nav a{margin-right:12px}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _b64_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _thumb(path: Path) -> str | None:
    try:
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB_PX, THUMB_PX))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    except Exception:  # noqa: BLE001 - an unreadable image is listed without a thumbnail
        return None


def _est(e, unit: str = "", pct: bool = False) -> str:
    if not isinstance(e, Estimate) or not math.isfinite(e.value):
        return "–"
    cls = ""
    if pct:
        significant = math.isfinite(e.low) and (e.high < 0 or e.low > 0)
        cls = (" class='neg'" if e.value < 0 else " class='pos'") if significant else ""
        sign = "+" if e.value > 0 else ""
        core = f"{sign}{e.value:.1f}%"
        ci = f" [{e.low:+.1f}, {e.high:+.1f}]" if math.isfinite(e.low) else ""
        return f"<span{cls}>{core}</span><small>{ci}</small>"
    ci = f" <small>[{e.low:.3g}, {e.high:.3g}]</small>" if math.isfinite(e.low) else ""
    return f"{e.value:.3g}{ci}"


def _setting_cell(col: str, v, scheme: str) -> str:
    if _nan(v) or (col == "merge_ratio" and scheme != "meg"):
        return "<td></td>"
    if col in ("n_steps", "es_steps", "height_px"):
        return f"<td>{int(v)}</td>"
    if isinstance(v, float):
        return f"<td>{v:g}</td>"
    return f"<td>{_e(v)}</td>"


def comparison_html(comp: Comparison) -> str:
    t = comp.table
    if t.empty:
        return "<p>No requests to compare.</p>"
    deltas = [(c, f"MEG Δ{'latency' if c.startswith('dlat') else 'energy'} vs "
                  f"{scheme_label(c.split('_vs_')[1])}") for c in t.columns if "_vs_" in c]
    head = "<th class='l'>scheme</th>" + "".join(f"<th>{_e(SETTING_COLUMNS[k])}</th>" for k in comp.keys)
    head += "<th>n</th><th>latency (s)</th><th>energy (J)</th>" + "".join(f"<th>{_e(h)}</th>" for _, h in deltas)
    body = []
    for _, r in t.iterrows():
        cells = [f"<td class='l'>{_e(scheme_label(r['scheme']))}</td>"]
        cells += [_setting_cell(k, r[k], r["scheme"]) for k in comp.keys]
        cells += [f"<td>{int(r['n'])}</td>", f"<td>{_est(r['latency_s'])}</td>", f"<td>{_est(r['energy_j'])}</td>"]
        cells += [f"<td>{_est(r[c], pct=True)}</td>" for c, _ in deltas]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
            f"<p class='caption'>Means per request with 95% confidence intervals in brackets. {_e(comp.method)}. "
            "Δ = 100·(MEG / baseline − 1) against the baseline setting that agrees on every column the baseline "
            "varies (same N; same link condition where the baseline has one); negative (green) means MEG is cheaper, "
            "coloured only when the interval excludes 0. Energy is gross, summed over all nodes with a valid figure "
            "(the link's transmit energy is modeled). Blank setting cells: the column does not vary for that "
            "scheme.</p>")


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def headline_html(comp: Comparison) -> str:
    rows = []
    for base in ("ceg", "ue_local"):
        lat, en = comp.headline.get(f"latency_vs_{base}"), comp.headline.get(f"energy_vs_{base}")
        if lat is None:
            continue
        rows.append(f"<tr><td class='l'>MEG vs {_e(scheme_label(base))}</td><td>{_est(lat, pct=True)}</td>"
                    f"<td>{_est(en, pct=True)}</td><td>{lat.n}</td></tr>")
    if not rows:
        return ""
    return ("<table><thead><tr><th class='l'>pooled over the N both ran (all β, links)</th><th>Δ latency</th><th>Δ energy</th>"
            f"<th>n (smaller group)</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def cost_table_html(ctx: FigureContext) -> str:
    res = ctx.cache.get("cost_model")
    if res is None or not res.fits:
        return ""
    unit = res.work_unit
    rows = "".join(
        f"<tr><td class='l'>{f.node.upper()}</td><td class='l'>{'latency (s)' if f.cost == 'latency_s' else 'energy (J)'}"
        f"</td><td>{f.slope:.4g}</td><td>{f.intercept:.4g}</td><td>{f.r2:.3f}</td><td>{f.rmse:.3g}</td><td>{f.n}</td>"
        "</tr>" for f in res.fits)
    return (f"<h3>Fitted cost model</h3><table><thead><tr><th class='l'>node</th><th class='l'>cost</th>"
            f"<th>slope (per {_e(unit)})</th><th>intercept</th><th>R²</th><th>RMSE</th><th>n</th></tr></thead>"
            f"<tbody>{rows}</tbody></table><p class='caption'>{_e(res.note)}</p>")


def provenance_html(data: RunData) -> str:
    m = data.manifest
    if not m:
        return "<div class='box bad'>No manifest.json: the provenance of this dataset is unknown.</div>"
    keys = [("run_id", "run"), ("created", "created"), ("schema_version", "schema version"), ("commit", "commit"),
            ("dirty", "uncommitted changes"), ("config_hash", "config hash")]
    rows = "".join(f"<tr><th class='l'>{_e(label)}</th><td class='l'>{_e(m[k])}</td></tr>" for k, label in keys
                   if k in m)
    parts = [f"<table>{rows}</table>"]
    for key, label in (("machine", "Machines"), ("firmware_profiles", "Firmware profiles"), ("probes", "Probes"),
                       ("clock_sync", "Clock sync"), ("config", "Campaign configuration"), ("packages", "Packages")):
        if key in m:
            text = json.dumps(m[key], indent=1, default=str)
            if len(text) > 20000:
                text = text[:20000] + "\n... (truncated; see manifest.json)"
            parts.append(f"<details><summary>{_e(label)}</summary><pre>{_e(text)}</pre></details>")
    other = sorted(set(m) - {k for k, _ in keys} - {"machine", "firmware_profiles", "probes", "clock_sync", "config",
                                                     "packages"})
    if other:
        text = json.dumps({k: m[k] for k in other}, indent=1, default=str)[:20000]
        parts.append(f"<details><summary>Other manifest entries</summary><pre>{_e(text)}</pre></details>")
    return "".join(parts)


def _describe_request(r) -> str:
    parts = [scheme_label(r["scheme"])]
    if "n_steps" in r and not _nan(r["n_steps"]):
        parts.append(f"N={int(r['n_steps'])}")
    if r["scheme"] == "meg" and "merge_ratio" in r and not _nan(r["merge_ratio"]):
        parts.append(f"β={r['merge_ratio']:g}")
    if "q_psnr_db" in r and not _nan(r["q_psnr_db"]):
        parts.append(f"{r['q_psnr_db']:.1f} dB")
    return " ".join(parts)


def gallery_html(data: RunData) -> str:
    if not data.images:
        return ""
    figs = []
    by_id = data.requests.drop_duplicates("request_id").set_index("request_id")
    for p in data.images[:MAX_GALLERY]:
        src = _thumb(p)
        img = f"<img src='{src}' alt='{_e(p.name)}'>" if src else "<em>unreadable</em>"
        caption = _e(p.relative_to(data.run_dir))
        if p.stem in by_id.index:  # images named after their request: say what they are
            caption = f"<b>{_e(_describe_request(by_id.loc[p.stem]))}</b><br>{caption}"
        figs.append(f"<figure>{img}<figcaption>{caption}</figcaption></figure>")
    more = f"<p>{len(data.images) - MAX_GALLERY} more in images/.</p>" if len(data.images) > MAX_GALLERY else ""
    return f"<h2 id='images'>Generated images</h2><div class='gallery'>{''.join(figs)}</div>{more}"


def write_html(path: Path, data: RunData, comp: Comparison, rendered: dict, skipped: dict, failed: dict,
               ctx: FigureContext, summary: str) -> None:
    """Write the report; every figure is embedded, so the file can be mailed or archived alone."""
    m = data.manifest
    title = f"megbed report: {m.get('run_id', data.run_dir.name)}"
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
           f"<style>{CSS}</style></head><body>",
           f"<h1>{_e(title)}</h1><p class='sub'>{_e(data.run_dir)}</p>"]
    sections: dict[str, list] = {}
    for fig in rendered.values():
        sections.setdefault(fig.section, []).append(fig)
    nav = ["<a href='#summary'>Summary</a>", "<a href='#comparison'>Comparison</a>"]
    nav += [f"<a href='#{_e(_anchor(s))}'>{_e(s)}</a>" for s in sections]
    nav += ["<a href='#provenance'>Provenance</a>"]
    out.append("<nav>" + "".join(nav) + "</nav>")
    out.append(f"<h2 id='summary'>Summary</h2><pre>{_e(summary)}</pre>")
    if data.missing:
        items = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in data.missing.items())
        out.append(f"<div class='box' id='missing'><b>Not in this run</b> (figures needing these are skipped):"
                   f"<ul>{items}</ul></div>")
    if failed:
        items = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in failed.items())
        out.append(f"<div class='box bad'><b>Figures that failed</b> (a bug or unexpected data):<ul>{items}</ul></div>")
    if data.warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in data.warnings)
        out.append(f"<div class='box'><b>Data warnings</b><ul>{items}</ul></div>")
    out.append(f"<h2 id='comparison'>MEG vs CEG vs UE-local</h2>{headline_html(comp)}{comparison_html(comp)}")
    for section, figs in sections.items():
        out.append(f"<h2 id='{_e(_anchor(section))}'>{_e(section)}</h2>")
        for fig in figs:
            notes = "".join(f"<li>{_e(n)}</li>" for n in fig.notes)
            out.append(f"<div class='fig' id='fig-{_e(fig.name)}'><h3>{_e(fig.title)}</h3>"
                       f"<img src='{_b64_png(fig.path)}' alt='{_e(fig.title)}' data-figure='{_e(fig.name)}'>"
                       f"<p class='caption'>{_e(' '.join(fig.caption.split()))}</p>"
                       + (f"<ul class='notes'>{notes}</ul>" if notes else "") + "</div>")
            if fig.name == "cost_model":
                out.append(cost_table_html(ctx))
    if skipped:
        items = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in skipped.items())
        out.append(f"<h2 id='skipped'>Figures not drawn</h2><ul>{items}</ul>")
    out.append(gallery_html(data))
    out.append(f"<h2 id='provenance'>Provenance</h2>{provenance_html(data)}")
    out.append("<p class='sub'>Generated by megbed analysis.</p></body></html>")
    path.write_text("\n".join(out), encoding="utf-8")


def _anchor(section: str) -> str:
    return "sec-" + "".join(ch if ch.isalnum() else "-" for ch in section.lower())
