"""Scenario timelines: a simulated bedside, in-process, deterministic and fast.

The simulated programmer's sans-IO core (``drivers.simulator.device.Programmer``)
talks to the host session (``drivers.session.ProgrammerSession``) through
plain byte strings, and the session's events drive the pure alert engine
(``gateway.engine.step``) as ``gateway.daemon.Daemon`` maps them. No threads,
no sleeps, no real clock, no port: one fake monotonic clock, stepped from one
due time to the next.

Clocks
------
- The *monotonic* clock (``mono``, seconds) is what the programmer and the
  session see, as real seconds would be on a bench. The programmer runs
  ``speed`` times faster (90 000 by default: 90 simulated days are 86.4
  monotonic seconds, stepped through, never waited for).
- The *gateway clock* handed to the engine as ``now`` is
  ``START + mono * speed`` (rounded to the millisecond): the gateway's wall
  clock advances in lockstep with simulated time, exactly like the
  programmer's own clock (the ``time`` of each STAT; the session never sends
  ``TIME``). So silences (``telemetry_lost``), reminders and alert times are
  judged as on a real bedside living those 90 days. Had ``now`` followed
  ``mono``, a 180 s telemetry timeout would span months of simulated time and
  mean nothing.

Rates (``poll_interval_s``, default 1800 simulated seconds)
-----------------------------------------------------------
- The gateway asks for ``STREAM`` every ``poll_interval_s`` simulated
  seconds; ``speed`` is chosen so that this is the programmer's fastest
  period (0.02 monotonic s), so it is not clamped: one STAT per pump every
  30 simulated minutes, 4 320 per pump in 90 days. (12 minutes, 10 800 STATs,
  gives the same sequences at 2.5 times the cost: ~0.25 ms per STAT through
  programmer, codec, session and engine.)
- A real bedside polls every 60 s with a 180 s telemetry timeout (three
  missed STATs) and a 30 s link timeout. Those two are scaled with the poll
  interval (x 30 by default): ``telemetry_timeout_s`` = 3 x poll,
  ``link_timeout_s`` = poll / 2. Clinical thresholds (days, mL, %, reminder
  periods) keep their defaults.
- The engine gets a ``Tick`` every ``poll_interval_s / 4`` simulated seconds
  (the daemon ticks every second; any period well below the telemetry
  timeout finds the same silences). Every timeout above is a multiple of it.
- The session's own protocol timeouts (2 s for a HELLO, 2 x poll + 2 s of
  silence before a probe) stay on the monotonic clock, where the wire
  protocol lives; with a programmer streaming every 0.02 s they do not fire.

At one instant the programmer's output is handled before the engine's Tick,
as the daemon handles what has arrived before it looks at the time. Answers
(HELLO to ID, STATs to POLL) come back at the same instant.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, NamedTuple

from drivers import session as ses
from drivers.ptp import Alrm, Evt, PollCommand, ProtocolError, Stat
from drivers.simulator.device import MIN_STREAM_PERIOD_S, Programmer, SimulatedPump
from drivers.simulator.scenarios import SCENARIOS
from gateway import engine
from gateway.config import Config, parse_config
from gateway.contract import Event, EventKind

START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
POLL_INTERVAL_S = 1800  # simulated seconds between streamed STATs
SECONDS_PER_DAY = 86_400.0
REAL_POLL_S = 60  # what a real bedside polls at, with these timeouts:
REAL_TELEMETRY_TIMEOUT_S = 180
REAL_LINK_TIMEOUT_S = 30
# Reminders off: they would drown the transitions (see the dedicated test).
QUIET: dict[str, Any] = {"renotify_critical_s": 0, "renotify_warning_s": 0}


def speed_for(poll_interval_s: float) -> float:
    """Simulated seconds per monotonic one, so that the STREAM period is the
    programmer's fastest (not clamped)."""
    return poll_interval_s / MIN_STREAM_PERIOD_S


def stat_interval_days(poll_interval_s: float = POLL_INTERVAL_S) -> float:
    return poll_interval_s / SECONDS_PER_DAY


