"""Gateway configuration: defaults, unknown keys, types, threshold order, file errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.config import (
    Config,
    ConfigError,
    Problem,
    Thresholds,
    default_gateway_id,
    load_config,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "gateway.toml"
MINIMAL: dict[str, Any] = {"serial": {"port": "/dev/ttyACM0"}}


def with_(**sections: Any) -> dict[str, Any]:
    """The minimal config plus some sections (``serial`` is merged, not replaced)."""
    data: dict[str, Any] = {"serial": dict(MINIMAL["serial"])}
    for name, section in sections.items():
        if name == "serial":
            data["serial"].update(section)
        else:
            data[name] = section
    return data


def problems_of(data: dict[str, Any], source: str = "gw.toml") -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source)
    assert info.value.source == source
    assert info.value.problems, "a ConfigError must say what is wrong"
    return info.value.problems


def keys_of(data: dict[str, Any]) -> list[str]:
    return [p.key for p in problems_of(data)]


def write(tmp_path: Path, text: str | bytes, name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


# --- the example file and defaults -------------------------------------------------


def test_example_config_loads() -> None:
    if not EXAMPLE.is_file():
        pytest.skip(f"{EXAMPLE} does not exist yet")
    config = load_config(EXAMPLE)
    assert isinstance(config, Config)
    assert config.serial.port


def test_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.gateway.id == default_gateway_id()
    assert config.gateway.state_dir == Path("/var/lib/pumpgw")
    assert config.serial.port == "/dev/ttyACM0"
    assert config.serial.baudrate == 115200
    assert config.serial.poll_interval_s == 60
    assert config.serial.link_timeout_s == 30.0
    assert config.mqtt.host == "localhost"
    assert config.mqtt.port == 1883
    assert config.mqtt.topic_prefix == "pumpgw"
    assert config.mqtt.username is None
    assert config.mqtt.password_file is None
    assert config.mqtt.tls is False
    assert config.mqtt.ca_file is None
    assert config.mqtt.cert_file is None
    assert config.mqtt.key_file is None
    assert config.mqtt.keepalive_s == 30
    assert config.mqtt.info_interval_s == 10.0
    assert config.client_id == f"pumpgw-{config.gateway.id}"
    assert config.homeassistant.enabled is False
    assert config.homeassistant.discovery_prefix == "homeassistant"
    assert config.thresholds.model_dump() == {
        "reservoir_warning_ml": 5.0,
        "reservoir_critical_ml": 2.0,
        "reservoir_hysteresis_ml": 0.5,
        "battery_warning_pct": 25,
        "battery_critical_pct": 10,
        "battery_hysteresis_pct": 3,
        "telemetry_timeout_s": 180,
        "data_invalid_clear_readings": 3,
        "refill_warning_days": 7.0,
        "refill_critical_days": 2.0,
        "refill_hysteresis_days": 0.5,
        "flow_deviation_pct": 15.0,
        "flow_hysteresis_pct": 5.0,
        "flow_window_h": 24.0,
        "flow_min_span_h": 12.0,
        "dose_min_mcg": 22.0,
        "dose_max_mcg": 1400.0,
        "allowed_concentrations": None,
        "renotify_critical_s": 900,
        "renotify_warning_s": 14400,
    }
    assert config.pumps == {}


def test_default_gateway_id_is_a_valid_topic_level() -> None:
    parse_config(with_(gateway={"id": default_gateway_id()}))


def test_full_config_parses() -> None:
    config = parse_config(
        {
            "gateway": {"id": "bed-12", "state_dir": "/tmp/pumpgw"},
            "serial": {
                "port": "/dev/ttyUSB0",
                "baudrate": 9600,
                "poll_interval_s": 30,
                "link_timeout_s": 12.5,
            },
            "mqtt": {
                "host": "broker.local",
                "port": 8883,
                "topic_prefix": "clinic/ward-3",
                "client_id": "gw-12",
                "keepalive_s": 60,
                "info_interval_s": 5,
            },
            "thresholds": {"reservoir_warning_ml": 6.0, "telemetry_timeout_s": 300},
            "pumps": {"PMP-0001": {"label": "Bed 12", "battery_warning_pct": 30}},
        }
    )
    assert config.gateway.id == "bed-12"
    assert config.serial.baudrate == 9600
    assert config.mqtt.topic_prefix == "clinic/ward-3"
    assert config.client_id == "gw-12"
    assert config.label_for("PMP-0001") == "Bed 12"
    assert config.label_for("PMP-0099") is None


# --- per-pump resolution ----------------------------------------------------------------


def test_thresholds_for_merges_only_what_the_pump_sets() -> None:
    config = parse_config(
        with_(
            thresholds={"reservoir_warning_ml": 6.0, "battery_warning_pct": 30},
            pumps={
                "PMP-0001": {"label": "Bed 12", "reservoir_warning_ml": 8.0},
                "PMP-0002": {"label": "label only"},
            },
        )
    )
    merged = config.thresholds_for("PMP-0001")
    assert isinstance(merged, Thresholds)
    assert merged.reservoir_warning_ml == 8.0  # the pump's own
    assert merged.battery_warning_pct == 30  # the global one, not the default 25
    assert merged.reservoir_critical_ml == 2.0
    assert config.thresholds_for("PMP-0002") == config.thresholds
    assert config.thresholds_for("PMP-UNKNOWN") == config.thresholds


# --- unknown keys -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        pytest.param({**MINIMAL, "tresholds": {}}, "tresholds", id="top-level"),
        pytest.param(with_(serial={"baud": 9600}), "serial.baud", id="serial"),
        pytest.param(with_(mqtt={"hots": "x"}), "mqtt.hots", id="mqtt"),
        pytest.param(with_(gateway={"name": "x"}), "gateway.name", id="gateway"),
        pytest.param(
            with_(thresholds={"reservoir_warn_ml": 4.0}),
            "thresholds.reservoir_warn_ml",
            id="thresholds",
        ),
        pytest.param(
            with_(pumps={"PMP-0001": {"reservoir_warnin_ml": 4.0}}),
            'pumps."PMP-0001".reservoir_warnin_ml',
            id="per-pump-dashed-id",
        ),
        pytest.param(
            with_(pumps={"PMP0001": {"lable": "Bed 1"}}),
            "pumps.PMP0001.lable",
            id="per-pump-bare-id",
        ),
    ],
)
def test_typo_is_an_error_with_its_dotted_key(data: dict[str, Any], key: str) -> None:
    problems = problems_of(data)
    assert [(p.key, p.message) for p in problems] == [(key, "unknown key")]


def test_every_problem_is_reported_at_once() -> None:
    keys = keys_of(
        {
            "serail": {"port": "x"},
            "mqtt": {"port": "not a port", "hots": "x"},
            "pumps": {"PMP-0001": {"label": "x" * 65}},
        }
    )
    assert sorted(keys) == sorted(
        ["serial", "serail", "mqtt.port", "mqtt.hots", 'pumps."PMP-0001".label']
    )


# --- missing and wrongly typed values ----------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        pytest.param({}, "serial", id="no-serial-section"),
        pytest.param({"serial": {}}, "serial.port", id="no-port"),
    ],
)
def test_required_keys(data: dict[str, Any], key: str) -> None:
    assert [(p.key, p.message) for p in problems_of(data)] == [(key, "required key is missing")]


@pytest.mark.parametrize(
    ("data", "key"),
    [
        pytest.param(with_(serial={"port": 5}), "serial.port", id="port-int"),
        pytest.param(with_(serial={"port": ""}), "serial.port", id="port-empty"),
        pytest.param(with_(serial={"baudrate": 12345}), "serial.baudrate", id="baud-odd"),
        pytest.param(with_(serial={"poll_interval_s": "often"}), "serial.poll_interval_s"),
        pytest.param(with_(serial={"poll_interval_s": 0}), "serial.poll_interval_s", id="poll-0"),
        pytest.param(with_(serial={"poll_interval_s": 1.5}), "serial.poll_interval_s"),
        pytest.param(with_(serial={"link_timeout_s": 0}), "serial.link_timeout_s"),
        pytest.param(with_(mqtt={"port": 70000}), "mqtt.port", id="mqtt-port-range"),
        pytest.param(with_(mqtt={"topic_prefix": "a/+/b"}), "mqtt.topic_prefix"),
        pytest.param(with_(mqtt={"topic_prefix": "/a"}), "mqtt.topic_prefix", id="prefix-lead"),
        pytest.param(with_(gateway={"id": "bed/12"}), "gateway.id", id="gateway-id-slash"),
        pytest.param(with_(gateway={"id": "bed#"}), "gateway.id", id="gateway-id-wildcard"),
        pytest.param(
            with_(thresholds={"reservoir_warning_ml": "low"}), "thresholds.reservoir_warning_ml"
        ),
        pytest.param(
            with_(thresholds={"battery_warning_pct": 101}), "thresholds.battery_warning_pct"
        ),
        pytest.param(
            with_(thresholds={"reservoir_critical_ml": -1}), "thresholds.reservoir_critical_ml"
        ),
        pytest.param(
            with_(thresholds={"telemetry_timeout_s": [1]}), "thresholds.telemetry_timeout_s"
        ),
        pytest.param(
            with_(thresholds={"data_invalid_clear_readings": 0}),
            "thresholds.data_invalid_clear_readings",
        ),
        pytest.param(
            with_(pumps={"PMP-0001": {"battery_warning_pct": "30%"}}),
            'pumps."PMP-0001".battery_warning_pct',
            id="per-pump-type",
        ),
        pytest.param(with_(pumps={"PMP-0001": 5}), 'pumps."PMP-0001"', id="pump-not-a-table"),
        pytest.param(with_(mqtt={"tls": "yes"}), "mqtt.tls", id="tls-str"),
        pytest.param(with_(mqtt={"tls": 1}), "mqtt.tls", id="tls-int"),
        pytest.param(with_(mqtt={"ca_file": 5}), "mqtt.ca_file", id="ca-file-int"),
        pytest.param(with_(mqtt={"username": ""}), "mqtt.username", id="username-empty"),
        pytest.param(
            with_(mqtt={"topic_prefix": "p" * 129}), "mqtt.topic_prefix", id="prefix-long"
        ),
        pytest.param(
            with_(homeassistant={"enabled": "yes"}), "homeassistant.enabled", id="ha-enabled-str"
        ),
        pytest.param(
            with_(homeassistant={"discovery_prefix": "ha/+"}),
            "homeassistant.discovery_prefix",
            id="ha-prefix-wildcard",
        ),
        pytest.param(with_(homeassistant=True), "homeassistant", id="ha-not-a-table"),
        pytest.param(with_(pumps=[]), "pumps", id="pumps-not-a-table"),
        pytest.param(with_(thresholds=5), "thresholds", id="section-not-a-table"),
    ],
)
def test_wrong_type_or_range_is_an_error(data: dict[str, Any], key: str) -> None:
    problems = problems_of(data)
    assert [p.key for p in problems] == [key]
    assert "got " in problems[0].message  # the message shows what was found


@pytest.mark.parametrize(
    ("data", "key"),
    [
        pytest.param(with_(serial={"link_timeout_s": True}), "serial.link_timeout_s", id="bool"),
        pytest.param(with_(serial={"poll_interval_s": "60"}), "serial.poll_interval_s", id="str"),
        pytest.param(
            with_(thresholds={"battery_warning_pct": True}),
            "thresholds.battery_warning_pct",
            id="bool-threshold",
        ),
    ],
)
def test_toml_type_mismatch_is_not_coerced(data: dict[str, Any], key: str) -> None:
    assert key in keys_of(data)


# --- threshold order ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("thresholds", "key"),
    [
        ({"reservoir_critical_ml": 5.0}, "thresholds.reservoir_critical_ml"),  # equal
        ({"reservoir_critical_ml": 6.0}, "thresholds.reservoir_critical_ml"),
        ({"reservoir_warning_ml": 1.0}, "thresholds.reservoir_critical_ml"),
        ({"battery_critical_pct": 25}, "thresholds.battery_critical_pct"),
        ({"battery_warning_pct": 5}, "thresholds.battery_critical_pct"),
    ],
)
def test_critical_must_be_below_warning(thresholds: dict[str, Any], key: str) -> None:
    problems = problems_of(with_(thresholds=thresholds))
    assert [p.key for p in problems] == [key]
    assert "must be below" in problems[0].message


def test_critical_just_below_warning_is_fine() -> None:
    parse_config(with_(thresholds={"reservoir_critical_ml": 4.99, "battery_critical_pct": 24}))


@pytest.mark.parametrize(
    ("pump", "key"),
    [
        # the pump's critical against the global warning
        ({"reservoir_critical_ml": 5.0}, 'pumps."PMP-0001".reservoir_critical_ml'),
        # the pump's warning against the global critical
        ({"reservoir_warning_ml": 1.5}, 'pumps."PMP-0001".reservoir_critical_ml'),
        ({"battery_warning_pct": 10}, 'pumps."PMP-0001".battery_critical_pct'),
        (
            {"battery_critical_pct": 30, "battery_warning_pct": 20},
            'pumps."PMP-0001".battery_critical_pct',
        ),
    ],
)
def test_critical_below_warning_per_pump_after_merging(pump: dict[str, Any], key: str) -> None:
    problems = problems_of(with_(pumps={"PMP-0001": pump}))
    assert [p.key for p in problems] == [key]


def test_per_pump_override_can_fix_the_order_only_together() -> None:
    # the global pair is fine, and so is the pump's after merging
    parse_config(
        with_(pumps={"PMP-0001": {"reservoir_warning_ml": 1.5, "reservoir_critical_ml": 1.0}})
    )


def test_bad_global_order_is_reported_once() -> None:
    keys = keys_of(
        with_(thresholds={"reservoir_critical_ml": 6.0}, pumps={"PMP-0001": {"label": "Bed 1"}})
    )
    assert keys == ["thresholds.reservoir_critical_ml"]


# --- pump ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pump_id",
    ["pmp-0001", "PMP_0001", "PMP 0001", "PMP-00000000000001", "", "PMP.1"],
)
def test_invalid_pump_id_keys(pump_id: str) -> None:
    problems = problems_of(with_(pumps={pump_id: {"label": "x"}}))
    assert len(problems) == 1
    shown = pump_id if re.fullmatch(r"[A-Za-z0-9_]+", pump_id) else f'"{pump_id}"'
    assert problems[0].key.startswith(f"pumps.{shown}")
    assert "[A-Z0-9-]{1,16}" in problems[0].message


def test_invalid_pump_id_key_is_a_plain_dotted_key() -> None:
    assert keys_of(with_(pumps={"pmp-1": {}})) == ['pumps."pmp-1"']


@pytest.mark.parametrize("pump_id", ["PMP-0001", "A", "0123456789ABCDEF", "X-1-2"])
def test_valid_pump_ids(pump_id: str) -> None:
    config = parse_config(with_(pumps={pump_id: {}}))
    assert pump_id in config.pumps


# --- topic levels: nothing from the config can widen a subscription or add a level ---------


@pytest.mark.parametrize("gateway_id", ["bed+12", "bed#", "+", "#", "bed/12", "/", "", "b" * 65])
def test_gateway_id_is_one_topic_level(gateway_id: str) -> None:
    assert keys_of(with_(gateway={"id": gateway_id})) == ["gateway.id"]


@pytest.mark.parametrize(
    "prefix", ["+", "#", "a/+", "a/#", "clinic+", "a//b", "a/", "/a", "", "a b", "a/\u00e9"]
)
def test_topic_prefix_has_no_wildcards_or_empty_levels(prefix: str) -> None:
    assert keys_of(with_(mqtt={"topic_prefix": prefix})) == ["mqtt.topic_prefix"]


@pytest.mark.parametrize("prefix", ["pumpgw", "clinic/ward-3", "a.b/c_d/e-f", "p" * 128])
def test_topic_prefix_may_have_several_levels(prefix: str) -> None:
    assert parse_config(with_(mqtt={"topic_prefix": prefix})).mqtt.topic_prefix == prefix


@pytest.mark.parametrize("prefix", ["#", "+", "ha/#", "a//b", "/ha", "ha/", "", "h a", "h" * 129])
def test_discovery_prefix_has_no_wildcards_or_empty_levels(prefix: str) -> None:
    problems = problems_of(with_(homeassistant={"enabled": True, "discovery_prefix": prefix}))
    assert [p.key for p in problems] == ["homeassistant.discovery_prefix"]


@pytest.mark.parametrize("prefix", ["homeassistant", "ha", "clinic/ha", "a.b/c_d-e"])
def test_discovery_prefix_may_have_several_levels(prefix: str) -> None:
    config = parse_config(with_(homeassistant={"enabled": True, "discovery_prefix": prefix}))
    assert config.homeassistant.enabled is True
    assert config.homeassistant.discovery_prefix == prefix


def test_homeassistant_typo_is_rendered_as_file_key_message() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(with_(homeassistant={"enable": True}), "gw.toml")
    assert info.value.render() == "gw.toml: homeassistant.enable: unknown key"


@pytest.mark.parametrize("pump_id", ["PMP+1", "PMP#1", "PMP/1", "+", "#"])
def test_pump_id_keys_with_topic_characters_are_refused(pump_id: str) -> None:
    (problem,) = problems_of(with_(pumps={pump_id: {}}))
    assert "[A-Z0-9-]{1,16}" in problem.message


# --- mqtt tls (the files themselves: tests/test_tls.py) --------------------------------------


def test_tls_uses_port_8883_unless_told_otherwise() -> None:
    assert parse_config(with_(mqtt={"tls": True})).mqtt.port == 8883
    assert parse_config(with_(mqtt={"tls": True, "port": 1884})).mqtt.port == 1884
    assert parse_config(with_(mqtt={"tls": False})).mqtt.port == 1883


def test_tls_file_keys_need_tls_and_files_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pem"
    problems = problems_of(with_(mqtt={"ca_file": str(missing)}))
    assert [(p.key, p.message) for p in problems] == [
        ("mqtt.ca_file", "only used with TLS: set mqtt.tls = true too")
    ]
    problems = problems_of(
        with_(mqtt={"tls": True, "ca_file": str(missing)}), "/etc/pumpgw/gateway.toml"
    )
    assert [(p.key, p.message) for p in problems] == [("mqtt.ca_file", f"no such file: {missing}")]
    with pytest.raises(ConfigError) as info:
        parse_config(with_(mqtt={"tls": True, "cert_file": str(missing)}), "gw.toml")
    assert info.value.render().splitlines() == [
        "gw.toml: mqtt.cert_file: set mqtt.key_file too (a client certificate needs its key)",
        f"gw.toml: mqtt.cert_file: no such file: {missing}",
    ]


# --- mqtt password file ---------------------------------------------------------------------


def test_password_file_must_exist_and_needs_a_username(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    problems = problems_of(with_(mqtt={"password_file": str(missing)}))
    assert [p.key for p in problems] == ["mqtt.password_file", "mqtt.password_file"]
    assert "no such file" in problems[0].message
    assert "username" in problems[1].message
    secret = write(tmp_path, "s3cret\n", "pw")
    config = parse_config(with_(mqtt={"password_file": str(secret), "username": "gw"}))
    assert config.mqtt.password_file == secret


# --- files -----------------------------------------------------------------------------------


def test_load_config_reads_toml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[gateway]\nid = "bed-12"\n\n[serial]\nport = "/dev/ttyACM0"\n\n'
        '[pumps."PMP-0001"]\nlabel = "Bed 12"\nreservoir_warning_ml = 6.0\n',
    )
    config = load_config(path)
    assert config.gateway.id == "bed-12"
    assert config.thresholds_for("PMP-0001").reservoir_warning_ml == 6.0


def test_problem_key_quotes_match_what_the_file_says(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[serial]\nport = "/dev/ttyACM0"\n\n[pumps."PMP-0001"]\nreservoir_warnin_ml = 6.0\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.render() == f'{path}: pumps."PMP-0001".reservoir_warnin_ml: unknown key'


def test_missing_file_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [Problem("(file)", "No such file or directory")]
    assert info.value.render() == f"{path}: (file): No such file or directory"


def test_directory_is_a_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert [p.key for p in info.value.problems] == ["(file)"]


@pytest.mark.parametrize(
    "text",
    [
        "[serial\nport = 1\n",
        '[serial]\nport = "/dev/ttyACM0"\nport = "/dev/ttyUSB0"\n',  # duplicate key
        "[serial]\nport = /dev/ttyACM0\n",  # unquoted string
        '[serial]\nport = "unterminated\n',
    ],
)
def test_toml_syntax_error_is_a_problem(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.key == "(syntax)"
    assert "line" in problem.message


def test_non_utf8_file_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, b'[serial]\nport = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [p.key for p in info.value.problems] == ["(syntax)"]


# --- rendering ---------------------------------------------------------------------------------


def test_render_is_file_key_message_one_per_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"serial": {"port": "x", "baud": 1}, "thresholds": {"battery_warning_pct": 5}},
            "/etc/pumpgw/gateway.toml",
        )
    error = info.value
    lines = error.render().splitlines()
    assert lines == [f"/etc/pumpgw/gateway.toml: {p.key}: {p.message}" for p in error.problems]
    assert "/etc/pumpgw/gateway.toml: serial.baud: unknown key" in lines
    assert str(error) == error.render()


def test_semantic_problems_render_with_values() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(with_(thresholds={"battery_critical_pct": 30}), "gw.toml")
    assert info.value.render() == (
        "gw.toml: thresholds.battery_critical_pct: must be below battery_warning_pct (30 >= 25)"
    )


def test_default_source_name() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({})
    assert info.value.render() == "<config>: serial: required key is missing"


def test_config_is_frozen() -> None:
    config = parse_config(MINIMAL)
    with pytest.raises(ValueError, match="frozen"):
        config.serial.port = "/dev/other"  # type: ignore[misc]
