"""Scenario timelines: 90 simulated days of each simulator scenario, through the
programmer, the host session and the alert engine (see tests/timeline.py).

Each test states the exact order of alert transitions and pump events
(pump, kind, type, severity) and the day of the key ones, derived from the
scenario's numbers (drivers/simulator/scenarios.py) and the engine's default
thresholds (gateway/config.py): reservoir_low warning <= 5 mL, critical <= 2 mL;
refill_due warning <= 7 days to the low-reservoir alarm (LRA, 2 mL here),
critical <= 2 days, on the measured drain rate once 12 h of readings are in a
24 h window, else the programmed flow; flow_deviation beyond 15%, held down
to 10%; battery_low warning <= 25%, critical <= 10%. Severities only rise
within an episode. Days are checked to within two STAT intervals.

A reading of an empty reservoir (0 mL, EMPTY) is no point of the drain window:
a pump with nothing left cannot drain, so it says nothing about the catheter.
Like an unknown reading it splits the window instead, and adds nothing to it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from timeline import (
    DAYS,
    DOC_PATH,
    POLL_INTERVAL_S,
    SCENARIO_CONFIG,
    START,
    Key,
    Transition,
    alerts_and_events,
    find,
    keys,
    pump_id,
    render_doc,
    run_timeline,
    simulate,
    stat_interval_days,
)

P = pump_id(1)
STEP = stat_interval_days()  # one STAT interval, in days
TOL = 2 * STEP + 0.01  # ~0.05 days
LRA = 2.0  # every scenario's low-reservoir alarm level, mL

GATEWAY_START: list[Key] = [(None, "gateway_started", None, None), (None, "link_up", None, None)]


def raised(alert: str, severity: str = "warning") -> Key:
    return (P, "alert_raised", alert, severity)


def escalated(alert: str) -> Key:
    return (P, "alert_escalated", alert, "critical")


def cleared(alert: str, severity: str = "warning") -> Key:
    return (P, "alert_cleared", alert, severity)


REFILL: Key = (P, "refill", None, None)
PROGRAM_CHANGE: Key = (P, "program_change", None, None)


def timeline(name: str) -> list[Transition]:
    return run_timeline(name, DAYS, SCENARIO_CONFIG[name])


def check(
    transitions: list[Transition],
    expected: Sequence[tuple[Key, float | None]],
    tol: float = TOL,
) -> None:
    """The exact order of every transition; the day of those given one."""
    assert keys(transitions[:2]) == GATEWAY_START
    assert all(t.day == 0 for t in transitions[:2])
    actual = alerts_and_events(transitions)
    assert keys(actual) == [key for key, _ in expected]
    for t, (key, day) in zip(actual, expected, strict=True):
        if day is not None:
            assert abs(t.day - day) <= tol, f"{key} at day {t.day}, expected {day:.3f} ± {tol:.3f}"


# --- what the numbers say -------------------------------------------------------------


def reaches(start_ml: float, rate: float, level_ml: float, t0: float = 0.0) -> float:
    """The day a reservoir of ``start_ml`` at day ``t0``, draining ``rate``
    mL/day, reaches ``level_ml``."""
    return t0 + (start_ml - level_ml) / rate


def refill_due_level(rate: float, days: float) -> float:
    """The volume at which the LRA is ``days`` away at ``rate``."""
    return LRA + days * rate


def measured_rate(volume: Callable[[float], float], day: float, since: float = 0.0) -> float:
    """The least-squares drain rate over the 24 h of STATs up to ``day`` (volumes
    to 0.01 mL, as STATs carry them), from ``since`` at the earliest: an
    independent reading of the issue's flow_deviation definition."""
    points = []
    k = 0
    while (t := day - k * STEP) >= max(since, day - 1.0) - 1e-9:
        points.append((t, round(volume(t), 2)))
        k += 1
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    sxy = sum((t - mean_t) * (v - mean_v) for t, v in points)
    sxx = sum((t - mean_t) ** 2 for t, _ in points)
    return -sxy / sxx


def first_stat_when(
    volume: Callable[[float], float], after: float, holds: Callable[[float], bool]
) -> float:
    """The first STAT day after ``after`` at which the measured rate satisfies ``holds``."""
    day = math.ceil(after / STEP) * STEP
    while not holds(measured_rate(volume, day)):
        day += STEP
        assert day < DAYS, "never"
    return day


# --- the scenarios --------------------------------------------------------------------