class Transition(NamedTuple):
    """One event the engine emitted, reduced to what a timeline shows."""

    day: float  # simulated days since power-up, rounded to 0.01
    pump_id: str | None  # None for gateway-wide events ("_gateway" for link_lost)
    kind: str  # EventKind value: alert_raised, refill, link_up, ...
    type: str | None  # AlertType value, for the alert_* kinds
    severity: str | None
    detail: str | None  # the alert's message, or the facts of a pump event
    cause: str  # the engine input that produced it: Reading, PumpEventReceived, Tick, ...

    @property
    def key(self) -> tuple[str | None, str, str | None, str | None]:
        """What the order of a timeline is compared on: no time, no text."""
        return (self.pump_id, self.kind, self.type, self.severity)


def pump_id(index: int) -> str:
    """The id of the ``index``-th pump (1-based) of a run."""
    return f"PMP-{index:04d}"


def make_config(
    overrides: Mapping[str, Any] | None = None,
    pump_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    poll_interval_s: int = POLL_INTERVAL_S,
) -> Config:
    """Defaults, the poll interval with its scaled timeouts, reminders off,
    then ``overrides`` (global thresholds) and ``pump_overrides`` (per pump)."""
    scale = poll_interval_s / REAL_POLL_S
    thresholds = {
        "telemetry_timeout_s": REAL_TELEMETRY_TIMEOUT_S * scale,
        **QUIET,
        **(overrides or {}),
    }
    return parse_config(
        {
            "gateway": {"id": "timeline"},
            "serial": {
                "port": "sim://in-process",
                "poll_interval_s": poll_interval_s,
                "link_timeout_s": REAL_LINK_TIMEOUT_S * scale,
            },
            "thresholds": thresholds,
            "pumps": {pid: dict(values) for pid, values in (pump_overrides or {}).items()},
        },
        source="timeline",
    )


Frozen = tuple[tuple[str, Any], ...]


def _freeze(mapping: Mapping[str, Any] | None) -> Frozen:
    """A hashable copy (for the cache); lists become tuples."""
    return tuple(
        sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (mapping or {}).items())
    )


def _thaw(frozen: Frozen) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in frozen}


def run_timeline(
    scenarios: str | Sequence[str],
    days: float,
    config_overrides: Mapping[str, Any] | None = None,
    *,
    pump_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    poll_interval_s: int = POLL_INTERVAL_S,
    seed: int = 0,
) -> list[Transition]:
    """Every event the engine emits while ``scenarios`` (one pump each, ids
    ``pump_id(1)``, ``pump_id(2)``, ...) run for ``days`` simulated days on
    one programmer. ``config_overrides`` are global thresholds (on top of
    ``make_config``'s), ``pump_overrides`` per-pump ones. An exception in the
    pipeline (engine, session, ...) propagates."""
    bedside = simulate(
        scenarios,
        days,
        config_overrides,
        pump_overrides=pump_overrides,
        poll_interval_s=poll_interval_s,
        seed=seed,
    )
    if bedside.crash is not None:
        raise bedside.crash
    return list(bedside.transitions)


def simulate(
    scenarios: str | Sequence[str],
    days: float,
    config_overrides: Mapping[str, Any] | None = None,
    *,
    pump_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    poll_interval_s: int = POLL_INTERVAL_S,
    seed: int = 0,
) -> Bedside:
    """The whole run (see ``run_timeline``), with what it crashed on if it did.

    Deterministic, so cached: the same arguments are simulated once. Do not
    change the Bedside returned.
    """
    names = (scenarios,) if isinstance(scenarios, str) else tuple(scenarios)
    per_pump = tuple((pid, _freeze(v)) for pid, v in sorted((pump_overrides or {}).items()))
    frozen = _freeze(config_overrides)
    return _simulate(names, float(days), frozen, per_pump, poll_interval_s, seed)


