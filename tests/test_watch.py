"""``pumpgw watch`` and the bedside deployment files of docs/raspberry-pi.md.

* The state model and ``render`` fed with payloads shaped like docs/mqtt.md (checked
  against the contract models), typed commands, the line editor; hostile payloads.
* The command line against a real mosquitto: usage errors, no broker, wrong password.
* End to end: real mosquitto, the simulated programmer (motor-stall) and the real daemon;
  ``watch --once``, ``watch --ack`` and the interactive view in a real pseudo-terminal.
* config/mosquitto-bridge.conf run by a real bedside mosquitto, bridging over TLS with
  a password to a second mosquitto (the clinic broker, with the ACL of the guide);
  ``pumpgw watch`` at the clinic sees the bed and acknowledges through the bridge.
* config/99-pumpgw.rules parsed and evaluated against a programmer's properties (there
  is no udevadm here, and no USB device to trigger).

Deadlines only stop a broken run from hanging; nothing asserts how fast anything went.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from broker_fixtures import Received, Subscriber
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from payload_examples import ALERT, BATTERY, INFO, STATE
from processes import Process, gateway, gateway_config, run_cli, simulator

from gateway.broker import (
    BrokerEndpoint,
    LocalBroker,
    find_mosquitto,
    find_mosquitto_passwd,
    free_loopback_port,
)
from gateway.commands import parse_ack
from gateway.contract import AckCommand, Alert, Info, PumpState
from gateway.watch import (
    ANSWER_TIMEOUT_S,
    AckRequest,
    Help,
    Invalid,
    LineEditor,
    Quit,
    RenderOptions,
    WatchState,
    ack_payload,
    parse_command,
    parse_time,
    render,
    resolve_alert,
    visible_clip,
)

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 60.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# --- payloads as docs/mqtt.md shows them --------------------------------------------

NOW = parse_time("2026-11-30T08:00:30Z") or 0.0


def payload(data: Any) -> bytes:
    return json.dumps(data).encode()


def fed(*messages: tuple[str, Any], gw: str = "bed-12") -> WatchState:
    """A WatchState fed ``(topic below pumpgw/{gw}/, payload)`` pairs; payloads that
    are not bytes are JSON-encoded."""
    state = WatchState("pumpgw")
    for tail, data in messages:
        raw = data if isinstance(data, bytes) else payload(data)
        state.feed(f"pumpgw/{gw}/{tail}", raw, NOW)
    return state


def typical() -> WatchState:
    return fed(
        ("status", b"online"),
        ("info", INFO),
        ("pumps/PMP-0001/state", STATE),
        ("pumps/PMP-0001/alerts/reservoir_low", ALERT),
        ("pumps/PMP-0001/alerts/battery_low", BATTERY),
    )


def text(state: WatchState, **options: Any) -> str:
    return "\n".join(render(state, NOW, RenderOptions(**options)))


def line_with(rendered: str, *needles: str) -> str:
    lines = [ln for ln in rendered.splitlines() if all(n in ln for n in needles)]
    assert len(lines) == 1, f"{needles} in {len(lines)} lines of:\n{rendered}"
    return lines[0]


# --- the state model and the view -----------------------------------------------------


def test_the_payloads_here_are_the_contracts() -> None:
    Info.model_validate(INFO)
    PumpState.model_validate(STATE)
    Alert.model_validate(ALERT)
    Alert.model_validate(BATTERY)


def test_gateway_pump_and_alerts_are_listed() -> None:
    shown = text(typical())
    assert "\x1b" not in shown
    gateway_line = line_with(shown, "gateway bed-12")
    assert "online" in gateway_line
    assert "programmer link up" in gateway_line
    assert "ACME ITP-200 PRG00042 fw 2.3.1" in gateway_line
    pump = line_with(shown, "PMP-0001", "Bed 12")
    for value in ("12.4 mL", "17.3 d", "81 %", "29s ago"):
        assert value in pump
    assert "reservoir_low:critical" in pump and "battery_low:warning (ack)" in pump
    critical = line_with(shown, "CRITICAL", ALERT["alert_id"])
    assert "reservoir_low" in critical and "ACTIVE" in critical
    assert "Reservoir 1.9 mL (critical at 2 mL)" in critical
    warning = line_with(shown, "WARNING", BATTERY["alert_id"])
    assert "acknowledged by nurse-jane at 08:00:05" in warning
    # critical first
    assert shown.index(ALERT["alert_id"]) < shown.index(BATTERY["alert_id"])
    assert "1 gateway(s), 1 pump(s)" in shown


def test_colours_follow_severity() -> None:
    shown = text(typical(), color=True)
    critical = line_with(shown, ALERT["alert_id"])
    assert "\x1b[1;31mCRITICAL" in critical
    assert "\x1b[33mWARNING" in line_with(shown, BATTERY["alert_id"])
    pump = line_with(shown, "Bed 12")
    assert re.search(r"\x1b\[1;31m +12\.4 mL\x1b\[0m", pump)  # the cell of a critical alert
    assert "\x1b[33m   81 %\x1b[0m" in pump
    calm = fed(("status", b"online"), ("pumps/PMP-0001/state", STATE))
    assert "\x1b[32mok\x1b[0m" in line_with(text(calm, color=True), "PMP-0001")


def test_cleared_alerts_leave_the_list() -> None:
    state = typical()
    for alert in (ALERT, BATTERY):
        cleared = {**alert, "state": "cleared"}
        state.feed(f"pumpgw/bed-12/pumps/PMP-0001/alerts/{alert['type']}", payload(cleared), NOW)
    shown = text(state)
    assert ALERT["alert_id"] not in shown and BATTERY["alert_id"] not in shown
    assert line_with(shown, "PMP-0001").endswith(" ok")


def test_stale_pumps_are_marked() -> None:
    old = {**STATE, "pump_id": "PMP-0002", "received_at": "2026-11-30T07:50:00Z"}
    lost = {**STATE, "pump_id": "PMP-0003", "stale": True}
    state = fed(
        ("status", b"online"),
        ("pumps/PMP-0001/state", STATE),
        ("pumps/PMP-0002/state", old),
        ("pumps/PMP-0003/state", lost),
        # configured, never reported: only its alert is known
        (
            "pumps/PMP-0004/alerts/telemetry_lost",
            {
                **ALERT,
                "pump_id": "PMP-0004",
                "type": "telemetry_lost",
                "alert_id": "01M8NQFJ00TELEMETRYLOST0004",
                "message": "No telemetry",
            },
        ),
    )
    shown = text(state)
    assert "STALE" not in line_with(shown, "PMP-0001 ")
    assert "STALE (last reading 10m ago)" in line_with(shown, "PMP-0002 ")
    assert "STALE (no telemetry)" in line_with(shown, "PMP-0003 ")
    never = line_with(shown, "PMP-0004 ", "never")
    assert "?" in never and "telemetry_lost:critical" in never
    assert "STALE" in line_with(text(state, stale_after_s=3600), "PMP-0003 ")
    assert "STALE" not in line_with(text(state, stale_after_s=3600), "PMP-0002 ")

    state.feed("pumpgw/bed-12/status", b"offline", NOW)
    shown = text(state)
    assert "gateway bed-12  OFFLINE" in shown.splitlines()
    assert "STALE (gateway offline)" in line_with(shown, "PMP-0001 ")


def test_gateway_wide_alerts_and_a_down_link() -> None:
    link_lost = {
        **ALERT,
        "pump_id": "_gateway",
        "type": "link_lost",
        "alert_id": "01M8NQFJ00LINKLOST00000000",
        "message": "Programmer link lost",
    }
    state = fed(
        ("info", {**INFO, "link": "down", "link_error": "no answer to HELLO"}),
        ("pumps/_gateway/alerts/link_lost", link_lost),
    )
    shown = text(state)
    assert "programmer link DOWN (no answer to HELLO)" in line_with(shown, "gateway bed-12")
    assert "(gateway)" in line_with(shown, link_lost["alert_id"])
    assert "0 pump(s)" in shown and "_gateway " not in shown


def test_several_gateways_and_a_deleted_retained_message() -> None:
    state = typical()
    state.feed("pumpgw/bed-07/status", b"online", NOW)
    state.feed("pumpgw/bed-07/pumps/PMP-0007/state", payload({**STATE, "pump_id": "PMP-0007"}), NOW)
    shown = text(state)
    assert shown.index("gateway bed-07") < shown.index("gateway bed-12")
    assert "2 gateway(s), 2 pump(s)" in shown
    state.feed("pumpgw/bed-07/pumps/PMP-0007/state", b"", NOW)  # retained message deleted
    assert "PMP-0007" not in text(state)


def test_events_and_status_changes_are_fresh_lines() -> None:
    state = typical()
    assert state.take_fresh() == []  # retained messages are the picture, not news
    event = {
        "event_id": "01M8...",
        "at": "2026-11-30T08:00:29.500Z",
        "kind": "alert_raised",
        "pump_id": "PMP-0001",
        "alert": ALERT,
        "detail": None,
    }
    state.feed("pumpgw/bed-12/events", payload(event), NOW)
    state.feed("pumpgw/bed-12/status", b"offline", NOW)
    fresh = state.take_fresh()
    assert len(fresh) == 2
    assert fresh[0].startswith("08:00:29 bed-12 alert_raised")
    assert "PMP-0001" in fresh[0] and "reservoir_low" in fresh[0] and "critical" in fresh[0]
    assert fresh[1] == "08:00:30 gateway bed-12 is offline"
    refill = {**event, "kind": "refill", "alert": None, "detail": {"after_ml": 19.5}}
    state.feed("pumpgw/bed-12/events", payload(refill), NOW)
    assert state.take_fresh() == [
        '08:00:29 bed-12 refill              PMP-0001  {"after_ml": 19.5}'
    ]
    assert "events" in text(state) and "alert_raised" in text(state)
    assert "events" not in text(state, events=0)


def test_a_payload_cannot_drive_the_terminal() -> None:
    evil = {**STATE, "label": "\x1b[2J\x1b]0;pwned\x07", "flags": ["\x9b31m"]}
    alert = {**ALERT, "message": "\u202eevil\x1b[5m", "acknowledged_by": "\x00x"}
    state = fed(
        ("status", b"on\x1b[31mline"),
        ("pumps/PMP-0001/state", evil),
        ("pumps/PMP-0001/alerts/reservoir_low", alert),
        ("pumps/PMP-0001/alerts/\x1b[1m", alert),
        ("events", {"at": 5, "kind": "\x1b[2J", "alert": {"message": "\x1b"}}),
    )
    shown = text(state)
    for bad in ("\x1b", "\x9b", "\u202e", "\x07", "\x00"):
        assert bad not in shown
    coloured = text(state, color=True)
    assert "\x1b[2J" not in coloured and "\x1b]" not in coloured


def test_what_is_not_the_contract_is_counted_not_fatal() -> None:
    state = fed(
        ("info", b"{not json"),
        ("pumps/PMP-0001/state", [1, 2]),
        ("pumps/PMP-0001/state/extra", STATE),
        ("events", b"\xff\xfe"),
        ("cmd/result", b"null"),
    )
    state.feed("pumpgw/only-one-level", b"x", NOW)
    state.feed("elsewhere/bed-12/status", b"online", NOW)
    assert state.ignored == 7
    assert "7 message(s) under pumpgw/ ignored" in text(state)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=20,
)
FIELDS = sorted({*STATE, *ALERT, *INFO, "at", "kind", "event_id", "ok", "command", "error"})
OBJECTS = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), JSON, max_size=12)
TAILS = st.sampled_from(
    [
        "status",
        "info",
        "events",
        "cmd/result",
        "cmd/ack",
        "pumps/P/state",
        "pumps/P/alerts/reservoir_low",
        "pumps/_gateway/alerts/link_lost",
        "pumps/P",
        "x/y/z",
    ]
)


@settings(max_examples=300, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(TAILS, OBJECTS | JSON | st.binary(max_size=30)), max_size=12))
def test_any_payload_renders(messages: list[tuple[str, Any]]) -> None:
    state = WatchState("pumpgw")
    for tail, data in messages:
        raw = data if isinstance(data, bytes) else json.dumps(data).encode()
        state.feed(f"pumpgw/gw/{tail}", raw, NOW)
    state.ack_sent("gw", "01M8NQFJ004CGAETXH215VGQN2", "nurse", NOW - 60)
    for color in (False, True):
        for line in render(state, NOW, RenderOptions(color=color, device_time=True)):
            assert not any((ch < " " or "\x7f" <= ch <= "\x9f") and ch != "\x1b" for ch in line)
            assert color or "\x1b" not in line
    state.take_fresh()
    resolve_alert(state, "VGQN2")


def test_the_demo_view_has_the_pump_clock() -> None:
    shown = text(typical(), title="pumpgw demo", device_time=True, footer=("Ctrl-C stops",))
    assert shown.startswith("pumpgw demo  2026-11-30 08:00:30Z")
    assert "pump clock" in shown and "2026-11-30 08:00" in line_with(shown, "Bed 12")
    assert shown.endswith("Ctrl-C stops")


# --- what the user types --------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", None),
        ("   ", None),
        ("q", Quit()),
        ("QUIT", Quit()),
        ("help", Help()),
        ("ack 01M8NQ nurse-jane", AckRequest("01M8NQ", "nurse-jane", None)),
        (
            "  ack  VGQN2 jane  called the  patient ",
            AckRequest("VGQN2", "jane", "called the  patient"),
        ),
        ("ack VGQN2", Invalid("usage: ack <alert id> <your name> [note]")),
    ],
)
def test_parse_command(line: str, expected: object) -> None:
    assert parse_command(line) == expected


def test_an_unknown_command_says_what_is_known() -> None:
    command = parse_command("acknowledge X y")
    assert isinstance(command, Invalid) and "unknown command 'acknowledge'" in command.reason
    assert "ack <alert id" in command.reason


def test_alerts_are_named_by_id_or_its_end() -> None:
    state = typical()
    state.feed(
        "pumpgw/bed-07/pumps/PMP-0007/alerts/reservoir_low",
        payload({**ALERT, "pump_id": "PMP-0007", "alert_id": "01M8NQFJ00OTHERBEDXXXXGQN2"}),
        NOW,
    )
    assert resolve_alert(state, ALERT["alert_id"].lower()) == ("bed-12", ALERT["alert_id"])
    assert resolve_alert(state, "vgqn2") == ("bed-12", ALERT["alert_id"])
    assert resolve_alert(state, "XGQN2") == ("bed-07", "01M8NQFJ00OTHERBEDXXXXGQN2")
    assert resolve_alert(state, "GQN2") == "2 alerts end in GQN2: type more of the id"
    assert resolve_alert(state, "QN2") == "give at least the last 4 characters of the alert id"
    assert resolve_alert(state, "ZZZZ") == "no open alert with an id ending in ZZZZ"
    cleared = {**ALERT, "state": "cleared"}
    state.feed("pumpgw/bed-12/pumps/PMP-0001/alerts/reservoir_low", payload(cleared), NOW)
    assert resolve_alert(state, "VGQN2") == "no open alert with an id ending in VGQN2"
    # the full id still goes out: the gateway answers why it cannot be acknowledged
    assert resolve_alert(state, ALERT["alert_id"]) == ("bed-12", ALERT["alert_id"])


def test_the_ack_payload_is_what_the_gateway_accepts() -> None:
    parsed = parse_ack(ack_payload(ALERT["alert_id"], "nurse-jane", "called the patient"))
    assert parsed == AckCommand(
        alert_id=ALERT["alert_id"], by="nurse-jane", note="called the patient"
    )
    with pytest.raises(ValueError, match="by"):
        ack_payload(ALERT["alert_id"], "x" * 65, None)


def test_answers_to_our_acks() -> None:
    state = typical()
    state.ack_sent("bed-12", ALERT["alert_id"], "nurse-jane", NOW)
    assert "waiting for the answer" in text(state)
    ok = {"ok": True, "command": "ack", "alert_id": ALERT["alert_id"], "error": None}
    state.feed("pumpgw/bed-07/cmd/result", payload(ok), NOW)  # another gateway
    state.feed("pumpgw/bed-12/cmd/result", payload({**ok, "command": "silence"}), NOW)
    assert state.answers == {}
    later = render(state, NOW + ANSWER_TIMEOUT_S, RenderOptions())
    assert any("no answer from bed-12 to the ack of" in ln for ln in later)
    state.feed("pumpgw/bed-12/cmd/result", payload(ok), NOW)
    assert state.answers[("bed-12", ALERT["alert_id"])]["ok"] is True
    assert state.pending == {}
    assert f"bed-12: alert {ALERT['alert_id']} acknowledged by nurse-jane" in text(state)

    state.ack_sent("bed-12", "NOPE", "jane", NOW)
    state.feed(
        "pumpgw/bed-12/cmd/result",
        payload(
            {"ok": False, "command": "ack", "alert_id": "NOPE", "error": "unknown alert_id (NOPE)"}
        ),
        NOW,
    )
    assert "bed-12 refused the ack of NOPE: unknown alert_id (NOPE)" in text(state)
    state.take_fresh()
    state.feed("pumpgw/bed-12/cmd/result", payload(ok), NOW)  # someone else's: no news
    assert state.take_fresh() == []


def test_line_editor() -> None:
    editor = LineEditor()
    assert editor.feed("ack 12") == []
    assert editor.buffer == "ack 12"
    assert editor.feed("\x7f\x7f34 jan\x1b[D\x1bOAe") == []  # arrows dropped
    assert editor.buffer == "ack 34 jane"
    assert editor.feed("\x17joe\r\n") == ["ack 34 joe", ""]
    editor.feed("junk\x15q")
    assert editor.buffer == "q"
    editor.feed("\x04")
    assert not editor.eof  # Ctrl-D ends input only on an empty line
    editor.feed("\x7f\x04")
    assert editor.eof


def test_visible_clip_keeps_escapes_whole() -> None:
    line = "\x1b[1;31mCRITICAL\x1b[0m 01M8"
    assert visible_clip(line, 4) == "\x1b[1;31mCRIT\x1b[0m"
    assert visible_clip(line, 100) == line
    assert visible_clip("abcdef", 3) == "abc"


# --- the command line -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ack", "X"], "--ack needs --by NAME"),
        (["--by", "jane"], "--by, --note and --gateway go with --ack"),
        (["--ca-file", "ca.crt"], "need --tls"),
        (["--tls", "--cert-file", "c.crt"], "--cert-file and --key-file go together"),
        (["--password-file", "pw"], "--password-file needs --username"),
        (["--once", "--duration", "3"], "not allowed with argument"),
        (["--username", "u", "--password-file", "/nonexistent/pw"], "No such file"),
        (["--duration", "0"], "--duration must be positive"),
        (["--port", "70000"], "not a port number"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], message: str) -> None:
    done = run_cli("watch", *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_no_broker_is_one_line_and_exit_1() -> None:
    done = run_cli("watch", "--host", "127.0.0.1", "--port", str(free_loopback_port()), "--once")
    assert done.returncode == 1
    assert done.stderr.startswith("pumpgw watch: cannot connect to 127.0.0.1:")
    assert len(done.stderr.strip().splitlines()) == 1


def test_credentials(tmp_path: Path) -> None:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed; `apt-get install -y mosquitto`", pytrace=False)
    wrong, right = tmp_path / "wrong", tmp_path / "right"
    wrong.write_text("guess\n")
    right.write_text("s3cret\nsecond line ignored\n")
    with LocalBroker(prefer="mosquitto", users={"nurse": "s3cret"}) as broker:
        port = str(broker.start().port)
        base = ["watch", "--host", "127.0.0.1", "--port", port, "--username", "nurse"]
        refused = run_cli(*base, "--password-file", str(wrong), "--once")
        assert refused.returncode == 1
        assert "refused the connection: Not authorized" in refused.stderr
        assert "guess" not in refused.stderr + refused.stdout
        empty = run_cli(*base, "--password-file", str(right), "--once")
    assert empty.returncode == 0, empty.stderr
    assert "no gateway has published under pumpgw/ yet" in empty.stdout


# --- end to end: mosquitto, the simulated programmer, the daemon ----------------------


@dataclass
class Bed:
    endpoint: BrokerEndpoint
    sub: Subscriber
    gw: Process
    alert_id: str

    def watch(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("watch", "--host", "127.0.0.1", "--port", str(self.endpoint.port), *args)

    def wait(self, predicate: Any, what: str) -> Received:
        try:
            return self.sub.wait_for(predicate, DEADLINE_S)
        except AssertionError as exc:
            raise AssertionError(
                f"{what}\n{exc}\n--- gateway log:\n{self.gw.log()[-3000:]}"
            ) from None


FAULT = "pumpgw/e2e/pumps/PMP-0003/alerts/pump_fault"


def alert_in(topic: str, state: str, by: str | None = None) -> Any:
    def match(m: Received) -> bool:
        if m.topic != topic or not m.payload:
            return False
        alert = m.json()
        return bool(alert["state"] == state and (by is None or alert["acknowledged_by"] == by))

    return match


@pytest.fixture
def stalled_bed(tmp_path: Path, mosquitto: BrokerEndpoint) -> Iterator[Bed]:
    """PMP-0003 with a stalled motor behind the real daemon; waits for its pump_fault."""
    with (
        Subscriber(mosquitto, "pumpgw/e2e/#") as sub,
        simulator(
            tmp_path, "--speed", "100000", "--seed", "7", "--pump", "PMP-0003=motor-stall"
        ) as (_, port),
    ):
        config = gateway_config(
            tmp_path,
            port=port,
            broker_port=mosquitto.port,
            extra='[pumps."PMP-0003"]\nlabel = "Bed 3"\n',
        )
        with gateway(config) as gw:
            bed = Bed(mosquitto, sub, gw, "")
            bed.alert_id = bed.wait(alert_in(FAULT, "active"), "pump_fault raised").json()[
                "alert_id"
            ]
            yield bed


def test_once_shows_the_fault_and_ack_acknowledges_it(stalled_bed: Bed) -> None:
    bed = stalled_bed
    snapshot = bed.watch("--once")
    assert snapshot.returncode == 0, snapshot.stderr
    assert "\x1b" not in snapshot.stdout  # not a terminal: plain
    assert "online" in line_with(snapshot.stdout, "gateway e2e")
    pump = line_with(snapshot.stdout, "PMP-0003", "Bed 3")
    assert "MOTOR_STALL" in pump and "pump_fault:critical" in pump
    fault = line_with(snapshot.stdout, bed.alert_id)
    assert "CRITICAL" in fault and "pump_fault" in fault and "ACTIVE" in fault

    done = bed.watch(
        "--ack", bed.alert_id, "--by", "nurse", "--note", "checked the pump", "--gateway", "e2e"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"e2e: alert {bed.alert_id} acknowledged by nurse"
    acked = bed.wait(alert_in(FAULT, "acknowledged", "nurse"), "alert acknowledged").json()
    assert acked["alert_id"] == bed.alert_id
    with Subscriber(bed.endpoint, FAULT) as late:  # what a dashboard connecting now sees
        retained = late.wait_for_topic(FAULT).json()
    assert retained["state"] == "acknowledged" and retained["acknowledged_by"] == "nurse"
    after = bed.watch("--once")
    assert "acknowledged by nurse" in line_with(after.stdout, bed.alert_id)

    # By the end of the id, without --gateway: found among the retained alerts.
    again = bed.watch("--ack", bed.alert_id[-6:], "--by", "nurse-2")
    assert again.returncode == 0, again.stderr  # already acknowledged: ok, nothing changes
    unknown = bed.watch("--ack", "01ZZZZZZZZZZZZZZZZZZZZZZZZ", "--by", "nurse", "--gateway", "e2e")
    assert unknown.returncode == 1
    assert unknown.stdout.startswith("e2e refused the ack of 01ZZZZZZZZZZZZZZZZZZZZZZZZ: unknown")
    nowhere = bed.watch("--ack", "ZZZZZZ", "--by", "nurse")
    assert nowhere.returncode == 1
    assert "no open alert with an id ending in ZZZZZZ" in nowhere.stderr

    bed.gw.stop()
    bed.wait(lambda m: m.topic == "pumpgw/e2e/status" and m.payload == b"offline", "offline")
    silent = bed.watch("--ack", bed.alert_id, "--by", "nurse", "--gateway", "e2e", "--timeout", "2")
    assert silent.returncode == 1
    assert "no answer from gateway e2e within 2 s" in silent.stderr
    offline = bed.watch("--once").stdout
    assert "OFFLINE" in line_with(offline, "gateway e2e")
    assert "STALE (gateway offline)" in line_with(offline, "PMP-0003", "Bed 3")


class Terminal:
    """The master side of a pseudo-terminal: everything the program drew, searchable."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.raw = ""

    def read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                self.raw += os.read(self.fd, 65536).decode("utf-8", "replace")
            except OSError:  # EIO: the program closed its side
                time.sleep(timeout)

    @property
    def shown(self) -> str:
        return ANSI.sub("", self.raw)

    def wait_for(self, needle: str, timeout: float = DEADLINE_S) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.shown:
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} never shown; last screen:\n{self.shown[-3000:]}")
            self.read(0.1)

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())


