"""Config validation: every problem named with its key path and the value found."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from controller.config import (
    EX_CONFIG,
    ConfigError,
    HashgovConfig,
    MinerConfig,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "hashgov.example.toml"


def example_data() -> dict:
    return tomllib.loads(EXAMPLE.read_text())


def problems_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return [str(p) for p in info.value.problems]


def test_example_config_is_valid_and_documents_every_key() -> None:
    config = load_config(EXAMPLE)
    assert config.site.grant_cap_watts == 40_000
    assert len(config.fleet.miners) == 10
    # every field of every section appears in the example, so the example documents them all
    text = EXAMPLE.read_text()
    for section in (config.site, config.mqtt, config.fleet, config.metrics, config.logging):
        for field in type(section).model_fields:
            assert f"{field}" in text, f"{type(section).__name__}.{field} undocumented"


def test_typo_negative_margin_and_inverted_range_are_all_named() -> None:
    data = example_data()
    data["site"]["grant_cap_kww"] = 5  # typo
    data["site"]["safety_margin_kw"] = -1.0
    data["fleet"]["models"][0]["power_range"] = {"min_watts": 3000, "max_watts": 1100}
    found = problems_of(data)
    assert any(p.startswith("site.grant_cap_kww: unknown key") for p in found), found
    assert any(p.startswith("site.safety_margin_kw:") and "found: -1.0" in p for p in found), found
    assert any(
        p.startswith("fleet.models[0].power_range:") and "min_watts (3000)" in p for p in found
    ), found


def test_missing_surplus_stream_is_explained() -> None:
    data = example_data()
    del data["mqtt"]["streams"]["surplus"]
    found = problems_of(data)
    assert any("surplus" in p and p.startswith("mqtt:") for p in found), found


def test_split_plant_streams_are_accepted() -> None:
    data = example_data()
    del data["mqtt"]["streams"]["surplus"]
    data["mqtt"]["streams"]["out"] = {"kind": "plant_output", "topic": "plant/out", "unit": "MW"}
    data["mqtt"]["streams"]["dem"] = {"kind": "plant_demand", "topic": "plant/demand", "unit": "MW"}
    config = parse_config(data)
    assert config.mqtt.streams["out"].watts_per_unit == 1_000_000


def test_json_stream_needs_value_path() -> None:
    data = example_data()
    del data["mqtt"]["streams"]["surplus"]["value_path"]
    assert any("value_path" in p for p in problems_of(data))


def test_non_concave_curve_is_rejected() -> None:
    data = example_data()
    data["fleet"]["models"][0]["hashrate_curve"] = [[1100, 20], [2000, 30], [3050, 100]]
    assert any("concave" in p for p in problems_of(data))


def test_profiles_and_range_are_exclusive() -> None:
    data = example_data()
    data["fleet"]["models"][0]["profiles_watts"] = [1100, 2000]
    assert any("exactly one of power_range or profiles_watts" in p for p in problems_of(data))


def test_unknown_model_and_duplicate_address_are_named() -> None:
    data = example_data()
    data["fleet"]["miners"][1]["model"] = "Antminer Z9000"
    data["fleet"]["miners"][2]["address"] = data["fleet"]["miners"][0]["address"]
    found = " ".join(problems_of(data))
    assert "Antminer Z9000" in found
    assert "127.1.0.1 used twice" in found


def test_miner_address_must_be_an_ip_literal() -> None:
    data = example_data()
    data["fleet"]["miners"][0]["address"] = "miner-01.local"
    assert any(
        p.startswith("fleet.miners[0].address:") and "miner-01.local" in p
        for p in problems_of(data)
    )


def test_builtin_catalogue_fills_in_unlisted_models() -> None:
    config = load_config(EXAMPLE)
    s21 = next(m for m in config.fleet.miners if m.model == "Antminer S21")
    model = config.fleet.model_for(s21)
    assert model.nameplate_watts == 3500
    assert model.targets_watts[0] == 1800


def test_targets_follow_range_step_and_profiles() -> None:
    config = load_config(EXAMPLE)
    braiins = config.fleet.model_for(
        MinerConfig(address="10.0.0.1", model="Antminer S19j Pro", firmware="braiins")
    )
    luxos = config.fleet.model_for(
        MinerConfig(address="10.0.0.2", model="Antminer S19j Pro", firmware="luxos")
    )
    assert braiins.targets_watts[:3] == (1100, 1200, 1300)
    assert braiins.targets_watts[-1] == 3000
    assert luxos.targets_watts == (1100, 1500, 2000, 2500, 3050)
    # interpolation on the curve, clamped at the top
    assert luxos.hashrate_ths_at(1750) == pytest.approx(72.0)
    assert luxos.hashrate_ths_at(5000) == pytest.approx(104.0)


def test_inventory_file_is_merged_and_its_errors_name_the_file(tmp_path: Path) -> None:
    inv = tmp_path / "inv.toml"
    inv.write_text(
        '[[miners]]\naddress = "127.9.0.1"\nmodel = "Antminer S21"\nfirmware = "braiins"\n'
    )
    data = example_data()
    data["fleet"]["inventory_files"] = ["inv.toml"]
    config = parse_config(data, base_dir=tmp_path)
    assert config.fleet.miners[-1].address == "127.9.0.1"

    inv.write_text('[[miners]]\naddress = "127.9.0.1"\nmodle = "x"\n')
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=tmp_path)
    assert any("modle" in str(p) for p in info.value.problems)


def test_missing_file_and_bad_syntax_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="problem"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[site\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.problems[0].location == "(syntax)"


def test_fail_safe_above_cap_is_rejected() -> None:
    data = example_data()
    data["site"]["fail_safe_budget_kw"] = 1000.0
    assert any("fail_safe_budget_kw" in p for p in problems_of(data))


def test_an_absurd_grant_cap_is_named_not_turned_into_infinite_watts() -> None:
    # found by the config fuzz: 1.8e305 kW is a finite float, but ×1000 is inf
    data = example_data()
    data["site"]["grant_cap_kw"] = 1.797693134862316e305
    assert any("grant_cap_kw" in p for p in problems_of(data))
    data["site"]["grant_cap_kw"] = 2_000.0
    data["site"]["hysteresis_kw"] = 1e300
    assert any("hysteresis_kw" in p for p in problems_of(data))


def test_models_are_frozen() -> None:
    config = load_config(EXAMPLE)
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError on frozen set
        config.site.grant_cap_kw = 1.0  # type: ignore[misc]
    assert isinstance(config, HashgovConfig)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_check_config_cli_ok_and_summary() -> None:
    result = run_cli("check-config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "OK"
    assert "10 miners" in result.stdout


def test_check_config_cli_lists_all_problems_and_exits_78(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    text = text.replace("grant_cap_kw = 40.0", "grant_cap_kww = 40.0")
    text = text.replace("safety_margin_kw = 1.0", "safety_margin_kw = -1.0")
    text = text.replace(
        "power_range = { min_watts = 1100, max_watts = 3000, step_watts = 100 }",
        "power_range = { min_watts = 3100, max_watts = 3000, step_watts = 100 }",
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    result = run_cli("check-config", str(bad))
    assert result.returncode == EX_CONFIG
    err = result.stderr
    assert "site.grant_cap_kww: unknown key" in err
    assert "site.safety_margin_kw" in err and "-1.0" in err
    assert "fleet.models[0].power_range: min_watts (3100) must not exceed max_watts (3000)" in err
    assert "Traceback" not in err


def test_keeping_grpc_connections_is_on_unless_the_config_turns_it_off() -> None:
    from drivers.pyasic_driver import DriverSettings

    data = example_data()
    data["fleet"].pop("keep_grpc_connections", None)
    assert DriverSettings.from_fleet(parse_config(data).fleet).keep_grpc_connections is True
    data["fleet"]["keep_grpc_connections"] = False
    assert DriverSettings.from_fleet(parse_config(data).fleet).keep_grpc_connections is False
    data["fleet"]["keep_grpc_connections"] = "sometimes"
    found = problems_of(data)
    assert any(p.startswith("fleet.keep_grpc_connections:") for p in found), found


def test_detail_interval_sets_how_many_reads_apart_detail_reads_are() -> None:
    from drivers.pyasic_driver import DriverSettings

    data = example_data()
    data["fleet"]["poll_interval_seconds"] = 10.0
    data["fleet"]["detail_interval_seconds"] = 300.0
    assert DriverSettings.from_fleet(parse_config(data).fleet).detail_every_reads == 30
    data["fleet"]["detail_interval_seconds"] = 1.0  # shorter than a poll: every read
    assert DriverSettings.from_fleet(parse_config(data).fleet).detail_every_reads == 1
    data["fleet"]["detail_interval_seconds"] = 0
    found = problems_of(data)
    assert any(p.startswith("fleet.detail_interval_seconds:") for p in found), found
