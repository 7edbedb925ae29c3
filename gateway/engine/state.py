"""What the alert engine remembers between steps, and what it is fed.

All values are immutable: ``step`` returns a new ``EngineState`` and never
changes the one it was given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from drivers.ptp import Evt, Stat
from gateway.contract import Alert, AlertType, CommandResult, Event, EventKind, PumpState
from gateway.engine.drain import DrainWindow

_NO_ALERTS: Mapping[AlertType, Alert] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Program:
    """What the pump is programmed to deliver, as last known."""

    dose_mcg_per_day: float | None = None
    concentration_mcg_per_ml: float | None = None


@dataclass(frozen=True, slots=True)
class PumpTrack:
    pump_id: str
    watch_since: datetime  # last valid STAT's receive time, or when watching began
    last_state: PumpState | None = None
    last_stat: Stat | None = None
    valid_streak: int = 0  # valid STATs since the last invalid frame
    alerts: Mapping[AlertType, Alert] = field(default_factory=lambda: _NO_ALERTS)
    program: Program = field(default_factory=Program)
    last_reservoir_ml: float | None = None  # last known volume, for refill detection
    jump_reported: bool = False  # the last STAT showed a refill that was reported
    drain: DrainWindow = field(default_factory=DrainWindow)


@dataclass(frozen=True, slots=True)
class EngineState:
    gateway_id: str
    pumps: Mapping[str, PumpTrack]
    gateway_alerts: Mapping[AlertType, Alert]
    link_up: bool
    link_since: datetime
    link_reason: str
    next_id: int = 0
    # when each active alert was last announced (raise, escalation, reminder)
    announced: Mapping[str, datetime] = field(default_factory=lambda: MappingProxyType({}))

    def active_alerts(self) -> list[Alert]:
        out = list(self.gateway_alerts.values())
        for track in self.pumps.values():
            out.extend(track.alerts.values())
        return out


# --- inputs -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reading:
    """A valid STAT, already past the session's sequence checks."""

    stat: Stat


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: check silences (telemetry, link)."""


@dataclass(frozen=True, slots=True)
class LinkChanged:
    up: bool
    reason: str


@dataclass(frozen=True, slots=True)
class InvalidData:
    """A frame for this pump that failed validation."""

    pump_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class PumpEventReceived:
    evt: Evt


@dataclass(frozen=True, slots=True)
class ProgrammerRestarted:
    detail: str


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """The gateway starting or stopping."""

    kind: EventKind


@dataclass(frozen=True, slots=True)
class Acknowledge:
    alert_id: str
    by: str
    note: str | None


EngineInput = (
    Reading
    | Tick
    | LinkChanged
    | InvalidData
    | PumpEventReceived
    | ProgrammerRestarted
    | Lifecycle
    | Acknowledge
)


@dataclass(frozen=True, slots=True)
class Outcome:
    state: EngineState
    events: list[Event]  # in order; alert_* events carry the alert to retain
    pump_states: list[PumpState]
    results: list[CommandResult]
