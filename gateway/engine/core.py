"""The alert engine: (state, input, now, config) -> (state, events, pump states).

Pure: no clock, no I/O, no randomness; ``now`` is the gateway's own clock
(UTC) and is used for alert times and silence timeouts. Severities only
rise within one episode (an alert is escalated, never quietly downgraded);
an episode ends when its rule finds the condition absent, past the
hysteresis margin, and the next episode gets a new ``alert_id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

from drivers.ptp import Evt, Flag, Stat
from gateway.config import Config, Thresholds
from gateway.contract import (
    GATEWAY_PUMP,
    Alert,
    AlertState,
    AlertType,
    CommandResult,
    Event,
    EventKind,
    PumpState,
    Severity,
    format_utc,
)
from gateway.engine import rules
from gateway.engine.drain import SECONDS_PER_DAY, DrainWindow
from gateway.engine.ids import make_id
from gateway.engine.projection import project, pump_state
from gateway.engine.rules import Finding
from gateway.engine.state import (
    Acknowledge,
    EngineInput,
    EngineState,
    InvalidData,
    Lifecycle,
    LinkChanged,
    Outcome,
    Program,
    ProgrammerRestarted,
    PumpEventReceived,
    PumpTrack,
    Reading,
    Tick,
)

REFILL_JUMP_ML = 1.0  # a rise of more than this between readings is a refill
_RESERVOIR_FLAGS = Flag.LOW_RES | Flag.EMPTY


def initial_state(config: Config, now: datetime) -> EngineState:
    """Configured pumps are watched from the start, so a pump that never
    reports raises ``telemetry_lost``; the link starts down."""
    pumps = {pid: PumpTrack(pid, watch_since=now) for pid in config.pumps}
    return EngineState(
        gateway_id=config.gateway.id,
        pumps=MappingProxyType(pumps),
        gateway_alerts=MappingProxyType({}),
        link_up=False,
        link_since=now,
        link_reason="not connected yet",
    )


def step(state: EngineState, event: EngineInput, now: datetime, config: Config) -> Outcome:
    run = _Step(state, now, config)
    match event:
        case Reading(stat=stat):
            run.reading(stat)
        case Tick():
            run.tick()
        case LinkChanged(up=up, reason=reason):
            run.link_changed(up, reason)
        case InvalidData(pump_id=pump_id, reason=reason):
            run.invalid_data(pump_id, reason)
        case PumpEventReceived(evt=evt):
            run.pump_event(evt)
        case ProgrammerRestarted(detail=text):
            run.emit(EventKind.PROGRAMMER_RESET, None, detail={"reason": text})
        case Lifecycle(kind=kind):
            run.emit(kind, None)
        case Acknowledge(alert_id=alert_id, by=by, note=note):
            run.acknowledge(alert_id, by, note)
    return run.outcome()


class _Step:
    """One engine step: copies on write, so the input state stays untouched."""

    def __init__(self, state: EngineState, now: datetime, config: Config) -> None:
        self.state = state
        self.now = now
        self.config = config
        self.pumps = dict(state.pumps)
        self.gateway_alerts = dict(state.gateway_alerts)
        self.announced = dict(state.announced)
        self.next_id = state.next_id
        self.events: list[Event] = []
        self.pump_states: list[PumpState] = []
        self.results: list[CommandResult] = []

    def outcome(self) -> Outcome:
        new_state = EngineState(
            gateway_id=self.state.gateway_id,
            pumps=MappingProxyType(self.pumps),
            gateway_alerts=MappingProxyType(self.gateway_alerts),
            link_up=self.state.link_up,
            link_since=self.state.link_since,
            link_reason=self.state.link_reason,
            next_id=self.next_id,
            announced=MappingProxyType(self.announced),
        )
        return Outcome(new_state, self.events, self.pump_states, self.results)

    # --- inputs ---------------------------------------------------------------

    def reading(self, stat: Stat) -> None:
        pump_id = stat.pump_id
        track = self._track(pump_id)
        t = self.config.thresholds_for(pump_id)
        obs_known = stat.flags is None or Flag.NO_LINK not in stat.flags
        program, drain, last_res = track.program, track.drain, track.last_reservoir_ml
        reset: tuple[AlertType, ...] = ()
        jumped = False
        day = (stat.time or self.now).timestamp() / SECONDS_PER_DAY
        window = t.flow_window_h / 24
        if not obs_known or stat.res_ml is None:
            drain = drain.gap(day, window)  # unknown: never a point, never an interval
        else:
            program, changed = self._program_change(
                pump_id, program, stat.dose_mcg_day, stat.conc_mcg_ml, "STAT", stat.time
            )
            if last_res is not None and stat.res_ml - last_res > REFILL_JUMP_ML:
                self._refill_event(pump_id, last_res, stat.res_ml, "volume_jump", stat.time)
                reset = rules.REFILL_RESETS
                jumped = True
            if changed or reset:
                drain = DrainWindow()
            empty = stat.res_ml <= 0 or (stat.flags is not None and Flag.EMPTY in stat.flags)
            # An empty reservoir has nothing left to drain: its flat line says
            # nothing about the catheter, so it is no drain point either.
            drain = drain.gap(day, window) if empty else drain.add(day, stat.res_ml, window)
            last_res = stat.res_ml
        measured = drain.rate_ml_per_day(t.flow_min_span_h / 24)
        obs = rules.Observation(stat, project(stat, measured, self.now))
        alerts = dict(track.alerts)
        self._evaluate(alerts, pump_id, obs, t, reset)
        self._apply(alerts, pump_id, AlertType.TELEMETRY_LOST, rules.telemetry_lost_by_flag(stat))
        streak = track.valid_streak + 1
        if streak >= t.data_invalid_clear_readings:
            self._apply(
                alerts,
                pump_id,
                AlertType.DATA_INVALID,
                Finding(None, f"{streak} valid readings since the last invalid frame"),
            )
        state = pump_state(
            stat,
            obs.projection,
            label=self.config.label_for(pump_id),
            received_at=self.now,
            stale=AlertType.TELEMETRY_LOST in alerts,
        )
        self.pump_states.append(state)
        self.pumps[pump_id] = PumpTrack(
            pump_id,
            watch_since=self.now,
            last_state=state,
            last_stat=stat,
            valid_streak=streak,
            alerts=MappingProxyType(alerts),
            program=program,
            last_reservoir_ml=last_res,
            jump_reported=jumped,
            drain=drain,
        )

    def pump_event(self, evt: Evt) -> None:
        track = self._track(evt.pump_id)
        if evt.kind == "RESET":
            device_time = evt.time and format_utc(evt.time)
            self.emit(EventKind.PROGRAMMER_RESET, evt.pump_id, {"device_time": device_time})
        elif evt.kind == "PROG" and evt.detail is not None:
            program, changed = self._program_change(
                evt.pump_id, track.program, evt.detail, None, "EVT", evt.time
            )
            drain = DrainWindow() if changed else track.drain
            self.pumps[evt.pump_id] = replace(track, program=program, drain=drain)
        elif evt.kind == "REFILL":
            if not track.jump_reported:  # else the STAT before it told us already
                before = track.last_reservoir_ml
                self._refill_event(evt.pump_id, before, evt.detail, "EVT", evt.time)
            # An unknown new volume: the next STAT sets it, without a second event.
            track = replace(
                track, drain=DrainWindow(), last_reservoir_ml=evt.detail, jump_reported=False
            )
            if evt.detail is not None and track.last_stat is not None:
                # Re-evaluate the reservoir alerts at once, on the new volume;
                # the pump's low/empty flags belong to the old volume.
                last = track.last_stat
                flags = None if last.flags is None else last.flags & ~_RESERVOIR_FLAGS
                stat = replace(last, res_ml=evt.detail, time=evt.time, flags=flags)
                obs = rules.Observation(stat, project(stat, None, self.now))
                alerts = dict(track.alerts)
                t = self.config.thresholds_for(evt.pump_id)
                only = {k: rules.READING_RULES[k] for k in rules.REFILL_RESETS}
                self._evaluate(alerts, evt.pump_id, obs, t, rules.REFILL_RESETS, only)
                track = replace(track, alerts=MappingProxyType(alerts))
            self.pumps[evt.pump_id] = track

    def _evaluate(
        self,
        alerts: dict[AlertType, Alert],
        pump_id: str,
        obs: rules.Observation,
        t: Thresholds,
        reset: tuple[AlertType, ...],
        only: Mapping[AlertType, rules.ReadingRule] = rules.READING_RULES,
    ) -> None:
        for alert_type, rule in only.items():
            current = alerts.get(alert_type)
            # After a refill the hysteresis band no longer holds an episode open.
            context = None if current is None or alert_type in reset else current.severity
            finding = rule(obs, t, context)
            ends = alert_type in reset and alert_type in rules.REFILL_ENDS
            if ends and current is not None and (finding is None or finding.severity):
                # The refill ends this episode; a new one starts if still due.
                value, text = (finding.value, finding.message) if finding else (None, "")
                ended = Finding(None, f"Refilled: {text}".rstrip(": "), value)
                self._apply(alerts, pump_id, alert_type, ended)
            self._apply(alerts, pump_id, alert_type, finding)

    def _program_change(
        self,
        pump_id: str,
        program: Program,
        dose: float | None,
        conc: float | None,
        source: str,
        device_time: datetime | None,
    ) -> tuple[Program, bool]:
        """The program after this news, and whether it changed (one event per
        change). A STAT that merely tells a program we did not know yet is no
        change; an EVT PROG always announces one."""
        new = Program(
            dose if dose is not None else program.dose_mcg_per_day,
            conc if conc is not None else program.concentration_mcg_per_ml,
        )
        changed = False
        for old, now in (
            (program.dose_mcg_per_day, new.dose_mcg_per_day),
            (program.concentration_mcg_per_ml, new.concentration_mcg_per_ml),
        ):
            if now is None or (old is None and source != "EVT"):
                continue
            changed = changed or old is None or abs(old - now) > 1e-9
        if changed:
            self.emit(
                EventKind.PROGRAM_CHANGE,
                pump_id,
                {
                    "old": asdict(program),
                    "new": asdict(new),
                    "source": source,
                    "device_time": device_time and format_utc(device_time),
                },
            )
        return new, changed

    def _refill_event(
        self,
        pump_id: str,
        before: float | None,
        after: float | None,
        source: str,
        device_time: datetime | None,
    ) -> None:
        self.emit(
            EventKind.REFILL,
            pump_id,
            {
                "before_ml": before,
                "after_ml": after,
                "source": source,
                "device_time": device_time and format_utc(device_time),
            },
        )

    def tick(self) -> None:
        for pump_id, track in list(self.pumps.items()):
            thresholds = self.config.thresholds_for(pump_id)
            silent_s = (self.now - track.watch_since).total_seconds()
            finding = rules.telemetry_lost_by_silence(silent_s, thresholds)
            if finding is None or AlertType.TELEMETRY_LOST in track.alerts:
                continue
            alerts = dict(track.alerts)
            self._apply(alerts, pump_id, AlertType.TELEMETRY_LOST, finding)
            last = track.last_state
            if last is not None:
                last = last.model_copy(update={"stale": True})
                self.pump_states.append(last)
            self.pumps[pump_id] = replace(track, alerts=MappingProxyType(alerts), last_state=last)
        self._remind()
        if not self.state.link_up:
            down_s = (self.now - self.state.link_since).total_seconds()
            finding = rules.link_lost(
                down_s, self.config.serial.link_timeout_s, self.state.link_reason
            )
            self._apply(self.gateway_alerts, GATEWAY_PUMP, AlertType.LINK_LOST, finding)

    def _remind(self) -> None:
        """Re-announce active, unacknowledged alerts (renotify_*_s; 0: never)."""
        for pump_id, alerts in self._alert_tables():
            t = self.config.thresholds_for(pump_id)
            for alert in alerts.values():
                if alert.state is not AlertState.ACTIVE:
                    continue
                every = (
                    t.renotify_critical_s
                    if alert.severity is Severity.CRITICAL
                    else t.renotify_warning_s
                )
                last = self.announced.get(alert.alert_id, alert.updated_at)
                if every > 0 and (self.now - last).total_seconds() >= every:
                    self.announced[alert.alert_id] = self.now
                    self.emit(EventKind.ALERT_REMINDER, pump_id, alert=alert)

    def link_changed(self, up: bool, reason: str) -> None:
        if up == self.state.link_up:
            if not up:  # still down, for a new reason: remember the latest one
                self.state = replace(self.state, link_reason=reason)
            return
        self.state = replace(self.state, link_up=up, link_since=self.now, link_reason=reason)
        self.emit(EventKind.LINK_UP if up else EventKind.LINK_DOWN, None, {"reason": reason})
        if up:
            finding = rules.link_lost(None, self.config.serial.link_timeout_s, reason)
            self._apply(self.gateway_alerts, GATEWAY_PUMP, AlertType.LINK_LOST, finding)

    def invalid_data(self, pump_id: str, reason: str) -> None:
        track = self._track(pump_id)
        alerts = dict(track.alerts)
        finding = Finding(Severity.WARNING, f"Invalid frame from the programmer: {reason}")
        self._apply(alerts, pump_id, AlertType.DATA_INVALID, finding)
        self.pumps[pump_id] = replace(track, valid_streak=0, alerts=MappingProxyType(alerts))

    def acknowledge(self, alert_id: str, by: str, note: str | None) -> None:
        """An active alert becomes acknowledged; anything else changes nothing."""
        for pump_id, alerts in self._alert_tables():
            for alert_type, alert in alerts.items():
                if alert.alert_id != alert_id:
                    continue
                if alert.state is AlertState.ACTIVE:
                    acked = alert.model_copy(
                        update={
                            "state": AlertState.ACKNOWLEDGED,
                            "acknowledged_by": by,
                            "acknowledged_at": self.now,
                            "updated_at": self.now,
                        }
                    )
                    self._store(pump_id, alert_type, acked)
                    self.emit(EventKind.ALERT_ACKNOWLEDGED, pump_id, {"note": note}, acked)
                self.results.append(CommandResult(ok=True, command="ack", alert_id=alert_id))
                return
        self.results.append(
            CommandResult(
                ok=False,
                command="ack",
                alert_id=alert_id,
                error="unknown alert_id (no active alert has it; it may have cleared)",
            )
        )

    def _alert_tables(self) -> list[tuple[str, Mapping[AlertType, Alert]]]:
        tables: list[tuple[str, Mapping[AlertType, Alert]]] = [(GATEWAY_PUMP, self.gateway_alerts)]
        tables += [(pid, track.alerts) for pid, track in self.pumps.items()]
        return tables

    def _store(self, pump_id: str, alert_type: AlertType, alert: Alert) -> None:
        if pump_id == GATEWAY_PUMP:
            self.gateway_alerts[alert_type] = alert
            return
        track = self.pumps[pump_id]
        alerts = {**track.alerts, alert_type: alert}
        self.pumps[pump_id] = replace(track, alerts=MappingProxyType(alerts))

    # --- alert episodes -------------------------------------------------------

    def _track(self, pump_id: str) -> PumpTrack:
        return self.pumps.get(pump_id) or PumpTrack(pump_id, watch_since=self.now)

    def _new_id(self) -> str:
        self.next_id += 1
        return make_id(self.now, self.state.gateway_id, self.next_id)

    def emit(
        self,
        kind: EventKind,
        pump_id: str | None,
        detail: dict[str, Any] | None = None,
        alert: Alert | None = None,
    ) -> None:
        self.events.append(
            Event(
                event_id=self._new_id(),
                at=self.now,
                kind=kind,
                pump_id=pump_id,
                alert=alert,
                detail=detail,
            )
        )

    def _apply(
        self,
        alerts: dict[AlertType, Alert],
        pump_id: str,
        alert_type: AlertType,
        finding: Finding | None,
    ) -> None:
        """Move one alert episode on by what the rule found (None: hold)."""
        if finding is None:
            return
        current = alerts.get(alert_type)
        if finding.severity is None:
            if current is not None:
                del alerts[alert_type]
                self.announced.pop(current.alert_id, None)
                cleared = current.model_copy(
                    update={
                        "state": AlertState.CLEARED,
                        "message": f"Cleared: {finding.message}",
                        "value": finding.value,
                        "updated_at": self.now,
                    }
                )
                self.emit(EventKind.ALERT_CLEARED, pump_id, alert=cleared)
            return
        if current is None:
            alert = Alert(
                alert_id=self._new_id(),
                pump_id=pump_id,
                type=alert_type,
                severity=finding.severity,
                state=AlertState.ACTIVE,
                message=finding.message,
                value=finding.value,
                threshold=finding.threshold,
                raised_at=self.now,
                updated_at=self.now,
            )
            kind = EventKind.ALERT_RAISED
        elif finding.severity.rank > current.severity.rank:
            alert = current.model_copy(
                update={
                    "severity": finding.severity,
                    # escalation breaks through an acknowledgement
                    "state": AlertState.ACTIVE,
                    "acknowledged_by": None,
                    "acknowledged_at": None,
                    "message": finding.message,
                    "value": finding.value,
                    "threshold": finding.threshold,
                    "updated_at": self.now,
                }
            )
            kind = EventKind.ALERT_ESCALATED
        else:
            return
        alerts[alert_type] = alert
        self.announced.pop(alert.alert_id, None)  # announced now, at updated_at
        self.emit(kind, pump_id, alert=alert)
