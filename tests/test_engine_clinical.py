"""Issue 5 in the pure alert engine: projections, the measured drain rate,
refill_due, flow_deviation, dose_out_of_range, refill and program_change
events, reminders and per-pump overrides.

Every test runs on a simulated clock (``Bench.now`` moves only when a test
says so); the programmer's clock (each STAT's ``time``) follows it unless a
test sets it apart.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from drivers.ptp import Evt, Flag, Stat
from gateway.config import Config, parse_config
from gateway.contract import Alert, AlertState, AlertType, Event, EventKind, PumpState, Severity
from gateway.engine import (
    Acknowledge,
    EngineInput,
    EngineState,
    LinkChanged,
    Outcome,
    PumpEventReceived,
    Reading,
    Tick,
    initial_state,
    step,
)

T0 = datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC)
PUMP, OTHER = "PMP-0001", "PMP-0002"
WARNING, CRITICAL = Severity.WARNING, Severity.CRITICAL
NO_FLAGS = Flag(0)
LAST: Any = object()  # Bench.read: the last volume read
ZERO, MINUTE, HALF_HOUR = timedelta(0), timedelta(minutes=1), timedelta(minutes=30)
HOUR, DAY = timedelta(hours=1), timedelta(days=1)
ONE_ML_A_DAY: dict[str, Any] = {"dose": 500.0, "conc": 500.0}  # days to alarm = res - lra
REFILL_DUE, FLOW = AlertType.REFILL_DUE, AlertType.FLOW_DEVIATION
DOSE = AlertType.DOSE_OUT_OF_RANGE


# --- builders -----------------------------------------------------------------


def stat(
    res: float | None = 12.4,
    *,
    time: datetime | None = T0,
    pump: str = PUMP,
    seq: int = 1,
    lra: float | None = 2.0,
    bat: int | None = 81,
    dose: float | None = 300.0,
    conc: float | None = 500.0,
    flags: Flag | None = NO_FLAGS,
) -> Stat:
    """The contract example's STAT (300 mcg/day at 500 mcg/mL: 0.6 mL/day)."""
    return Stat(seq, pump, time, res, 20.0, lra, bat, 3.01, dose, conc, flags)


def make_config(pumps: dict[str, dict[str, Any]] | None = None, **thresholds: Any) -> Config:
    return parse_config(
        {
            "gateway": {"id": "bed-12"},
            "serial": {"port": "/dev/null"},
            "thresholds": thresholds,
            "pumps": pumps or {},
        }
    )


@dataclass
class Bench:
    """The engine on a simulated clock; keeps the state, every event and the last volume."""

    config: Config = field(default_factory=make_config)
    now: datetime = T0
    state: EngineState = field(init=False)
    events: list[Event] = field(default_factory=list)
    res: float = 12.4  # the last reservoir volume read (or refilled to)
    seq: int = 0

    def __post_init__(self) -> None:
        self.state = initial_state(self.config, self.now)
        self.feed(LinkChanged(True, "HELLO"))
        self.events.clear()

    def feed(self, inp: EngineInput, after: timedelta = ZERO) -> Outcome:
        self.now += after
        out = step(self.state, inp, self.now, self.config)
        self.state = out.state
        self.events.extend(out.events)
        return out

    def read(
        self, res: float | None = LAST, *, after: timedelta = MINUTE, **fields: Any
    ) -> Outcome:
        """A STAT ``after`` the previous input, at the last volume unless given;
        its ``time`` is the gateway clock unless given."""
        self.now += after
        self.seq += 1
        res = self.res if res is LAST else res
        if res is not None and not (fields.get("flags") or NO_FLAGS) & Flag.NO_LINK:
            self.res = res
        fields.setdefault("time", self.now)
        return self.feed(Reading(stat(res, seq=self.seq, **fields)))

    def evt(self, kind: str, detail: float | None, *, after: timedelta = ZERO) -> Outcome:
        self.now += after
        self.seq += 1
        if kind == "REFILL" and detail is not None:
            self.res = detail
        return self.feed(PumpEventReceived(Evt(self.seq, PUMP, self.now, kind, detail)))

    def ticks(self, every: timedelta, until: timedelta) -> list[Event]:
        """Ticks every ``every`` for ``until``; the events they gave."""
        events: list[Event] = []
        for _ in range(round(until / every)):
            events += self.feed(Tick(), every).events
        return events

    def alert(self, alert_type: AlertType, pump: str = PUMP) -> Alert | None:
        track = self.state.pumps.get(pump)
        return None if track is None else track.alerts.get(alert_type)

    def severity(self, alert_type: AlertType, pump: str = PUMP) -> Severity | None:
        alert = self.alert(alert_type, pump)
        return None if alert is None else alert.severity

    def pump_state(self, pump: str = PUMP) -> PumpState:
        state = self.state.pumps[pump].last_state
        assert state is not None
        return state


def drain(
    bench: Bench, ml_per_day: float, hours: float, *, every: timedelta = HALF_HOUR, **fields: Any
) -> Outcome:
    """Readings every ``every`` for ``hours``, the reservoir falling at ``ml_per_day``."""
    out = None
    for _ in range(round(hours * HOUR / every)):
        out = bench.read(bench.res - ml_per_day * (every / DAY), after=every, **fields)
    assert out is not None
    return out


def of_type(events: list[Event], alert_type: AlertType) -> list[Event]:
    return [e for e in events if e.alert is not None and e.alert.type is alert_type]


def transitions(events: list[Event], alert_type: AlertType) -> list[str]:
    return [e.kind.value for e in of_type(events, alert_type)]


def of_kind(events: list[Event], kind: EventKind) -> list[Event]:
    return [e for e in events if e.kind is kind]


def detail(event: Event) -> dict[str, Any]:
    assert event.detail is not None
    return event.detail


