"""``megbed distill`` end to end on the tiny model: train + install, eval (table + CSV), errors."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from megbed.testbed.cli.main import main
from megbed.testbed.distill.evaluate import SUMMARY_COLUMNS


def test_train_install_eval(tiny_sd15_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_sd15_dir, model)
    run = tmp_path / "run"
    args = ["distill", "train", "--model", str(model), "--run", str(run), "--num-prompts", "3", "--val-prompts", "1",
            "--n-min", "2", "--n-max", "3", "--steps", "2", "--batch-size", "2", "--threads", "1", "--noise", "sigma",
            "--sigma-range", "0.05", "0.3", "--no-progress", "--install"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "trained 2 steps" in out and "installed" in out
    assert (model / "ue_decoder" / "distill.json").is_file() and (run / "summary.json").is_file()
    assert (run / "checkpoints").is_dir() and (run / "cache" / "index.json").is_file()

    csv = tmp_path / "table.csv"
    assert main(["distill", "eval", "--model", str(model), "--num-prompts", "2", "--steps", "2", "--n-ref", "3",
                 "--betas", "0,0.5", "--snr-db", "10", "--threads", "1", "--cache", str(tmp_path / "ec"),
                 "--out", str(csv), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Δ -lnMSE" in out and "SNR 10 dB" in out
    table = pd.read_csv(csv)
    assert list(table.columns) == list(SUMMARY_COLUMNS)
    assert set(table["decoder"]) == {"base", "distilled"} and len(table) == 2 * 2 * 2

    # 'auto' is refused until the gate is calibrated, then loads as the gate and joins the table
    from megbed.testbed.ldm.gate import GatedDecoder, read_gate
    from megbed.testbed.ldm.model import ModelLoadError, load_pipeline

    with pytest.raises(ModelLoadError, match="no calibrated gate"):
        load_pipeline(model, device="cpu", decoder="auto")
    assert main(["distill", "calibrate", "--model", str(model), "--num-prompts", "2", "--steps", "2", "--n-ref", "3",
                 "--betas", "0,0.75", "--snr-db", "20,0", "--threads", "1", "--cache", str(tmp_path / "kc"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "gate for" in out and "distilled used for" in out
    rule = read_gate(model / "ue_decoder")
    assert rule is not None and rule.noise_ratio_max >= 0
    calib = json.loads((model / "ue_decoder" / "distill.json").read_text())["gate"]["calibration"]
    assert calib["latents"] == 2 * 1 * 2 * 3 and calib["prompt_seed"] == 7
    assert isinstance(load_pipeline(model, device="cpu", decoder="auto").decoder, GatedDecoder)
    assert main(["distill", "eval", "--model", str(model), "--num-prompts", "2", "--steps", "2", "--n-ref", "3",
                 "--betas", "0,0.5", "--snr-db", "10", "--threads", "1", "--cache", str(tmp_path / "ec"),
                 "--out", str(csv), "--no-progress"]) == 0
    assert "'auto' (the calibrated gate) vs base" in capsys.readouterr().out
    assert set(pd.read_csv(csv)["decoder"]) == {"base", "distilled", "auto"}


def test_user_errors_exit_2_with_a_message(tiny_sd15_dir, tmp_path, capsys):
    assert main(["distill", "install", str(tmp_path / "nowhere"), "--model", str(tiny_sd15_dir)]) == 2
    assert "no readable config.json" in capsys.readouterr().err
    assert main(["distill", "train", "--model", str(tiny_sd15_dir), "--run", str(tmp_path / "r"),
                 "--beta-max", "0.9"]) == 2
    assert "beta_max" in capsys.readouterr().err
