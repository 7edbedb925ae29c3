"""End to end: real mosquitto, the simulated programmer on a real pty, the real daemon.

Deadlines here only stop a broken run from hanging; nothing asserts how fast
anything happened.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker_fixtures import Received, Subscriber, publish
from processes import Process, gateway, gateway_config, run_cli, simulator

from gateway.broker import BrokerEndpoint

DEADLINE_S = 60.0
BASE = "pumpgw/e2e"
STATE_FIELDS = {
    "pump_id", "label", "seq", "device_time", "received_at", "reservoir_ml", "capacity_ml",
    "low_reservoir_alarm_ml", "battery_pct", "battery_v", "dose_mcg_per_day",
    "concentration_mcg_per_ml", "flow_ml_per_day", "drain_ml_per_day",
    "days_to_low_reservoir_alarm", "days_to_empty", "refill_due", "flags", "stale",
}  # fmt: skip
ALERT_FIELDS = {
    "alert_id", "pump_id", "type", "severity", "state", "message", "value", "threshold",
    "raised_at", "updated_at", "acknowledged_by", "acknowledged_at",
}  # fmt: skip


def on(topic: str) -> Any:
    return lambda m: m.topic == topic


def alert_event(kind: str, pump: str, alert_type: str, severity: str | None = None) -> Any:
    def match(m: Received) -> bool:
        if m.topic != f"{BASE}/events":
            return False
        ev = m.json()
        alert = ev.get("alert") or {}
        return (
            ev["kind"] == kind
            and alert.get("pump_id") == pump
            and alert.get("type") == alert_type
            and (severity is None or alert.get("severity") == severity)
        )

    return match


class Running:
    def __init__(self, sub: Subscriber, gw: Process, sim: Process) -> None:
        self.sub, self.gw, self.sim = sub, gw, sim

    def wait(self, predicate: Any, what: str) -> Received:
        try:
            return self.sub.wait_for(predicate, DEADLINE_S)
        except AssertionError as exc:
            raise AssertionError(
                f"{what}\n{exc}\n--- gateway log:\n{self.gw.log()[-4000:]}"
            ) from None


@pytest.fixture
def scenario_run(
    tmp_path: Path, mosquitto: BrokerEndpoint, request: pytest.FixtureRequest
) -> Iterator[Running]:
    """Simulator with the pumps in ``request.param`` (``ID=SCENARIO`` strings),
    then the gateway, watched by a subscriber to everything under the gateway."""
    pumps: list[str] = request.param
    sim_args = ["--speed", "100000", "--seed", "7"]
    for pump in pumps:
        sim_args += ["--pump", pump]
    with (
        Subscriber(mosquitto, f"{BASE}/#") as sub,
        simulator(tmp_path, *sim_args) as (sim, port),
    ):
        config = gateway_config(tmp_path, port=port, broker_port=mosquitto.port)
        with gateway(config) as gw:
            yield Running(sub, gw, sim)


CLINICAL = ["PMP-0001=low-reservoir", "PMP-0002=battery-eri-eos", "PMP-0003=motor-stall"]


@pytest.mark.parametrize("scenario_run", [CLINICAL], indirect=True)
def test_clinical_scenarios_raise_contract_alerts(scenario_run: Running) -> None:
    run = scenario_run
    run.wait(lambda m: m.topic == f"{BASE}/status" and m.payload == b"online", "status online")

    state = run.wait(on(f"{BASE}/pumps/PMP-0001/state"), "pump state").json()
    assert set(state) == STATE_FIELDS
    assert state["pump_id"] == "PMP-0001"
    assert state["flow_ml_per_day"] == pytest.approx(1.0)
    assert state["capacity_ml"] == 20.0

    # Low reservoir: a warning, then the same alert escalated to critical.
    warning = run.wait(
        alert_event("alert_raised", "PMP-0001", "reservoir_low", "warning"), "reservoir warning"
    ).json()["alert"]
    assert set(warning) == ALERT_FIELDS
    critical = run.wait(
        alert_event("alert_escalated", "PMP-0001", "reservoir_low", "critical"),
        "reservoir critical",
    ).json()["alert"]
    assert critical["alert_id"] == warning["alert_id"]
    assert critical["value"] <= 2.0

    # Battery: ERI/EOS and the percentage thresholds give warning then critical.
    run.wait(alert_event("alert_raised", "PMP-0002", "battery_low", "warning"), "battery warning")
    run.wait(
        alert_event("alert_escalated", "PMP-0002", "battery_low", "critical"), "battery critical"
    )
    # Motor stall: pump_fault, critical from the start.
    run.wait(alert_event("alert_raised", "PMP-0003", "pump_fault", "critical"), "pump fault")

    # Retained topics: a dashboard connecting now sees the alert and the state.
    retained = run.wait(
        lambda m: m.topic == f"{BASE}/pumps/PMP-0003/alerts/pump_fault", "retained alert"
    )
    assert retained.json()["state"] == "active"

    # The first info may predate the handshake; a later one says the link is up.
    info = run.wait(
        lambda m: m.topic == f"{BASE}/info" and m.json()["link"] == "up", "info, link up"
    ).json()
    assert info["gateway_id"] == "e2e"
    assert info["programmer"]["protocol"] == 1
    assert set(info["counters"]) >= {
        "frames_ok", "frames_discarded", "protocol_errors", "frames_lost"
    }  # fmt: skip

    assert run.gw.stop() == 0
    run.wait(lambda m: m.topic == f"{BASE}/status" and m.payload == b"offline", "status offline")


def test_late_subscriber_sees_retained_state(tmp_path: Path, mosquitto: BrokerEndpoint) -> None:
    with simulator(tmp_path, "--pump", "PMP-0009=low-reservoir", "--speed", "100000") as (
        _,
        port,
    ):
        config = gateway_config(tmp_path, port=port, broker_port=mosquitto.port)
        with Subscriber(mosquitto, f"{BASE}/#") as early, gateway(config) as gw:
            early.wait_for(alert_event("alert_raised", "PMP-0009", "reservoir_low"), DEADLINE_S)
            with Subscriber(mosquitto, f"{BASE}/#") as late:
                status = late.wait_for(on(f"{BASE}/status"), DEADLINE_S)
                assert status.retain and status.payload == b"online"
                alert = late.wait_for(on(f"{BASE}/pumps/PMP-0009/alerts/reservoir_low"), DEADLINE_S)
                assert alert.retain
                assert late.wait_for(on(f"{BASE}/pumps/PMP-0009/state"), DEADLINE_S).retain
                assert late.wait_for(on(f"{BASE}/info"), DEADLINE_S).retain
            assert gw.stop() == 0


@pytest.mark.parametrize("scenario_run", [["PMP-0001=noisy-line"]], indirect=True)
def test_noisy_line_counts_discards_and_keeps_publishing(scenario_run: Running) -> None:
    run = scenario_run

    def discards(m: Received) -> bool:
        return m.topic == f"{BASE}/info" and m.json()["counters"]["frames_discarded"] >= 5

    run.wait(discards, "frames_discarded in info")
    first = run.wait(on(f"{BASE}/pumps/PMP-0001/state"), "state").json()
    later = run.sub.wait_for(
        lambda m: m.topic == f"{BASE}/pumps/PMP-0001/state" and m.json()["seq"] > first["seq"] + 20,
        DEADLINE_S,
    ).json()
    assert later["reservoir_ml"] < first["reservoir_ml"]
    assert 0 < later["reservoir_ml"] <= 20
    assert run.gw.proc.poll() is None, "daemon died on a noisy line"


def test_link_lost_when_programmer_absent_and_cleared_when_back(
    tmp_path: Path, mosquitto: BrokerEndpoint
) -> None:
    # A TCP port nobody listens on yet: the link is down from the start.
    with simulator(tmp_path, "--tcp", "0", "--pump", "PMP-0001=normal") as (_sim, port):
        pass  # only to learn a free port; the simulator is gone again
    config = gateway_config(
        tmp_path, port=port, broker_port=mosquitto.port, serial_extra="link_timeout_s = 1"
    )
    with Subscriber(mosquitto, f"{BASE}/#") as sub, gateway(config) as gw:
        raised = sub.wait_for(
            alert_event("alert_raised", "_gateway", "link_lost", "critical"), DEADLINE_S
        )
        assert "down" in raised.json()["alert"]["message"]
        tcp_port = port.rsplit(":", 1)[1]
        with simulator(tmp_path, "--tcp", tcp_port, "--pump", "PMP-0001=normal"):
            sub.wait_for(alert_event("alert_cleared", "_gateway", "link_lost"), DEADLINE_S)
            sub.wait_for(on(f"{BASE}/pumps/PMP-0001/state"), DEADLINE_S)
        assert gw.stop() == 0


@pytest.mark.parametrize("scenario_run", [["PMP-0003=motor-stall"]], indirect=True)
def test_acknowledge_and_bad_commands(scenario_run: Running, mqtt_client_factory: Any) -> None:
    run = scenario_run
    fault = run.wait(alert_event("alert_raised", "PMP-0003", "pump_fault"), "pump fault")
    alert_id = fault.json()["alert"]["alert_id"]
    client = mqtt_client_factory(run.sub.endpoint)

    for bad in [b"{not json", b"[]", json.dumps({"alert_id": alert_id}).encode(),
                json.dumps({"alert_id": alert_id, "by": "x", "color": "red"}).encode(),
                json.dumps({"alert_id": "nope", "by": "nurse-jane"}).encode()]:  # fmt: skip
        start = len(run.sub)
        publish(client, f"{BASE}/cmd/ack", bad)
        result = run.sub.wait_for(on(f"{BASE}/cmd/result"), DEADLINE_S, start=start).json()
        assert result["ok"] is False and result["command"] == "ack" and result["error"]

    start = len(run.sub)
    publish(client, f"{BASE}/cmd/ack", {"alert_id": alert_id, "by": "nurse-jane", "note": "seen"})
    result = run.sub.wait_for(on(f"{BASE}/cmd/result"), DEADLINE_S, start=start).json()
    assert result == {"ok": True, "command": "ack", "alert_id": alert_id, "error": None}
    acked = run.sub.wait_for(
        lambda m: (
            m.topic == f"{BASE}/pumps/PMP-0003/alerts/pump_fault"
            and m.json()["state"] == "acknowledged"
        ),
        DEADLINE_S,
        start=start,
    ).json()
    assert acked["acknowledged_by"] == "nurse-jane" and acked["alert_id"] == alert_id
    run.wait(alert_event("alert_acknowledged", "PMP-0003", "pump_fault"), "ack event")


BAD_CONFIGS = {
    "wrong_type": ('[serial]\nport = "/dev/null"\nbaudrate = "fast"\n', "serial.baudrate"),
    "unknown_key": ('[serial]\nport = "/dev/null"\nbaud_rate = 9600\n', "serial.baud_rate"),
    "pump_typo": (
        '[serial]\nport = "x"\n[pumps."PMP-1"]\nreservoir_warnng_ml = 3\n',
        'pumps."PMP-1".reservoir_warnng_ml',
    ),
    "syntax": ("[serial\n", "(syntax)"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_bad_config_is_a_clear_error(tmp_path: Path, name: str, command: str) -> None:
    text, key = BAD_CONFIGS[name]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    args = ["check-config", str(path)] if command == "check-config" else ["run", "-c", str(path)]
    done = run_cli(*args)
    assert done.returncode == 2
    assert f"{path}: {key}: " in done.stderr
    assert "Traceback" not in done.stderr


def test_check_config_accepts_the_example() -> None:
    example = Path(__file__).parent.parent / "config" / "gateway.toml"
    done = run_cli("check-config", str(example))
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout


def test_sigint_stops_cleanly(tmp_path: Path, mosquitto: BrokerEndpoint) -> None:
    with simulator(tmp_path, "--pump", "PMP-0001=normal") as (_, port):
        config = gateway_config(tmp_path, port=port, broker_port=mosquitto.port)
        with Subscriber(mosquitto, f"{BASE}/#") as sub, gateway(config) as gw:
            sub.wait_for(on(f"{BASE}/pumps/PMP-0001/state"), DEADLINE_S)
            assert gw.stop(signal.SIGINT) == 0
            sub.wait_for(lambda m: m.topic == f"{BASE}/status" and m.payload == b"offline")
            stopping = sub.wait_for(
                lambda m: m.topic == f"{BASE}/events" and m.json()["kind"] == "gateway_stopping"
            )
            assert stopping.json()["pump_id"] is None


def test_sighup_reloads_thresholds_and_labels_and_keeps_old_on_error(
    tmp_path: Path, mosquitto: BrokerEndpoint
) -> None:
    with simulator(tmp_path, "--pump", "PMP-0001=normal", "--speed", "1000") as (_, port):
        config = gateway_config(
            tmp_path,
            port=port,
            broker_port=mosquitto.port,
            extra='[pumps."PMP-0001"]\nlabel = "A"\n',
        )
        state_topic = f"{BASE}/pumps/PMP-0001/state"
        with Subscriber(mosquitto, f"{BASE}/#") as sub, gateway(config) as gw:
            sub.wait_for(lambda m: m.topic == state_topic and m.json()["label"] == "A", DEADLINE_S)
            # Raise the warning above the normal pump's 15 mL: a reservoir_low appears.
            text = config.read_text().replace(
                'label = "A"', 'label = "B"\nreservoir_warning_ml = 16.0'
            )
            config.write_text(text)
            gw.proc.send_signal(signal.SIGHUP)
            sub.wait_for(lambda m: m.topic == state_topic and m.json()["label"] == "B", DEADLINE_S)
            sub.wait_for(alert_event("alert_raised", "PMP-0001", "reservoir_low"), DEADLINE_S)
            # A broken file is refused with a clear line; the old settings stay.
            config.write_text(text + "\n[thresholds]\nreservoir_warning_ml = 'lots'\n")
            gw.proc.send_signal(signal.SIGHUP)
            start = len(sub)
            sub.wait_for(lambda m: m.topic == state_topic, DEADLINE_S, start=start)
            assert "event=config_reload_rejected" in gw.log()
            assert "thresholds.reservoir_warning_ml" in gw.log()
            later = sub.wait_for(lambda m: m.topic == state_topic, DEADLINE_S, start=len(sub))
            assert later.json()["label"] == "B"
            assert gw.proc.poll() is None