# --- projections -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("res", "dose", "conc", "flow", "to_alarm", "to_empty"),
    [
        (12.4, 300.0, 500.0, 0.6, 17.3, 20.7),  # the contract example
        (12.4, 150.0, 500.0, 0.3, 34.7, 41.3),
        (9.0, 1000.0, 2000.0, 0.5, 14.0, 18.0),
        (3.0, 500.0, 500.0, 1.0, 1.0, 3.0),
        (1.5, 500.0, 500.0, 1.0, 0.0, 1.5),  # already below the alarm level
    ],
)
def test_flow_is_dose_over_concentration_and_sets_the_days_left(
    res: float, dose: float, conc: float, flow: float, to_alarm: float, to_empty: float
) -> None:
    bench = Bench()
    (state,) = bench.feed(Reading(stat(res, dose=dose, conc=conc))).pump_states
    assert state.flow_ml_per_day == flow
    assert state.drain_ml_per_day is None
    assert state.days_to_low_reservoir_alarm == to_alarm
    assert state.days_to_empty == to_empty
    assert state.refill_due == T0 + timedelta(days=max(0.0, res - 2.0) / flow)


@pytest.mark.parametrize("device_offset", [-timedelta(hours=5), ZERO, timedelta(days=2)])
def test_refill_due_counts_from_the_stats_own_time(device_offset: timedelta) -> None:
    bench = Bench()
    device_time = bench.now + device_offset  # a drifting or replayed programmer clock
    (state,) = bench.feed(Reading(stat(12.4, time=device_time)), timedelta(hours=3)).pump_states
    # (12.4 - 2.0) / 0.6 = 17 days 8 hours after the STAT's own time
    assert state.refill_due == device_time + timedelta(days=17, hours=8)
    assert state.device_time == device_time
    assert state.received_at == T0 + timedelta(hours=3)


def test_refill_due_counts_from_the_receive_time_without_a_device_time() -> None:
    bench = Bench()
    (state,) = bench.feed(Reading(stat(12.4, time=None)), timedelta(hours=3)).pump_states
    assert state.refill_due == T0 + timedelta(hours=3) + timedelta(days=17, hours=8)


