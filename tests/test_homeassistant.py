"""Home Assistant MQTT discovery: the pure builders, checked against Home Assistant's schema.

The schema and the template semantics are in tests/ha_mqtt_schema.py (taken
from Home Assistant's source). The second half runs the real daemon against a
real mosquitto and the simulated programmer, and follows every discovery
config to the topic it reads.
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from broker_fixtures import Received, Subscriber, publish
from ha_mqtt_schema import (
    DEVICE_CLASS_UNITS,
    TOPIC_MATCHER,
    UNIT_OF_VOLUME_FLOW_RATE,
    attributes,
    availability_of,
    binary_sensor_state,
    config_problems,
    sensor_state,
)
from processes import Process, gateway, gateway_config, simulator

from drivers.ptp import Flag, Stat
from gateway import engine
from gateway.broker import BrokerEndpoint
from gateway.config import Config, parse_config
from gateway.contract import (
    GATEWAY_PUMP,
    Alert,
    AlertState,
    AlertType,
    Problems,
    PumpState,
    Severity,
    Topics,
)
from gateway.daemon import OUTBOX_FILE, Daemon
from gateway.homeassistant import (
    PROBLEM_NAMES,
    PUMP_PROBLEMS,
    PUMP_SENSORS,
    Announcer,
    Discovery,
    dump_record,
    load_record,
    plan,
    problems_of,
    pumps_to_announce,
    slug,
    status_topic,
)
from gateway.mqtt_link import CommandReceived
from gateway.outbox import Outbox

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
PREFIX = "homeassistant"
SENSOR_KEYS = {"reservoir", "days_to_refill", "battery", "flow", "drain"}


def make_config(pumps: dict[str, dict[str, Any]] | None = None, **ha: Any) -> Config:
    return parse_config(
        {
            "gateway": {"id": "bed.12"},
            "serial": {"port": "/dev/null"},
            "homeassistant": {"enabled": True, **ha},
            "pumps": pumps if pumps is not None else {"PMP-0001": {"label": "Bed 12"}},
        }
    )


def discovery(gateway_id: str = "bed.12") -> Discovery:
    return Discovery(PREFIX, Topics("pumpgw", gateway_id), gateway_id, "1.2.3")


def split(topic: str) -> tuple[str, str, str]:
    """(component, node_id, object_id) of a discovery config topic."""
    assert topic.startswith(PREFIX + "/")
    match = TOPIC_MATCHER.fullmatch(topic.removeprefix(PREFIX + "/"))
    assert match is not None, f"Home Assistant ignores {topic}"
    return match["component"], match["node_id"], match["object_id"]


def configs(messages: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    return {t: json.loads(p) for t, p in messages.items() if t.endswith("/config")}


def state(**values: Any) -> PumpState:
    fields: dict[str, Any] = dict.fromkeys(PumpState.model_fields)
    fields |= {"pump_id": "PMP-0001", "seq": 1, "received_at": T0, "stale": False}
    return PumpState.model_validate(fields | values)


def stat(pump_id: str, res_ml: float) -> engine.Reading:
    return engine.Reading(Stat(1, pump_id, T0, res_ml, 20.0, 2.0, 80, 3.0, 300.0, 500.0, Flag(0)))


def run(config: Config, *inputs: engine.EngineInput) -> engine.EngineState:
    st = engine.initial_state(config, T0)
    for i, event in enumerate(inputs):
        st = engine.step(st, event, T0 + timedelta(seconds=i), config).state
    return st


# --- the payloads -------------------------------------------------------------------


def test_slug_keeps_only_what_a_discovery_topic_level_may_hold() -> None:
    assert slug("bed.12") == "bed_12"
    assert slug("PMP-0001") == "PMP-0001"
    assert slug("a b/c+#") == "a_b_c__"


@pytest.mark.parametrize("gateway_id", ["bed.12", "bed-12", "Ward_3.bed.7"])
@pytest.mark.parametrize("label", [None, "Bed 12 — Mrs. O'Brien"])
def test_every_config_obeys_home_assistants_schema(gateway_id: str, label: str | None) -> None:
    d = discovery(gateway_id)
    messages = d.pump_messages("PMP-0001", label, Problems.of("PMP-0001", []))
    messages |= d.gateway_messages(Problems.of(GATEWAY_PUMP, []))
    found = configs(messages)
    assert len(found) == len(PUMP_SENSORS) + len(PUMP_PROBLEMS) + 2
    for topic, config in found.items():
        component, node_id, _ = split(topic)
        assert node_id == f"pumpgw_{slug(gateway_id)}"
        assert config_problems(component, config) == [], topic


def test_a_pump_is_one_device_behind_the_gateway() -> None:
    d = discovery()
    pump = configs(d.pump_messages("PMP-0001", "Bed 12", Problems.of("PMP-0001", [])))
    gateway = configs(d.gateway_messages(Problems.of(GATEWAY_PUMP, [])))
    devices = {json.dumps(c["device"], sort_keys=True) for c in pump.values()}
    assert len(devices) == 1, "every entity of a pump names the same device"
    device = next(iter(pump.values()))["device"]
    assert device["identifiers"] == ["pumpgw_bed_12_PMP-0001"]
    assert device["name"] == "Bed 12"
    gateway_device = next(iter(gateway.values()))["device"]
    assert gateway_device["identifiers"] == ["pumpgw_bed_12"]
    assert gateway_device["sw_version"] == "1.2.3"
    assert device["via_device"] == gateway_device["identifiers"][0]
    unlabelled = configs(d.pump_messages("PMP-0002", None, Problems.of("PMP-0002", [])))
    assert next(iter(unlabelled.values()))["device"]["name"] == "PMP-0002"


def test_entities_of_a_pump_and_their_unique_ids() -> None:
    d = discovery()
    by_object = {
        split(t)[2]: c
        for t, c in configs(d.pump_messages("PMP-0001", None, Problems.of("PMP-0001", []))).items()
    }
    expected = {f"PMP-0001_{k}" for k in SENSOR_KEYS} | {
        f"PMP-0001_{t.value}" for t in AlertType if t is not AlertType.LINK_LOST
    }
    assert set(by_object) == expected
    for object_id, config in by_object.items():
        assert config["unique_id"] == f"pumpgw_bed_12_{object_id}"
    others = configs(d.pump_messages("PMP-0002", None, Problems.of("PMP-0002", [])))
    gateway = configs(d.gateway_messages(Problems.of(GATEWAY_PUMP, [])))
    ids = [c["unique_id"] for c in [*by_object.values(), *others.values(), *gateway.values()]]
    assert len(ids) == len(set(ids)), "unique ids are unique per gateway, pump and entity"
    assert len({c["name"] for c in by_object.values()}) == len(by_object)


def test_sensors_read_the_pumps_state_with_the_right_units_and_classes() -> None:
    d = discovery()
    sensors = {
        split(t)[2].removeprefix("PMP-0001_"): c
        for t, c in configs(d.pump_messages("PMP-0001", None, Problems.of("PMP-0001", []))).items()
        if split(t)[0] == "sensor"
    }
    assert set(sensors) == SENSOR_KEYS
    expected = {
        "reservoir": ("mL", "volume_storage"),
        "days_to_refill": ("d", "duration"),
        "battery": ("%", "battery"),
        "flow": ("mL/d", None),
        "drain": ("mL/d", None),
    }
    for key, (unit, device_class) in expected.items():
        assert sensors[key]["unit_of_measurement"] == unit, key
        assert sensors[key].get("device_class") == device_class, key
        assert sensors[key]["state_class"] == "measurement", key
        assert sensors[key]["state_topic"] == "pumpgw/bed.12/pumps/PMP-0001/state"
    # Home Assistant's volume_flow_rate has no mL/d: a device class would be refused.
    assert "mL/d" not in UNIT_OF_VOLUME_FLOW_RATE
    assert "mL" in DEVICE_CLASS_UNITS["volume_storage"]
    assert {s.field for s in PUMP_SENSORS} <= set(PumpState.model_fields)


def test_every_alert_type_has_a_problem_sensor_name() -> None:
    assert set(PROBLEM_NAMES) == set(AlertType)
    assert AlertType.LINK_LOST not in PUMP_PROBLEMS
    assert set(PUMP_PROBLEMS) | {AlertType.LINK_LOST} == set(AlertType)


# --- the templates, rendered as Home Assistant renders them ------------------------------


def pump_configs() -> dict[str, dict[str, Any]]:
    d = discovery()
    found = configs(d.pump_messages("PMP-0001", None, Problems.of("PMP-0001", [])))
    return {split(t)[2].removeprefix("PMP-0001_"): c for t, c in found.items()}


def test_sensor_templates_give_the_value_and_unknown_for_null_never_zero() -> None:
    sensors = pump_configs()
    full = state(
        reservoir_ml=12.4,
        battery_pct=81,
        days_to_low_reservoir_alarm=17.3,
        flow_ml_per_day=0.6,
        drain_ml_per_day=0.0,
    )
    for spec in PUMP_SENSORS:
        value = sensor_state(sensors[spec.key], full.to_json())
        assert value is not None and float(value) == getattr(full, spec.field), spec.key
    empty = state()  # every value unknown (JSON null)
    for spec in PUMP_SENSORS:
        assert sensor_state(sensors[spec.key], empty.to_json()) is None, spec.key


def test_sensors_are_unavailable_while_the_gateway_is_offline_or_the_pump_stale() -> None:
    reservoir = pump_configs()["reservoir"]
    assert reservoir["availability_mode"] == "all"
    gateway_status, freshness = reservoir["availability"]
    assert gateway_status["topic"] == "pumpgw/bed.12/status"
    assert availability_of(gateway_status, b"online") is True
    assert availability_of(gateway_status, b"offline") is False
    assert freshness["topic"] == reservoir["state_topic"]
    assert availability_of(freshness, state(stale=False).to_json()) is True
    assert availability_of(freshness, state(stale=True).to_json()) is False


def test_problem_sensors_follow_the_problems_topic_and_show_the_alert() -> None:
    sensors = pump_configs()
    problems = Problems.of("PMP-0001", [AlertType.RESERVOIR_LOW]).to_json()
    for alert_type in PUMP_PROBLEMS:
        config = sensors[alert_type.value]
        assert config["device_class"] == "problem"
        assert config["state_topic"] == "pumpgw/bed.12/pumps/PMP-0001/problems"
        on = binary_sensor_state(config, problems)
        assert on is (alert_type is AlertType.RESERVOIR_LOW), alert_type
        assert [a["topic"] for a in config["availability"]] == ["pumpgw/bed.12/status"]
    alert = Alert(
        alert_id="01M8",
        pump_id="PMP-0001",
        type=AlertType.RESERVOIR_LOW,
        severity=Severity.CRITICAL,
        state=AlertState.ACKNOWLEDGED,
        message="Reservoir 1.9 mL (critical at 2 mL)",
        value=1.9,
        threshold=2.0,
        raised_at=T0,
        updated_at=T0,
        acknowledged_by="nurse-jane",
        acknowledged_at=T0,
    )
    config = sensors["reservoir_low"]
    assert config["json_attributes_topic"] == "pumpgw/bed.12/pumps/PMP-0001/alerts/reservoir_low"
    assert attributes(config, alert.to_json()) == {
        "alert_id": "01M8",
        "severity": "critical",
        "alert_state": "acknowledged",  # Home Assistant would drop a key named `state`
        "message": "Reservoir 1.9 mL (critical at 2 mL)",
        "raised_at": "2026-11-30T08:00:00Z",
        "updated_at": "2026-11-30T08:00:00Z",
        "acknowledged_by": "nurse-jane",
    }


def test_gateway_link_sensors() -> None:
    found = configs(discovery().gateway_messages(Problems.of(GATEWAY_PUMP, [])))
    by_object = {split(t)[2]: c for t, c in found.items()}
    link, lost = by_object["gateway_link"], by_object["gateway_link_lost"]
    assert link["device_class"] == "connectivity" and link["state_topic"] == "pumpgw/bed.12/info"
    assert binary_sensor_state(link, json.dumps({"link": "up"}).encode()) is True
    assert binary_sensor_state(link, json.dumps({"link": "down"}).encode()) is False
    assert lost["device_class"] == "problem"
    assert lost["state_topic"] == "pumpgw/bed.12/pumps/_gateway/problems"
    flags = Problems.of(GATEWAY_PUMP, [AlertType.LINK_LOST]).to_json()
    assert binary_sensor_state(lost, flags) is True


# --- which pumps, and what to publish or clear ----------------------------------------------


def test_problems_of_reads_the_engines_open_alerts() -> None:
    config = make_config({"PMP-0001": {}, "PMP-0002": {}})
    st = run(config, stat("PMP-0001", 1.5), stat("PMP-0002", 15.0))
    assert problems_of(st, "PMP-0001").reservoir_low is True
    assert problems_of(st, "PMP-0002").reservoir_low is False
    assert problems_of(st, "PMP-0404") == Problems.of("PMP-0404", [])
    st = run(config, engine.LinkChanged(False, "unplugged"))
    st = engine.step(st, engine.Tick(), T0 + timedelta(hours=1), config).state
    assert problems_of(st, GATEWAY_PUMP).link_lost is True


def test_pumps_to_announce() -> None:
    config = make_config({"PMP-0001": {"label": "Bed 12"}})
    st = run(config, stat("PMP-0002", 15.0), stat("PMP-0003", 15.0))
    assert pumps_to_announce(config, st, set(), set()) == {"PMP-0001": "Bed 12"}
    reported = pumps_to_announce(config, st, {"PMP-0002"}, set())
    assert reported == {"PMP-0001": "Bed 12", "PMP-0002": None}
    # Announced before a restart: kept while the engine still expects it ...
    assert "PMP-0003" in pumps_to_announce(config, st, set(), {"PMP-0003", "PMP-0404"})
    assert "PMP-0404" not in pumps_to_announce(config, st, set(), {"PMP-0404"})
    # ... and dropped once its telemetry is lost.
    silent = engine.step(st, engine.Tick(), T0 + timedelta(hours=1), config).state
    assert "PMP-0003" not in pumps_to_announce(config, silent, set(), {"PMP-0003"})


def test_plan_publishes_changes_and_clears_configs_before_the_topics_they_read() -> None:
    desired = {"A": {"x/config": b"1", "x/problems": b"2"}}
    first = plan(desired, {}, {})
    assert first.publish == desired and first.clear == {}
    assert plan(desired, {"x/config": b"1", "x/problems": b"2"}, {"A": ["x/config"]}).publish == {}
    changed = plan(desired, {"x/config": b"1", "x/problems": b"old"}, {})
    assert changed.publish == {"A": {"x/problems": b"2"}}
    gone = plan({}, {}, {"A": ["a/problems", "b/config", "z/config"], "B": []})
    assert gone.clear == {"A": ["b/config", "z/config", "a/problems"]}


def test_record_round_trip_and_refusal() -> None:
    record = dump_record({"PMP-0001": {"b", "a"}})
    assert load_record(record) == {"PMP-0001": ["a", "b"]}
    for bad in ["", "{}", '{"version": 2, "devices": {}}', "[1]"]:
        with pytest.raises(ValueError, match="discovery record"):
            load_record(bad)


def topics_of(devices: dict[str, Iterable[str]]) -> set[str]:
    return {t for topics in devices.values() for t in topics}


def test_announcer_announces_updates_and_clears() -> None:
    config = make_config({"PMP-0001": {"label": "Bed 12"}, "PMP-0009": {}})
    st = run(config)
    announcer = Announcer(Topics("pumpgw", "bed.12"), "1.2.3")
    first = announcer.sync(config, st)
    assert first is not None and first.record is not None
    assert set(first.publish) == {GATEWAY_PUMP, "PMP-0001", "PMP-0009"}
    assert len(first.publish["PMP-0001"]) == len(PUMP_SENSORS) + len(PUMP_PROBLEMS) + 1
    assert load_record(first.record) == {d: sorted(m) for d, m in first.publish.items()}
    assert announcer.sync(config, st) is None  # nothing happened since

    # An alert changes the pump's problems and nothing else.
    st = engine.step(st, stat("PMP-0001", 1.5), T0, config).state
    announcer.alerts_changed()
    update = announcer.sync(config, st)
    assert update is not None and update.record is None and update.clear == {}
    assert update.publish == {
        "PMP-0001": {"pumpgw/bed.12/pumps/PMP-0001/problems": problems_of(st, "PMP-0001").to_json()}
    }

    # A pump the config does not name is announced when it reports.
    announcer.pump_reported("PMP-0002")
    reported = announcer.sync(config, st)
    assert reported is not None and set(reported.publish) == {"PMP-0002"}

    # A relabelled pump: only its configs change. A removed pump that never reported: cleared.
    config = make_config({"PMP-0001": {"label": "Bed 14"}})
    announcer.config_changed()
    reload = announcer.sync(config, st)
    assert reload is not None and reload.record is not None
    assert set(reload.publish) == {"PMP-0001"}
    assert len(reload.publish["PMP-0001"]) == len(PUMP_SENSORS) + len(PUMP_PROBLEMS)
    assert set(reload.clear) == {"PMP-0009"}
    assert set(reload.clear["PMP-0009"]) == set(first.publish["PMP-0009"])

    # Home Assistant restarted: everything once more, nothing cleared.
    announcer.republish()
    again = announcer.sync(config, st)
    assert again is not None and again.clear == {} and again.record is None
    assert set(again.publish) == {GATEWAY_PUMP, "PMP-0001", "PMP-0002"}

    # Turned off: every announced topic is cleared.
    config = make_config(enabled=False)
    announcer.config_changed()
    off = announcer.sync(config, st)
    assert off is not None and off.publish == {}
    assert off.record is not None and load_record(off.record) == {}
    assert topics_of(off.clear) == topics_of(again.publish)


def test_announcer_after_a_restart_clears_what_the_new_config_drops() -> None:
    before = make_config({"PMP-0001": {}, "PMP-0009": {}})
    old = Announcer(Topics("pumpgw", "bed.12"), "1.2.3")
    first = old.sync(before, run(before))
    assert first is not None and first.record is not None

    after = make_config({"PMP-0001": {}})
    silent = run(after, stat("PMP-0009", 15.0))  # the engine remembers PMP-0009
    lost = engine.step(silent, engine.Tick(), T0 + timedelta(hours=1), after).state
    restarted = Announcer(Topics("pumpgw", "bed.12"), "1.2.3", load_record(first.record))
    assert restarted.carried == {"PMP-0001", "PMP-0009"}
    kept = restarted.sync(after, silent)
    assert kept is not None and kept.clear == {}  # PMP-0009 may still be there
    restarted.alerts_changed()
    gone = restarted.sync(after, lost)  # its telemetry_lost: it is not
    assert gone is not None and set(gone.clear) == {"PMP-0009"}

    disabled = Announcer(Topics("pumpgw", "bed.12"), "1.2.3", load_record(first.record))
    off = disabled.sync(make_config(enabled=False), silent)
    assert off is not None and topics_of(off.clear) == topics_of(first.publish)


def test_nothing_when_never_enabled() -> None:
    config = make_config(enabled=False)
    announcer = Announcer(Topics("pumpgw", "bed.12"), "1.2.3")
    result = announcer.sync(config, run(config))
    assert result is not None
    assert (result.publish, result.clear, result.record) == ({}, {}, None)


def test_status_topic_only_while_enabled() -> None:
    assert status_topic(make_config().homeassistant) == "homeassistant/status"
    assert status_topic(make_config(discovery_prefix="ha/x").homeassistant) == "ha/x/status"
    assert status_topic(make_config(enabled=False).homeassistant) is None


# --- the daemon's side, without a broker -----------------------------------------------


def make_daemon(tmp_path: Path, **ha: Any) -> Daemon:
    config = parse_config(
        {
            "gateway": {"id": "bed.12", "state_dir": str(tmp_path)},
            "serial": {"port": str(tmp_path / "no-such-port")},
            "mqtt": {"host": "127.0.0.1", "port": 1},
            "homeassistant": ha,
        }
    )
    return Daemon(config, None)  # nothing started


def test_daemon_restores_the_record_and_survives_a_bad_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path / OUTBOX_FILE, 64 * 1024)
    outbox.write([], discovery_record=dump_record({"PMP-0009": ["a/config"]}))
    outbox.close()
    daemon = make_daemon(tmp_path, enabled=True)
    assert daemon.announcer.announced == {"PMP-0009": ["a/config"]}
    assert daemon.announcer.carried == {"PMP-0009"}
    daemon.outbox.write([], discovery_record="{not json")
    daemon.outbox.close()
    with caplog.at_level(logging.ERROR):
        again = make_daemon(tmp_path, enabled=True)
    assert again.announcer.announced == {}
    assert "event=discovery_record_unreadable" in caplog.text


def test_home_assistant_online_republishes_and_is_no_command(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path, enabled=True, discovery_prefix="ha")
    daemon._sync_discovery()
    assert daemon.announcer.published and not daemon.announcer.dirty
    for payload in [b"offline", b"\xff\xfe", b""]:
        daemon._handle(CommandReceived("ha/status", payload))
        assert not daemon.announcer.dirty, payload
    daemon._handle(CommandReceived("ha/status", b"online"))
    assert daemon.announcer.dirty and not daemon.announcer.published
    assert daemon.commands_rejected == 0
    daemon._outgoing.clear()
    daemon._handle(CommandReceived("homeassistant/status", b"online"))  # not our prefix
    assert daemon.commands_rejected == 1


# --- end to end: real mosquitto, simulated programmer, the daemon ------------------------

DEADLINE_S = 60.0
BASE = "pumpgw/e2e"
NODE = "pumpgw_e2e"
SIMULATED = ["PMP-0001=low-reservoir", "PMP-0004=normal", "PMP-0005=normal"]
# PMP-0001 starts at 6 mL: with its warning at 6.5 mL reservoir_low is raised at once.
# PMP-0009 is configured but never reports; PMP-0005 reports but is not configured.
PUMPS_CONFIG = """
[pumps."PMP-0001"]
label = "Bed 1"
reservoir_warning_ml = 6.5

