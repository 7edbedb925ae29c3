"""The pure alert engine: thresholds, hysteresis, episodes, acks, silences, projection.

Every test runs on a simulated clock: ``Bench`` holds the engine state and a
``now`` that only moves when a test says so.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from drivers.ptp import Evt, Flag, Stat
from gateway.config import Config, parse_config
from gateway.contract import (
    GATEWAY_PUMP,
    Alert,
    AlertState,
    AlertType,
    Event,
    EventKind,
    Severity,
)
from gateway.engine import (
    Acknowledge,
    EngineInput,
    EngineState,
    InvalidData,
    Lifecycle,
    LinkChanged,
    Outcome,
    ProgrammerRestarted,
    PumpEventReceived,
    Reading,
    Tick,
    initial_state,
    step,
)

T0 = datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC)
# For the long runs at a level volume (2000 readings a minute apart): the drain
# rate is never established, so flow_deviation (a level reservoir is a stalled
# pump) stays out of tests about other rules. test_engine_clinical.py tests it.
NO_MEASURED_DRAIN: dict[str, Any] = {"flow_window_h": 336, "flow_min_span_h": 335}
PUMP = "PMP-0001"
OTHER = "PMP-0002"
WARNING, CRITICAL = Severity.WARNING, Severity.CRITICAL
NO_FLAGS = Flag(0)
_UNSET: Any = object()


# --- builders -----------------------------------------------------------------


def stat(
    res: float | None = 12.4,
    bat: int | None = 81,
    flags: Flag | None = NO_FLAGS,
    *,
    pump: str = PUMP,
    seq: int = 17,
    time: datetime | None = T0,
    cap: float | None = 20.0,
    lra: float | None = 2.0,
    bat_v: float | None = 3.01,
    dose: float | None = 300.0,
    conc: float | None = 500.0,
) -> Stat:
    """A STAT with the contract example's healthy values unless told otherwise."""
    return Stat(seq, pump, time, res, cap, lra, bat, bat_v, dose, conc, flags)


def make_config(
    thresholds: dict[str, Any] | None = None,
    pumps: dict[str, dict[str, Any]] | None = None,
    serial: dict[str, Any] | None = None,
) -> Config:
    return parse_config(
        {
            "gateway": {"id": "bed-12"},
            "serial": {"port": "/dev/null", **(serial or {})},
            "thresholds": thresholds or {},
            "pumps": pumps or {},
        }
    )


@dataclass
class Bench:
    """The engine on a simulated clock: feeds inputs, keeps the state and every event."""

    config: Config = field(default_factory=make_config)
    now: datetime = T0
    state: EngineState = field(init=False)
    link_up: bool = True  # start with the programmer connected (no link_lost noise)
    events: list[Event] = field(default_factory=list)
    seq: int = 0

    def __post_init__(self) -> None:
        self.state = initial_state(self.config, self.now)
        if self.link_up:
            self.state = step(self.state, LinkChanged(True, "HELLO"), self.now, self.config).state

    def feed(self, inp: EngineInput, after: timedelta = timedelta(0)) -> Outcome:
        self.now += after
        out = step(self.state, inp, self.now, self.config)
        self.state = out.state
        self.events.extend(out.events)
        return out

    def read(self, *, after: timedelta = timedelta(seconds=60), **kwargs: Any) -> Outcome:
        """One valid STAT, ``after`` the previous input (device clock = gateway clock)."""
        self.now += after
        self.seq = (self.seq + 1) % 65536
        kwargs.setdefault("time", self.now)
        return self.feed(Reading(stat(seq=self.seq, **kwargs)))

    def read_value(self, key: str, value: Any) -> Outcome:
        """One STAT with one field (``res``, ``bat``, ...) set."""
        return self.read(**{key: value})

    def tick(self, after: timedelta) -> Outcome:
        return self.feed(Tick(), after)

    def alert(self, alert_type: AlertType, pump: str = PUMP) -> Alert | None:
        if pump == GATEWAY_PUMP:
            return self.state.gateway_alerts.get(alert_type)
        track = self.state.pumps.get(pump)
        return None if track is None else track.alerts.get(alert_type)

    def severity(self, alert_type: AlertType, pump: str = PUMP) -> Severity | None:
        alert = self.alert(alert_type, pump)
        return None if alert is None else alert.severity


def transitions(events: list[Event], alert_type: AlertType | None = None) -> list[str]:
    """``kind`` of each alert event (of one type when given), e.g. ``['alert_raised']``."""
    return [
        e.kind.value
        for e in events
        if e.alert is not None and (alert_type is None or e.alert.type is alert_type)
    ]


def of_type(events: list[Event], alert_type: AlertType) -> list[Event]:
    """The alert events of one type (other rules may speak up on the same reading)."""
    return [e for e in events if e.alert is not None and e.alert.type is alert_type]


def fingerprint(state: EngineState) -> Any:
    """Everything in an engine state, as plain comparable values."""
    return (
        state.gateway_id,
        {
            pid: (
                t.watch_since,
                t.valid_streak,
                None if t.last_state is None else t.last_state.model_dump(),
                {k: a.model_dump() for k, a in t.alerts.items()},
            )
            for pid, t in state.pumps.items()
        },
        {k: a.model_dump() for k, a in state.gateway_alerts.items()},
        state.link_up,
        state.link_since,
        state.link_reason,
        state.next_id,
    )


# --- reservoir_low and battery_low: thresholds ----------------------------------


@pytest.mark.parametrize(
    ("res", "expected"),
    [
        (5.01, None),  # just above warning
        (5.0, WARNING),  # at warning
        (4.99, WARNING),  # just below warning
        (2.01, WARNING),  # just above critical
        (2.0, CRITICAL),  # at critical
        (1.99, CRITICAL),  # just below critical
        (0.0, CRITICAL),
    ],
)
def test_reservoir_low_thresholds(res: float, expected: Severity | None) -> None:
    bench = Bench()
    out = bench.read(res=res)
    assert bench.severity(AlertType.RESERVOIR_LOW) is expected
    # (a low volume also brings the refill forward: refill_due has its own tests)
    if expected is None:
        assert of_type(out.events, AlertType.RESERVOIR_LOW) == []
    else:
        (event,) = of_type(out.events, AlertType.RESERVOIR_LOW)
        assert event.kind is EventKind.ALERT_RAISED
        assert event.alert is not None
        assert event.alert.state is AlertState.ACTIVE
        assert event.alert.value == res
        assert event.alert.threshold == (5.0 if expected is WARNING else 2.0)
        assert event.alert.raised_at == bench.now


