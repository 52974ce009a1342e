from __future__ import annotations

import re
from pathlib import Path

import pytest

from megbed.firmware_profiles import ProfileError, list_profiles, load_profile

REQUIRED = {
    "rtx4090", "a100", "h100", "jetson_orin_nano_7w", "jetson_orin_nano_15w", "jetson_orin_nano_maxn",
    "jetson_agx_orin_30w", "jetson_agx_orin_50w", "jetson_agx_orin_maxn", "jetson_xavier_nx", "jetson_nano",
    "rpi5", "rpi4", "generic_cpu",
}


def test_every_bundled_profile_loads_and_is_complete():
    names = set(list_profiles())
    assert REQUIRED <= names
    for name in names:
        p = load_profile(name)
        assert p.name == name and p.probes.order and p.power_model, name
        assert p.probes.order[-1] == "modeled", f"{name}: the modeled fallback must come last"
        for check in p.verify:
            assert (check.cmd is None) != (check.path is None), name
            if check.pattern:
                assert re.compile(check.pattern).groups >= 1
        d = p.to_dict()
        assert d["name"] == name and isinstance(d["verify"], list)


@pytest.mark.parametrize("name, total, subrails", [
    ("jetson_orin_nano_15w", ["VDD_IN"], ["VDD_CPU_GPU_CV", "VDD_SOC"]),
    ("jetson_xavier_nx", ["VDD_IN"], ["VDD_CPU_GPU_CV", "VDD_SOC"]),
    ("jetson_nano", ["POM_5V_IN"], ["POM_5V_GPU", "POM_5V_CPU"]),
    ("jetson_agx_orin_50w", ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"], []),
])
def test_rail_maps_name_the_board_total(name, total, subrails):
    p = load_profile(name)
    assert p.total_rails == total
    assert [r.label for r in p.rails if not r.total] == subrails
    if name.startswith("jetson_agx"):
        addr = {r.label: r.address for r in p.rails}
        assert addr["VDDQ_VDD2_1V8AO"] == "0x41" and addr["VDD_GPU_SOC"] == "0x40"


def test_settings_commands_and_expected_values_for_verify():
    nano = load_profile("jetson_orin_nano_maxn")
    assert nano.settings["nvpmodel"]["name"] == "MAXN_SUPER"
    assert [c.cmd for c in nano.apply] == [("nvpmodel", "-m", "2"), ("jetson_clocks",)]
    assert {c.setting for c in nano.verify} >= {"nvpmodel.name", "nvpmodel.id", "cpu.max_mhz", "gpu.max_mhz"}
    h100 = load_profile("h100")
    assert h100.settings["gpu"]["power_limit_w"] == 700.0
    assert ("nvidia-smi", "-i", "0", "-pl", "700") in [c.cmd for c in h100.apply]
    assert h100.probes.extra == ("rapl",)
    rtx = load_profile("rtx4090")
    assert any("-lgc" in c.cmd for c in rtx.apply)
    pi = load_profile("rpi5")
    assert pi.settings["cpu"]["governor"] == "performance" and pi.settings["cpu"]["max_mhz"] == 2400.0
    gov = [c for c in pi.verify if c.setting == "cpu.governor"][0]
    assert gov.path.endswith("scaling_governor") and gov.expect == "performance"


def test_aliases_and_paths():
    assert load_profile("jetson_orin_nano").name == "jetson_orin_nano_15w"
    path = Path(load_profile("rpi5").path)
    assert load_profile(path).name == "rpi5"
    with pytest.raises(ProfileError, match="no firmware profile named 'no_such_board'.*generic_cpu"):
        load_profile("no_such_board")


def _write(tmp_path, text):
    p = tmp_path / "mine.toml"
    p.write_text(text)
    return p


GOOD = '''
name = "mine"
kind = "jetson"
board = "test"
[probes]
order = ["jetson_ina3221", "modeled"]
[[rails]]
label = "VDD_IN"
total = true
[power_model.cpu]
idle_w = 1.0
active_w = 2.0
source = "cpu_time"
'''


def test_errors_name_the_bad_key(tmp_path):
    assert load_profile(_write(tmp_path, GOOD)).name == "mine"
    cases = {
        GOOD.replace("total = true", "total = true\nadress = \"0x40\""): "rails[0].adress: unknown key",
        GOOD.replace('"jetson_ina3221", ', '"jetson_ina3221", "zeus", '): "probes.order[1]: unknown backend 'zeus'",
        GOOD.replace("active_w = 2.0", "active_w = 0.5"): "power_model.cpu: needs 0 <= idle_w <= active_w",
        GOOD.replace("total = true", "total = \"yes\""): "rails[0].total: must be true or false",
        GOOD.replace('kind = "jetson"', 'kind = "phone"'): "kind: must be one of",
        GOOD.replace('source = "cpu_time"', 'source = "gpu_util"'): "power_model.cpu.source",
        GOOD + '\n[[verify]]\nsetting = "x"\nexpect = 1\n': "verify[0]: needs exactly one of cmd or path",
        GOOD + '\n[cpu]\ngovernour = "performance"\n': "cpu.governour: unknown key",
        GOOD.replace('order = ["jetson_ina3221", "modeled"]', 'order = ["jetson_ina3221"]').replace(
            "total = true", "total = false"): "no rail is marked total",
    }
    for text, message in cases.items():
        with pytest.raises(ProfileError) as info:
            load_profile(_write(tmp_path, text))
        assert message in str(info.value), (message, str(info.value))
        assert "mine.toml" in str(info.value)
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(_write(tmp_path, "name = \n"))