def normal_drain(t0: float = 0.0) -> list[tuple[Key, float | None]]:
    """15 mL at 0.6 mL/day (300 mcg/day of 500 mcg/mL), never refilled."""
    rate = 0.6
    return [
        # LRA 7 days away at 6.2 mL: day 14.67 (the measured rate is the programmed one)
        (raised("refill_due"), reaches(15.0, rate, refill_due_level(rate, 7))),
        # 5 mL: day 16.67
        (raised("reservoir_low"), reaches(15.0, rate, 5.0)),
        # LRA 2 days away at 3.2 mL: day 19.67
        (escalated("refill_due"), reaches(15.0, rate, refill_due_level(rate, 2))),
        # 2 mL (the pump's own LOW_RES sets too): day 21.67
        (escalated("reservoir_low"), reaches(15.0, rate, 2.0)),
        # empty at day 25, and nothing more: the 0 mL readings are no points of
        # the drain window, so they never pull the measured rate down into a
        # "slower than programmed" flow_deviation. Nothing clears: there is no
        # refill. (Battery: 80% - 0.01%/day, never low.)
    ]


def test_normal() -> None:
    check(timeline("normal"), normal_drain())


def test_low_reservoir() -> None:
    # 6 mL at 1.0 mL/day (500 mcg/day of 500 mcg/mL), never refilled.
    rate = 1.0
    check(
        timeline("low-reservoir"),
        [
            # the LRA is 4 days away from the first STAT: warning (<= 7) at once
            (raised("refill_due"), 0.0),
            # 5 mL after one day
            (raised("reservoir_low"), reaches(6.0, rate, 5.0)),
            # the LRA 2 days away at 4 mL
            (escalated("refill_due"), reaches(6.0, rate, refill_due_level(rate, 2))),
            # 2 mL
            (escalated("reservoir_low"), reaches(6.0, rate, 2.0)),
            # empty at day 6: no flow_deviation from the 0 mL readings (as in normal)
        ],
    )


def test_battery_eri_eos() -> None:
    # normal, but the battery starts at 30% and loses 4%/day. The STAT's bat_pct
    # is rounded up, so it reads 25 at 30 - 4t = 25 and 10 at 30 - 4t = 10.
    check(
        timeline("battery-eri-eos"),
        [
            (raised("battery_low"), (30 - 25) / 4),  # day 1.25
            # 10% at day 5 (the pump's ERI at 20%, day 2.5, is no news: already a
            # warning; its EOS at 5%, day 6.25, neither: already critical)
            (escalated("battery_low"), (30 - 10) / 4),
            # then the reservoir exactly as in normal
            *normal_drain(),
        ],
    )


def test_motor_stall() -> None:
    # normal until the motor stalls at day 0.5: MOTOR_STALL, nothing delivered,
    # the volume stays at 14.7 mL.
    volume = lambda day: 15.0 - 0.6 * min(day, 0.5)  # noqa: E731
    check(
        timeline("motor-stall"),
        [
            # the first STAT with MOTOR_STALL (its ALRM also asks for one)
            (raised("pump_fault", "critical"), 0.5),
            # the measured rate (established at day 0.5) falls below 0.51 mL/day
            # as flat readings fill the window: "slower than programmed".
            # refill_due never: once the window holds only 14.7 mL (day 1.5) the
            # measured rate is float noise (~5e-13 mL/day): no projection. (That
            # noise made timedelta() overflow in engine.step before MIN_RATE_ML_PER_DAY.)
            (raised("flow_deviation"), first_stat_when(volume, 0.5, lambda r: r < 0.51)),
        ],
    )


def test_link_loss() -> None:
    # normal; the programmer loses the pump from day 0.5 to day 1.5. Its STATs
    # keep coming, with NO_LINK and the last known values.
    transitions = timeline("link-loss")
    check(
        transitions,
        [
            # raised by the NO_LINK flag on a STAT, not by a silence; the frozen
            # values raise and clear nothing
            (raised("telemetry_lost", "critical"), 0.5),
            # live values again
            (cleared("telemetry_lost", "critical"), 1.5),
            # the pump kept draining meanwhile: the rest is normal's, on time
            *normal_drain(),
        ],
    )
    lost = find(transitions, "alert_raised", "telemetry_lost")
    assert [t.cause for t in lost] == ["Reading"]