@pytest.mark.parametrize(
    ("bat", "expected"),
    [
        (26, None),
        (25, WARNING),
        (24, WARNING),
        (11, WARNING),
        (10, CRITICAL),
        (9, CRITICAL),
        (0, CRITICAL),
    ],
)
def test_battery_low_thresholds(bat: int, expected: Severity | None) -> None:
    bench = Bench()
    out = bench.read(bat=bat)
    assert bench.severity(AlertType.BATTERY_LOW) is expected
    assert transitions(out.events) == ([] if expected is None else ["alert_raised"])
    if expected is not None:
        alert = bench.alert(AlertType.BATTERY_LOW)
        assert alert is not None
        assert alert.threshold == (25 if expected is WARNING else 10)


def test_healthy_reading_raises_nothing() -> None:
    bench = Bench()
    out = bench.read()
    assert out.events == []
    assert bench.state.active_alerts() == []
    assert len(out.pump_states) == 1


# --- escalation, severity within an episode, clearing ---------------------------

VALUE_RULES = [
    # alert type, stat keyword, warning value, critical value, healthy value
    # (2.4 -> 1.5 -> 2.4: a reservoir rising by more than 1 mL would be a refill)
    pytest.param(AlertType.RESERVOIR_LOW, "res", 2.4, 1.5, 12.4, id="reservoir"),
    pytest.param(AlertType.BATTERY_LOW, "bat", 20, 5, 81, id="battery"),
]


@pytest.mark.parametrize(("alert_type", "key", "warn", "crit", "healthy"), VALUE_RULES)
def test_escalation_keeps_alert_id(
    alert_type: AlertType, key: str, warn: float, crit: float, healthy: float
) -> None:
    bench = Bench()
    bench.read_value(key, warn)
    raised = bench.alert(alert_type)
    assert raised is not None
    out = bench.read_value(key, crit)
    (event,) = of_type(out.events, alert_type)
    assert event.kind is EventKind.ALERT_ESCALATED
    assert event.alert is not None
    assert event.alert.alert_id == raised.alert_id
    assert event.alert.severity is CRITICAL
    assert event.alert.raised_at == raised.raised_at
    assert event.alert.updated_at == bench.now
    assert event.alert.value == crit
    assert bench.alert(alert_type) == event.alert


@pytest.mark.parametrize(("alert_type", "key", "warn", "crit", "healthy"), VALUE_RULES)
def test_severity_never_drops_within_an_episode(
    alert_type: AlertType, key: str, warn: float, crit: float, healthy: float
) -> None:
    bench = Bench()
    bench.read_value(key, crit)
    alert_id = bench.alert(alert_type).alert_id  # type: ignore[union-attr]
    bench.read_value(key, warn)  # better, but still in the warning band
    assert bench.severity(alert_type) is CRITICAL
    bench.read_value(key, warn)
    bench.read_value(key, crit)  # worse again: already critical, nothing new
    assert transitions(bench.events, alert_type) == ["alert_raised"]
    bench.read_value(key, healthy)
    assert transitions(bench.events, alert_type) == ["alert_raised", "alert_cleared"]
    cleared = of_type(bench.events, alert_type)[-1].alert
    assert cleared is not None
    assert cleared.alert_id == alert_id
    assert cleared.state is AlertState.CLEARED
    assert cleared.severity is CRITICAL  # the episode's worst, kept in the record
    assert bench.alert(alert_type) is None


# The reservoir climbs ``via`` readings at most 1 mL apart and all inside the
# hysteresis band: a rise of more than 1 mL is a refill, which ends the episode
# without hysteresis (see test_engine_clinical.py).
CLIMB_FROM_4 = (4.9,)
CLIMB_FROM_1 = (1.9, 2.8, 3.7, 4.6)


@pytest.mark.parametrize(
    ("key", "raise_at", "via", "value", "clears"),
    [
        # reservoir: warning 5.0 + hysteresis 0.5 -> clears only above 5.5
        ("res", 4.0, CLIMB_FROM_4, 5.01, False),
        ("res", 4.0, CLIMB_FROM_4, 5.4, False),
        ("res", 4.0, CLIMB_FROM_4, 5.5, False),  # exactly threshold + margin still holds
        ("res", 4.0, CLIMB_FROM_4, 5.51, True),
        ("res", 4.0, (*CLIMB_FROM_4, 5.5), 6.0, True),
        ("res", 1.0, CLIMB_FROM_1, 5.5, False),  # from critical the same margin applies
        ("res", 1.0, CLIMB_FROM_1, 5.51, True),
        # battery: warning 25 + hysteresis 3 -> clears only at 29 or more
        ("bat", 20, (), 26, False),
        ("bat", 20, (), 28, False),
        ("bat", 20, (), 29, True),
        ("bat", 5, (), 28, False),
        ("bat", 5, (), 29, True),
    ],
)
def test_clearing_needs_the_hysteresis_margin(
    key: str, raise_at: float, via: tuple[float, ...], value: float, clears: bool
) -> None:
    alert_type = AlertType.RESERVOIR_LOW if key == "res" else AlertType.BATTERY_LOW
    bench = Bench()
    bench.read_value(key, raise_at)
    for between in via:
        assert of_type(bench.read_value(key, between).events, alert_type) == []
    out = bench.read_value(key, value)
    assert transitions(out.events, alert_type) == (["alert_cleared"] if clears else [])
    assert (bench.alert(alert_type) is None) is clears


@pytest.mark.parametrize(
    ("key", "low", "high"),
    [
        ("res", 4.9, 5.45),  # across the warning threshold, inside the margin
        ("res", 1.95, 2.05),  # across the critical threshold
        ("bat", 24, 27),
        ("bat", 9, 11),
    ],
)
def test_wobbling_value_does_not_flap(key: str, low: float, high: float) -> None:
    alert_type = AlertType.RESERVOIR_LOW if key == "res" else AlertType.BATTERY_LOW
    bench = Bench(make_config(NO_MEASURED_DRAIN))
    for i in range(2000):
        bench.read_value(key, low if i % 2 == 0 else high)
    assert transitions(bench.events, alert_type) == ["alert_raised"]


def test_wobble_around_the_clearing_point_clears_once() -> None:
    bench = Bench(make_config(NO_MEASURED_DRAIN))
    bench.read(res=4.0)
    bench.read(res=4.9)  # no jump of more than 1 mL: that would be a refill
    for i in range(2000):
        bench.read(res=5.45 if i % 2 == 0 else 5.6)  # 5.6 clears, 5.45 does not re-raise
    assert transitions(bench.events, AlertType.RESERVOIR_LOW) == ["alert_raised", "alert_cleared"]