NO_PROJECTION = {"days_to_low_reservoir_alarm": None, "days_to_empty": None, "refill_due": None}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"res": None}, NO_PROJECTION, id="reservoir-unknown"),
        pytest.param(
            {"lra": None},
            {"days_to_low_reservoir_alarm": None, "days_to_empty": 20.7, "refill_due": None},
            id="alarm-level-unknown",
        ),
        pytest.param({"dose": None}, {"flow_ml_per_day": None, **NO_PROJECTION}, id="dose"),
        pytest.param({"conc": None}, {"flow_ml_per_day": None, **NO_PROJECTION}, id="conc"),
        pytest.param({"dose": 0.0}, {"flow_ml_per_day": 0.0, **NO_PROJECTION}, id="zero-flow"),
    ],
)
def test_projection_is_null_with_unknown_inputs_or_zero_flow(
    fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    bench = Bench()
    out = bench.feed(Reading(stat(**{"res": 12.4, **fields})))
    dumped = out.pump_states[0].model_dump(mode="json")
    assert {k: dumped[k] for k in expected} == expected
    assert of_type(out.events, REFILL_DUE) == []  # unknown is not zero: nothing raised


def test_projection_uses_the_measured_rate_once_established() -> None:
    bench = Bench()
    bench.read(14.0)
    before = drain(bench, 1.2, 11.5).pump_states[0]  # twice the programmed 0.6 mL/day
    assert before.drain_ml_per_day is None
    assert before.days_to_low_reservoir_alarm == round((bench.res - 2.0) / 0.6, 1)
    after = drain(bench, 1.2, 0.5).pump_states[0]  # 12 h of readings
    assert after.drain_ml_per_day == 1.2
    assert after.flow_ml_per_day == 0.6
    days = (bench.res - 2.0) / 1.2
    assert after.days_to_low_reservoir_alarm == round(days, 1)
    assert after.days_to_empty == round(bench.res / 1.2, 1)
    assert after.refill_due == (bench.now + timedelta(days=days)).replace(microsecond=0)


# --- the measured drain rate --------------------------------------------------------


def test_drain_rate_is_the_least_squares_slope() -> None:
    bench = Bench()
    days: list[float] = []
    volumes: list[float] = []
    for k in range(30):  # irregular intervals, noisy volumes
        volume = 15.0 - 0.8 * (bench.now - T0) / DAY + ((k * 7) % 5 - 2) * 0.01
        bench.read(volume, after=timedelta(minutes=20 + (k * 37) % 41) if k else ZERO)
        days.append((bench.now - T0) / DAY)
        volumes.append(volume)
    assert (bench.now - T0) > 12 * HOUR
    slope = statistics.linear_regression(days, volumes).slope
    assert bench.pump_state().drain_ml_per_day == pytest.approx(-slope, abs=1e-4)
    assert bench.pump_state().drain_ml_per_day != pytest.approx(0.8, abs=1e-3)  # noise counts


def test_drain_rate_is_established_after_flow_min_span_h_of_readings() -> None:
    bench = Bench()
    bench.read(15.0)
    for _ in range(23):  # 11.5 h
        state = drain(bench, 0.9, 0.5).pump_states[0]
        assert state.drain_ml_per_day is None
    assert drain(bench, 0.9, 0.5).pump_states[0].drain_ml_per_day == 0.9  # 12 h


def test_drain_rate_runs_on_the_device_clock() -> None:
    bench = Bench()
    for k in range(25):  # the programmer says every 30 min; they arrive a minute apart
        bench.read(15.0 - 0.9 * k / 48, time=T0 + k * HALF_HOUR)
    assert bench.now - T0 < HOUR
    assert bench.pump_state().drain_ml_per_day == 0.9


def _refill_by_evt(bench: Bench) -> None:
    bench.evt("REFILL", 19.0, after=HALF_HOUR)


def _refill_by_jump(bench: Bench) -> None:
    bench.read(19.0, after=HALF_HOUR)


def _program_by_evt(bench: Bench) -> None:
    bench.evt("PROG", 450.0, after=HALF_HOUR)


def _program_by_stat(bench: Bench) -> None:
    drain(bench, 0.9, 0.5, dose=450.0)


def _concentration_by_stat(bench: Bench) -> None:
    drain(bench, 0.9, 0.5, conc=1000.0)


@pytest.mark.parametrize(
    "restart",
    [_refill_by_evt, _refill_by_jump, _program_by_evt, _program_by_stat, _concentration_by_stat],
    ids=["evt-refill", "volume-jump", "evt-prog", "stat-dose", "stat-concentration"],
)
def test_drain_window_restarts_on_refill_and_program_change(restart: Any) -> None:
    bench = Bench()
    bench.read(12.0)
    assert drain(bench, 0.9, 12).pump_states[0].drain_ml_per_day == 0.9
    restart(bench)
    program = bench.state.pumps[PUMP].program
    fields: dict[str, Any] = {
        "dose": program.dose_mcg_per_day,
        "conc": program.concentration_mcg_per_ml,
    }
    # old readings are not used, whatever the new rate: 11.5 h of new ones are not enough
    for _ in range(23):
        assert drain(bench, 0.5, 0.5, **fields).pump_states[0].drain_ml_per_day is None
    assert drain(bench, 0.5, 1, **fields).pump_states[0].drain_ml_per_day == 0.5


@pytest.mark.parametrize(
    "unknown",
    [
        pytest.param({"res": None}, id="reservoir-unknown"),
        pytest.param({"res": 3.0, "flags": Flag.NO_LINK}, id="no-link-old-value"),
    ],
)
def test_unknown_reading_splits_the_window_and_is_never_used(unknown: dict[str, Any]) -> None:
    bench = Bench()
    bench.read(15.0)
    drain(bench, 0.6, 6)
    bench.read(after=HALF_HOUR, **unknown)
    # across the unknown reading the volume dropped 0.5 mL more than the drain (and less
    # than a refill): that interval must not count, so the rate stays 0.6
    bench.read(bench.res - 0.6 / 48 * 2 - 0.5, after=HALF_HOUR)
    for _ in range(11):  # 6 + 5.5 h of usable readings
        assert drain(bench, 0.6, 0.5).pump_states[0].drain_ml_per_day is None
    assert drain(bench, 0.6, 0.5).pump_states[0].drain_ml_per_day == 0.6  # 6 + 6 h
    assert of_kind(bench.events, EventKind.REFILL) == []


def test_readings_older_than_the_window_are_forgotten() -> None:
    bench = Bench()
    bench.read(18.0)
    assert drain(bench, 0.6, 24, every=HOUR).pump_states[0].drain_ml_per_day == 0.6
    mixed = drain(bench, 0.9, 12, every=HOUR).pump_states[0].drain_ml_per_day
    assert mixed is not None
    assert 0.6 < mixed < 0.9
    # 24 h (flow_window_h) after the change, only the new rate is in the window
    assert drain(bench, 0.9, 12, every=HOUR).pump_states[0].drain_ml_per_day == 0.9


def test_shorter_window_forgets_sooner() -> None:
    bench = Bench(make_config(pumps={PUMP: {"flow_window_h": 6, "flow_min_span_h": 3}}))
    bench.read(18.0)
    assert drain(bench, 0.6, 3).pump_states[0].drain_ml_per_day == 0.6
    assert drain(bench, 1.2, 6).pump_states[0].drain_ml_per_day == 1.2


def test_device_clock_going_back_restarts_the_window() -> None:
    bench = Bench()
    bench.read(15.0)
    drain(bench, 0.6, 12)
    assert bench.pump_state().drain_ml_per_day == 0.6
    # the programmer's clock is set back an hour (the gateway's goes on)
    device = bench.now - HOUR
    out = bench.read(bench.res - 0.6 / 48, after=HALF_HOUR, time=device)
    assert out.pump_states[0].drain_ml_per_day is None
    for k in range(1, 24):  # readings from there on, on the new device clock
        out = bench.read(bench.res - 0.6 / 48, after=HALF_HOUR, time=device + k * HALF_HOUR)
        assert out.pump_states[0].drain_ml_per_day is None
    out = bench.read(bench.res - 0.6 / 48, after=HALF_HOUR, time=device + 24 * HALF_HOUR)
    assert out.pump_states[0].drain_ml_per_day == 0.6


# --- refill_due ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("res", "expected", "threshold"),
    [
        (9.01, None, None),  # 7.01 days to the 2 mL alarm at 1 mL/day
        (9.0, WARNING, 7.0),  # at refill_warning_days
        (8.99, WARNING, 7.0),
        (4.01, WARNING, 7.0),
        (4.0, CRITICAL, 2.0),  # at refill_critical_days
        (3.99, CRITICAL, 2.0),
        (2.0, CRITICAL, 2.0),  # the pump's own alarm is due now
    ],
)
def test_refill_due_thresholds(res: float, expected: Severity | None, threshold: float) -> None:
    bench = Bench()
    out = bench.read(res, **ONE_ML_A_DAY)
    assert bench.severity(REFILL_DUE) is expected
    if expected is None:
        assert of_type(out.events, REFILL_DUE) == []
        return
    (event,) = of_type(out.events, REFILL_DUE)
    assert event.kind is EventKind.ALERT_RAISED
    assert event.alert is not None
    assert event.alert.value == pytest.approx(res - 2.0)
    assert event.alert.threshold == threshold
    assert f"projected in {res - 2.0:.1f} days" in event.alert.message


@pytest.mark.parametrize(
    ("raise_at", "via", "value", "clears"),
    [
        (9.0, (), 9.3, False),  # 7.3 days: inside the 0.5 day band
        (9.0, (), 9.5, False),  # exactly 7.5 days still holds
        (9.0, (), 9.51, True),
        (4.0, (4.9, 5.8, 6.7, 7.6, 8.5, 9.4), 9.5, False),  # from critical, the same band
        (4.0, (4.9, 5.8, 6.7, 7.6, 8.5, 9.4), 9.51, True),
    ],
)
def test_refill_due_clears_past_the_hysteresis_band(
    raise_at: float, via: tuple[float, ...], value: float, clears: bool
) -> None:
    """The reservoir climbs by at most 1 mL a reading (more would be a refill)."""
    bench = Bench()
    bench.read(raise_at, **ONE_ML_A_DAY)
    raised = bench.alert(REFILL_DUE)
    assert raised is not None
    for res in via:
        assert of_type(bench.read(res, **ONE_ML_A_DAY).events, REFILL_DUE) == []
    out = bench.read(value, **ONE_ML_A_DAY)
    assert transitions(out.events, REFILL_DUE) == (["alert_cleared"] if clears else [])
    assert bench.alert(REFILL_DUE) == (None if clears else raised)
    assert of_kind(bench.events, EventKind.REFILL) == []


