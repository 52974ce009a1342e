"""The report: HTML with embedded figures, tables and provenance; missing parts stated; the CLI."""

from __future__ import annotations

import base64
import json
import re
import shutil

import pandas as pd
import pytest

from megbed.analysis.load import SchemaVersionError
from megbed.analysis.report import build_report
from megbed.testbed.cli.main import main


def _html(result) -> str:
    return result.html_path.read_text(encoding="utf-8")


def test_html_is_self_contained_with_every_figure(full_report):
    text = _html(full_report)
    imgs = re.findall(r"<img src='data:image/png;base64,([A-Za-z0-9+/=]+)' alt='[^']*' data-figure='([a-z_]+)'",
                      text)
    assert {name for _, name in imgs} == set(full_report.figures)
    for payload, _ in imgs:
        assert base64.b64decode(payload)[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"(src|href)=['\"](https?:|//|file:)", text)  # nothing fetched from outside
    assert "Generated images" in text and text.count("<figure>") == 6  # the fixture writes 6 images
    assert "<b>MEG N=4 β=0 " in text  # images named after their request are captioned with its setting
    for section in ("Provenance", "MEG vs CEG vs UE-local", "Fitted cost model", "Clock sync", "Policy"):
        assert section in text
    assert "percentile bootstrap (500 resamples" in text and "Student-t" in text
    assert "synthetic-es" in text  # machine section of the manifest


def test_comparison_table(full_report):
    df = pd.read_csv(full_report.tables["comparison"])
    meg = df[df["scheme"] == "meg"]
    assert len(meg) == 2 * 2 * 2 * 2  # N x beta x decoder x distance
    ue = df[df["scheme"] == "ue_local"]
    assert len(ue) == 2 * 2 and ue["distance_m"].isna().all()  # UE-local has no link: matched on N and decoder
    assert df.loc[df["scheme"] == "ceg", "decoder"].isna().all()  # CEG sends the image: no decoder axis
    assert {"latency_s", "latency_s_ci_low", "latency_s_ci_high", "dlat_vs_ceg", "den_vs_ue_local_ci_high"} <= set(df)
    assert (df["latency_s_ci_low"] < df["latency_s"]).all() and (df["latency_s"] < df["latency_s_ci_high"]).all()
    row = meg.iloc[0]
    assert row["dlat_vs_ceg_ci_low"] < row["dlat_vs_ceg"] < row["dlat_vs_ceg_ci_high"]
    assert df.loc[df["scheme"] != "meg", "dlat_vs_ceg"].isna().all()
    fits = pd.read_csv(full_report.tables["cost_model"])
    assert set(fits["node"]) == {"es", "ue"} and set(fits["basis"]) == {"flops"}


def test_summary_text(full_report):
    s = full_report.summary
    assert re.search(r"MEG vs CEG \(same N, pooled over the rest\): latency [+-]\d+\.\d% \[[+-]\d+\.\d%, "
                     r"[+-]\d+\.\d%\], energy [+-]", s)
    # The synthetic run has no distillation table: the offline decoder figure is the one skipped (tests/distill).
    assert "figures: 10 written, 1 skipped, 0 failed" in s
    assert "decoder_distortion" in s
    assert (full_report.out_dir / "summary.txt").read_text().strip() == s


def test_missing_parts_are_stated_in_the_report(bare_report):
    text = _html(bare_report)
    assert "Not in this run" in text
    assert "no raw power traces kept" in text and "no policy training log" in text
    assert "Figures not drawn" in text and "power_traces" in text
    assert "missing traces" in bare_report.summary and "missing training_logs" in bare_report.summary
    assert set(bare_report.missing) >= {"traces", "training_logs", "images"}


def test_wrong_schema_version_stops_the_report(full_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full_run, run, ignore=shutil.ignore_patterns("report", "traces", "models"))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["schema_version"] = "3.1"
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SchemaVersionError):
        build_report(run, figure_names=[])


def test_cli_report(bare_run, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["report", str(bare_run), "--out", str(out), "--figure", "latency_breakdown", "--bootstrap", "200"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"megbed report: {bare_run}")
    assert (out / "report.html").is_file() and (out / "latency_breakdown.png").is_file()
    assert not (out / "pareto.png").exists()


def test_cli_errors_are_clear(tmp_path, capsys, full_run):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    run = tmp_path / "run"
    shutil.copytree(full_run, run, ignore=shutil.ignore_patterns("report", "traces", "models"))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["schema_version"] = "9"
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("megbed: error:") and "schema v9" in err
    assert main(["report", str(tmp_path), "--list-figures"]) == 0
    assert "latency_breakdown" in capsys.readouterr().out