def test_noisy_drain_through_both_thresholds_gives_one_episode() -> None:
    rng = random.Random(20261130)
    bench = Bench()
    res = 8.0
    while res > 0.5:
        res -= 0.002
        bench.read(res=round(max(0.0, res + rng.uniform(-0.2, 0.2)), 2))
    for _ in range(200):  # refilled, still noisy
        bench.read(res=round(19.0 + rng.uniform(-0.2, 0.2), 2))
    assert transitions(bench.events, AlertType.RESERVOIR_LOW) == [
        "alert_raised",
        "alert_escalated",
        "alert_cleared",
    ]
    ids = {e.alert.alert_id for e in of_type(bench.events, AlertType.RESERVOIR_LOW) if e.alert}
    assert len(ids) == 1


def test_new_episode_after_a_clear_gets_a_new_alert_id() -> None:
    bench = Bench()
    bench.read(res=4.0)
    first = bench.alert(AlertType.RESERVOIR_LOW)
    bench.read(res=12.0)
    bench.read(res=4.5)
    second = bench.alert(AlertType.RESERVOIR_LOW)
    assert first is not None
    assert second is not None
    assert second.alert_id != first.alert_id
    assert second.raised_at == bench.now
    assert second.state is AlertState.ACTIVE
    assert transitions(bench.events, AlertType.RESERVOIR_LOW) == [
        "alert_raised",
        "alert_cleared",
        "alert_raised",
    ]
    cleared = of_type(bench.events, AlertType.RESERVOIR_LOW)[1]
    assert cleared.alert.alert_id == first.alert_id  # type: ignore[union-attr]


# --- unknown values --------------------------------------------------------------


UNKNOWN_READINGS = [
    pytest.param({"res": None}, id="res-unknown"),
    pytest.param({"bat": None}, id="bat-unknown"),
    pytest.param({"res": None, "bat": None}, id="both-unknown"),
    pytest.param({"flags": None}, id="flags-unknown"),
    pytest.param({"res": None, "bat": None, "flags": None}, id="all-unknown"),
    pytest.param(
        {
            "res": None,
            "bat": None,
            "flags": None,
            "time": None,
            "cap": None,
            "lra": None,
            "bat_v": None,
            "dose": None,
            "conc": None,
        },
        id="every-field-unknown",
    ),
]


@pytest.mark.parametrize("unknown", UNKNOWN_READINGS)
def test_unknown_values_never_raise(unknown: dict[str, Any]) -> None:
    bench = Bench()
    out = bench.read(**unknown)
    assert out.events == []
    assert len(out.pump_states) == 1


@pytest.mark.parametrize("unknown", UNKNOWN_READINGS)
def test_unknown_values_never_clear(unknown: dict[str, Any]) -> None:
    bench = Bench()
    bench.read(res=5.0, bat=5, flags=Flag.MOTOR_STALL)
    before = {t: bench.alert(t) for t in AlertType}
    # whatever is still known says "healthy"; the unknown part could still hold the alert
    # (5.9 mL is past the hysteresis band, and no refill: that would end the episode)
    healthy: dict[str, Any] = {"res": 5.9, "bat": 81, "flags": NO_FLAGS, **unknown}
    out = bench.read(**healthy)
    for alert_type in (AlertType.RESERVOIR_LOW, AlertType.BATTERY_LOW):
        key = "res" if alert_type is AlertType.RESERVOIR_LOW else "bat"
        if healthy[key] is None or healthy["flags"] is None:
            assert bench.alert(alert_type) == before[alert_type]
    if healthy["flags"] is None:
        assert bench.alert(AlertType.PUMP_FAULT) == before[AlertType.PUMP_FAULT]
    assert all(e.kind is not EventKind.ALERT_RAISED for e in out.events)


def test_unknown_value_does_not_downgrade_or_clear_a_flag_raised_alert() -> None:
    bench = Bench()
    bench.read(res=None, flags=Flag.EMPTY)
    assert bench.severity(AlertType.RESERVOIR_LOW) is CRITICAL
    out = bench.read(res=None, flags=NO_FLAGS)  # flag gone, value still unknown
    assert out.events == []
    assert bench.severity(AlertType.RESERVOIR_LOW) is CRITICAL
    out = bench.read(res=12.4, flags=NO_FLAGS)  # now everything says healthy
    assert transitions(out.events) == ["alert_cleared"]


# --- flags ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "alert_type", "severity"),
    [
        (Flag.LOW_RES, AlertType.RESERVOIR_LOW, WARNING),
        (Flag.EMPTY, AlertType.RESERVOIR_LOW, CRITICAL),
        (Flag.ERI, AlertType.BATTERY_LOW, WARNING),
        (Flag.EOS, AlertType.BATTERY_LOW, CRITICAL),
        (Flag.MOTOR_STALL, AlertType.PUMP_FAULT, CRITICAL),
        (Flag.NO_LINK, AlertType.TELEMETRY_LOST, CRITICAL),
    ],
)
@pytest.mark.parametrize("values", ["healthy", "unknown"])
def test_flag_raises_on_its_own(
    flag: Flag, alert_type: AlertType, severity: Severity, values: str
) -> None:
    bench = Bench()
    kwargs: dict[str, Any] = {} if values == "healthy" else {"res": None, "bat": None}
    out = bench.read(flags=flag, **kwargs)
    assert [(e.kind, e.alert.type) for e in out.events if e.alert] == [
        (EventKind.ALERT_RAISED, alert_type)
    ]
    assert bench.severity(alert_type) is severity


@pytest.mark.parametrize(
    ("flag", "alert_type"),
    [
        (Flag.LOW_RES, AlertType.RESERVOIR_LOW),
        (Flag.EMPTY, AlertType.RESERVOIR_LOW),
        (Flag.ERI, AlertType.BATTERY_LOW),
        (Flag.EOS, AlertType.BATTERY_LOW),
        (Flag.MOTOR_STALL, AlertType.PUMP_FAULT),
        (Flag.NO_LINK, AlertType.TELEMETRY_LOST),
    ],
)
def test_flag_alert_clears_when_the_flag_goes(flag: Flag, alert_type: AlertType) -> None:
    bench = Bench()
    bench.read(flags=flag)
    out = bench.read(flags=NO_FLAGS)
    assert transitions(out.events, alert_type) == ["alert_cleared"]
    assert bench.alert(alert_type) is None