def test_refill_due_escalates_with_the_same_alert_id() -> None:
    bench = Bench()
    bench.read(8.0, **ONE_ML_A_DAY)  # 6 days
    raised = bench.alert(REFILL_DUE)
    assert raised is not None
    out = drain(bench, 1.0, 97, every=HOUR, **ONE_ML_A_DAY)  # 4 days later: 2 days left
    assert transitions(bench.events, REFILL_DUE) == ["alert_raised", "alert_escalated"]
    assert bench.alert(REFILL_DUE).alert_id == raised.alert_id  # type: ignore[union-attr]
    assert of_type(out.events, REFILL_DUE)[0].alert.severity is CRITICAL  # type: ignore[union-attr]


@pytest.mark.parametrize("refilled_to", [19.0, 9.3])  # 9.3: inside the hysteresis band
def test_evt_refill_clears_refill_due_at_once(refilled_to: float) -> None:
    bench = Bench()
    bench.read(4.0, **ONE_ML_A_DAY)  # 2 days: critical
    out = bench.evt("REFILL", refilled_to, after=timedelta(seconds=5))  # before any new STAT
    assert [e.kind for e in out.events if e.alert is None] == [EventKind.REFILL]
    (cleared,) = of_type(out.events, REFILL_DUE)
    assert cleared.kind is EventKind.ALERT_CLEARED
    assert cleared.alert is not None
    assert cleared.alert.value == pytest.approx(refilled_to - 2.0)
    assert bench.alert(REFILL_DUE) is None
    assert of_type(bench.read(refilled_to, **ONE_ML_A_DAY).events, REFILL_DUE) == []


@pytest.mark.parametrize("refilled_to", [19.0, 9.3])
def test_refill_seen_as_a_volume_jump_clears_refill_due(refilled_to: float) -> None:
    bench = Bench()
    bench.read(4.0, **ONE_ML_A_DAY)
    out = bench.read(refilled_to, **ONE_ML_A_DAY)
    assert transitions(out.events, REFILL_DUE) == ["alert_cleared"]
    assert len(of_kind(out.events, EventKind.REFILL)) == 1


def test_refill_to_a_still_low_volume_ends_the_episode_and_starts_a_new_one() -> None:
    bench = Bench()
    bench.read(2.5, **ONE_ML_A_DAY)  # 0.5 days: critical
    before = bench.alert(REFILL_DUE)
    assert before is not None and before.severity is CRITICAL
    out = bench.evt("REFILL", 6.0)  # 4 days: still due, but only a warning now
    assert transitions(out.events, REFILL_DUE) == ["alert_cleared", "alert_raised"]
    after = bench.alert(REFILL_DUE)
    assert after is not None and after.alert_id != before.alert_id
    assert after.severity is WARNING


def test_refill_due_uses_the_measured_rate_once_established() -> None:
    bench = Bench()
    bench.read(10.5)  # programmed 0.6 mL/day: 14 days
    drain(bench, 1.2, 11.5)
    assert of_type(bench.events, REFILL_DUE) == []  # the programmed flow says 13 days
    out = drain(bench, 1.2, 0.5)  # measured 1.2 mL/day: (9.875 - 2) / 1.2 = 6.6 days
    (event,) = of_type(out.events, REFILL_DUE)
    assert event.kind is EventKind.ALERT_RAISED
    assert event.alert is not None
    assert event.alert.value == pytest.approx((bench.res - 2.0) / 1.2)


def test_refill_due_holds_while_the_projection_is_unknown() -> None:
    bench = Bench()
    bench.read(4.0, **ONE_ML_A_DAY)
    raised = bench.alert(REFILL_DUE)
    assert raised is not None
    for fields in ({"res": None}, {"dose": None}, {"lra": None}, {"flags": Flag.NO_LINK}):
        out = bench.read(**{**ONE_ML_A_DAY, **fields})
        assert of_type(out.events, REFILL_DUE) == []
        assert bench.alert(REFILL_DUE) == raised


# --- flow_deviation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("factor", "deviation", "way"),
    [
        (1.25, 25.0, "faster"),  # over-infusion: the pump empties early
        (0.3, -70.0, "slower"),  # catheter occlusion
        (1.16, 16.0, "faster"),
        (0.84, -16.0, "slower"),
        (1.14, None, None),  # within 15%
        (0.86, None, None),
        (1.0, None, None),
    ],
)
def test_flow_deviation(factor: float, deviation: float | None, way: str | None) -> None:
    bench = Bench()
    bench.read(15.0)
    measured = 0.6 * factor
    drain(bench, measured, 11.5)
    assert of_type(bench.events, FLOW) == []  # not before the rate is established
    out = drain(bench, measured, 0.5)
    assert out.pump_states[0].drain_ml_per_day == pytest.approx(measured, abs=1e-4)
    if deviation is None:
        assert of_type(bench.events, FLOW) == []
        return
    (event,) = of_type(out.events, FLOW)
    assert event.kind is EventKind.ALERT_RAISED
    assert event.at == T0 + MINUTE + 12 * HOUR
    alert = event.alert
    assert alert is not None
    assert (alert.severity, alert.value, alert.threshold) == (WARNING, deviation, 15.0)
    assert f"{abs(deviation):.0f}% {way} than programmed" in alert.message
    assert f"measured {measured:.3f} mL/day" in alert.message
    assert "programmed 0.600 mL/day" in alert.message


