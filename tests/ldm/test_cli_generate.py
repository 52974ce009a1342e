from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from megbed.testbed.cli.main import main


def test_generate_writes_png_and_reports_stages(tiny_sd15_dir, tmp_path, capsys):
    out = tmp_path / "img.png"
    rc = main(["generate", "a green cone", "--model", str(tiny_sd15_dir), "--steps", "3", "--split", "1",
               "--merge", "0.5", "--tome-es", "0.5", "--tome-ue", "0", "--seed", "4", "--scheduler", "unipc",
               "--guidance", "3", "--height", "64", "--width", "64", "--wire-dtype", "float32", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    for stage in ("text_encode", "denoise", "merge", "serialize", "deserialize", "unmerge", "decode"):
        assert stage in text
    assert "handoff: " in text and " bytes (merge.tokens" in text
    with Image.open(out) as img:
        assert img.size == (64, 64) and img.mode == "RGB"
    assert list(tmp_path.iterdir()) == [out]


def test_generate_ceg_and_model_default(tiny_sd15_dir, tmp_path, capsys, monkeypatch):
    from megbed.testbed import assets

    out = tmp_path / "c.png"
    monkeypatch.setattr(assets, "default_model_dir", lambda: tiny_sd15_dir)
    rc = main(["generate", "x", "--steps", "2", "--scheme", "ceg", "--out", str(out)])
    assert rc == 0 and "image frame: " in capsys.readouterr().out
    assert np.asarray(Image.open(out)).shape == (64, 64, 3)


@pytest.mark.parametrize("extra,message", [
    (["--steps", "0"], "--n-steps: field 'n_steps'=0 outside"),
    (["--n-steps", "2", "--es-steps", "3"], "--es-steps: field 'es_steps'=3 outside [0, 2]"),
    (["--merge", "0.9"], "--merge-ratio: field 'merge_ratio'"),
    (["--scheduler", "heun"], "--scheduler: field 'scheduler'='heun'"),
    (["--height", "40"], "multiple of 16"),
])
def test_generate_bad_input_is_a_clear_error_and_writes_nothing(tiny_sd15_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "bad.png"
    rc = main(["generate", "x", "--model", str(tiny_sd15_dir), *extra, "--out", str(out)])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_generate_without_model(tmp_path, capsys, monkeypatch):
    from megbed.testbed import assets

    monkeypatch.setattr(assets, "default_model_dir", lambda: tmp_path / "none")
    assert main(["generate", "x", "--out", str(tmp_path / "a.png")]) == 2
    assert "no --model given" in capsys.readouterr().err
    assert main(["generate", "x", "--model", str(tmp_path), "--out", str(tmp_path / "a.png")]) == 2
    assert "not a diffusers model folder" in capsys.readouterr().err
    assert main(["generate", "x", "--model", str(tmp_path), "--out", str(tmp_path / "a.jpg")]) == 2
    assert "*.png" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["global", "window"])
def test_generate_merge_method_flag(tiny_sd15_dir, tmp_path, capsys, method):
    out = tmp_path / "img.png"
    rc = main(["generate", "a green cone", "--model", str(tiny_sd15_dir), "--steps", "2", "--merge", "0.5",
               "--merge-method", method, "--height", "64", "--width", "64", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and f"beta=0.5 ({method})" in text
    assert ("merge.dst" in text) == (method == "global")
    with pytest.raises(SystemExit):
        main(["generate", "x", "--merge-method", "nearest"])


def test_generate_decoder_takes_the_node_s_names(tiny_sd15_dir, tmp_path, capsys):
    """--decoder base|distilled|auto|FOLDER as `megbed node ue --decoder`; --ue-decoder is its old spelling."""
    out = tmp_path / "d.png"
    base = ["generate", "x", "--model", str(tiny_sd15_dir), "--n-steps", "2", "--out", str(out)]
    assert main([*base, "--decoder", "base"]) == 0 and out.is_file()
    out.unlink()
    for flag in ("--decoder", "--ue-decoder"):
        assert main([*base, flag, "auto"]) == 2  # the tiny model has no distilled decoder to gate with
        err = capsys.readouterr().err
        assert "distilled" in err and "no config.json" not in err
    assert not out.exists()
