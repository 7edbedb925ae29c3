"""The durable outbox and the engine snapshot, on a real SQLite file."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.ptp import Flag, Stat
from gateway.config import parse_config
from gateway.contract import AlertState, AlertType
from gateway.engine import (
    Acknowledge,
    LinkChanged,
    Reading,
    Tick,
    dump_state,
    initial_state,
    restore_state,
    step,
)
from gateway.outbox import Outbox, Outgoing

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def event(n: int) -> Outgoing:
    return Outgoing("p/gw/events", f'{{"n": {n}}}'.encode(), retain=False)


def state(pump: str, n: int) -> Outgoing:
    return Outgoing(f"p/gw/pumps/{pump}/state", f'{{"n": {n}}}'.encode(), True, coalesce=True)


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox.sqlite3", max_bytes=10_000)


def test_pending_in_write_order_and_deleted_on_ack(outbox: Outbox) -> None:
    outbox.write([event(1), event(2)])
    outbox.write([event(3)])
    rows = outbox.pending(10)
    assert [r.payload for r in rows] == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
    assert outbox.pending(10, after_id=rows[0].row_id)[0].payload == b'{"n": 2}'
    outbox.delete([rows[0].row_id, rows[2].row_id, 999])
    assert [r.payload for r in outbox.pending(10)] == [b'{"n": 2}']
    assert outbox.rows == 1 and outbox.bytes == len(b'{"n": 2}')


def test_state_is_coalesced_per_topic_and_moves_to_the_end(outbox: Outbox) -> None:
    outbox.write([state("A", 1), event(1), state("B", 1)])
    outbox.write([state("A", 2)])
    rows = outbox.pending(10)
    assert [(r.topic.split("/")[-2], r.payload) for r in rows] == [
        ("gw", b'{"n": 1}'),
        ("B", b'{"n": 1}'),
        ("A", b'{"n": 2}'),
    ]
    assert outbox.rows == 3


def test_survives_reopen_with_engine_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    first = Outbox(path, 10_000)
    first.write([event(1)], engine_snapshot='{"x": 1}')
    first.write([], engine_snapshot='{"x": 2}')
    first.close()  # as if killed: nothing else is flushed by close
    again = Outbox(path, 10_000)
    assert again.load_engine_snapshot() == '{"x": 2}'
    assert [r.payload for r in again.pending(10)] == [b'{"n": 1}']
    assert again.rows == 1


def test_failed_write_stores_nothing(outbox: Outbox) -> None:
    outbox.write([event(1)], engine_snapshot="old")
    bad = Outgoing("t", None, retain=False)  # type: ignore[arg-type]  # NOT NULL fails
    with pytest.raises(sqlite3.IntegrityError):
        outbox.write([event(2), bad], engine_snapshot="new")
    assert [r.payload for r in outbox.pending(10)] == [b'{"n": 1}']
    assert outbox.load_engine_snapshot() == "old"
    assert outbox.rows == 1


def test_discovery_record_is_written_with_its_messages_and_survives_reopen(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite3"
    first = Outbox(path, 10_000)
    assert first.load_discovery_record() is None
    config = Outgoing("ha/sensor/gw/p/config", b"{}", retain=True, coalesce=True)
    first.write([config], discovery_record='{"devices": 1}')
    first.write([event(1)], engine_snapshot="snap")  # no record: the stored one stays
    bad = Outgoing("t", None, retain=False)  # type: ignore[arg-type]  # NOT NULL fails
    with pytest.raises(sqlite3.IntegrityError):
        first.write([bad], discovery_record='{"devices": 2}')
    first.close()
    again = Outbox(path, 10_000)
    assert again.load_discovery_record() == '{"devices": 1}'
    assert again.load_engine_snapshot() == "snap"
    again.write([], discovery_record='{"devices": 3}')  # a record alone is stored too
    assert again.load_discovery_record() == '{"devices": 3}'
    assert [r.topic for r in again.pending(10)] == ["ha/sensor/gw/p/config", "p/gw/events"]


def test_byte_limit_drops_old_state_first_and_never_alerts(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", max_bytes=100)
    big_state = [
        Outgoing(f"s/{i}", b"x" * 30, retain=True, coalesce=True) for i in range(3)
    ]  # 90 bytes
    outbox.write(big_state)
    outbox.write([Outgoing("e", b"y" * 40, retain=False)])  # 130 > 100: drop the oldest
    assert [r.topic for r in outbox.pending(10)] == ["s/1", "s/2", "e"]
    assert not outbox.over_limit and outbox.coalesced_dropped == 1
    outbox.write([Outgoing("e", b"z" * 100, retain=False)])  # only events left: keep all
    assert [r.topic for r in outbox.pending(10)] == ["e", "e"]
    assert outbox.over_limit
    outbox.delete([r.row_id for r in outbox.pending(1)])
    assert not outbox.over_limit


def _stat(res: float, flags: Flag) -> Stat:
    return Stat(1, "PMP-0001", T0, res, 20.0, 2.0, 80, 3.0, 300.0, 500.0, flags)


def test_engine_snapshot_restores_alerts_ids_and_acks() -> None:
    cfg = parse_config({"serial": {"port": "x"}, "gateway": {"id": "gw"}})
    s = initial_state(cfg, T0)
    s = step(s, LinkChanged(True, "up"), T0, cfg).state
    s = step(s, Reading(_stat(1.5, Flag.MOTOR_STALL)), T0, cfg).state
    fault = s.pumps["PMP-0001"].alerts[AlertType.PUMP_FAULT]
    s = step(s, Acknowledge(fault.alert_id, "nurse", None), T0, cfg).state

    later = T0 + timedelta(hours=1)
    restored = restore_state(dump_state(s), initial_state(cfg, later), later)
    alerts = restored.pumps["PMP-0001"].alerts
    assert alerts == s.pumps["PMP-0001"].alerts
    assert alerts[AlertType.PUMP_FAULT].state is AlertState.ACKNOWLEDGED
    assert restored.next_id == s.next_id
    assert not restored.link_up

    # The same reading again after the restart raises nothing new.
    out = step(restored, Reading(_stat(1.5, Flag.MOTOR_STALL)), later, cfg)
    assert [e.kind.value for e in out.events] == []
    # Silence clocks restart: a full telemetry_timeout_s from the restart.
    ticked = step(restored, Tick(), later + timedelta(seconds=179), cfg).events
    assert [e for e in ticked if e.alert and e.alert.type is AlertType.TELEMETRY_LOST] == []


def test_snapshot_of_another_gateway_is_refused() -> None:
    cfg = parse_config({"serial": {"port": "x"}, "gateway": {"id": "gw"}})
    other = parse_config({"serial": {"port": "x"}, "gateway": {"id": "other"}})
    text = dump_state(initial_state(other, T0))
    with pytest.raises(ValueError, match="belongs to gateway"):
        restore_state(text, initial_state(cfg, T0), T0)