def test_flow_deviation_clears_only_below_pct_minus_hysteresis() -> None:
    bench = Bench()
    bench.read(18.0)
    drain(bench, 0.75, 12, every=HOUR)  # 25% faster: raised
    raised = bench.alert(FLOW)
    assert raised is not None
    drain(bench, 0.663, 25, every=HOUR)  # 10.5%: below 15, not below 10
    assert bench.pump_state().drain_ml_per_day == pytest.approx(0.663, abs=1e-4)
    assert bench.alert(FLOW) == raised
    drain(bench, 0.657, 25, every=HOUR)  # 9.5%
    assert transitions(bench.events, FLOW) == ["alert_raised", "alert_cleared"]
    cleared = of_type(bench.events, FLOW)[-1].alert
    assert cleared is not None
    assert cleared.value is not None
    assert 9.5 <= cleared.value <= 10.0  # cleared on the way down, once below 10%


def test_flow_deviation_holds_while_the_window_restarts() -> None:
    bench = Bench()
    bench.read(15.0)
    drain(bench, 0.3, 12)
    raised = bench.alert(FLOW)
    assert raised is not None
    bench.evt("REFILL", 19.0, after=HALF_HOUR)
    drain(bench, 0.6, 12)  # readings over 11.5 h: the new window is not established yet
    assert bench.alert(FLOW) == raised
    out = drain(bench, 0.6, 0.5)
    assert transitions(out.events, FLOW) == ["alert_cleared"]


EMPTY_READINGS = [
    pytest.param({"res": 0.0, "flags": Flag.EMPTY | Flag.LOW_RES}, id="0-ml-and-empty-flag"),
    pytest.param({"res": 0.0}, id="0-ml"),
    pytest.param({"res": 0.01, "flags": Flag.EMPTY | Flag.LOW_RES}, id="empty-flag"),
]


def _drain_until_empty(bench: Bench) -> None:
    """A day of readings at the programmed 0.6 mL/day, down to 0.0125 mL."""
    bench.read(0.6)
    drain(bench, 0.6, 23.5)
    assert bench.pump_state().drain_ml_per_day == 0.6


@pytest.mark.parametrize("empty", EMPTY_READINGS)
def test_empty_reservoir_readings_are_no_drain_points(empty: dict[str, Any]) -> None:
    # A pump with nothing left cannot drain: its flat readings say nothing about
    # the catheter, so they never pull the measured rate down into a "slower
    # than programmed: catheter occlusion or stall?" flow_deviation.
    bench = Bench()
    _drain_until_empty(bench)
    for k in range(1, 97):  # 2 days of empty readings
        out = bench.read(after=HALF_HOUR, **empty)
        if k <= 23:  # the draining readings still span 12 h of the 24 h window
            assert out.pump_states[0].drain_ml_per_day == 0.6
    assert of_type(bench.events, FLOW) == []
    assert bench.alert(FLOW) is None


@pytest.mark.parametrize("empty", EMPTY_READINGS[:1])
def test_drain_rate_is_unknown_once_only_empty_readings_are_left(empty: dict[str, Any]) -> None:
    bench = Bench()
    _drain_until_empty(bench)
    for _ in range(96):  # 2 days of empty readings: the draining ones leave the window
        bench.read(after=HALF_HOUR, **empty)
    assert bench.pump_state().drain_ml_per_day is None


# --- dose_out_of_range -------------------------------------------------------------


@pytest.mark.parametrize(
    ("dose", "expected", "threshold", "text"),
    [
        (21.9, WARNING, 22.0, "below 22"),
        (22.0, None, None, None),
        (300.0, None, None, None),
        (1400.0, None, None, None),
        (1400.1, WARNING, 1400.0, "above 1400"),
    ],
)
def test_dose_out_of_range(
    dose: float, expected: Severity | None, threshold: float | None, text: str | None
) -> None:
    bench = Bench()
    out = bench.read(dose=dose, conc=2000.0)
    assert bench.severity(DOSE) is expected
    if expected is None:
        assert of_type(out.events, DOSE) == []
        return
    alert = bench.alert(DOSE)
    assert alert is not None
    assert (alert.value, alert.threshold) == (dose, threshold)
    assert f"Programmed dose {dose:g} mcg/day {text}" in alert.message


@pytest.mark.parametrize(("bad", "good"), [(21.9, 22.0), (1400.1, 1400.0)])
def test_dose_back_in_range_clears_at_once(bad: float, good: float) -> None:
    bench = Bench()
    bench.read(dose=bad, conc=2000.0)
    out = bench.read(dose=good, conc=2000.0)
    assert transitions(out.events, DOSE) == ["alert_cleared"]


def test_concentration_not_allowed_and_back_in_range() -> None:
    bench = Bench(make_config(allowed_concentrations=[500.0, 1000.0, 2000.0]))
    assert of_type(bench.read(conc=500.0).events, DOSE) == []
    out = bench.read(conc=750.0)  # a refill with the wrong syringe
    (event,) = of_type(out.events, DOSE)
    assert event.kind is EventKind.ALERT_RAISED
    assert event.alert is not None
    assert event.alert.severity is WARNING
    assert event.alert.value == 750.0
    assert "750 mcg/mL is not one of 500, 1000, 2000" in event.alert.message
    out = bench.read(conc=1000.0)
    assert transitions(out.events, DOSE) == ["alert_cleared"]


def test_any_concentration_without_a_list() -> None:
    bench = Bench()
    assert of_type(bench.read(conc=750.0).events, DOSE) == []


@pytest.mark.parametrize(
    ("raise_with", "unknown"),
    [
        ({"dose": 21.9}, {"dose": None}),
        ({"dose": 21.9}, {"flags": Flag.NO_LINK, "dose": 300.0}),
        ({"conc": 750.0}, {"conc": None}),
    ],
)
def test_dose_out_of_range_holds_while_unknown(
    raise_with: dict[str, Any], unknown: dict[str, Any]
) -> None:
    bench = Bench(make_config(allowed_concentrations=[500.0, 1000.0, 2000.0]))
    bench.read(**raise_with)
    raised = bench.alert(DOSE)
    assert raised is not None
    out = bench.read(**unknown)
    assert of_type(out.events, DOSE) == []
    assert bench.alert(DOSE) == raised
    out = bench.read(dose=300.0, conc=500.0)
    assert transitions(out.events, DOSE) == ["alert_cleared"]


