"""Fault injection against the real daemon, a real mosquitto and a real pty.

Every test checks the delivery promise of docs/reliability.md: alerts and
events reach a subscriber at least once (exactly once after dropping copies
by ``event_id``), in order per pump, whatever happens to the broker, the
daemon or the serial cable. The daemon's own log (one line per event, written
once the event is in the outbox) says what it produced.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker_fixtures import Received, Subscriber
from processes import Process, gateway, gateway_config, simulator

from gateway.broker import LocalBroker, free_loopback_port

BASE = "pumpgw/e2e"
DEADLINE_S = 90.0
REFILL_PUMPS = ["--pump", "PMP-0001=refill-cycle", "--pump", "PMP-0002=refill-cycle",
                "--pump", "PMP-0003=refill-cycle"]  # fmt: skip
# A refill-cycle round is 7.75 simulated days: 5 alert transitions and a refill per
# pump. At this speed a round takes 1.7 real seconds, so three pumps make 20 alert
# transitions in about 2.5 s. The programmer streams at most every 20 ms, i.e. a
# STAT every 8000 simulated seconds (0.09 days) whatever poll_interval_s asks: still
# two or three STATs between the round's closest transitions (reservoir_low at
# 5 mL, refilled at 4.5 mL 0.25 days later), so none is skipped.
REFILL_SPEED = "400000"
_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def logged_events(proc: Process) -> list[dict[str, str]]:
    """Events the daemon wrote to its log (each after storing it in the outbox)."""
    out = []
    for line in proc.log().splitlines():
        fields = {k: v.strip('"') for k, v in _PAIR.findall(line)}
        if "event_id" in fields:
            out.append(fields)
    return out


def wait_until(check: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    """Poll a condition the test cannot be notified of (a log file)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def received_events(sub: Subscriber) -> list[dict[str, Any]]:
    """Events as a dashboard keeps them: copies (same event_id) dropped."""
    seen: set[str] = set()
    out = []
    for ev in sub.json_payloads(f"{BASE}/events"):
        if ev["event_id"] not in seen:
            seen.add(ev["event_id"])
            out.append(ev)
    return out


def assert_all_delivered_in_order(produced: list[dict[str, str]], sub: Subscriber) -> None:
    want = [e["event_id"] for e in produced]

    def complete() -> bool:
        got = {e["event_id"] for e in received_events(sub)}
        return all(i in got for i in want)

    wait_until(complete, f"all {len(want)} events at the subscriber")
    received = received_events(sub)
    copies = len(sub.json_payloads(f"{BASE}/events")) - len(received)
    alerts = sum(1 for e in produced if e["event"].startswith("alert_"))
    print(f"\ndelivered: {len(want)} events ({alerts} alert transitions), {copies} copies dropped")
    per_pump: dict[str | None, list[str]] = {}
    for ev in received:
        per_pump.setdefault(ev["pump_id"], []).append(ev["event_id"])
    for pump in {e.get("pump_id") for e in produced}:
        expected = [e["event_id"] for e in produced if e.get("pump_id") == pump]
        got = [i for i in per_pump.get(pump, []) if i in set(expected)]
        assert got == expected, f"events of {pump} out of order"


# What a refill-cycle pump goes through each round, from its refill on: the refill
# event ends both episodes, then refill_due warns (16 mL), turns critical (6 mL)
# and reservoir_low warns (5 mL) before the next refill (4.5 mL).
ROUND = [
    ("refill", None, None),
    ("alert_cleared", "reservoir_low", "warning"),
    ("alert_cleared", "refill_due", "critical"),
    ("alert_raised", "refill_due", "warning"),
    ("alert_escalated", "refill_due", "critical"),
    ("alert_raised", "reservoir_low", "warning"),
]