@cache
def _simulate(
    names: tuple[str, ...],
    days: float,
    overrides: Frozen,
    pump_overrides: tuple[tuple[str, Frozen], ...],
    poll_interval_s: int,
    seed: int,
) -> Bedside:
    config = make_config(
        _thaw(overrides), {pid: _thaw(v) for pid, v in pump_overrides}, poll_interval_s
    )
    bedside = Bedside(config, names, seed=seed)
    try:
        bedside.run(days)
    except Exception as exc:  # kept for run_timeline to raise, and for the report
        bedside.crash = exc
    return bedside


class Bedside:
    """One simulated programmer and one gateway engine on a fake monotonic clock."""

    def __init__(self, config: Config, scenarios: Sequence[str], *, seed: int = 0) -> None:
        self.config = config
        self.speed = speed_for(config.serial.poll_interval_s)
        self.tick_s = config.serial.poll_interval_s / 4
        pumps = [SimulatedPump(pump_id(i), SCENARIOS[n]) for i, n in enumerate(scenarios, 1)]
        self.programmer = Programmer(pumps, start_time=START, speed=self.speed, now=0.0, seed=seed)
        self.session = ses.ProgrammerSession(config.serial.poll_interval_s)
        self.state = engine.initial_state(config, START)
        self.events: list[Event] = []
        self.transitions: list[Transition] = []
        self.readings: list[tuple[str, float]] = []  # (pump, sim seconds) of each STAT
        self.crash: Exception | None = None
        self.crash_day: float | None = None  # sim day of the input that raised

    def clock(self, mono: float) -> datetime:
        """The gateway's wall clock: simulated time, like the programmer's own."""
        return START + timedelta(seconds=round(mono * self.speed, 3))

    def run(self, days: float) -> None:
        end = days * SECONDS_PER_DAY / self.speed
        same = 1e-9 * max(1.0, end)  # monotonic seconds closer than this are one instant
        # Power-up: the programmer's HELLO waits in the line while the gateway
        # starts and opens the port (connection_made sends ID).
        hello = self.programmer.power_cycle()
        self.feed(engine.Lifecycle(EventKind.GATEWAY_STARTED), 0.0)
        self.session.connection_made(0.0)
        self.exchange(hello, 0.0)
        tick = 0
        while True:
            next_tick = tick * self.tick_s / self.speed
            due = self.programmer.next_due()
            deadline = self.session.next_deadline()
            now = min(t for t in (next_tick, due, deadline) if t is not None)
            if now > end + same:
                return
            if due is not None and due <= now + same:
                self.exchange(self.programmer.on_due(due), due)
            if deadline is not None and deadline <= now + same:
                self.handle(self.session.tick(deadline), deadline)
                self.exchange(b"", deadline)
            if next_tick <= now + same:
                self.feed(engine.Tick(), next_tick)
                tick += 1

    def exchange(self, data: bytes, mono: float) -> None:
        """Programmer bytes into the session, the session's commands back to
        the programmer, until both are quiet."""
        for _ in range(100):
            if data:
                self.handle(self.session.receive_data(data, mono), mono)
            out = self.session.data_to_send()
            if not out:
                return
            data = self.programmer.receive(out, mono)
        raise AssertionError("the programmer and the session never fell quiet")

    def handle(self, events: Iterable[ses.SessionEvent], mono: float) -> None:
        """Session events to engine inputs, as ``Daemon._session_events`` maps them."""
        for event in events:
            match event:
                case ses.DeviceMessage(message=Stat() as stat):
                    self.readings.append((stat.pump_id, round(mono * self.speed, 3)))
                    self.feed(engine.Reading(stat), mono)
                case ses.DeviceMessage(message=Alrm() as alrm):
                    # An early hint: the daemon asks for the STAT that carries the truth.
                    self.session.send(PollCommand(alrm.pump_id))
                case ses.DeviceMessage(message=Evt() as evt):
                    self.feed(engine.PumpEventReceived(evt), mono)
                case ses.LinkUp(hello=hello):
                    reason = f"handshake with {hello.programmer_sn}"
                    self.feed(engine.LinkChanged(True, reason), mono)
                case ses.LinkDown(reason=reason):
                    self.feed(engine.LinkChanged(False, reason), mono)
                case ses.ProgrammerRestarted():
                    self.feed(engine.ProgrammerRestarted("unprompted HELLO"), mono)
                case ses.BadFrame(item=ProtocolError(pump_id=str(pid), reason=reason)):
                    self.feed(engine.InvalidData(pid, reason), mono)
                case _:
                    pass  # discarded frames, device errors: the daemon only logs them

    def feed(self, item: engine.EngineInput, mono: float) -> None:
        now = self.clock(mono)
        day = round((now - START).total_seconds() / SECONDS_PER_DAY, 2)
        self.crash_day = day
        outcome = engine.step(self.state, item, now, self.config)
        self.crash_day = None
        self.state = outcome.state
        for ev in outcome.events:
            self.events.append(ev)
            self.transitions.append(_transition(day, ev, type(item).__name__))