# --- refill and program_change events ----------------------------------------------


def test_evt_refill_gives_one_refill_event_with_before_and_after() -> None:
    bench = Bench()
    bench.read(3.0)
    out = bench.evt("REFILL", 19.8, after=timedelta(seconds=5))
    (event,) = of_kind(out.events, EventKind.REFILL)
    assert event.pump_id == PUMP
    assert event.alert is None
    assert event.at == bench.now
    assert detail(event) == {
        "before_ml": 3.0,
        "after_ml": 19.8,
        "source": "EVT",
        "device_time": "2026-11-30T08:01:05Z",
    }
    assert out.events[0] is event  # before the alerts it clears, at once
    assert transitions(out.events, AlertType.RESERVOIR_LOW) == ["alert_cleared"]
    assert transitions(out.events, REFILL_DUE) == ["alert_cleared"]
    # the STAT that shows the jump is the same refill
    out = bench.read(19.8)
    assert of_kind(out.events, EventKind.REFILL) == []
    assert len(of_kind(bench.events, EventKind.REFILL)) == 1


@pytest.mark.parametrize(
    ("after", "refill"),
    [(4.0, False), (4.01, True), (19.0, True)],  # more than 1 mL up is a refill
)
def test_volume_jump_without_evt_is_a_refill(after: float, refill: bool) -> None:
    bench = Bench()
    bench.read(3.0)
    out = bench.read(after)
    events = of_kind(out.events, EventKind.REFILL)
    if not refill:
        assert events == []
        return
    (event,) = events
    assert detail(event) == {
        "before_ml": 3.0,
        "after_ml": after,
        "source": "volume_jump",
        "device_time": "2026-11-30T08:02:00Z",
    }


def test_volume_jump_is_measured_from_the_last_known_volume() -> None:
    bench = Bench()
    bench.read(3.0)
    bench.read(None)  # unknown
    bench.read(19.0, flags=Flag.NO_LINK)  # an old value, not news
    assert of_kind(bench.events, EventKind.REFILL) == []
    out = bench.read(19.0)
    (event,) = of_kind(out.events, EventKind.REFILL)
    assert (detail(event)["before_ml"], detail(event)["after_ml"]) == (3.0, 19.0)


PROGRAM_300 = {"dose_mcg_per_day": 300.0, "concentration_mcg_per_ml": 500.0}
PROGRAM_350 = {"dose_mcg_per_day": 350.0, "concentration_mcg_per_ml": 500.0}


@pytest.mark.parametrize(
    ("shows_as", "source"),
    [
        (["EVT"], "EVT"),
        (["STAT"], "STAT"),
        (["EVT", "STAT"], "EVT"),
        (["STAT", "EVT"], "STAT"),
    ],
)
def test_one_program_change_event_per_change(shows_as: list[str], source: str) -> None:
    bench = Bench()
    bench.read(dose=300.0)
    for news in shows_as:
        if news == "EVT":
            bench.evt("PROG", 350.0, after=MINUTE)
        else:
            bench.read(dose=350.0)
    bench.read(dose=350.0)
    bench.evt("PROG", 350.0)  # the same program again: no change
    (event,) = of_kind(bench.events, EventKind.PROGRAM_CHANGE)
    assert event.pump_id == PUMP
    assert {k: v for k, v in detail(event).items() if k != "device_time"} == {
        "old": PROGRAM_300,
        "new": PROGRAM_350,
        "source": source,
    }
    assert detail(event)["device_time"] == "2026-11-30T08:02:00Z"


def test_every_change_gets_its_own_event() -> None:
    bench = Bench()
    bench.read(dose=300.0)
    bench.evt("PROG", 350.0)
    bench.read(dose=350.0)
    bench.read(dose=400.0)
    bench.evt("PROG", 300.0)
    changes = [
        (detail(e)["old"]["dose_mcg_per_day"], detail(e)["new"]["dose_mcg_per_day"])
        for e in of_kind(bench.events, EventKind.PROGRAM_CHANGE)
    ]
    assert changes == [(300.0, 350.0), (350.0, 400.0), (400.0, 300.0)]


def test_concentration_change_in_a_stat_is_a_program_change() -> None:
    bench = Bench()
    bench.read(3.0, conc=500.0)
    out = bench.read(19.0, conc=1000.0)  # refilled with another concentration
    (change,) = of_kind(out.events, EventKind.PROGRAM_CHANGE)
    assert detail(change)["old"] == PROGRAM_300
    assert detail(change)["new"] == {"dose_mcg_per_day": 300.0, "concentration_mcg_per_ml": 1000.0}
    assert detail(change)["source"] == "STAT"
    assert len(of_kind(out.events, EventKind.REFILL)) == 1


def test_unknown_program_values_are_no_change() -> None:
    bench = Bench()
    bench.read(dose=300.0, conc=500.0)
    bench.read(dose=None, conc=None)
    bench.read(dose=999.0, flags=Flag.NO_LINK)  # an old value, not news
    bench.read(dose=300.0, conc=500.0)
    assert of_kind(bench.events, EventKind.PROGRAM_CHANGE) == []


# --- reminders ---------------------------------------------------------------------

QUIET_TELEMETRY: dict[str, Any] = {
    "telemetry_timeout_s": 86400
}  # ticks without readings: no telemetry_lost


def reminders(events: list[Event]) -> list[Event]:
    return of_kind(events, EventKind.ALERT_REMINDER)