def test_flag_escalates_a_value_alert() -> None:
    bench = Bench()
    bench.read(res=4.0)
    out = bench.read(res=4.0, flags=Flag.EMPTY)
    assert transitions(out.events) == ["alert_escalated"]
    assert bench.severity(AlertType.RESERVOIR_LOW) is CRITICAL


def test_low_res_flag_with_a_value_inside_the_margin_holds_after_the_flag_goes() -> None:
    bench = Bench()
    bench.read(res=5.2, flags=Flag.LOW_RES)  # 5.2 alone would not raise
    assert bench.severity(AlertType.RESERVOIR_LOW) is WARNING
    out = bench.read(res=5.2, flags=NO_FLAGS)  # but it does hold an active alert
    assert out.events == []
    out = bench.read(res=5.6, flags=NO_FLAGS)
    assert transitions(out.events) == ["alert_cleared"]


def test_no_link_freezes_the_value_rules() -> None:
    bench = Bench()
    bench.read(res=4.0, bat=20, flags=Flag.MOTOR_STALL)
    held = {t: bench.alert(t) for t in AlertType}
    value_rules = (
        AlertType.RESERVOIR_LOW,
        AlertType.REFILL_DUE,
        AlertType.BATTERY_LOW,
        AlertType.PUMP_FAULT,
    )
    assert all(held[t] is not None for t in value_rules)
    # last-known values that would clear (or escalate) everything: all ignored
    for res, bat in ((12.4, 81), (1.0, 5)):
        out = bench.read(res=res, bat=bat, flags=Flag.NO_LINK)
        for alert_type in value_rules:
            assert bench.alert(alert_type) == held[alert_type]
        assert out.pump_states[0].stale is True
        assert all(e.alert is not None for e in out.events)  # no refill seen in old values
    assert bench.severity(AlertType.TELEMETRY_LOST) is CRITICAL
    out = bench.read(res=12.4, bat=81, flags=NO_FLAGS)  # the pump is back, refilled
    cleared = {e.alert.type for e in out.events if e.alert}
    assert cleared == {*value_rules, AlertType.TELEMETRY_LOST}
    assert all(e.kind is EventKind.ALERT_CLEARED for e in out.events if e.alert)
    assert [e.kind for e in out.events if e.alert is None] == [EventKind.REFILL]
    assert out.pump_states[0].stale is False


def test_no_link_ignores_the_other_flags() -> None:
    bench = Bench()
    out = bench.read(flags=Flag.NO_LINK | Flag.EMPTY | Flag.EOS | Flag.MOTOR_STALL)
    assert [e.alert.type for e in out.events if e.alert] == [AlertType.TELEMETRY_LOST]


# --- telemetry_lost by silence -----------------------------------------------------


def test_telemetry_lost_after_timeout_and_not_before() -> None:
    bench = Bench()
    bench.read()
    last = bench.now
    out = bench.tick(timedelta(seconds=179.999))
    assert out.events == []
    assert out.pump_states == []
    bench.now = last
    out = bench.tick(timedelta(seconds=180))
    (event,) = out.events
    assert event.kind is EventKind.ALERT_RAISED
    assert event.alert is not None
    assert event.alert.type is AlertType.TELEMETRY_LOST
    assert event.alert.severity is CRITICAL
    assert event.alert.value == 180
    assert event.alert.threshold == 180
    # the last state is republished, marked stale
    (state,) = out.pump_states
    assert state.stale is True
    assert state.seq == bench.seq
    assert state.reservoir_ml == 12.4
    # further ticks: nothing new
    assert bench.tick(timedelta(minutes=10)).events == []
    assert bench.tick(timedelta(minutes=10)).pump_states == []


def test_telemetry_lost_clears_on_the_next_valid_reading() -> None:
    bench = Bench()
    bench.read()
    bench.tick(timedelta(seconds=200))
    lost = bench.alert(AlertType.TELEMETRY_LOST)
    assert lost is not None
    out = bench.read()
    assert transitions(out.events) == ["alert_cleared"]
    assert out.events[0].alert.alert_id == lost.alert_id  # type: ignore[union-attr]
    assert out.pump_states[0].stale is False
    # the silence is counted again from this reading
    assert bench.tick(timedelta(seconds=179)).events == []
    again = bench.tick(timedelta(seconds=1))
    assert transitions(again.events) == ["alert_raised"]
    assert again.events[0].alert.alert_id != lost.alert_id  # type: ignore[union-attr]


def test_configured_pump_that_never_reports_is_lost() -> None:
    bench = Bench(make_config(pumps={"PMP-0009": {"label": "Bed 9"}}))
    assert bench.tick(timedelta(seconds=179)).events == []
    out = bench.tick(timedelta(seconds=1))
    (event,) = out.events
    assert event.pump_id == "PMP-0009"
    assert event.alert is not None
    assert event.alert.type is AlertType.TELEMETRY_LOST
    assert out.pump_states == []  # nothing known to republish


def test_invalid_frames_are_not_telemetry() -> None:
    bench = Bench()
    bench.read()
    bench.feed(InvalidData(PUMP, "res_ml 25.0 outside 0.0..20.0"), timedelta(seconds=100))
    out = bench.tick(timedelta(seconds=80))
    assert transitions(out.events, AlertType.TELEMETRY_LOST) == ["alert_raised"]


def test_per_pump_telemetry_timeout() -> None:
    bench = Bench(make_config(pumps={OTHER: {"telemetry_timeout_s": 600}}))
    bench.read(pump=PUMP)
    bench.read(pump=OTHER, after=timedelta(0))
    out = bench.tick(timedelta(seconds=300))
    assert [e.pump_id for e in out.events] == [PUMP]
    out = bench.tick(timedelta(seconds=300))
    assert [e.pump_id for e in out.events] == [OTHER]


# --- link_lost -------------------------------------------------------------------


def test_link_lost_after_link_timeout_and_not_before() -> None:
    bench = Bench(make_config(serial={"link_timeout_s": 30}), link_up=False)
    assert bench.tick(timedelta(seconds=29.999)).events == []  # the link starts down
    out = bench.tick(timedelta(seconds=0.001))
    (event,) = out.events
    assert event.kind is EventKind.ALERT_RAISED
    assert event.pump_id == GATEWAY_PUMP
    assert event.alert is not None
    assert event.alert.type is AlertType.LINK_LOST
    assert event.alert.severity is CRITICAL
    assert event.alert.pump_id == GATEWAY_PUMP
    assert "not connected yet" in event.alert.message
    assert bench.tick(timedelta(seconds=60)).events == []