def _transition(day: float, ev: Event, cause: str) -> Transition:
    if ev.alert is not None:
        a = ev.alert
        kind, severity = ev.kind.value, a.severity.value
        return Transition(day, a.pump_id, kind, a.type.value, severity, a.message, cause)
    return Transition(day, ev.pump_id, ev.kind.value, None, None, _detail(ev), cause)


def _detail(ev: Event) -> str | None:
    d = ev.detail or {}
    match ev.kind:
        case EventKind.REFILL:
            return f"{d.get('before_ml')} -> {d.get('after_ml')} mL ({d.get('source')})"
        case EventKind.PROGRAM_CHANGE:
            old, new = d.get("old", {}), d.get("new", {})
            changes = [
                f"{label} {old.get(key)} -> {new.get(key)}"
                for key, label in (
                    ("dose_mcg_per_day", "dose"),
                    ("concentration_mcg_per_ml", "concentration"),
                )
                if old.get(key) != new.get(key)
            ]
            return f"{', '.join(changes)} ({d.get('source')})"
        case _:
            reason = d.get("reason")
            return None if reason is None else str(reason)


# --- for assertions and reports ---------------------------------------------------


Key = tuple[str | None, str, str | None, str | None]


def keys(transitions: Iterable[Transition]) -> list[Key]:
    return [t.key for t in transitions]


def alerts_and_events(transitions: Iterable[Transition]) -> list[Transition]:
    """Without the gateway's own start and link events."""
    gateway_kinds = {EventKind.GATEWAY_STARTED.value, EventKind.LINK_UP.value}
    return [t for t in transitions if t.kind not in gateway_kinds]


def find(
    transitions: Iterable[Transition],
    kind: str,
    type: str | None = None,
    severity: str | None = None,
) -> list[Transition]:
    return [
        t
        for t in transitions
        if t.kind == kind and t.type == type and severity in (None, t.severity)
    ]


def table(transitions: Iterable[Transition]) -> str:
    """A markdown table of a timeline."""
    rows = [
        "| sim day | pump | event | type | severity | detail |",
        "|---:|---|---|---|---|---|",
    ]
    for t in transitions:
        detail = (t.detail or "").replace("|", "\\|")
        rows.append(
            f"| {t.day:.2f} | {t.pump_id or ''} | {t.kind} | {t.type or ''} "
            f"| {t.severity or ''} | {detail} |"
        )
    return "\n".join(rows)


# --- the release-notes page ---------------------------------------------------------

