"""The CLI fed inputs nobody designed: random bytes and random YAML-ish text as the spec, huge numbers, and a wrong
value of every type in every spec field. Each run must end in exit code 0 or 2 with a bounded ``megbed: error:``
message -- never an exception, a traceback or a flood of output."""

from __future__ import annotations

import random

import pytest
import yaml

from megbed.testbed.campaign.spec import IMAGE_KEYS, TOP_KEYS
from megbed.testbed.cli.main import main

BASE = {
    "name": "t", "model": "model", "prompts": ["a cat"], "seeds": [0],
    "image": {"height_px": 64, "width_px": 64}, "schemes": ["meg"],
    "grid": {"n_steps": [2], "merge_ratio": [0.0], "distance_m": [200]},
}
# Values of every kind a hand-edited or hostile spec may hold, by type.
WEIRD_BY_TYPE = {
    "null": [None], "bool": [True, False], "int": [-1, 0, 10**400, -(10**400), 2**63],
    "float": [1e308, float("inf"), float("nan"), 1.5, -0.0],
    "str": ["", "x", "../../../etc", "/", "\x00\x01", "é" * 50, "z" * 5000],
    "list": [[], [None], [[1, [2, [3]]]], list(range(500))],
    "map": [{}, {"a": {"b": {"c": 1}}}, {"es": 1, "ue": [2]}, {1: 2}],
}
WEIRD = [v for values in WEIRD_BY_TYPE.values() for v in values]
NESTED = {"image": sorted(IMAGE_KEYS), "grid": ["n_steps", "es_steps", "merge_ratio", "distance_m", "snr_db",
                                                "link_model", "tx_mode", "decoder"],
          "timeouts": ["request_s", "heartbeat_s", "dead_after_s"], "order": ["randomize", "seed"],
          "device": ["es", "ue"], "nodes": ["es", "ue", "channel_pub"], "profiles": ["es", "ue"],
          "curve": ["keys_dir"], "reference": ["n_steps"]}
MAX_ERROR_CHARS = 20000  # every problem listed, each value cut short: never megabytes


def check_cleanly(capsys, path) -> tuple[int, str]:
    rc = main(["campaign", "check", str(path)])
    out, err = capsys.readouterr()
    assert rc in (0, 2), (rc, err[:500])
    assert "Traceback" not in err and len(err) < MAX_ERROR_CHARS
    if rc == 2:
        assert err.startswith("megbed: error: "), err[:500]
    return rc, err


@pytest.fixture
def spec_dir(tmp_path, fake_model):
    return tmp_path


def test_random_bytes_as_the_spec(capsys, spec_dir):
    rng = random.Random(20)
    path = spec_dir / "c.yaml"
    for _ in range(80):
        path.write_bytes(rng.randbytes(rng.choice([0, 1, 7, 64, 512, 4096])))
        check_cleanly(capsys, path)


def test_random_yaml_like_text_as_the_spec(capsys, spec_dir):
    rng = random.Random(21)
    alphabet = list("[]{}:,-&*!|>'\"#%@?\n\n   \t") + ["a", "b", "1", "0.5", "e9", "~", "null", "true", "<<",
                                                    "&x ", "*x", "!!str ", "!!python/object ", "---", "..."]
    path = spec_dir / "c.yaml"
    for _ in range(120):
        path.write_text("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 200))))
        check_cleanly(capsys, path)


def test_valid_spec_mutated_line_by_line(capsys, spec_dir):
    rng = random.Random(22)
    lines = yaml.safe_dump(BASE, sort_keys=False).splitlines()
    path = spec_dir / "c.yaml"
    for _ in range(100):
        mutated = list(lines)
        i = rng.randrange(len(mutated))
        op = rng.choice(["drop", "dup", "swap", "cut", "indent"])
        if op == "drop":
            del mutated[i]
        elif op == "dup":
            mutated.insert(i, mutated[i])
        elif op == "swap":
            j = rng.randrange(len(mutated))
            mutated[i], mutated[j] = mutated[j], mutated[i]
        elif op == "cut":
            mutated[i] = mutated[i][: rng.randrange(len(mutated[i]) + 1)]
        else:
            mutated[i] = " " * rng.randint(1, 5) + mutated[i]
        path.write_text("\n".join(mutated) + "\n")
        check_cleanly(capsys, path)


def _fields():
    yield from ((key, None) for key in sorted(TOP_KEYS))
    yield from ((key, sub) for key, subs in NESTED.items() for sub in subs)


def test_a_wrong_type_in_every_field(capsys, spec_dir):
    """Every field gets a value of every type (which one of the type's values: seeded)."""
    rng = random.Random(23)
    path = spec_dir / "c.yaml"
    assert check_cleanly(capsys, _write(path, BASE))[0] == 0
    refused = tried = 0
    for key, sub in _fields():
        for values in WEIRD_BY_TYPE.values():
            value = rng.choice(values)
            if sub is None:
                spec = {**BASE, key: value}
                if key == "prompts_file":
                    spec.pop("prompts")
            else:
                inner = dict(BASE[key]) if isinstance(BASE.get(key), dict) else {}
                spec = {**BASE, key: {**inner, sub: value}}
            refused += check_cleanly(capsys, _write(path, spec))[0] == 2
            tried += 1
    assert refused > 0.8 * tried


@pytest.mark.slow
def test_every_wrong_value_in_every_field(capsys, spec_dir):
    path = spec_dir / "c.yaml"
    assert check_cleanly(capsys, _write(path, BASE))[0] == 0
    refused = 0
    for key in sorted(TOP_KEYS):
        for value in WEIRD:
            spec = {**BASE, key: value}
            if key == "prompts_file":
                spec.pop("prompts")
            refused += check_cleanly(capsys, _write(path, spec))[0] == 2
    for key, subkeys in NESTED.items():
        for sub in subkeys:
            for value in WEIRD:
                inner = dict(BASE.get(key) or {}) if isinstance(BASE.get(key), dict) else {}
                refused += check_cleanly(capsys, _write(path, {**BASE, key: {**inner, sub: value}}))[0] == 2
    assert refused > 0.8 * (len(TOP_KEYS) + sum(map(len, NESTED.values()))) * len(WEIRD)


@pytest.mark.parametrize("text", [
    "seeds: [" + "9" * 5000 + "]",  # over Python's int-string limit
    "seeds: [1e99999]",
    "image: {height_px: " + "1" * 400 + "}",
    "when: 2001-13-45",
    "a: " + "[" * 5000 + "]" * 5000,  # nested deeper than the parser recurses
    "a: !!python/object/apply:os.system ['true']",
    "a: !!binary ====",
])
def test_hostile_scalars_and_structures(capsys, spec_dir, text):
    path = spec_dir / "c.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in BASE.items() if k not in text.split(":")[0]}) + text + "\n")
    rc, err = check_cleanly(capsys, path)
    assert rc == 2 and err.count("\n") <= 3


def test_hostile_spec_fails_campaign_run_before_anything_is_written(capsys, spec_dir):
    path = spec_dir / "c.yaml"
    out = spec_dir / "out"
    for text in ("seeds: [" + "9" * 5000 + "]\n", "\xff", "[1, 2"):
        path.write_text(text, encoding="latin-1")
        rc = main(["campaign", "run", str(path), "--out", str(out), "--engine", "synthetic", "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err and err.startswith("megbed: error: ")
        assert not out.exists()


def _write(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path