def test_interactive_ack_in_a_pseudo_terminal(stalled_bed: Bed) -> None:
    bed = stalled_bed
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 220, 0, 0))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "watch",
            "--host",
            "127.0.0.1",
            "--port",
            str(bed.endpoint.port),
        ],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        env={**os.environ, "TERM": "xterm", "NO_COLOR": ""},
    )
    term = Terminal(master)
    try:
        term.wait_for(bed.alert_id)
        assert "\x1b[1;31mCRITICAL" in term.raw  # a terminal gets colours
        term.type(f"ack {bed.alert_id[-6:]} nurse-pty checked the catheter")
        term.wait_for("> ack")  # not echoed by the terminal: drawn by the prompt
        term.type("\r")
        term.wait_for(f"e2e: alert {bed.alert_id} acknowledged by nurse-pty")
        event = bed.wait(
            lambda m: m.topic == "pumpgw/e2e/events" and m.json()["kind"] == "alert_acknowledged",
            "alert_acknowledged event",
        ).json()
        assert event["alert"]["acknowledged_by"] == "nurse-pty"
        assert event["detail"] == {"note": "checked the catheter"}
        term.wait_for("(acknowledged by nurse-pty at")  # the alert list, redrawn live
        term.type("ack ZZZZZZ nobody\r")
        term.wait_for("no open alert with an id ending in ZZZZZZ")
        term.type("bogus\r")
        term.wait_for("unknown command 'bogus'")
        term.type("q\r")
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            term.read(0.1)
        assert proc.returncode == 0, term.shown[-2000:]
        mode = termios.tcgetattr(slave)[3]
        assert mode & termios.ECHO and mode & termios.ICANON  # the terminal is given back
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)