def test_noisy_line() -> None:
    # normal, on a line that corrupts one frame in four (seed 0): a flipped byte
    # or a truncation loses the frame, prepended noise does not, so one STAT in
    # six is lost. The drain is normal's (a lost STAT can delay a transition by
    # an interval or three); the line adds telemetry_lost episodes and nothing
    # else (a corrupted frame never passes its CRC: no data_invalid).
    bedside = simulate("noisy-line", DAYS, SCENARIO_CONFIG["noisy-line"])
    transitions = list(bedside.transitions)
    lost = [t for t in transitions if t.type == "telemetry_lost"]
    others = [t for t in transitions if t.type != "telemetry_lost"]
    check(others, normal_drain(), tol=4 * STEP + 0.01)

    # telemetry_lost: raised by a Tick when no valid STAT came for the timeout
    # (three intervals), cleared by the next valid STAT. That is every gap
    # between two valid STATs longer than the timeout: three or more lost in a row.
    timeout_s = 3 * POLL_INTERVAL_S
    times = [s for _, s in bedside.readings]
    gaps = [(a, b) for a, b in itertools.pairwise(times) if b - a > timeout_s]
    assert keys(lost) == [
        key
        for _ in gaps
        for key in (raised("telemetry_lost", "critical"), cleared("telemetry_lost", "critical"))
    ]
    assert [t.cause for t in lost] == ["Tick", "Reading"] * len(gaps)
    for (a, b), up, down in zip(gaps, lost[::2], lost[1::2], strict=True):
        assert abs(up.day - (a + timeout_s) / 86400) <= 0.01
        assert abs(down.day - b / 86400) <= 0.01
    assert len(gaps) == 16  # with seed 0 and a STAT every 30 min, over 90 days


def test_refill() -> None:
    # 3 mL at 1.0 mL/day (500 mcg/day of 500 mcg/mL), refilled to 19.8 mL at day 1.5.
    rate = 1.0
    transitions = timeline("refill")
    check(
        transitions,
        [
            (raised("reservoir_low"), 0.0),  # 3 mL <= 5
            (raised("refill_due", "critical"), 0.0),  # LRA 1 day away: critical at once
            (escalated("reservoir_low"), reaches(3.0, rate, 2.0)),  # 2 mL, day 1
            # EVT REFILL at day 1.5: the event, then the re-evaluation on 19.8 mL
            # (without the LOW_RES flag of the STAT before it) ends both episodes
            # at once, in the engine's order: reservoir_low, refill_due (17.8 days:
            # not due, so its clear says so; a refill to a volume still due would
            # end it as "Refilled" and start a new episode)
            (REFILL, 1.5),
            (cleared("reservoir_low", "critical"), 1.5),
            (cleared("refill_due", "critical"), 1.5),
            # 19.8 mL from day 1.5: the LRA 7 days away at 9 mL, day 12.3
            (raised("refill_due"), reaches(19.8, rate, refill_due_level(rate, 7), 1.5)),
            (raised("reservoir_low"), reaches(19.8, rate, 5.0, 1.5)),  # day 16.3
            (escalated("refill_due"), reaches(19.8, rate, refill_due_level(rate, 2), 1.5)),
            (escalated("reservoir_low"), reaches(19.8, rate, 2.0, 1.5)),  # day 19.3
            # empty at day 21.3: no flow_deviation from the 0 mL readings
        ],
    )
    refill = find(transitions, "refill")[0]
    assert refill.cause == "PumpEventReceived"
    # cleared by the refill event itself, not by the STAT after it
    assert {t.cause for t in transitions if t.kind == "alert_cleared"} == {"PumpEventReceived"}
    assert refill.detail is not None and refill.detail.endswith("-> 19.8 mL (EVT)")
    [due_cleared] = find(transitions, "alert_cleared", "refill_due")
    projected = (19.8 - LRA) / rate
    assert due_cleared.detail == f"Cleared: Low-reservoir alarm projected in {projected:.1f} days"
    # the refill_due raised at day 12.3 is a new episode, not the one the refill ended
    bedside = simulate("refill", DAYS, SCENARIO_CONFIG["refill"])
    due = [e.alert for e in bedside.events if e.alert and e.alert.type == "refill_due"]
    assert [a.alert_id == due[0].alert_id for a in due] == [True, True, False, False]


CYCLE_FULL, CYCLE_REFILL_AT = 20.0, 4.5  # mL: refilled to 20.0 whenever it reaches 4.5
CYCLE_PERIOD = (CYCLE_FULL - CYCLE_REFILL_AT) / 2.0  # days between automatic refills: 7.75


