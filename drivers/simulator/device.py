"""The simulated pump programmer, sans-IO: the device side of PTP/1.

``Programmer`` never touches a port or a clock. The shell passes bytes from
the host and a monotonic ``now`` (seconds) to ``receive``, and writes back
what it returns; it also calls ``on_due(now)`` once ``next_due()`` has come,
for streamed STATs. Every output goes through the line (clean or noisy).

Time: simulated time runs ``speed`` times faster than ``now``. The pumps
age by the simulated seconds since the programmer was created; the
programmer's clock (the ``time`` field) starts at ``start_time`` and can be
set by ``TIME``, which moves the clock but never the pumps.

Alarms and events: before a pump's STAT the programmer sends one ALRM per
flag that changed since the last STAT it sent for that pump, and one EVT per
scripted event since then; all three carry the clock at sending. The flags
remembered start empty, so flags already present at power-up are announced.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version

from drivers.logfmt import log_event
from drivers.ptp.codec import DecoderCounters, FrameDiscarded, ProtocolError, StreamDecoder, encode
from drivers.ptp.grammar import HOST_TYPES, SEQ_MODULO, format_body
from drivers.ptp.messages import (
    Alrm,
    Err,
    Evt,
    Flag,
    Hello,
    HostCommand,
    IdCommand,
    Ok,
    PollCommand,
    StreamCommand,
    TimeCommand,
)
from drivers.simulator.line import CleanLine, Line, NoisyLine
from drivers.simulator.physics import NO_FLAGS, reported_flags, to_stat
from drivers.simulator.scenarios import Scenario

VENDOR = "SIMU"
MODEL = "SIM-PTP1"
PROGRAMMER_SN = "SIM00001"
MIN_STREAM_PERIOD_S = 0.02  # real seconds between streamed batches, at most 50 per second
# The programmer's real-time clock, like most RTC chips, holds years 2000-2099.
CLOCK_RANGE = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC))
CLOCK_RANGE_TEXT = f"years {CLOCK_RANGE[0].year}-{CLOCK_RANGE[1].year}"
_MAX_ERR_COMMAND = 16  # characters of an unknown command echoed back in ERR
_MAX_ERR_TEXT = 100

ALARM_CODES: tuple[tuple[Flag, str], ...] = (
    (Flag.ERI, "ERI"),
    (Flag.EOS, "EOS"),
    (Flag.MOTOR_STALL, "STALL"),
    (Flag.LOW_RES, "LOWRES"),
    (Flag.EMPTY, "EMPTY"),
    (Flag.NO_LINK, "LINK"),
)

_log = logging.getLogger(__name__)


def _firmware_version() -> str:
    try:
        return version("pumpgw")
    except PackageNotFoundError:
        return "0.1.0"


FIRMWARE = _firmware_version()


def alarm_changes(before: Flag, after: Flag) -> list[tuple[str, str]]:
    """(code, SET|CLR) for every alarm flag that differs, lowest bit first."""
    return [
        (code, "SET" if flag in after else "CLR")
        for flag, code in ALARM_CODES
        if (flag in before) != (flag in after)
    ]


def in_clock_range(time: datetime) -> bool:
    return CLOCK_RANGE[0] <= time <= CLOCK_RANGE[1]


@dataclass(frozen=True, slots=True)
class SimulatedPump:
    pump_id: str
    scenario: Scenario


@dataclass(slots=True)
class _PumpLink:
    """What the programmer remembers about one pump between STATs."""

    pump: SimulatedPump
    shown_flags: Flag = NO_FLAGS
    events_upto_s: float = 0.0


class Programmer:
    def __init__(
        self,
        pumps: Sequence[SimulatedPump],
        *,
        start_time: datetime,
        speed: float,
        now: float,
        seed: int = 0,
    ) -> None:
        """``now`` is the monotonic time of power-up; ``speed`` simulated seconds per real one."""
        if not pumps:
            raise ValueError("a programmer needs at least one pump")
        if len({pump.pump_id for pump in pumps}) != len(pumps):
            raise ValueError("pump ids must be unique")
        if not speed > 0:
            raise ValueError(f"speed must be > 0, not {speed}")
        if not in_clock_range(start_time):
            raise ValueError(f"start time {start_time} outside {CLOCK_RANGE_TEXT}")
        self._pumps = {pump.pump_id: _PumpLink(pump) for pump in pumps}
        noisy = any(pump.scenario.noisy_line for pump in pumps)
        self._line: Line = NoisyLine(seed) if noisy else CleanLine()
        self._speed = speed
        self._powered_at = now
        self._clock_base = start_time
        self._clock_set_at = now
        self._decoder = StreamDecoder(role="device")
        self._seq = 0
        self._stream_period: float | None = None
        self._next_due: float | None = None

    @property
    def host_counters(self) -> DecoderCounters:
        """Frames from the host since power-up: good, discarded, protocol errors."""
        return self._decoder.counters

    def power_cycle(self) -> bytes:
        """Restart: streaming off, seq from 0, partial input and alarm memory lost.

        Returns the unprompted HELLO it sends; the shell calls this once to power up.
        The pumps keep aging and the clock keeps running (it has a battery).
        """
        self._decoder = StreamDecoder(role="device")
        self._seq = 0
        self._stream_period = self._next_due = None
        for link in self._pumps.values():
            link.shown_flags = NO_FLAGS
        return self._line.transmit([encode(self._hello())])

    def receive(self, data: bytes, now: float) -> bytes:
        """Bytes from the host in; the answers to every command they complete out."""
        frames: list[bytes] = []
        for item in self._decoder.feed(data):
            if isinstance(item, FrameDiscarded):
                log_event(_log, "host_frame_discarded", reason=item.reason)
            elif isinstance(item, ProtocolError):
                log_event(_log, "host_command_rejected", body=item.body, reason=item.reason)
                frames.append(encode(_rejection(item)))
            elif isinstance(item, HostCommand):
                frames += self._execute(item, now)
        return self._line.transmit(frames)

    def next_due(self) -> float | None:
        """Monotonic time of the next streamed batch, None when not streaming."""
        return self._next_due

    def on_due(self, now: float) -> bytes:
        """The streamed STATs due by ``now`` (nothing before ``next_due()``)."""
        if self._next_due is None or self._stream_period is None or now < self._next_due:
            return b""
        following = self._next_due + self._stream_period
        # A batch missed while the shell was late is skipped, not sent in a burst.
        self._next_due = following if following > now else now + self._stream_period
        return self._line.transmit(self._report(self._pumps.values(), now))

    def _execute(self, command: HostCommand, now: float) -> list[bytes]:
        log_event(_log, "host_command", body=format_body(command))
        match command:
            case IdCommand():
                return [encode(self._hello())]
            case PollCommand(pump_id=None):
                return [*self._report(self._pumps.values(), now), encode(Ok("POLL"))]
            case PollCommand(pump_id=str(pump_id)) if pump_id in self._pumps:
                return [*self._report([self._pumps[pump_id]], now), encode(Ok("POLL"))]
            case PollCommand():
                return [encode(Err("POLL", "NOPUMP", "no such pump"))]
            case StreamCommand(interval_s=0):
                self._stream_period = self._next_due = None
                return [encode(Ok("STREAM"))]
            case StreamCommand(interval_s=interval_s):
                self._stream_period = max(interval_s / self._speed, MIN_STREAM_PERIOD_S)
                self._next_due = now
                return [encode(Ok("STREAM"))]
            case TimeCommand(time=time) if not in_clock_range(time):
                return [encode(Err("TIME", "BADARG", f"clock holds {CLOCK_RANGE_TEXT} only"))]
            case TimeCommand(time=time):
                self._clock_base, self._clock_set_at = time, now
                return [encode(Ok("TIME"))]

    def _hello(self) -> Hello:
        return Hello(1, VENDOR, MODEL, PROGRAMMER_SN, FIRMWARE, len(self._pumps))

    def _report(self, links: Iterable[_PumpLink], now: float) -> list[bytes]:
        """For each pump: its new EVTs, then its ALRMs, then its STAT."""
        elapsed_s = (now - self._powered_at) * self._speed
        time = self._clock(now)
        frames: list[bytes] = []
        for link in links:
            pump_id, scenario = link.pump.pump_id, link.pump.scenario
            model = scenario.model_at(pump_id, elapsed_s)
            for event in scenario.events_between(link.events_upto_s, elapsed_s):
                evt = Evt(self._take_seq(), pump_id, time, event.kind, event.detail)
                frames.append(encode(evt))
            flags = reported_flags(model)
            for code, action in alarm_changes(link.shown_flags, flags):
                frames.append(encode(Alrm(self._take_seq(), pump_id, time, code, action)))
            frames.append(encode(to_stat(model, self._take_seq(), time)))
            link.events_upto_s, link.shown_flags = elapsed_s, flags
        return frames

    def _take_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) % SEQ_MODULO
        return seq

    def _clock(self, now: float) -> datetime:
        return self._clock_base + timedelta(seconds=(now - self._clock_set_at) * self._speed)


def _rejection(error: ProtocolError) -> Err:
    """The ERR for a host frame that is not a valid command."""
    command = error.body.split(",", 1)[0]
    code = "BADARG" if command in HOST_TYPES else "BADCMD"
    text = error.reason.replace(",", ";")[:_MAX_ERR_TEXT]
    return Err(command[:_MAX_ERR_COMMAND], code, text)