def test_link_up_clears_link_lost_and_down_starts_a_new_countdown() -> None:
    bench = Bench(link_up=False)
    bench.tick(timedelta(seconds=31))
    first = bench.alert(AlertType.LINK_LOST, GATEWAY_PUMP)
    assert first is not None

    out = bench.feed(LinkChanged(True, "HELLO from PRG00042"), timedelta(seconds=1))
    assert [e.kind for e in out.events] == [EventKind.LINK_UP, EventKind.ALERT_CLEARED]
    assert out.events[0].detail == {"reason": "HELLO from PRG00042"}
    assert out.events[1].alert.alert_id == first.alert_id  # type: ignore[union-attr]
    assert bench.state.link_up is True
    assert bench.feed(LinkChanged(True, "again")).events == []  # already up
    assert bench.tick(timedelta(hours=1)).events == []

    out = bench.feed(LinkChanged(False, "cable pulled"), timedelta(seconds=1))
    assert [e.kind for e in out.events] == [EventKind.LINK_DOWN]
    assert out.events[0].detail == {"reason": "cable pulled"}
    # still down, new reason: no event, but the reason is remembered
    assert bench.feed(LinkChanged(False, "port vanished"), timedelta(seconds=5)).events == []
    assert bench.tick(timedelta(seconds=24.9)).events == []
    out = bench.tick(timedelta(seconds=0.1))
    (event,) = out.events
    assert event.alert is not None
    assert event.alert.alert_id != first.alert_id
    assert "port vanished" in event.alert.message


def test_link_up_before_timeout_raises_nothing() -> None:
    bench = Bench(link_up=False)
    bench.feed(LinkChanged(True, "up"), timedelta(seconds=5))
    bench.feed(LinkChanged(False, "down"), timedelta(seconds=5))
    bench.tick(timedelta(seconds=20))
    bench.feed(LinkChanged(True, "up"), timedelta(seconds=5))
    assert transitions(bench.events) == []
    assert [e.kind.value for e in bench.events] == ["link_up", "link_down", "link_up"]


# --- data_invalid ----------------------------------------------------------------


def test_data_invalid_raised_and_cleared_after_valid_readings() -> None:
    bench = Bench()
    bench.read()
    out = bench.feed(InvalidData(PUMP, "cap_ml 15.0 is not 10, 20 or 40"))
    (event,) = out.events
    assert event.kind is EventKind.ALERT_RAISED
    assert event.alert is not None
    assert event.alert.type is AlertType.DATA_INVALID
    assert event.alert.severity is WARNING
    assert "cap_ml 15.0" in event.alert.message
    assert bench.feed(InvalidData(PUMP, "again")).events == []  # same episode

    assert bench.read().events == []
    assert bench.read().events == []
    bench.feed(InvalidData(PUMP, "third"))  # restarts the count
    assert bench.read().events == []
    assert bench.read().events == []
    out = bench.read()  # the 3rd valid reading in a row (default)
    assert transitions(out.events) == ["alert_cleared"]
    assert out.events[0].alert.alert_id == event.alert.alert_id  # type: ignore[union-attr]


def test_data_invalid_for_a_pump_never_seen() -> None:
    bench = Bench()
    out = bench.feed(InvalidData("PMP-0042", "bad"))
    assert [e.pump_id for e in out.events] == ["PMP-0042"]


def test_data_invalid_clear_readings_per_pump() -> None:
    bench = Bench(make_config(pumps={PUMP: {"data_invalid_clear_readings": 1}}))
    bench.feed(InvalidData(PUMP, "bad"))
    assert transitions(bench.read().events) == ["alert_cleared"]


# --- per-pump overrides --------------------------------------------------------------


def test_per_pump_threshold_overrides() -> None:
    bench = Bench(
        make_config(
            pumps={
                OTHER: {"label": "Bed 7", "reservoir_warning_ml": 8.0, "battery_critical_pct": 15}
            }
        )
    )
    bench.read(pump=PUMP, res=7.0, bat=14)
    bench.read(pump=OTHER, res=7.0, bat=14)
    assert bench.severity(AlertType.RESERVOIR_LOW, PUMP) is None
    assert bench.severity(AlertType.BATTERY_LOW, PUMP) is WARNING
    assert bench.severity(AlertType.RESERVOIR_LOW, OTHER) is WARNING
    assert bench.alert(AlertType.RESERVOIR_LOW, OTHER).threshold == 8.0  # type: ignore[union-attr]
    assert bench.severity(AlertType.BATTERY_LOW, OTHER) is CRITICAL
    # hysteresis is relative to the pump's own threshold
    bench.read(pump=OTHER, res=7.9)  # (climbing by at most 1 mL: no refill)
    bench.read(pump=OTHER, res=8.5)
    assert bench.severity(AlertType.RESERVOIR_LOW, OTHER) is WARNING
    bench.read(pump=OTHER, res=8.51)
    assert bench.severity(AlertType.RESERVOIR_LOW, OTHER) is None
    assert bench.state.pumps[OTHER].last_state.label == "Bed 7"  # type: ignore[union-attr]


# --- acknowledge -------------------------------------------------------------------


def test_acknowledge_an_active_alert() -> None:
    bench = Bench()
    bench.read(res=4.0)
    alert = bench.alert(AlertType.RESERVOIR_LOW)
    assert alert is not None
    out = bench.feed(Acknowledge(alert.alert_id, "nurse-jane", "refill booked"), timedelta(1))
    assert [r.model_dump() for r in out.results] == [
        {"ok": True, "command": "ack", "alert_id": alert.alert_id, "error": None}
    ]
    (event,) = out.events
    assert event.kind is EventKind.ALERT_ACKNOWLEDGED
    assert event.pump_id == PUMP
    assert event.detail == {"note": "refill booked"}
    acked = bench.alert(AlertType.RESERVOIR_LOW)
    assert acked == event.alert
    assert acked is not None
    assert acked.alert_id == alert.alert_id
    assert acked.state is AlertState.ACKNOWLEDGED
    assert acked.acknowledged_by == "nurse-jane"
    assert acked.acknowledged_at == bench.now
    assert acked.updated_at == bench.now
    assert acked.raised_at == alert.raised_at
    # an acknowledged alert stays acknowledged while its severity holds
    assert bench.read(res=4.5).events == []
    assert bench.alert(AlertType.RESERVOIR_LOW) == acked


def test_acknowledge_the_gateway_link_alert() -> None:
    bench = Bench(link_up=False)
    bench.tick(timedelta(minutes=1))
    alert = bench.alert(AlertType.LINK_LOST, GATEWAY_PUMP)
    assert alert is not None
    out = bench.feed(Acknowledge(alert.alert_id, "tech", None))
    assert out.results[0].ok is True
    assert bench.alert(AlertType.LINK_LOST, GATEWAY_PUMP).state is AlertState.ACKNOWLEDGED  # type: ignore[union-attr]
    assert out.events[0].pump_id == GATEWAY_PUMP


