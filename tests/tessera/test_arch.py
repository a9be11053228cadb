import json

import pytest

from tessera.arch import PRESETS, ConfigError, NpuConfig, get_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_json_round_trip(name):
    cfg = PRESETS[name]
    back = NpuConfig.from_json(cfg.to_json())
    assert back == cfg
    assert back.hash() == cfg.hash()


def test_hash_is_stable_and_ignores_name():
    cfg = PRESETS["sim"]
    # The hash goes into program files and Verilog: equal hardware must hash equal across round trips.
    assert cfg.hash() == NpuConfig.from_dict(json.loads(cfg.to_json())).hash()
    assert cfg.replace(name="renamed", notes="x").hash() == cfg.hash()
    assert cfg.replace(rows=32).hash() != cfg.hash()
    assert len(cfg.hash()) == 16 and int(cfg.hash(), 16) >= 0


def test_presets_are_distinct_hardware():
    hashes = {c.hash() for c in PRESETS.values()}
    assert len(hashes) == len(PRESETS)


@pytest.mark.parametrize("changes, field", [
    ({"lanes": 12}, "lanes"), ({"rows": 8, "lanes": 16}, "rows"), ({"weight_bits": 3}, "weight_bits"),
    ({"act_bits": 4}, "act_bits"), ({"abuf_words": 0}, "abuf_words"), ({"bus_bytes": 24}, "bus_bytes"),
    ({"token_depth": 0}, "token_depth"),
])
def test_config_rejects_inconsistent_values(changes, field):
    with pytest.raises(ConfigError, match=field):
        PRESETS["sim"].replace(**changes)


def test_config_core_is_parallel_or_sequential_with_a_word_bus():
    assert PRESETS["sim"].core == "parallel" and PRESETS["icebreaker"].core == "sequential"
    with pytest.raises(ConfigError, match="core='gpu' must be one of parallel, sequential"):
        PRESETS["sim"].replace(core="gpu")
    with pytest.raises(ConfigError, match="needs bus_bytes=4"):
        PRESETS["sim"].replace(core="sequential")
    # A later field: configs that leave it at its default keep the hash they had before it existed.
    assert PRESETS["sim"].hash() == "44e2f1cd58af74f9"
    assert PRESETS["icebreaker"].hash() != PRESETS["icebreaker"].replace(core="parallel").hash()


def test_config_rejects_unknown_json_field():
    d = PRESETS["sim"].to_dict()
    d["bogus"] = 1
    with pytest.raises(ConfigError, match="bogus"):
        NpuConfig.from_dict(d)


def test_get_config_names_presets_and_files(tmp_path):
    assert get_config("arria10") is PRESETS["arria10"]
    p = tmp_path / "c.json"
    p.write_text(PRESETS["sim"].replace(name="mine").to_json())
    assert get_config(str(p)).name == "mine"
    with pytest.raises(ConfigError, match="unknown config"):
        get_config("nope")


def test_word_sizes_follow_lanes_rows_and_weight_bits():
    cfg = NpuConfig(lanes=16, rows=32, weight_bits=4)
    assert cfg.macs_per_cycle == 512
    assert cfg.act_word_bytes == 16
    assert cfg.wgt_word_bytes == 16 * 32 // 2
    assert cfg.acc_word_bytes == 128
    assert cfg.words_per_block == 2