DAYS = 90
DOC_PATH = "docs/scenario-timelines.md"
# Each scenario runs alone on the programmer, with these thresholds on top of make_config's.
SCENARIO_CONFIG: dict[str, dict[str, Any]] = {
    "normal": {},
    "low-reservoir": {},
    "battery-eri-eos": {},
    "motor-stall": {},
    "link-loss": {},
    "noisy-line": {},
    "refill": {},
    "refill-cycle": {},
    "over-infusion": {},
    "catheter-occlusion": {},
    "wrong-concentration": {"allowed_concentrations": [500.0, 1000.0]},
}
SCENARIO_SUMMARY = {
    "normal": "15 mL at 0.6 mL/day (300 mcg/day of 500 mcg/mL), LRA 2 mL, never refilled.",
    "low-reservoir": "6 mL at 1.0 mL/day, never refilled.",
    "battery-eri-eos": "normal, but the battery starts at 30% and loses 4% a day.",
    "motor-stall": "normal until the motor stalls at day 0.5 (MOTOR_STALL, nothing delivered).",
    "link-loss": "normal; the programmer loses the pump (NO_LINK) from day 0.5 to day 1.5.",
    "noisy-line": "normal, on a line that corrupts one frame in four (seed 0).",
    "refill": "3 mL at 1.0 mL/day, refilled to 19.8 mL at day 1.5.",
    "refill-cycle": (
        "a full 20 mL at 2.0 mL/day (1000 mcg/day of 500 mcg/mL), refilled to 20.0 mL "
        "whenever it reaches 4.5 mL (every 7.75 days)."
    ),
    "over-infusion": "normal, but delivers 25% more than programmed (0.75 mL/day).",
    "catheter-occlusion": "normal, but delivers 30% of the programmed flow (0.18 mL/day).",
    "wrong-concentration": (
        "4 mL at 0.6 mL/day, refilled at day 1 to 19.5 mL of 2000 mcg/mL "
        "(`allowed_concentrations = [500, 1000]`)."
    ),
}


def _cycles(rows: list[Transition]) -> str:
    """Refill-cycle: the first two rounds, a summary line, the last round and
    what follows it. A round ends with its refill and the clears that came with it."""
    refills = [i for i, t in enumerate(rows) if t.kind == "refill"]
    ends = []
    for i in refills:
        j = i + 1
        while j < len(rows) and rows[j].kind == "alert_cleared" and rows[j].day == rows[i].day:
            j += 1
        ends.append(j)
    rounds = [keys(rows[a:b]) for a, b in itertools.pairwise(ends)]
    assert rounds and all(r == rounds[0] for r in rounds), "the rounds differ: show them all"
    period = (rows[refills[-1]].day - rows[refills[0]].day) / (len(refills) - 1)
    return (
        table(rows[: ends[1]])
        + f"\n| ... | | | | | the same {len(rounds[0])} rows every {period:.2f} days:"
        f" {len(refills)} refills in all |\n" + table(rows[ends[-2] :]).split("\n", 2)[2]
    )


def _telemetry_episodes(rows: list[Transition]) -> tuple[list[Transition], str]:
    """Noisy line: the telemetry_lost episodes as one sentence, the rest as a table."""
    lost = [t for t in rows if t.type == "telemetry_lost"]
    rest = [t for t in rows if t.type != "telemetry_lost"]
    spans = ", ".join(
        f"{a.day:.2f}-{b.day:.2f}" for a, b in zip(lost[::2], lost[1::2], strict=True)
    )
    text = (
        f"\nPlus {len(lost) // 2} `telemetry_lost` episodes (critical; raised by a Tick once "
        "three STATs in a row were lost, cleared by the next valid STAT), days: "
        f"{spans}.\n"
    )
    return rest, text