def test_watch_without_a_terminal_prints_a_snapshot_then_lines(stalled_bed: Bed) -> None:
    bed = stalled_bed
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "watch",
            "--host",
            "127.0.0.1",
            "--port",
            str(bed.endpoint.port),
            "--duration",
            "30",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    guard = threading.Timer(DEADLINE_S, proc.kill)  # a silent watch ends readline() with EOF
    guard.start()
    try:
        seen = ""
        while bed.alert_id not in seen:
            line = proc.stdout.readline()
            assert line, f"watch ended early:\n{seen}"
            seen += line
        proc.stdin.write(f"ack {bed.alert_id} nurse-pipe\n")
        proc.stdin.flush()
        line = ""
        while "acknowledged by nurse-pipe" not in line:
            line = proc.stdout.readline()
            assert line, "watch ended early"
            seen += line
        proc.stdin.write("q\n")
        proc.stdin.close()
        assert proc.wait(15) == 0
    finally:
        guard.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the clinic bridge (config/mosquitto-bridge.conf) ---------------------------------

# The clinic broker's ACL from docs/raspberry-pi.md: a bed's bridge account (user name =
# gateway id) writes its own topics and reads its own commands; nurses read everything
# and may only acknowledge.
CLINIC_ACL = """\
pattern write pumpgw/%u/#
pattern read pumpgw/%u/cmd/ack
pattern write pumpgw-bridge/%u/state

user nurse
topic read pumpgw/#
topic write pumpgw/+/cmd/ack
"""


