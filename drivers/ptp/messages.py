"""Typed PTP/1 messages, both directions (spec: docs/protocol.md).

Every message is a small frozen dataclass. A field that the wire left empty
("unknown") is ``None``, never zero. The order of a class's fields after
``TYPE`` is the order of the fields on the wire.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar


class Flag(enum.IntFlag):
    """STAT ``flags``: bit set = condition present. Bits 7-15 are reserved."""

    ERI = 1 << 0
    EOS = 1 << 1
    MOTOR_STALL = 1 << 2
    LOW_RES = 1 << 3
    EMPTY = 1 << 4
    NO_LINK = 1 << 5
    SUSPENDED = 1 << 6


KNOWN_FLAG_BITS = 0x7F

ALARM_CODES = frozenset({"LOWRES", "EMPTY", "ERI", "EOS", "STALL", "LINK"})
ALARM_ACTIONS = frozenset({"SET", "CLR"})
EVENT_KINDS = frozenset({"REFILL", "PROG", "RESET"})
ERROR_CODES = frozenset({"BADCMD", "BADARG", "BUSY", "NOPUMP"})
CAPACITIES_ML = frozenset({10.0, 20.0, 40.0})
SUPPORTED_PROTOCOL = 1


def flag_names(flags: Flag) -> list[str]:
    """Names of the flags set, lowest bit first."""
    return [f.name for f in Flag if f in flags and f.name is not None]


# --- device -> host -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    TYPE: ClassVar[str] = "HELLO"
    proto: int
    vendor: str
    model: str
    programmer_sn: str
    firmware: str
    pump_count: int | None


@dataclass(frozen=True, slots=True)
class Stat:
    """One pump's telemetry. ``time`` is the programmer's clock (may drift)."""

    TYPE: ClassVar[str] = "STAT"
    seq: int
    pump_id: str
    time: datetime | None
    res_ml: float | None
    cap_ml: float | None
    lra_ml: float | None
    bat_pct: int | None
    bat_v: float | None
    dose_mcg_day: float | None
    conc_mcg_ml: float | None
    flags: Flag | None

    @property
    def flow_ml_per_day(self) -> float | None:
        """Programmed flow: dose / concentration, None when either is unknown."""
        if self.dose_mcg_day is None or not self.conc_mcg_ml:
            return None
        return self.dose_mcg_day / self.conc_mcg_ml


@dataclass(frozen=True, slots=True)
class Alrm:
    TYPE: ClassVar[str] = "ALRM"
    seq: int
    pump_id: str
    time: datetime | None
    code: str
    action: str


@dataclass(frozen=True, slots=True)
class Evt:
    TYPE: ClassVar[str] = "EVT"
    seq: int
    pump_id: str
    time: datetime | None
    kind: str
    detail: float | None


@dataclass(frozen=True, slots=True)
class Ok:
    TYPE: ClassVar[str] = "OK"
    command: str


@dataclass(frozen=True, slots=True)
class Err:
    TYPE: ClassVar[str] = "ERR"
    command: str
    code: str
    text: str


# --- host -> device -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdCommand:
    TYPE: ClassVar[str] = "ID"


@dataclass(frozen=True, slots=True)
class PollCommand:
    """``POLL`` (all pumps) when ``pump_id`` is None, else ``POLL,<pump_id>``."""

    TYPE: ClassVar[str] = "POLL"
    pump_id: str | None = None


@dataclass(frozen=True, slots=True)
class StreamCommand:
    """Stream every ``interval_s`` seconds (1-3600); 0 stops streaming."""

    TYPE: ClassVar[str] = "STREAM"
    interval_s: int


@dataclass(frozen=True, slots=True)
class TimeCommand:
    TYPE: ClassVar[str] = "TIME"
    time: datetime


DeviceMessage = Hello | Stat | Alrm | Evt | Ok | Err
HostCommand = IdCommand | PollCommand | StreamCommand | TimeCommand
Message = DeviceMessage | HostCommand
SequencedMessage = Stat | Alrm | Evt
