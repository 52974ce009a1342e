"""megbed.megwire.safe_yaml: the project's one YAML loader (campaign specs, link configs, channel configs)."""

from __future__ import annotations

import pytest
from campaign_helpers import alias_bomb

from megbed.channel_emu.config import LinkConfigError
from megbed.channel_emu.config import load as load_link_config
from megbed.megwire.safe_yaml import MAX_YAML_BYTES, YamlError, load_yaml_file, load_yaml_text, read_text_file


def test_ordinary_documents_load_as_safe_load_would():
    text = "a: 1\nb: [x, {c: 2.5}]\nd: &d {e: null}\nf: *d\ng:\n  <<: *d\n  h: true\n"
    data = load_yaml_text(text)
    assert data == {"a": 1, "b": ["x", {"c": 2.5}], "d": {"e": None}, "f": {"e": None}, "g": {"e": None, "h": True}}


def test_a_merge_key_may_be_overridden_explicitly():
    assert load_yaml_text("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n")["c"] == {"x": 3, "y": 2}


@pytest.mark.parametrize(("text", "message"), [
    ("a: 1\nb: 2\na: 3\n", "line 3, column 1: duplicate key 'a' (first on line 1)"),
    ("m: {k: 1, k: 2}\n", "duplicate key 'k'"),
    ("1: x\n1: y\n", "duplicate key 1"),
    (alias_bomb(), "expands to more than"),
    ("a: &a [*a]\n", "recursive alias"),
    ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    ("a: " + "7" * 5000 + "\n", "digits"),
    ("a: !!python/object/apply:os.system [id]\n", "could not determine a constructor"),
    ("a: [1, 2\n", "line 2"),
    ("a: \x07\n", "character #x0007"),
])
def test_bad_documents_are_one_line_errors(text, message):
    with pytest.raises(YamlError) as info:
        load_yaml_text(text, "spec.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("spec.yaml: ")


def test_the_node_limit_is_adjustable():
    doc = "a: [" + ", ".join(["1"] * 50) + "]\n"
    assert len(load_yaml_text(doc)["a"]) == 50
    with pytest.raises(YamlError, match="more than 20 nodes"):
        load_yaml_text(doc, max_nodes=20)


def test_files_are_checked_before_parsing(tmp_path):
    with pytest.raises(YamlError, match="is a directory"):
        load_yaml_file(tmp_path)
    with pytest.raises(YamlError, match="does not exist"):
        load_yaml_file(tmp_path / "nope.yaml")
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * 2000 + "\n")
    with pytest.raises(YamlError, match="larger than 1000 bytes"):
        load_yaml_file(big, max_bytes=1000)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"a: caf\xe9\n")
    with pytest.raises(YamlError, match=r"not UTF-8 text \(byte 0xe9 at offset 6\)"):
        load_yaml_file(latin)


def test_link_configs_load_through_it(tmp_path):
    good = tmp_path / "link.yaml"
    good.write_text("mode: analog\n")
    try:
        load_link_config(good)
    except LinkConfigError as exc:  # a schema problem is fine here; parsing is what is tested
        assert "cannot parse" not in str(exc)
    dup = tmp_path / "dup.yaml"
    dup.write_text("mode: analog\nmode: coded\n")
    with pytest.raises(LinkConfigError, match="duplicate key 'mode'"):
        load_link_config(dup)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    with pytest.raises(LinkConfigError, match="expands to more than"):
        load_link_config(bomb)
    with pytest.raises(LinkConfigError, match="is a directory"):
        load_link_config(tmp_path)


@pytest.mark.parametrize("suffix", [".yaml", ".toml", ".json"])
def test_link_config_files_pass_the_same_guards_whatever_the_format(tmp_path, suffix):
    latin = tmp_path / f"latin{suffix}"
    latin.write_bytes(b"a = \"caf\xe9\"\n")
    with pytest.raises(LinkConfigError, match=r"not UTF-8 text \(byte 0xe9 at offset 8\)"):
        load_link_config(latin)
    with pytest.raises(LinkConfigError, match="does not exist"):
        load_link_config(tmp_path / f"nope{suffix}")
    big = tmp_path / f"big{suffix}"
    big.write_bytes(b" " * (MAX_YAML_BYTES + 1))
    with pytest.raises(LinkConfigError, match="larger than"):
        load_link_config(big)


def test_the_file_guards_raise_the_callers_error_type(tmp_path):
    class OwnError(ValueError):
        pass

    with pytest.raises(OwnError, match="is a directory, not a recipe file"):
        read_text_file(tmp_path, kind="recipe file", error=OwnError)
    (tmp_path / "ok.txt").write_text("caf\u00e9\n", encoding="utf-8")
    assert read_text_file(tmp_path / "ok.txt", kind="recipe file", error=OwnError) == "caf\u00e9\n"


def test_no_other_yaml_loader_in_the_project():
    """Every YAML the project reads goes through megbed.megwire.safe_yaml (grep for the alternatives)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    offenders = []
    for folder in ("megwire", "measurements", "channel_emu", "analysis", "firmware_profiles", "testbed",
                   "benchmarks", "scripts"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if path.name != "safe_yaml.py" and any(f"yaml.{fn}(" in text for fn in
                                                   ("safe_load", "load", "unsafe_load", "full_load", "load_all",
                                                    "safe_load_all")):
                offenders.append(str(path.relative_to(root)))
    assert offenders == []