def test_refill_cycle() -> None:
    # a full 20 mL at 2.0 mL/day (1000 mcg/day of 500 mcg/mL), refilled to 20 mL
    # whenever it reaches 4.5 mL: at day 7.75 k (k = 1 .. 11 within 90 days).
    rate = 2.0
    expected: list[tuple[Key, float | None]] = []
    refills = int(DAYS // CYCLE_PERIOD)
    for k in range(refills + 1):
        start = k * CYCLE_PERIOD
        expected += [
            # 16 mL, day +2: the LRA 7 days away, refill_due warning (a new
            # episode every round: the refill before ended the last one) ...
            (raised("refill_due"), reaches(CYCLE_FULL, rate, refill_due_level(rate, 7), start)),
            # ... critical at 6 mL (2 days), day +7
            (escalated("refill_due"), reaches(CYCLE_FULL, rate, refill_due_level(rate, 2), start)),
            # 5 mL, day +7.5: reservoir_low warning
            (raised("reservoir_low"), reaches(CYCLE_FULL, rate, 5.0, start)),
            # 4.5 mL, day +7.75: refilled; the refill event itself clears
            # reservoir_low (20 mL) and ends refill_due (the LRA 9 days away), in
            # the engine's order
            (REFILL, start + CYCLE_PERIOD),
            (cleared("reservoir_low"), start + CYCLE_PERIOD),
            (cleared("refill_due", "critical"), start + CYCLE_PERIOD),
        ]
    # the twelfth round (from day 85.25) gets no further than its warning at day
    # 87.25: critical would be day 92.25
    expected = [e for e in expected if e[1] is not None and e[1] <= DAYS]
    assert refills == 11
    assert len(expected) == 6 * refills + 1
    transitions = timeline("refill-cycle")
    check(transitions, expected)
    clears = [t for t in transitions if t.kind == "alert_cleared"]
    assert len(clears) == 2 * refills
    assert {t.cause for t in clears} == {"PumpEventReceived"}  # by the refill event itself
    assert [t.detail for t in find(clears, "alert_cleared", "refill_due")] == [
        f"Cleared: Low-reservoir alarm projected in {(CYCLE_FULL - LRA) / rate:.1f} days"
    ] * refills
    for refill in find(transitions, "refill"):
        # the volume of the last STAT before the refill: 4.5 mL, or one STAT earlier
        assert refill.detail is not None and refill.detail.endswith(" -> 20.0 mL (EVT)")
        before = float(refill.detail.split(" ->")[0])
        assert CYCLE_REFILL_AT <= before <= round(CYCLE_REFILL_AT + rate * STEP, 2)
    # every refill_due raise is a new episode (its own alert_id), 12 in all, and
    # each episode's escalation and end carry that id
    bedside = simulate("refill-cycle", DAYS, SCENARIO_CONFIG["refill-cycle"])
    due = [e for e in bedside.events if e.alert and e.alert.type == "refill_due"]
    ids = [e.alert.alert_id for e in due if e.alert]
    assert len(set(ids)) == refills + 1
    assert ids == [i for i in dict.fromkeys(ids) for _ in range(3)][: len(ids)]
    # no flow_deviation: the window restarts at each refill and sees 2.0 mL/day


def test_over_infusion() -> None:
    # normal, but delivers 25% more: 0.75 mL/day against 0.6 programmed.
    rate = 0.75
    check(
        timeline("over-infusion"),
        [
            # measured rate established at 12 h: +25% (> 15%): "faster than programmed"
            (raised("flow_deviation"), 0.5),
            # refill_due on the measured 0.75 mL/day: LRA 7 days away at 7.25 mL,
            # day 10.33 (on the programmed flow it would be day 14.67)
            (raised("refill_due"), reaches(15.0, rate, refill_due_level(rate, 7))),
            (raised("reservoir_low"), reaches(15.0, rate, 5.0)),  # day 13.33
            (escalated("refill_due"), reaches(15.0, rate, refill_due_level(rate, 2))),
            (escalated("reservoir_low"), reaches(15.0, rate, 2.0)),  # day 17.33
            # empty at day 20: the 0 mL readings are no points of the drain window,
            # so the measured rate is never pulled down through the band: the
            # "faster" episode raised at day 0.5 stays active to the end (no clear
            # below +10%, no new "slower" episode below -15%)
        ],
    )


def test_catheter_occlusion() -> None:
    # normal, but delivers 30%: 0.18 mL/day against 0.6 programmed.
    rate = 0.18
    check(
        timeline("catheter-occlusion"),
        [
            # measured rate established at 12 h: -70%: "slower than programmed"
            (raised("flow_deviation"), 0.5),
            # slow drain: 5 mL comes first (day 55.6) ...
            (raised("reservoir_low"), reaches(15.0, rate, 5.0)),
            # ... as refill_due runs on the measured rate: 7 days is only 1.26 mL
            # above the LRA (3.26 mL, day 65.2); 2 days at 2.36 mL (day 70.2)
            (raised("refill_due"), reaches(15.0, rate, refill_due_level(rate, 7))),
            (escalated("refill_due"), reaches(15.0, rate, refill_due_level(rate, 2))),
            (escalated("reservoir_low"), reaches(15.0, rate, 2.0)),  # day 72.2
            # empty at day 83.3: the 0 mL readings are no points of the drain
            # window, and the flow_deviation raised at day 0.5 stays active
        ],
    )


def test_wrong_concentration() -> None:
    # 4 mL at 0.6 mL/day; at day 1 (3.4 mL) refilled to 19.5 mL of 2000 mcg/mL,
    # with allowed_concentrations = [500, 1000].
    transitions = timeline("wrong-concentration")
    check(
        transitions,
        [
            (raised("reservoir_low"), 0.0),  # 4 mL <= 5
            (raised("refill_due"), 0.0),  # LRA (4 - 2) / 0.6 = 3.3 days away
            # EVT REFILL: both cleared on 19.5 mL by the event itself (no LOW_RES
            # at 3.4 mL), on the old program: 29.2 days to the LRA
            (REFILL, 1.0),
            (cleared("reservoir_low"), 1.0),
            (cleared("refill_due"), 1.0),
            # the STAT after it shows 2000 mcg/mL (the simulator sends no EVT PROG)
            (PROGRAM_CHANGE, 1.0),
            (raised("dose_out_of_range"), 1.0),  # 2000 is not in [500, 1000]
            # 0.15 mL/day from now on: the LRA is 116.7 days away, no more alerts;
            # the drain window restarted and measures 0.15: no flow_deviation
        ],
    )
    refill, change = find(transitions, "refill")[0], find(transitions, "program_change")[0]
    assert [refill.cause, change.cause] == ["PumpEventReceived", "Reading"]
    assert change.detail == "concentration 500.0 -> 2000.0 (STAT)"


def test_reminders() -> None:
    # battery-eri-eos for 6 days with the default reminder periods: an active
    # warning is re-announced every 14400 s, a critical one every 900 s, counted
    # from its last announcement (raise or escalation), on the gateway's clock
    # (simulated time), at the Ticks (every 450 s: both periods are multiples).
    days = 6
    warning_s, critical_s = 14400, 900
    bedside = simulate(
        "battery-eri-eos",
        days,
        {"renotify_warning_s": warning_s, "renotify_critical_s": critical_s},
    )
    assert bedside.crash is None
    # the transitions are those of the quiet run: battery_low at day 1.25 and 5.0
    quiet = [t for t in bedside.transitions if t.kind != "alert_reminder"]
    assert keys(alerts_and_events(quiet)) == [raised("battery_low"), escalated("battery_low")]
    raise_at, escalate_at = (e.at for e in bedside.events if e.alert and e.kind != "alert_reminder")
    end = START + timedelta(days=days)
    reminders = [e for e in bedside.events if e.kind == "alert_reminder"]
    assert all(e.alert and e.alert.type == "battery_low" for e in reminders)
    assert len({e.alert.alert_id for e in reminders if e.alert}) == 1  # one episode
    assert {t.cause for t in bedside.transitions if t.kind == "alert_reminder"} == {"Tick"}
    warnings = [e.at for e in reminders if e.alert and e.alert.severity == "warning"]
    criticals = [e.at for e in reminders if e.alert and e.alert.severity == "critical"]

    def every(period_s: int, since: datetime, until: datetime) -> list[datetime]:
        count = int((until - since).total_seconds() // period_s)
        return [since + timedelta(seconds=period_s * k) for k in range(1, count + 1)]

    # a warning every 4 h until the escalation (none after it) ...
    assert warnings == every(warning_s, raise_at, escalate_at)
    # ... then critical every 15 min, counted from the escalation, to the end
    assert criticals == every(critical_s, escalate_at, end)
    assert (len(warnings), len(criticals)) == (22, 94)


def test_release_notes_are_current() -> None:
    # docs/scenario-timelines.md shows these very runs (cached: no extra cost)
    path = Path(__file__).parent.parent / DOC_PATH
    assert path.read_text() == render_doc(), (
        f"{DOC_PATH} is stale: python tests/timeline.py > {DOC_PATH}"
    )