def assert_whole_rounds(produced: list[dict[str, str]]) -> None:
    """Every refill-cycle pump, from its first refill on, went through whole
    rounds: no transition was skipped (the STATs were fine-grained enough)."""
    for pump in ("PMP-0001", "PMP-0002", "PMP-0003"):
        seq = [
            (e["event"], e.get("type"), e.get("severity"))
            for e in produced
            if e.get("pump_id") == pump
        ]
        assert ROUND[0] in seq, f"{pump} was never refilled"
        rest = seq[seq.index(ROUND[0]) :]
        assert len(rest) > len(ROUND), f"{pump}: not one whole round"
        assert rest == (ROUND * (len(rest) // len(ROUND) + 1))[: len(rest)], pump


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """mosquitto on a fixed port with persistence, so it can be stopped and
    started again and keep the dashboard's persistent session."""
    b = LocalBroker(port=free_loopback_port(), persistence_dir=tmp_path / "mosquitto")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def dashboard(broker: LocalBroker) -> Subscriber:
    """A dashboard as docs/reliability.md recommends: persistent session, QoS 1."""
    return Subscriber(broker.endpoint, f"{BASE}/events", client_id="dashboard", clean_session=False)


def test_broker_outage_loses_no_alert_or_event(tmp_path: Path, broker: LocalBroker) -> None:
    port_no = broker.endpoint.port
    with (
        dashboard(broker) as sub,
        simulator(tmp_path, "--speed", REFILL_SPEED, *REFILL_PUMPS) as (
            _,
            port,
        ),
    ):
        config = gateway_config(tmp_path, port=port, broker_port=port_no)
        with gateway(config) as gw:
            sub.wait_for(lambda m: m.json()["kind"] == "alert_raised", DEADLINE_S)
            broker.stop()
            before = len(logged_events(gw))
            wait_until(
                lambda: (
                    sum(1 for e in logged_events(gw)[before:] if e["event"].startswith("alert_"))
                    >= 20
                ),
                "20 alert transitions during the outage",
            )
            assert gw.proc.poll() is None
            broker.start()
            sub.wait_subscribed(2, DEADLINE_S)
            wait_until(lambda: gw.log().count("event=mqtt_connected") == 2, "gateway back")
            assert gw.stop() == 0  # a clean stop hands over what is stored
        produced = logged_events(gw)
        assert sum(1 for e in produced if e["event"].startswith("alert_")) >= 20
        assert_whole_rounds(produced)
        assert_all_delivered_in_order(produced, sub)
        assert "mqtt_disconnected" in gw.log()


def test_kill_9_mid_burst_loses_nothing_and_raises_nothing_twice(
    tmp_path: Path, broker: LocalBroker
) -> None:
    with (
        dashboard(broker) as sub,
        simulator(
            tmp_path, "--speed", REFILL_SPEED, *REFILL_PUMPS, "--pump", "PMP-0004=motor-stall"
        ) as (_, port),
    ):
        config = gateway_config(tmp_path, port=port, broker_port=broker.endpoint.port)
        with gateway(config) as first:
            stall = sub.wait_for(
                lambda m: (m.json().get("alert") or {}).get("type") == "pump_fault", DEADLINE_S
            ).json()["alert"]
            broker.stop()  # let a backlog build up in the outbox, then kill
            before = len(logged_events(first))
            wait_until(lambda: len(logged_events(first)) >= before + 15, "a burst of events")
            first.stop(signal.SIGKILL)
        produced_first = logged_events(first)
        broker.start()
        (tmp_path / "gateway.log").rename(tmp_path / "gateway-first.log")
        with gateway(config) as second:
            wait_until(lambda: "engine_state_restored" in second.log(), "state restored")
            sub.wait_for(
                lambda m: (
                    m.json()["kind"] == "gateway_started"
                    and m.json()["event_id"] not in {e["event_id"] for e in produced_first}
                ),
                DEADLINE_S,
            )
            assert_all_delivered_in_order(produced_first, sub)
            # The stalled pump's alert survived the kill with its id; no new episode.
            raised_again = [
                e
                for e in logged_events(second)
                if e["event"] == "alert_raised" and e.get("type") == "pump_fault"
            ]
            assert raised_again == []
            assert second.stop() == 0
        fault_events = [
            e for e in received_events(sub) if (e.get("alert") or {}).get("type") == "pump_fault"
        ]
        assert {e["alert"]["alert_id"] for e in fault_events} == {stall["alert_id"]}


def test_serial_cable_pulled_and_replugged_under_a_new_node(
    tmp_path: Path, broker: LocalBroker
) -> None:
    link = tmp_path / "by-id-programmer"  # like /dev/serial/by-id/...
    with (
        Subscriber(broker.endpoint, f"{BASE}/#") as sub,
        simulator(tmp_path, "--speed", "1000", "--pump", "PMP-0001=normal") as (sim, first_node),
    ):
        os.symlink(first_node, link)
        config = gateway_config(
            tmp_path,
            port=str(link),
            broker_port=broker.endpoint.port,
            serial_extra="link_timeout_s = 1",
        )
        with gateway(config) as gw:
            sub.wait_for(lambda m: m.topic.endswith("/state"), DEADLINE_S)
            sim.proc.send_signal(signal.SIGUSR2)  # cable pulled
            raised = sub.wait_for(_alert_event("alert_raised", "link_lost"), DEADLINE_S)
            assert raised.json()["alert"]["severity"] == "critical"
            sub.wait_for(
                lambda m: m.topic == f"{BASE}/events" and m.json()["kind"] == "link_down",
                DEADLINE_S,
            )
            sim.proc.send_signal(signal.SIGUSR2)  # plugged back: a new node
            assert sim.proc.stdout is not None
            new_node = sim.proc.stdout.readline().strip()
            assert new_node and new_node != first_node
            tmp = tmp_path / "link.tmp"
            os.symlink(new_node, tmp)
            start = len(sub)  # before the link moves: the recovery may be quick
            os.replace(tmp, link)  # udev updates the by-id link
            sub.wait_for(_alert_event("alert_cleared", "link_lost"), DEADLINE_S, start=start)
            sub.wait_for(
                lambda m: m.topic == f"{BASE}/pumps/PMP-0001/state", DEADLINE_S, start=start
            )
            assert gw.proc.poll() is None


def _alert_event(kind: str, alert_type: str) -> Callable[[Received], bool]:
    def match(m: Received) -> bool:
        if m.topic != f"{BASE}/events":
            return False
        ev = m.json()
        return ev["kind"] == kind and (ev.get("alert") or {}).get("type") == alert_type

    return match


def test_wrong_credentials_one_clear_error_then_works_once_fixed(tmp_path: Path) -> None:
    broker_log = tmp_path / "mosquitto.log"
    with LocalBroker(users={"bed-12": "right"}, log_path=broker_log) as b:
        endpoint = b.start()
        password = tmp_path / "mqtt-password"
        password.write_text("wrong\n")
        password.chmod(0o600)
        with simulator(tmp_path, "--pump", "PMP-0001=low-reservoir", "--speed", "100000") as (
            _,
            port,
        ):
            config = gateway_config(
                tmp_path,
                port=port,
                broker_port=endpoint.port,
                mqtt_extra=f'username = "bed-12"\npassword_file = "{password}"',
            )
            with gateway(config) as gw:
                wait_until(lambda: "mqtt_connect_failed" in gw.log(), "a connect error")
                # paho keeps retrying (1 s, 2 s, 4 s, ...): let the broker see a few.
                wait_until(
                    lambda: broker_log.read_text().count("not authorised") >= 3,
                    "three refused attempts",
                )
                log = gw.log()
                assert log.count("event=mqtt_connect_failed") == 1, "one line, not one per retry"
                assert "not authori" in log.lower()
                assert "wrong" not in log  # the password itself is never logged
                assert "event=alert_raised" in log  # pumps are still read and judged
                assert gw.proc.poll() is None
            password.write_text("right\n")
            sub = Subscriber(endpoint, f"{BASE}/status")
            sub.client.username_pw_set("bed-12", "right")
            with sub, gateway(config):
                sub.wait_for(lambda m: m.payload == b"online", DEADLINE_S)


def test_broker_down_at_start_then_everything_arrives(tmp_path: Path, broker: LocalBroker) -> None:
    port_no = broker.endpoint.port
    with dashboard(broker) as sub:  # the dashboard's persistent session exists
        broker.stop()
        with simulator(tmp_path, "--speed", "100000", "--pump", "PMP-0001=low-reservoir") as (
            _,
            port,
        ):
            config = gateway_config(tmp_path, port=port, broker_port=port_no)
            with gateway(config) as gw:
                wait_until(
                    lambda: "type=reservoir_low" in gw.log(), "an alert while the broker is down"
                )
                assert gw.proc.poll() is None
                broker.start()
                wait_until(lambda: "event=mqtt_connected" in gw.log(), "gateway connected")
                assert gw.stop() == 0
            assert_all_delivered_in_order(logged_events(gw), sub)


def test_programmer_power_cycle_and_freeze(tmp_path: Path, broker: LocalBroker) -> None:
    """SIGUSR1: the programmer restarts (unprompted HELLO, seq from 0).
    SIGSTOP: the port stays open but nothing answers, as with a USB adapter
    that never reports the unplug; the gateway probes, gives up, reopens."""
    with (
        Subscriber(broker.endpoint, f"{BASE}/#") as sub,
        simulator(tmp_path, "--speed", "1000", "--pump", "PMP-0001=normal") as (sim, port),
    ):
        config = gateway_config(
            tmp_path,
            port=port,
            broker_port=broker.endpoint.port,
            poll_interval_s=1,
            serial_extra="link_timeout_s = 1",
        )
        with gateway(config) as gw:
            # Some frames in (seq counts them, 20 ms apart at this speed): the
            # handshake's ID is long answered, so a HELLO now is a restart.
            sub.wait_for(
                lambda m: m.topic == f"{BASE}/pumps/PMP-0001/state" and m.json()["seq"] >= 150,
                DEADLINE_S,
            )
            start = len(sub)
            sim.proc.send_signal(signal.SIGUSR1)
            sub.wait_for(
                lambda m: m.topic == f"{BASE}/events" and m.json()["kind"] == "programmer_reset",
                DEADLINE_S,
                start=start,
            )
            # Telemetry resumes with the restarted sequence (not dropped as replays).
            sub.wait_for(
                lambda m: m.topic == f"{BASE}/pumps/PMP-0001/state" and m.json()["seq"] < 100,
                DEADLINE_S,
                start=start,
            )
            sim.proc.send_signal(signal.SIGSTOP)
            try:
                sub.wait_for(_alert_event("alert_raised", "link_lost"), DEADLINE_S)
                wait_until(lambda: "reopen requested" in gw.log(), "the port reopened")
            finally:
                sim.proc.send_signal(signal.SIGCONT)
            sub.wait_for(_alert_event("alert_cleared", "link_lost"), DEADLINE_S)
            assert gw.proc.poll() is None