def render_doc() -> str:
    """docs/scenario-timelines.md, from the runs the tests check (cached)."""
    poll_min = POLL_INTERVAL_S // 60
    out = [
        f"# Scenario timelines ({DAYS} simulated days)",
        "",
        "What the gateway's alert engine emits for each simulator scenario over "
        f"{DAYS} simulated days, as measured by `tests/test_scenario_timelines.py` "
        "(which checks the order exactly and the days of key transitions against "
        "values derived from the scenario's numbers). Regenerate with "
        f"`python tests/timeline.py > {DOC_PATH}`; a test fails while this page is stale.",
        "",
        "Set-up: the simulator's sans-IO programmer, the host session and the engine, "
        "wired in-process as the daemon wires them, on a fake clock. The gateway's clock "
        f"runs with simulated time. One STAT every {poll_min} simulated minutes; "
        f"telemetry timeout {3 * POLL_INTERVAL_S} s (three STAT intervals, as 180 s is "
        "to a 60 s poll); every clinical threshold at its default; reminders off "
        "(`renotify_*_s = 0`). Day = simulated days since power-up, to 0.01 (one STAT "
        f"interval is {stat_interval_days():.3f} days). All pumps have LRA 2 mL and "
        "start at 80% battery (-0.01%/day) unless said otherwise.",
    ]
    for name, overrides in SCENARIO_CONFIG.items():
        bedside = simulate(name, DAYS, overrides)
        rows = list(bedside.transitions)
        out += ["", f"## {name}", "", SCENARIO_SUMMARY[name], ""]
        tail = ""
        if name == "refill-cycle":
            out.append(_cycles(rows))
            continue
        if name == "noisy-line":
            rows, tail = _telemetry_episodes(rows)
        out.append(table(rows))
        if bedside.crash is not None:
            tail += (
                f"\n**The run stops at day {bedside.crash_day:.2f}: `engine.step` raised "
                f"`{type(bedside.crash).__name__}: {bedside.crash}`** (see Notes).\n"
            )
        if tail:
            out.append(tail.rstrip("\n"))
    out += ["", FINDINGS.strip(), ""]
    return "\n".join(out)


FINDINGS = """
## Notes

- **refill-cycle: every round is a new `refill_due` episode.** From a full 20 mL
  at 2.0 mL/day, `refill_due` warns at 16 mL (day +2: the low-reservoir alarm 7
  days away), turns critical at 6 mL (day +7), `reservoir_low` warns at 5 mL (day
  +7.5), and the refill at 4.5 mL (day +7.75) ends both from the refill event
  itself (20 mL: the alarm 9 days away). A refill to a volume still due would end
  the `refill_due` episode as "Refilled" and start a new one at the severity the
  new volume earns. In the first four rounds the STAT due at the refill instant
  is stamped a hair before it (the programmer's stream schedule adds its period
  in floating point), still reads 4.5 mL, and the refill comes with the next
  STAT, 0.02 days later; from day 38.75 on it comes on time, after a 4.54 mL STAT.
- A pump that runs dry raises no `flow_deviation`: a reading of an empty
  reservoir (0 mL, or the EMPTY flag) is no point of the measured drain window,
  since a pump with nothing left cannot drain and a flat line at 0 mL says
  nothing about the catheter. Like an unknown reading it splits the window and
  adds nothing to it, so no new rate is measured while the pump stays empty and
  an active `flow_deviation` holds: over-infusion's "faster" episode (day 0.50)
  stays active after the pump empties at day 20, and catheter occlusion's
  "slower" one after day 83.3. (Before, the flat zeros pulled the measured rate
  down into a "slower than programmed: catheter occlusion or stall?" warning
  about 0.25 days after every pump ran dry; over-infusion first cleared its
  "faster" episode, then raised a "slower" one.)
- `refill_due` follows the measured drain rate: 4.3 days earlier than the
  programmed flow would say under over-infusion (day 10.35), and 9.7 days *after*
  `reservoir_low` under catheter occlusion (0.18 mL/day: 7 days is 1.26 mL).
- On the noisy line (one frame in six lost: flipped bytes and truncations;
  prepended noise is harmless) `telemetry_lost` flaps: critical whenever three
  STATs in a row are lost, cleared by the next one. No `data_invalid`: a
  corrupted frame never passes its CRC.
- STATs carry the volume to 0.01 mL, so a threshold can be met one STAT early
  (5.004 mL reads as 5.00).
- motor-stall: once the drain window holds only equal volumes (day 1.5) the
  measured rate is float noise; the engine makes no projection of it (before
  `MIN_RATE_ML_PER_DAY` this crashed `engine.step` with `OverflowError`).
"""


if __name__ == "__main__":
    print(render_doc(), end="")