def test_acknowledge_twice_is_ok_and_changes_nothing() -> None:
    bench = Bench()
    bench.read(res=4.0)
    alert_id = bench.alert(AlertType.RESERVOIR_LOW).alert_id  # type: ignore[union-attr]
    bench.feed(Acknowledge(alert_id, "nurse-jane", None))
    before = fingerprint(bench.state)
    out = bench.feed(Acknowledge(alert_id, "nurse-joe", None), timedelta(minutes=1))
    assert out.results[0].ok is True
    assert out.events == []
    assert fingerprint(bench.state) == before


@pytest.mark.parametrize("which", ["unknown", "cleared"])
def test_acknowledge_unknown_or_cleared_alert_fails_and_changes_nothing(which: str) -> None:
    bench = Bench()
    bench.read(res=4.0)
    alert_id = bench.alert(AlertType.RESERVOIR_LOW).alert_id  # type: ignore[union-attr]
    if which == "cleared":
        bench.read(res=12.0)
        bench.read(bat=20)  # something else active, so the tables are not empty
    else:
        alert_id = "01JDNOSUCHALERT00000000000"
    before = fingerprint(bench.state)
    out = bench.feed(Acknowledge(alert_id, "nurse-jane", None), timedelta(minutes=1))
    (result,) = out.results
    assert result.ok is False
    assert result.command == "ack"
    assert result.alert_id == alert_id
    assert result.error is not None
    assert "unknown alert_id" in result.error
    assert out.events == []
    assert out.pump_states == []
    assert fingerprint(bench.state) == before


def test_escalation_breaks_through_an_acknowledgement() -> None:
    bench = Bench()
    bench.read(bat=20)
    alert_id = bench.alert(AlertType.BATTERY_LOW).alert_id  # type: ignore[union-attr]
    bench.feed(Acknowledge(alert_id, "nurse-jane", None))
    out = bench.read(bat=8)
    (event,) = out.events
    assert event.kind is EventKind.ALERT_ESCALATED
    assert event.alert is not None
    assert event.alert.alert_id == alert_id
    assert event.alert.state is AlertState.ACTIVE
    assert event.alert.severity is CRITICAL
    assert event.alert.acknowledged_by is None and event.alert.acknowledged_at is None
    # and it can be acknowledged again
    out = bench.feed(Acknowledge(alert_id, "nurse-joe", None))
    assert out.results[0].ok is True
    assert bench.alert(AlertType.BATTERY_LOW).acknowledged_by == "nurse-joe"  # type: ignore[union-attr]


# --- purity ----------------------------------------------------------------------


def _busy_bench() -> Bench:
    """A state with pump alerts (one acknowledged) and a gateway alert."""
    bench = Bench(make_config(pumps={"PMP-0009": {}}), link_up=False)
    bench.read(res=4.0, bat=20)
    bench.feed(InvalidData(PUMP, "bad"))
    alert_id = bench.alert(AlertType.BATTERY_LOW).alert_id  # type: ignore[union-attr]
    bench.feed(Acknowledge(alert_id, "nurse-jane", None))
    bench.tick(timedelta(seconds=40))
    return bench


def _purity_inputs(bench: Bench) -> list[EngineInput]:
    res_id = bench.alert(AlertType.RESERVOIR_LOW).alert_id  # type: ignore[union-attr]
    return [
        Reading(stat(res=1.0, bat=5, flags=Flag.MOTOR_STALL)),
        Reading(stat(res=12.4, bat=81)),
        Reading(stat(pump="PMP-0077")),
        Reading(stat(flags=Flag.NO_LINK)),
        Tick(),
        LinkChanged(True, "up"),
        LinkChanged(False, "down"),
        InvalidData(PUMP, "bad again"),
        PumpEventReceived(Evt(3, PUMP, T0, "REFILL", 20.0)),
        ProgrammerRestarted("HELLO"),
        Lifecycle(EventKind.GATEWAY_STARTED),
        Acknowledge(res_id, "nurse-joe", "note"),
        Acknowledge("nope", "nurse-joe", None),
    ]


@pytest.mark.parametrize("index", range(13))
def test_step_is_pure(index: int) -> None:
    bench = _busy_bench()
    inp = _purity_inputs(bench)[index]
    state = bench.state
    before_repr, before = repr(state), fingerprint(state)
    now = bench.now + timedelta(minutes=5)
    first = step(state, inp, now, bench.config)
    assert repr(state) == before_repr
    assert fingerprint(state) == before
    second = step(state, inp, now, bench.config)
    assert first == second
    assert fingerprint(first.state) == fingerprint(second.state)
    # the new state shares nothing mutable with the old one
    assert first.state.pumps is not state.pumps
    assert first.state.gateway_alerts is not state.gateway_alerts


def test_state_mappings_are_read_only() -> None:
    bench = _busy_bench()
    with pytest.raises(TypeError):
        bench.state.pumps["X"] = bench.state.pumps[PUMP]  # type: ignore[index]
    with pytest.raises(TypeError):
        bench.state.pumps[PUMP].alerts[AlertType.PUMP_FAULT] = None  # type: ignore[index]


def test_severities_only_rise_within_each_episode_under_random_input() -> None:
    rng = random.Random(7)
    bench = Bench()
    flags = [NO_FLAGS] * 6 + [Flag.LOW_RES, Flag.EMPTY, Flag.ERI, Flag.EOS, Flag.NO_LINK, None]
    for _ in range(3000):
        choice = rng.random()
        if choice < 0.8:
            bench.read(
                res=rng.choice([None, round(rng.uniform(0, 8), 2)]),
                bat=rng.choice([None, rng.randint(0, 35)]),
                flags=rng.choice(flags),
            )
        elif choice < 0.9:
            bench.tick(timedelta(seconds=rng.choice([10, 200])))
        else:
            bench.feed(InvalidData(PUMP, "noise"))
    worst: dict[str, int] = {}
    for event in bench.events:
        alert = event.alert
        if alert is None:
            assert event.kind is EventKind.REFILL  # random volumes jump up: refills
            continue
        rank = alert.severity.rank
        assert rank >= worst.get(alert.alert_id, 0)
        worst[alert.alert_id] = rank
    ids = [e.event_id for e in bench.events]
    assert len(ids) == len(set(ids))