CLINIC_USERS = {"bed-12": "bridge-pw", "nurse": "nurse-pw"}


def make_certificates(workdir: Path) -> dict[str, Path]:
    """A test CA and a server certificate for localhost and 127.0.0.1 (openssl)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed; `apt-get install -y openssl`", pytrace=False)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=workdir, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=pumpgw test clinic CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (workdir / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    run(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    )
    return {name: workdir / f"{name}" for name in ("ca.crt", "server.crt", "server.key")}


def substituted(conf: str, values: dict[str, str]) -> str:
    """``conf`` with the value of each directive in ``values`` replaced; every one
    must occur exactly once, as an active line. Nothing else changes."""
    out, seen = [], set()
    for line in conf.splitlines():
        key = line.split(maxsplit=1)[0] if line.strip() and not line.startswith("#") else None
        if key in values:
            assert key not in seen, f"{key} twice in the bridge config"
            seen.add(key)
            line = f"{key} {values[key]}"
        out.append(line)
    assert seen == set(values), f"not in the bridge config: {set(values) - seen}"
    return "\n".join(out) + "\n"


def start_mosquitto(conf: Path, *ports: int) -> Process:
    mosquitto = find_mosquitto()
    if mosquitto is None:
        pytest.fail("mosquitto is not installed; `apt-get install -y mosquitto`", pytrace=False)
    proc = Process([mosquitto, "-c", str(conf)], conf.with_suffix(".log"))
    deadline = time.monotonic() + 10
    for port in ports:
        while True:
            assert proc.proc.poll() is None, f"mosquitto -c {conf.name} exited:\n{proc.log()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"{conf.name}: port {port}:\n{proc.log()}"
                time.sleep(0.05)
    return proc


def password_file(path: Path, users: dict[str, str]) -> Path:
    tool = find_mosquitto_passwd()
    if tool is None:
        pytest.fail("mosquitto_passwd is not installed (package mosquitto)", pytrace=False)
    for i, (name, password) in enumerate(users.items()):
        flags = ["-b", "-c"] if i == 0 else ["-b"]
        subprocess.run([tool, *flags, str(path), name, password], check=True, capture_output=True)
    return path


@dataclass
class ClinicRun:
    """A bed (simulator, daemon, bedside mosquitto running the bridge config) feeding
    the clinic mosquitto (TLS, passwords, the guide's ACL)."""

    tmp: Path
    certs: dict[str, Path]
    tls_port: int
    sees: Subscriber  # everything on the clinic broker, through a test-only plain listener
    clinic: Process
    bedside: Process
    gw: Process

    def watch(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``pumpgw watch`` at a nurses' station: TLS with the clinic CA, a password."""
        nurse_pw = self.tmp / "nurse-pw"
        nurse_pw.write_text(CLINIC_USERS["nurse"] + "\n")
        return run_cli("watch", "--host", "localhost", "--port", str(self.tls_port), "--tls",
                       "--ca-file", str(self.certs["ca.crt"]), "--username", "nurse",
                       "--password-file", str(nurse_pw), *args)  # fmt: skip

    def wait(self, predicate: Any, what: str) -> Received:
        try:
            return self.sees.wait_for(predicate, DEADLINE_S)
        except AssertionError as exc:
            logs = {"bedside": self.bedside, "clinic": self.clinic, "gateway": self.gw}
            tails = "".join(f"\n--- {k}:\n{p.log()[-2000:]}" for k, p in logs.items())
            raise AssertionError(f"{what}\n{exc}{tails}") from None


@pytest.fixture
def clinic_run(tmp_path: Path) -> Iterator[ClinicRun]:
    certs = make_certificates(tmp_path)
    me = getpass.getuser()  # mosquitto started as root would switch to user "mosquitto"
    tls_port, plain_port, bedside_port = (free_loopback_port() for _ in range(3))
    (tmp_path / "clinic.acl").write_text(CLINIC_ACL)
    clinic_conf = tmp_path / "clinic.conf"
    clinic_conf.write_text(
        f"""\
per_listener_settings true
persistence false
user {me}
log_dest stderr
listener {tls_port} 127.0.0.1
cafile {certs["ca.crt"]}
certfile {certs["server.crt"]}
keyfile {certs["server.key"]}
allow_anonymous false
password_file {password_file(tmp_path / "clinic.passwd", CLINIC_USERS)}
acl_file {tmp_path / "clinic.acl"}
# for the test's own observer only
listener {plain_port} 127.0.0.1
allow_anonymous true
"""
    )
    bridge = (ROOT / "config" / "mosquitto-bridge.conf").read_text()
    bedside_conf = tmp_path / "bedside.conf"
    bedside_conf.write_text(
        substituted(
            bridge,
            {
                "listener": f"{bedside_port} 127.0.0.1",
                "persistence_location": f"{tmp_path / 'bedside-db'}/",
                "address": f"127.0.0.1:{tls_port}",
                "bridge_cafile": str(certs["ca.crt"]),
                "remote_password": CLINIC_USERS["bed-12"],
            },
        )
        + f"user {me}\n"
    )
    (tmp_path / "bedside-db").mkdir()
    with contextlib.ExitStack() as stack:
        clinic = start_mosquitto(clinic_conf, tls_port, plain_port)
        stack.callback(clinic.stop)
        observer = BrokerEndpoint("127.0.0.1", plain_port, None, "mosquitto")
        sees = stack.enter_context(Subscriber(observer, "#"))
        bedside = start_mosquitto(bedside_conf, bedside_port)
        stack.callback(bedside.stop)
        _, port = stack.enter_context(
            simulator(
                tmp_path, "--speed", "100000", "--seed", "7", "--pump", "PMP-0003=motor-stall"
            )
        )
        config = gateway_config(tmp_path, port=port, broker_port=bedside_port, gateway_id="bed-12")
        gw = stack.enter_context(gateway(config))
        yield ClinicRun(tmp_path, certs, tls_port, sees, clinic, bedside, gw)


CLINIC_FAULT = "pumpgw/bed-12/pumps/PMP-0003/alerts/pump_fault"


def test_the_bridge_brings_the_bed_to_the_clinic_and_acks_back(clinic_run: ClinicRun) -> None:
    run = clinic_run
    run.wait(lambda m: m.topic == "pumpgw-bridge/bed-12/state" and m.payload == b"1", "bridge up")
    alert_id = run.wait(alert_in(CLINIC_FAULT, "active"), "pump_fault at the clinic").json()[
        "alert_id"
    ]
    snapshot = run.watch("--once")
    assert snapshot.returncode == 0, snapshot.stderr
    assert "online" in line_with(snapshot.stdout, "gateway bed-12")
    assert "pump_fault:critical" in line_with(snapshot.stdout, "PMP-0003", "MOTOR_STALL")
    assert "pump_fault" in line_with(snapshot.stdout, alert_id)

    done = run.watch("--ack", alert_id, "--by", "nurse", "--gateway", "bed-12")
    assert done.returncode == 0, done.stderr
    run.wait(alert_in(CLINIC_FAULT, "acknowledged", "nurse"), "acknowledged at the clinic")
    again = run.watch("--ack", alert_id[-6:], "--by", "nurse")  # the gateway looked up
    assert again.returncode == 0, again.stderr
    # Each ack crossed the bridge once and each answer came back once: a message is not
    # sent back over the bridge it came in on, although pumpgw/# goes out.
    run.wait(lambda m: len(run.sees.messages("pumpgw/bed-12/cmd/result")) >= 2, "2 answers")
    assert len(run.sees.messages("pumpgw/bed-12/cmd/ack")) == 2
    assert len(run.sees.messages("pumpgw/bed-12/cmd/result")) == 2

    run.bedside.stop()  # local persistence: the bridge's queue and session saved on the way out
    assert (run.tmp / "bedside-db" / "mosquitto.db").is_file()
    run.wait(lambda m: m.topic == "pumpgw-bridge/bed-12/state" and m.payload == b"0", "bridge down")


def test_the_clinic_broker_checks_the_ca_and_the_acl(clinic_run: ClinicRun) -> None:
    run = clinic_run
    run.wait(lambda m: m.topic == "pumpgw/bed-12/status" and m.payload == b"online", "online")
    # The system's CAs do not know the test CA: refused, one line.
    untrusted = run_cli("watch", "--host", "localhost", "--port", str(run.tls_port), "--tls",
                        "--once")  # fmt: skip
    assert untrusted.returncode == 1
    assert "certificate verify failed" in untrusted.stderr
    # A nurse may acknowledge, not pose as a bed.
    nurse = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    nurse.username_pw_set("nurse", CLINIC_USERS["nurse"])
    nurse.tls_set(ca_certs=str(run.certs["ca.crt"]))
    nurse.connect("localhost", run.tls_port)
    nurse.loop_start()
    try:
        for topic in ("pumpgw/bed-12/status", "pumpgw/bed-99/cmd/ack"):
            nurse.publish(topic, b"offline", qos=1).wait_for_publish(10)
    finally:
        nurse.disconnect()
        nurse.loop_stop()
    run.wait(lambda m: m.topic == "pumpgw/bed-99/cmd/ack", "the allowed publish")
    # ... which was sent after the forbidden one, on the same connection
    assert b"offline" not in [m.payload for m in run.sees.messages("pumpgw/bed-12/status")]


# --- the udev rule (config/99-pumpgw.rules) -------------------------------------------

UDEV_TOKEN = re.compile(r'\s*([A-Z_]+)(?:\{([^}]*)\})?(==|!=|\+=|:=|=)"([^"]*)"\s*(?:,|$)')
MATCH_ONLY = {"SUBSYSTEM", "SUBSYSTEMS", "KERNEL", "KERNELS", "ACTION", "ATTRS", "DRIVERS"}
ASSIGN_ONLY = {"SYMLINK", "GROUP", "MODE", "OWNER", "TAG", "RUN", "NAME"}


def udev_rules(text: str) -> list[list[tuple[str, str | None, str, str]]]:
    """Each rule as (key, attribute, operator, value) tokens; a line that does not parse
    whole, or a match key assigned or an assignment key matched, fails the test."""
    rules = []
    for line in text.replace("\\\n", "").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tokens, pos = [], 0
        while pos < len(line):
            m = UDEV_TOKEN.match(line, pos)
            assert m, f"cannot parse the rule at: {line[pos:]!r}"
            key, attr, op, value = m.groups()
            matching = op in ("==", "!=")
            assert key not in MATCH_ONLY or matching, f"{key}{op}: {key} can only be matched"
            assert key not in ASSIGN_ONLY or not matching, f"{key}{op}: {key} is assigned"
            tokens.append((key, attr, op, value))
            pos = m.end()
        rules.append(tokens)
    return rules


def apply_udev(
    rules: list[list[tuple[str, str | None, str, str]]], device: dict[str, Any]
) -> dict[str, Any]:
    """What the rules assign to a device (simple globs; ATTRS from the device's
    parents, as udev walks up)."""

    def matches(key: str, attr: str | None, op: str, value: str) -> bool:
        have = device.get(key) if attr is None else device.get(key, {}).get(attr)
        hit = have is not None and any(
            re.fullmatch(v.replace("*", ".*"), str(have)) for v in value.split("|")
        )
        return hit if op == "==" else not hit

    result: dict[str, Any] = {"SYMLINK": []}
    for rule in rules:
        if all(matches(*t) for t in rule if t[2] in ("==", "!=")):
            for key, attr, _op, value in (t for t in rule if t[2] not in ("==", "!=")):
                if key == "SYMLINK":
                    result["SYMLINK"] += value.split()
                elif key == "ENV":
                    result.setdefault("ENV", {})[attr] = value
                else:
                    result[key] = value
    return result


def test_udev_rule_names_the_programmer_and_keeps_modemmanager_off() -> None:
    rules = udev_rules((ROOT / "config" / "99-pumpgw.rules").read_text())
    programmer = {
        "SUBSYSTEM": "tty",
        "KERNEL": "ttyUSB0",
        "ATTRS": {"idVendor": "0403", "idProduct": "6001", "serial": "PRG00042"},
    }
    assigned = apply_udev(rules, programmer)
    assert assigned["SYMLINK"] == ["pumpgw-programmer"]
    assert assigned["ENV"] == {"ID_MM_DEVICE_IGNORE": "1"}
    assert assigned["GROUP"] == "dialout" and assigned["MODE"] == "0660"
    another = {**programmer, "ATTRS": {**programmer["ATTRS"], "serial": "OTHER"}}
    assert apply_udev(rules, another) == {"SYMLINK": []}
    usb_parent = {**programmer, "SUBSYSTEM": "usb"}  # the USB device itself, not its tty
    assert apply_udev(rules, usb_parent) == {"SYMLINK": []}
    guide = (ROOT / "docs" / "raspberry-pi.md").read_text()
    assert "/dev/pumpgw-programmer" in guide and "99-pumpgw.rules" in guide