def test_critical_alert_is_reminded_every_renotify_critical_s() -> None:
    bench = Bench(make_config(**QUIET_TELEMETRY))
    bench.read(flags=Flag.MOTOR_STALL)  # pump_fault, critical, alone
    alert = bench.alert(AlertType.PUMP_FAULT)
    assert alert is not None
    raised_at = bench.now
    events = bench.ticks(timedelta(seconds=10), HOUR)
    assert [e.at - raised_at for e in reminders(events)] == [
        timedelta(seconds=s) for s in (900, 1800, 2700, 3600)
    ]
    assert events == reminders(events)
    for event in events:
        assert event.pump_id == PUMP
        assert event.alert == alert  # the alert as it stands, unchanged
    assert bench.alert(AlertType.PUMP_FAULT) == alert


def test_warning_is_reminded_every_renotify_warning_s() -> None:
    bench = Bench(make_config(**QUIET_TELEMETRY))
    bench.read(bat=20)  # battery_low warning
    raised_at = bench.now
    events = bench.ticks(MINUTE, timedelta(hours=10))
    assert [e.at - raised_at for e in reminders(events)] == [4 * HOUR, 8 * HOUR]
    assert {e.alert.type for e in events} == {AlertType.BATTERY_LOW}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("overrides", "flags", "bat"),
    [
        ({"renotify_critical_s": 0}, Flag.MOTOR_STALL, 81),
        ({"renotify_warning_s": 0}, NO_FLAGS, 20),
    ],
)
def test_zero_disables_reminders(overrides: dict[str, Any], flags: Flag, bat: int) -> None:
    bench = Bench(make_config(**QUIET_TELEMETRY, **overrides))
    bench.read(flags=flags, bat=bat)
    assert bench.state.active_alerts() != []
    assert bench.ticks(MINUTE, timedelta(hours=10)) == []


def test_acknowledged_alert_is_not_reminded() -> None:
    bench = Bench(make_config(**QUIET_TELEMETRY))
    bench.read(flags=Flag.MOTOR_STALL)
    alert_id = bench.alert(AlertType.PUMP_FAULT).alert_id  # type: ignore[union-attr]
    bench.feed(Acknowledge(alert_id, "nurse-jane", None), timedelta(seconds=300))
    assert bench.ticks(timedelta(seconds=10), HOUR) == []


def test_cleared_alert_is_not_reminded() -> None:
    bench = Bench(make_config(**QUIET_TELEMETRY))
    bench.read(flags=Flag.MOTOR_STALL)
    bench.ticks(timedelta(seconds=10), timedelta(seconds=1000))
    bench.read(flags=NO_FLAGS)
    assert bench.alert(AlertType.PUMP_FAULT) is None
    assert bench.ticks(timedelta(seconds=10), HOUR) == []


def test_escalation_restarts_the_schedule() -> None:
    bench = Bench(make_config(**QUIET_TELEMETRY))
    bench.read(bat=20)  # warning
    bench.ticks(timedelta(seconds=10), timedelta(seconds=600))
    bench.read(bat=8, after=ZERO)  # critical, 600 s after the raise
    escalated_at = bench.now
    events = bench.ticks(timedelta(seconds=10), HOUR)
    assert [e.at - escalated_at for e in events] == [
        timedelta(seconds=s) for s in (900, 1800, 2700, 3600)
    ]
    assert {e.alert.severity for e in events} == {CRITICAL}  # type: ignore[union-attr]


def test_escalation_breaks_through_the_acknowledgement() -> None:
    bench = Bench(make_config(**QUIET_TELEMETRY))
    bench.read(bat=20)
    alert_id = bench.alert(AlertType.BATTERY_LOW).alert_id  # type: ignore[union-attr]
    bench.feed(Acknowledge(alert_id, "nurse-jane", None), MINUTE)
    assert bench.ticks(timedelta(seconds=10), timedelta(hours=5)) == []  # acked: quiet
    out = bench.read(bat=8, after=ZERO)
    (escalated,) = of_type(out.events, AlertType.BATTERY_LOW)
    assert escalated.kind is EventKind.ALERT_ESCALATED
    assert escalated.alert is not None
    assert escalated.alert.state is AlertState.ACTIVE
    escalated_at = bench.now
    events = bench.ticks(timedelta(seconds=10), HOUR)
    assert [e.at - escalated_at for e in reminders(events)] == [
        timedelta(seconds=s) for s in (900, 1800, 2700, 3600)
    ]
    assert {e.alert.alert_id for e in events} == {alert_id}  # type: ignore[union-attr]


def test_reminders_for_several_alerts_each_on_its_own_schedule() -> None:
    bench = Bench(make_config(**QUIET_TELEMETRY))
    bench.read(flags=Flag.MOTOR_STALL)
    bench.ticks(timedelta(seconds=10), timedelta(seconds=300))
    bench.read(bat=5, flags=Flag.MOTOR_STALL, after=ZERO)  # battery_low critical at 300 s
    events = bench.ticks(timedelta(seconds=10), timedelta(seconds=1500))
    assert [(e.at - T0 - MINUTE, e.alert.type) for e in events] == [  # type: ignore[union-attr]
        (timedelta(seconds=900), AlertType.PUMP_FAULT),
        (timedelta(seconds=1200), AlertType.BATTERY_LOW),
        (timedelta(seconds=1800), AlertType.PUMP_FAULT),
    ]


# --- per-pump overrides ------------------------------------------------------------


def test_per_pump_refill_days() -> None:
    overrides = {"refill_warning_days": 14, "refill_critical_days": 5, "refill_hysteresis_days": 2}
    bench = Bench(make_config(pumps={OTHER: overrides}))
    for pump in (PUMP, OTHER):
        bench.read(12.0, pump=pump, **ONE_ML_A_DAY)  # 10 days
    assert bench.severity(REFILL_DUE, PUMP) is None
    assert bench.severity(REFILL_DUE, OTHER) is WARNING
    assert bench.alert(REFILL_DUE, OTHER).threshold == 14  # type: ignore[union-attr]
    bench.read(6.5, pump=OTHER, **ONE_ML_A_DAY)  # 4.5 days
    assert bench.severity(REFILL_DUE, OTHER) is CRITICAL
    # climbing by less than 1 mL a reading (no refill): held up to 14 + 2 days
    for res in (7.4, 8.3, 9.2, 10.1, 11.0, 11.9, 12.8, 13.7, 14.6, 15.5, 16.4, 17.3, 18.0):
        bench.read(res, pump=OTHER, **ONE_ML_A_DAY)
        assert bench.severity(REFILL_DUE, OTHER) is CRITICAL
    bench.read(18.01, pump=OTHER, **ONE_ML_A_DAY)
    assert bench.severity(REFILL_DUE, OTHER) is None