[pumps."PMP-0004"]

[pumps."PMP-0009"]
label = "Discharged"
"""
OBJECT_KEYS = SENSOR_KEYS | {t.value for t in PUMP_PROBLEMS}


def retained(endpoint: BrokerEndpoint, topic_filter: str) -> dict[str, bytes]:
    """Every retained message under ``topic_filter`` (which ends in ``#``) right now.

    The broker sends the retained messages when the subscription is made; a marker
    published after the SUBACK arrives after all of them.
    """
    marker = topic_filter.removesuffix("#") + "_test/marker"
    with Subscriber(endpoint, topic_filter) as sub:
        publish(sub.client, marker, b"end")
        sub.wait_for(lambda m: m.topic == marker, DEADLINE_S)
        return {m.topic: m.payload for m in sub.messages() if m.retain}


def wait(sub: Subscriber, gw: Process, predicate: Any, what: str, start: int = 0) -> Received:
    try:
        return sub.wait_for(predicate, DEADLINE_S, start=start)
    except AssertionError as exc:
        raise AssertionError(f"{what}\n{exc}\n--- gateway log:\n{gw.log()[-4000:]}") from None


def on_json(topic: str, **fields: Any) -> Any:
    def match(m: Received) -> bool:
        if m.topic != topic or not m.payload:
            return False
        payload = m.json()
        return all(payload.get(k) == v for k, v in fields.items())

    return match


def cleared(topics: set[str]) -> Any:
    """True once every topic in ``topics`` got an empty (retained-clearing) payload."""
    seen: set[str] = set()

    def match(m: Received) -> bool:
        if m.topic in topics and m.payload == b"":
            seen.add(m.topic)
        return seen == topics

    return match


def discovery_configs(snapshot: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """Object id -> config of every retained discovery config of gateway e2e."""
    found = {}
    for topic, payload in snapshot.items():
        if topic.endswith("/config"):
            component, node_id, object_id = split(topic)
            assert node_id == NODE, topic
            config = json.loads(payload)
            assert config_problems(component, config) == [], topic
            found[object_id] = config
    return found


def by_pump(found: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
    pumps: dict[str, set[str]] = {}
    for object_id in found:
        pump_id, _, key = object_id.partition("_")
        pumps.setdefault(pump_id, set()).add(key)
    return pumps


def write_config(path: Path, *, enabled: bool, pumps: str) -> None:
    text = path.read_text().split("\n# -- test --\n")[0]
    flag = "true" if enabled else "false"
    path.write_text(f"{text}\n# -- test --\n[homeassistant]\nenabled = {flag}\n{pumps}")


def check_entities_follow_their_topics(
    found: dict[str, dict[str, Any]], gw: dict[str, bytes]
) -> None:
    """Render every config's templates on the retained payload it points at."""
    status = gw[f"{BASE}/status"]
    assert status == b"online"
    fields = {spec.key: spec.field for spec in PUMP_SENSORS}
    for object_id, config in found.items():
        pump_id, _, key = object_id.partition("_")
        for item in config["availability"]:
            if item["topic"] == f"{BASE}/status":
                assert availability_of(item, status) is True, object_id
            elif item["topic"] in gw:  # a pump that never reported has no state yet
                assert availability_of(item, gw[item["topic"]]) is True, object_id
        if config["state_topic"] not in gw:
            assert pump_id == "PMP-0009", f"{object_id} reads a topic that does not exist"
            continue
        payload = gw[config["state_topic"]]
        if key in fields:
            expected = json.loads(payload)[fields[key]]
            value = sensor_state(config, payload)
            assert (value is None) == (expected is None), (object_id, value, expected)
            assert value is None or float(value) == expected, (object_id, value, expected)
        elif pump_id != "gateway":
            assert binary_sensor_state(config, payload) is json.loads(payload)[key], object_id


def test_home_assistant_discovery_end_to_end(tmp_path: Path, mosquitto: BrokerEndpoint) -> None:
    sim_args = ["--speed", "1000", "--seed", "7"]
    for pump in SIMULATED:
        sim_args += ["--pump", pump]
    with (
        Subscriber(mosquitto, "homeassistant/#") as ha,
        Subscriber(mosquitto, f"{BASE}/#") as sub,
        simulator(tmp_path, *sim_args) as (_sim, port),
    ):
        config = gateway_config(tmp_path, port=port, broker_port=mosquitto.port)
        write_config(config, enabled=True, pumps=PUMPS_CONFIG)
        with gateway(config) as gw:
            problems_1 = f"{BASE}/pumps/PMP-0001/problems"
            wait(sub, gw, on_json(problems_1, reservoir_low=True), "PMP-0001 reservoir_low on")
            wait(sub, gw, on_json(f"{BASE}/pumps/PMP-0004/state"), "PMP-0004 reports")
            wait(sub, gw, on_json(f"{BASE}/pumps/PMP-0005/state"), "unconfigured pump reports")
            wait(sub, gw, on_json(f"{BASE}/info", link="up"), "link up")
            # A pump's problems topic is its last message: its configs are in before it.
            wait(sub, gw, on_json(f"{BASE}/pumps/PMP-0005/problems"), "PMP-0005 announced")

            # Every pump is one device with its entities, retained, behind the gateway.
            found = discovery_configs(retained(mosquitto, "homeassistant/#"))
            pumps = by_pump(found)
            assert pumps.pop("gateway") == {"link", "link_lost"}
            assert pumps == dict.fromkeys(
                ["PMP-0001", "PMP-0004", "PMP-0005", "PMP-0009"], OBJECT_KEYS
            )
            names = {c["device"]["name"] for c in found.values() if "via_device" in c["device"]}
            assert names == {"Bed 1", "PMP-0004", "PMP-0005", "Discharged"}
            assert {c["device"].get("via_device", NODE) for c in found.values()} == {NODE}

            # Each entity shows what its topic says, read the way Home Assistant reads it.
            snapshot = retained(mosquitto, f"{BASE}/#")
            check_entities_follow_their_topics(found, snapshot)
            assert json.loads(snapshot[problems_1])["reservoir_low"] is True
            assert json.loads(snapshot[f"{BASE}/pumps/PMP-0004/problems"])["reservoir_low"] is False
            assert binary_sensor_state(found["gateway_link"], snapshot[f"{BASE}/info"]) is True
            alert = snapshot[f"{BASE}/pumps/PMP-0001/alerts/reservoir_low"]
            shown = attributes(found["PMP-0001_reservoir_low"], alert)
            assert shown["alert_state"] == "active" and shown["severity"] == "warning"
            reservoir = sensor_state(
                found["PMP-0001_reservoir"], snapshot[f"{BASE}/pumps/PMP-0001/state"]
            )
            assert reservoir is not None and 0 < float(reservoir) <= 6.0

            # Home Assistant restarts and says so: everything is announced again.
            start = len(ha)
            publish(ha.client, "homeassistant/status", b"online")
            wait(ha, gw, lambda m: m.topic.endswith("/PMP-0009_battery/config"), "again", start)
            assert "event=homeassistant_online" in gw.log()

            # Reload without PMP-0009 (it never reported) and without PMP-0004 (it does):
            # PMP-0009 leaves Home Assistant, PMP-0004 stays.
            gone = {t for t in retained(mosquitto, "homeassistant/#") if "/PMP-0009_" in t}
            assert len(gone) == len(OBJECT_KEYS)
            write_config(config, enabled=True, pumps=PUMPS_CONFIG.split('[pumps."PMP-0004"]')[0])
            start = len(ha)
            gw.proc.send_signal(signal.SIGHUP)
            wait(ha, gw, cleared(gone), "PMP-0009 configs cleared", start)
            wait(sub, gw, cleared({f"{BASE}/pumps/PMP-0009/problems"}), "PMP-0009 problems cleared")
            left = by_pump(discovery_configs(retained(mosquitto, "homeassistant/#")))
            assert set(left) == {"gateway", "PMP-0001", "PMP-0004", "PMP-0005"}
            assert f"{BASE}/pumps/PMP-0009/problems" not in retained(mosquitto, f"{BASE}/#")
            assert "event=homeassistant_cleared device=PMP-0009 topics=14" in gw.log()
            assert gw.stop() == 0

        # Restart with discovery off: everything announced before is cleared.
        announced = set(retained(mosquitto, "homeassistant/#"))
        problems = {t for t in retained(mosquitto, f"{BASE}/#") if t.endswith("/problems")}
        assert len(announced) == 2 + 3 * len(OBJECT_KEYS) and len(problems) == 4
        write_config(config, enabled=False, pumps=PUMPS_CONFIG)
        start, start_sub = len(ha), len(sub)
        with gateway(config) as gw:
            wait(ha, gw, cleared(announced), "every config cleared", start)
            wait(sub, gw, cleared(problems), "every problems topic cleared", start_sub)
            assert retained(mosquitto, "homeassistant/#") == {}
            assert not [t for t in retained(mosquitto, f"{BASE}/#") if t.endswith("/problems")]
            assert "event=homeassistant_cleared device=_gateway topics=3" in gw.log()
            assert gw.stop() == 0


def test_discovery_is_off_by_default(tmp_path: Path, mosquitto: BrokerEndpoint) -> None:
    with (
        Subscriber(mosquitto, "homeassistant/#") as ha,
        Subscriber(mosquitto, f"{BASE}/#") as sub,
        simulator(tmp_path, "--pump", "PMP-0001=low-reservoir", "--speed", "1000") as (_, port),
    ):
        config = gateway_config(tmp_path, port=port, broker_port=mosquitto.port)
        with gateway(config) as gw:
            wait(sub, gw, on_json(f"{BASE}/pumps/PMP-0001/state"), "state")
            wait(sub, gw, on_json(f"{BASE}/info", link="up"), "link up")
            assert retained(mosquitto, "homeassistant/#") == {}
            assert not [t for t in retained(mosquitto, f"{BASE}/#") if t.endswith("/problems")]
            assert gw.stop() == 0
    assert [m for m in ha.messages() if not m.topic.startswith("homeassistant/_test/")] == []
    assert "event=homeassistant_" not in gw.log()
