"""The analysis report's decoder_distortion figure: drawn from a distillation table, skipped without one."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from megbed.analysis.figures import FigureContext, FigureSkipped, figures
from megbed.analysis.figures.distill import decoder_distortion
from megbed.analysis.load import RunData
from megbed.testbed.distill.evaluate import conditions, summarize


def _rows() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    out = []
    for dec, beta, cond, p in itertools.product(("base", "distilled"), (0.0, 0.5), conditions([10.0, 0.0]), range(3)):
        snr = cond.value if cond.kind == "snr" else 40.0
        psnr = 20 + 0.3 * snr - 8 * beta + (2 if dec == "distilled" and (beta or snr < 20) else 0) + rng.normal()
        mse = 10 ** (-psnr / 10)
        out.append({"decoder": dec, "prompt": f"p{p}", "seed": p, "n_steps": 4, "beta": beta,
                    "condition": cond.label, "kind": cond.kind,
                    "snr_db": cond.value if cond.kind == "snr" else np.nan, "sigma": np.nan, "ch_snr_db": np.nan,
                    "ch_nmse": np.nan, "mse": mse, "neg_log_mse": -np.log(mse), "psnr_db": psnr})
    return pd.DataFrame(out)


def test_figure_reads_the_decoders_table(tmp_path):
    assert "decoder_distortion" in {s.name for s in figures()}
    model = tmp_path / "model"
    (model / "ue_decoder").mkdir(parents=True)
    summarize(_rows()).to_csv(model / "ue_decoder" / "distortion.csv", index=False)
    data = RunData(tmp_path / "run", pd.DataFrame())
    ctx = FigureContext(model_dir=model)
    fig = decoder_distortion(data, ctx)
    assert len(fig.axes) == 2 and any("distortion.csv" in n for n in ctx.take_notes())


def test_figure_is_skipped_without_a_table(tmp_path):
    with pytest.raises(FigureSkipped, match="no distillation distortion table"):
        decoder_distortion(RunData(tmp_path / "run", pd.DataFrame()), FigureContext(model_dir=tmp_path))