def test_per_pump_flow_deviation() -> None:
    overrides = {"flow_deviation_pct": 30, "flow_min_span_h": 2, "flow_window_h": 4}
    bench = Bench(make_config(pumps={OTHER: overrides}))
    for pump in (PUMP, OTHER):
        bench.res = 15.0
        bench.read(pump=pump, after=ZERO)
        drain(bench, 0.75, 12, pump=pump)  # 25% faster
        assert bench.state.pumps[pump].last_state.drain_ml_per_day == 0.75  # type: ignore[union-attr]
    assert bench.severity(FLOW, PUMP) is WARNING
    assert bench.severity(FLOW, OTHER) is None
    # OTHER: established after 2 h of readings; the window is 4 h
    other = of_type(bench.events, FLOW)
    assert [e.pump_id for e in other] == [PUMP]


def test_per_pump_short_window_raises_sooner() -> None:
    bench = Bench(make_config(pumps={PUMP: {"flow_min_span_h": 2, "flow_window_h": 4}}))
    bench.read(15.0)
    drain(bench, 0.3, 1.5)
    assert of_type(bench.events, FLOW) == []
    drain(bench, 0.3, 1)  # (exactly at 2 h: see the test at the end)
    (event,) = of_type(bench.events, FLOW)
    assert event.alert.value == -50.0  # type: ignore[union-attr]


def test_per_pump_dose_limits_and_concentrations() -> None:
    limits = {"dose_min_mcg": 50, "dose_max_mcg": 800, "allowed_concentrations": [500, 2000]}
    bench = Bench(make_config(pumps={OTHER: limits}))
    for pump, dose, conc in [
        (PUMP, 40.0, 750.0),  # fine by the defaults
        (OTHER, 40.0, 500.0),
        (OTHER, 900.0, 500.0),
        (OTHER, 300.0, 1000.0),
        (OTHER, 300.0, 2000.0),
    ]:
        bench.read(pump=pump, dose=dose, conc=conc)
        expected = None if pump == PUMP or (dose, conc) == (300.0, 2000.0) else WARNING
        assert bench.severity(DOSE, pump) is expected, (pump, dose, conc)


def test_per_pump_reminder_intervals() -> None:
    bench = Bench(make_config(pumps={OTHER: {"renotify_critical_s": 300}}, **QUIET_TELEMETRY))
    bench.read(pump=PUMP, flags=Flag.MOTOR_STALL)
    bench.read(pump=OTHER, flags=Flag.MOTOR_STALL, after=ZERO)
    raised_at = bench.now
    events = bench.ticks(timedelta(seconds=10), timedelta(seconds=900))
    assert sorted((e.at - raised_at, e.pump_id) for e in events) == [
        (timedelta(seconds=300), OTHER),
        (timedelta(seconds=600), OTHER),
        (timedelta(seconds=900), PUMP),
        (timedelta(seconds=900), OTHER),
    ]


# --- bugs the tests found (fixed) -------------------------------------------------


def test_level_reservoir_does_not_crash_the_engine() -> None:
    bench = Bench()
    bench.read(12.4)
    for _ in range(12 * 12 + 1):  # every 5 minutes for 12 h 5 min, not a drop delivered
        bench.read(12.4, after=timedelta(minutes=5))
    assert bench.pump_state().drain_ml_per_day == 0.0
    assert bench.severity(FLOW) is WARNING  # 100% slower: what the rule is for


def test_tiny_programmed_flow_does_not_crash_the_engine() -> None:
    bench = Bench()
    bench.read(12.4, dose=0.0001, conc=3000.0)
    assert bench.severity(DOSE) is WARNING


def test_evt_refill_clears_reservoir_low_despite_the_old_low_res_flag() -> None:
    bench = Bench()
    bench.read(1.8, flags=Flag.LOW_RES)  # the pump's own alarm sounds: time to refill
    out = bench.evt("REFILL", 19.8, after=timedelta(seconds=5))
    assert transitions(out.events, REFILL_DUE) == ["alert_cleared"]
    assert transitions(out.events, AlertType.RESERVOIR_LOW) == ["alert_cleared"]


def test_evt_refill_without_a_volume_then_the_stat_is_one_refill() -> None:
    bench = Bench()
    bench.read(3.0)
    bench.evt("REFILL", None, after=timedelta(seconds=5))
    bench.read(19.8)
    assert len(of_kind(bench.events, EventKind.REFILL)) == 1


def test_evt_prog_before_the_first_stat_is_reported() -> None:
    bench = Bench()
    bench.evt("PROG", 350.0)
    bench.read(dose=350.0)
    (event,) = of_kind(bench.events, EventKind.PROGRAM_CHANGE)
    # The concentration was not known yet when the EVT came: null, not a guess.
    assert detail(event)["new"] == {**PROGRAM_350, "concentration_mcg_per_ml": None}
    assert detail(event)["old"] == {"dose_mcg_per_day": None, "concentration_mcg_per_ml": None}


def test_rate_is_established_at_exactly_flow_min_span_h() -> None:
    bench = Bench(make_config(pumps={PUMP: {"flow_min_span_h": 2, "flow_window_h": 4}}))
    bench.read(15.0)  # 08:01
    out = drain(bench, 0.3, 2)  # 08:31 ... 10:01
    assert out.pump_states[0].drain_ml_per_day == 0.3


def test_stat_showing_the_refill_before_its_evt_is_one_refill() -> None:
    bench = Bench()
    bench.read(3.0)
    bench.read(19.8)  # the jump: reported
    bench.evt("REFILL", 19.8, after=timedelta(seconds=5))  # the late EVT: not again
    assert len(of_kind(bench.events, EventKind.REFILL)) == 1