# --- pump events and lifecycle ------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "detail", "event_kind", "expected_detail"),
    [
        (
            "REFILL",
            20.0,
            EventKind.REFILL,
            {"before_ml": 12.4, "after_ml": 20.0, "source": "EVT"},
        ),
        (
            "PROG",
            350.0,
            EventKind.PROGRAM_CHANGE,
            {
                "old": {"dose_mcg_per_day": 300.0, "concentration_mcg_per_ml": 500.0},
                "new": {"dose_mcg_per_day": 350.0, "concentration_mcg_per_ml": 500.0},
                "source": "EVT",
            },
        ),
        ("RESET", None, EventKind.PROGRAMMER_RESET, {}),
    ],
)
def test_pump_events_become_events(
    kind: str, detail: float | None, event_kind: EventKind, expected_detail: dict[str, Any]
) -> None:
    bench = Bench()
    bench.read()  # the volume and program before the event: 12.4 mL, 300 mcg/day at 500
    out = bench.feed(PumpEventReceived(Evt(5, PUMP, T0, kind, detail)))
    (event,) = out.events
    assert event.kind is event_kind
    assert event.pump_id == PUMP
    assert event.alert is None
    assert event.detail is not None
    assert {k: v for k, v in event.detail.items() if k != "device_time"} == expected_detail
    assert out.pump_states == []


def test_pump_event_device_time_uses_the_contract_time_format() -> None:
    bench = Bench()
    out = bench.feed(PumpEventReceived(Evt(5, PUMP, T0, "REFILL", 20.0)))
    dumped = out.events[0].model_dump(mode="json")
    assert dumped["detail"]["device_time"] == "2026-11-30T08:00:00Z"


def test_programmer_restart_and_lifecycle_events() -> None:
    bench = Bench()
    out = bench.feed(ProgrammerRestarted("unprompted HELLO"))
    assert [(e.kind, e.pump_id, e.detail) for e in out.events] == [
        (EventKind.PROGRAMMER_RESET, None, {"reason": "unprompted HELLO"})
    ]
    for kind in (EventKind.GATEWAY_STARTED, EventKind.GATEWAY_STOPPING):
        (event,) = bench.feed(Lifecycle(kind)).events
        assert event.kind is kind
        assert event.pump_id is None
        assert event.at == bench.now


# --- projection ----------------------------------------------------------------------

CONTRACT_STATE = {
    "pump_id": "PMP-0001",
    "label": "Bed 12",
    "seq": 17,
    "device_time": "2026-11-30T08:00:00Z",
    "received_at": "2026-11-30T08:00:00.120Z",
    "reservoir_ml": 12.4,
    "capacity_ml": 20.0,
    "low_reservoir_alarm_ml": 2.0,
    "battery_pct": 81,
    "battery_v": 3.01,
    "dose_mcg_per_day": 300.0,
    "concentration_mcg_per_ml": 500.0,
    "flow_ml_per_day": 0.6,
    "drain_ml_per_day": None,
    "days_to_low_reservoir_alarm": 17.3,
    "days_to_empty": 20.7,
    "refill_due": "2026-12-17T16:00:00Z",
    "flags": [],
    "stale": False,
}


