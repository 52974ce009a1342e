"""``megbed distill train|precompute``: the recipe flags are derived from the recipe's fields, one for each."""

from __future__ import annotations

import argparse
import re

import pytest

from megbed.testbed.cli import distill as cli
from megbed.testbed.cli.main import build_parser
from megbed.testbed.distill.config import DistillConfig, NoiseConfig


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser("distill").parse_args(["distill", "train", "--run", "r", *argv])


def test_every_recipe_setting_has_a_flag_and_a_description():
    flags = cli._recipe_flags()
    reached = {("r", name) for _, (section, name, _) in flags.items() if section == "r"} | {("r", "noise")}
    reached |= {("n", name) for _, (section, name, _) in flags.items() if section == "n"}
    reached |= {("n", name) for lo, hi, _ in cli._NOISE_RANGES.values() for name in (lo, hi)} | {("n", "link")}
    settings = {("r", name) for name in DistillConfig.model_fields} | {("n", name) for name in NoiseConfig.model_fields}
    assert reached == settings
    for model in (DistillConfig, NoiseConfig):
        assert all(field.description for field in model.model_fields.values()), model.__name__
        assert all(field.get("description") for field in model.model_json_schema()["properties"].values())
    helped = _train_help()
    for flag in [*flags, *cli._NOISE_RANGES, "--link-config"]:
        assert re.search(rf"^  {flag}\b", helped, re.MULTILINE), flag


def _train_help() -> str:
    parser = build_parser("distill")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["distill"]
    train = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    return train.format_help()


def test_unset_flags_keep_the_recipe_and_set_flags_change_only_their_setting():
    assert cli._recipe(_parse(), None) == DistillConfig()
    cfg = cli._recipe(_parse("--guidance", "7.5", "--tome-es", "0.25", "--n-min", "2", "--n-ref", "14",
                             "--betas-adam", "0.8", "0.99", "--merge-method", "window", "--keep-checkpoints", "3",
                             "--gradient-checkpointing", "--noise", "sigma", "--sigma-range", "0.1", "0.2",
                             "--clean-fraction", "0.5"), None)
    expected = DistillConfig().replace(guidance_scale=7.5, tome_ratio_es=0.25, n_min=2, n_ref=14,
                                       betas_adam=(0.8, 0.99), merge_method="window", keep_checkpoints=3,
                                       gradient_checkpointing=True,
                                       noise={"kind": "sigma", "sigma_min": 0.1, "sigma_max": 0.2,
                                              "clean_fraction": 0.5})
    assert cfg == expected


def test_a_saved_recipe_is_the_starting_point(tmp_path):
    saved = DistillConfig(steps=7, noise=NoiseConfig(kind="none"))
    (tmp_path / "config.json").write_text(saved.to_json())
    assert cli._recipe(_parse(), tmp_path) == saved
    assert cli._recipe(_parse("--steps", "9"), tmp_path) == saved.replace(steps=9)


@pytest.mark.parametrize("argv", [["--amp", "fp32"], ["--steps", "many"], ["--betas-adam", "0.9"]])
def test_a_malformed_flag_is_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit):
        _parse(*argv)
    assert argv[0] in capsys.readouterr().err