def test_projection_matches_the_contract_example() -> None:
    bench = Bench(make_config(pumps={PUMP: {"label": "Bed 12"}}))
    out = bench.feed(Reading(stat()), timedelta(milliseconds=120))
    (state,) = out.pump_states
    assert state.model_dump(mode="json") == CONTRACT_STATE
    assert bench.state.pumps[PUMP].last_state == state


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param(
            {"res": None},
            {"days_to_low_reservoir_alarm": None, "days_to_empty": None, "refill_due": None},
            id="reservoir-unknown",
        ),
        pytest.param(
            {"lra": None},
            {"days_to_low_reservoir_alarm": None, "days_to_empty": 20.7, "refill_due": None},
            id="lra-unknown",
        ),
        pytest.param(
            {"dose": None},
            {
                "flow_ml_per_day": None,
                "days_to_low_reservoir_alarm": None,
                "days_to_empty": None,
                "refill_due": None,
            },
            id="dose-unknown",
        ),
        pytest.param(
            {"conc": None},
            {
                "flow_ml_per_day": None,
                "days_to_low_reservoir_alarm": None,
                "days_to_empty": None,
                "refill_due": None,
            },
            id="conc-unknown",
        ),
        pytest.param(
            {"dose": 0.0},
            {
                "flow_ml_per_day": 0.0,
                "days_to_low_reservoir_alarm": None,
                "days_to_empty": None,
                "refill_due": None,
            },
            id="flow-zero",
        ),
        pytest.param(
            {"res": 1.5},
            {
                "days_to_low_reservoir_alarm": 0.0,
                "days_to_empty": 2.5,
                "refill_due": "2026-11-30T08:00:00Z",
            },
            id="already-below-alarm-level",
        ),
        pytest.param(
            {"time": None},
            {"device_time": None, "refill_due": "2026-12-17T16:00:00Z"},
            id="no-device-time-uses-receive-time",
        ),
        pytest.param(
            {"flags": None, "bat": None, "bat_v": None, "cap": None},
            {"flags": None, "battery_pct": None, "battery_v": None, "capacity_ml": None},
            id="unknowns-are-null",
        ),
        pytest.param(
            {"flags": Flag.ERI | Flag.SUSPENDED},
            {"flags": ["ERI", "SUSPENDED"]},
            id="flag-names",
        ),
    ],
)
def test_projection_nulls_and_edges(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    bench = Bench()
    out = bench.feed(Reading(stat(**changes)))
    dumped = out.pump_states[0].model_dump(mode="json")
    assert {k: dumped[k] for k in expected} == expected


def test_projection_runs_on_the_device_clock() -> None:
    bench = Bench()
    # the gateway's clock is a day later than the programmer's: refill_due follows the STAT
    out = bench.feed(Reading(stat()), timedelta(days=1))
    assert out.pump_states[0].model_dump(mode="json")["refill_due"] == "2026-12-17T16:00:00Z"


# --- payloads against the contract ---------------------------------------------------------

ALERT_FIELDS = {
    "alert_id",
    "pump_id",
    "type",
    "severity",
    "state",
    "message",
    "value",
    "threshold",
    "raised_at",
    "updated_at",
    "acknowledged_by",
    "acknowledged_at",
}
EVENT_FIELDS = {"event_id", "at", "kind", "pump_id", "alert"}


def test_alert_and_event_payloads_have_the_contract_fields() -> None:
    bench = Bench()
    out = bench.read(res=1.9)
    event = out.events[0].model_dump(mode="json")
    assert set(event) >= EVENT_FIELDS
    assert set(event) - EVENT_FIELDS <= {"detail"}
    assert event["kind"] == "alert_raised"
    alert = event["alert"]
    assert set(alert) == ALERT_FIELDS
    assert alert["type"] == "reservoir_low"
    assert alert["severity"] == "critical"
    assert alert["state"] == "active"
    assert alert["message"] == "Reservoir 1.9 mL (critical at 2 mL)"
    assert alert["value"] == 1.9
    assert alert["threshold"] == 2.0
    assert alert["raised_at"] == "2026-11-30T08:01:00Z"
    assert alert["acknowledged_by"] is None
    assert alert["acknowledged_at"] is None
    assert len(alert["alert_id"]) == 26

    alert_id = alert["alert_id"]
    out = bench.feed(Acknowledge(alert_id, "nurse-jane", None), timedelta(seconds=1.5))
    acked = out.events[0].model_dump(mode="json")["alert"]
    assert acked["state"] == "acknowledged"
    assert acked["acknowledged_by"] == "nurse-jane"
    assert acked["acknowledged_at"] == "2026-11-30T08:01:01.500Z"
    assert out.results[0].model_dump(mode="json") == {
        "ok": True,
        "command": "ack",
        "alert_id": alert_id,
        "error": None,
    }
    state = bench.read().pump_states[0].model_dump(mode="json")
    assert set(state) == set(CONTRACT_STATE)


# --- the long run ----------------------------------------------------------------------------


def test_ninety_days_every_ten_minutes() -> None:
    """Drain, a telemetry outage, a bad frame, a refill, a slowly dying battery."""
    # (reminders off: they have their own tests in test_engine_clinical.py)
    quiet = {"renotify_critical_s": 0, "renotify_warning_s": 0}
    bench = Bench(make_config(pumps={PUMP: {"label": "Bed 12", **quiet}}), link_up=False)
    bench.feed(LinkChanged(True, "HELLO"))
    slot = timedelta(minutes=10)
    per_day = 144
    outage = range(30 * per_day, 30 * per_day + 24)  # 4 h without telemetry
    refill_at = 55 * per_day
    states = 0
    for i in range(90 * per_day):
        day = i / per_day
        bench.now = T0 + i * slot
        if i == 20 * per_day:
            bench.feed(InvalidData(PUMP, "CRC ok, res_ml out of range"))
        if i == refill_at:
            bench.feed(PumpEventReceived(Evt(bench.seq + 1, PUMP, bench.now, "REFILL", 20.0)))
            bench.seq += 1
        if i not in outage:
            drained = 18.0 - 0.3 * day if i < refill_at else 20.0 - 0.3 * (day - 55)
            res = round(max(0.0, drained + 0.04 * math.sin(i)), 2)
            bat = round(40 - 0.2 * day) + (i % 3 - 1)
            out = bench.read(after=timedelta(0), res=res, bat=bat, dose=150.0)
            states += len(out.pump_states)
        bench.tick(timedelta(0))

    summary = [
        (e.kind.value, e.alert.type.value if e.alert else None, e.alert.severity.value)
        if e.alert
        else (e.kind.value, None, None)
        for e in bench.events
    ]
    assert summary == [
        ("link_up", None, None),
        ("alert_raised", "data_invalid", "warning"),
        ("alert_cleared", "data_invalid", "warning"),
        ("alert_raised", "telemetry_lost", "critical"),
        ("alert_cleared", "telemetry_lost", "critical"),
        ("alert_raised", "reservoir_low", "warning"),
        ("alert_raised", "refill_due", "warning"),
        ("alert_escalated", "refill_due", "critical"),
        ("alert_escalated", "reservoir_low", "critical"),
        ("refill", None, None),
        ("alert_cleared", "reservoir_low", "critical"),
        ("alert_cleared", "refill_due", "critical"),
        ("alert_raised", "battery_low", "warning"),
    ]
    # reservoir warning around day 43, critical around day 53, battery around day 75;
    # at 0.3 mL/day the 2 mL alarm is 7 days away at 4.1 mL (day 46), 2 days at 2.6 (day 51)
    by_kind = {(e.kind.value, e.alert.type.value if e.alert else None): e for e in bench.events}
    assert 43 <= (by_kind[("alert_raised", "reservoir_low")].at - T0).days <= 44
    assert 53 <= (by_kind[("alert_escalated", "reservoir_low")].at - T0).days <= 54
    assert (by_kind[("alert_raised", "refill_due")].at - T0).days == 46
    assert (by_kind[("alert_escalated", "refill_due")].at - T0).days == 51
    refill = by_kind[("refill", None)]
    assert refill.detail is not None
    assert (refill.detail["after_ml"], refill.detail["source"]) == (20.0, "EVT")
    last = bench.state.pumps[PUMP].last_state
    assert last is not None
    assert last.drain_ml_per_day == pytest.approx(0.3, abs=0.01)  # the drain, measured
    assert 65 <= (by_kind[("alert_raised", "battery_low")].at - T0).days <= 80
    reservoir_ids = {
        e.alert.alert_id for e in bench.events if e.alert and e.alert.type.value == "reservoir_low"
    }
    assert len(reservoir_ids) == 1
    assert states == 90 * per_day - len(outage)
    ids = [e.event_id for e in bench.events] + [
        e.alert.alert_id for e in bench.events if e.kind is EventKind.ALERT_RAISED and e.alert
    ]
    assert len(ids) == len(set(ids))
    assert [e.at for e in bench.events] == sorted(e.at for e in bench.events)
    assert [a.type for a in bench.state.active_alerts()] == [AlertType.BATTERY_LOW]


def test_event_ids_unique_across_a_long_run() -> None:
    bench = Bench(link_up=False)
    for i in range(5000):
        # an episode every two readings (reservoir_low and refill_due); 4 -> 12 mL is a refill
        bench.read(res=4.0 if i % 2 else 12.0)
        bench.feed(LinkChanged(i % 2 == 0, "flip"))
    assert len(bench.events) == 5000 + 2 * 2500 + 2 * 2499 + 2499
    assert sum(e.kind is EventKind.REFILL for e in bench.events) == 2499
    ids = [e.event_id for e in bench.events]
    assert len(set(ids)) == len(ids)
    alert_ids = [e.alert.alert_id for e in bench.events if e.kind is EventKind.ALERT_RAISED]  # type: ignore[union-attr]
    assert len(set(alert_ids)) == len(alert_ids) == 2 * 2500
    assert not set(ids) & set(alert_ids)
