"""The host side of a PTP/1 conversation with one programmer, sans-IO.

Feed it what happens (``connection_made``, ``receive_data``, ``tick``,
``connection_lost``) with a monotonic ``now``; read back the bytes to write
(``data_to_send``) and what it learnt (a list of session events). It owns the
handshake (``ID`` -> ``HELLO``, refusing other protocol versions), the
stream set-up (``POLL`` then ``STREAM``), re-handshakes after an unprompted
``HELLO``, a liveness probe when the device falls silent, and section 6's
sequence rules (gaps counted as lost frames, duplicates and replays dropped).

A ``HELLO`` cannot say whether it answers our ``ID`` or announces a restart.
Every ``HELLO`` therefore re-arms streaming and restarts sequence tracking
(both harmless when it was an answer); it is *reported* as a restart unless
it repeats the known identity within 2 s of an ``ID`` we sent.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from drivers.ptp import (
    Alrm,
    Err,
    Evt,
    FrameDiscarded,
    Hello,
    IdCommand,
    Ok,
    PollCommand,
    ProtocolError,
    Stat,
    StreamCommand,
    StreamDecoder,
    encode,
)
from drivers.ptp.grammar import SEQ_MODULO
from drivers.ptp.messages import SUPPORTED_PROTOCOL, HostCommand

HELLO_TIMEOUT_S = 2.0  # spec 4: a device that does not answer ID in 2 s is absent
RETRY_BACKOFF_MAX_S = 30.0


class Phase(enum.Enum):
    CLOSED = "closed"
    HANDSHAKING = "handshaking"
    READY = "ready"
    REFUSED = "refused"  # the device speaks another protocol version


# --- what the session tells its owner ----------------------------------------


@dataclass(frozen=True, slots=True)
class LinkUp:
    hello: Hello


@dataclass(frozen=True, slots=True)
class LinkDown:
    reason: str
    reopen_port: bool = False  # the port looks open but nothing answers


@dataclass(frozen=True, slots=True)
class ProgrammerRestarted:
    hello: Hello


@dataclass(frozen=True, slots=True)
class DeviceMessage:
    """A STAT, ALRM or EVT in sequence (duplicates and replays are dropped)."""

    message: Stat | Alrm | Evt


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A discarded frame or a protocol error (already counted)."""

    item: FrameDiscarded | ProtocolError


@dataclass(frozen=True, slots=True)
class CommandFailed:
    error: Err


SessionEvent = LinkUp | LinkDown | ProgrammerRestarted | DeviceMessage | BadFrame | CommandFailed


@dataclass(slots=True)
class SessionCounters:
    frames_ok: int = 0
    frames_discarded: int = 0
    protocol_errors: int = 0
    frames_lost: int = 0
    duplicates: int = 0


class ProgrammerSession:
    def __init__(self, poll_interval_s: int) -> None:
        self.poll_interval_s = poll_interval_s
        self.phase = Phase.CLOSED
        self.hello: Hello | None = None
        self._decoder = StreamDecoder(role="host")
        self._outbox = bytearray()
        self._last_seq: int | None = None
        self._lost = 0
        self._duplicates = 0
        self._deadline: float | None = None  # when the awaited HELLO is overdue
        self._retry_s = HELLO_TIMEOUT_S
        self._last_heard = 0.0
        self._id_sent_at = -HELLO_TIMEOUT_S - 1.0
        self._probing = False

    # --- counters and timing --------------------------------------------------

    @property
    def counters(self) -> SessionCounters:
        c = self._decoder.counters
        return SessionCounters(
            c.frames_ok, c.frames_discarded, c.protocol_errors, self._lost, self._duplicates
        )

    @property
    def silence_limit_s(self) -> float:
        """How long a streaming device may stay silent before it is probed."""
        return 2 * self.poll_interval_s + HELLO_TIMEOUT_S

    def next_deadline(self) -> float | None:
        if self.phase is Phase.READY and not self._probing:
            return self._last_heard + self.silence_limit_s
        return self._deadline

    def data_to_send(self) -> bytes:
        data = bytes(self._outbox)
        self._outbox.clear()
        return data

    # --- inputs ---------------------------------------------------------------

    def connection_made(self, now: float) -> None:
        self._retry_s = HELLO_TIMEOUT_S
        self._start_handshake(now)

    def connection_lost(self, reason: str) -> list[SessionEvent]:
        was_ready = self.phase is Phase.READY
        self.phase = Phase.CLOSED
        self._deadline = None
        self._probing = False
        self._outbox.clear()
        return [LinkDown(reason)] if was_ready else []

    def tick(self, now: float) -> list[SessionEvent]:
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return []
        if self.phase is Phase.READY and not self._probing:
            # Silent for too long: ask who is there before calling it dead.
            self._probing = True
            self._deadline = now + HELLO_TIMEOUT_S
            self._send_id(now)
            return []
        events: list[SessionEvent] = []
        if self.phase is Phase.READY:
            self.phase = Phase.HANDSHAKING
            self._probing = False
            events.append(LinkDown(f"no answer to ID for {HELLO_TIMEOUT_S:g} s", reopen_port=True))
        # Handshake overdue: try again, backing off up to RETRY_BACKOFF_MAX_S.
        self._retry_s = min(self._retry_s * 2, RETRY_BACKOFF_MAX_S)
        self._send_id(now)
        self._deadline = now + self._retry_s
        return events

    def receive_data(self, data: bytes, now: float) -> list[SessionEvent]:
        events: list[SessionEvent] = []
        for item in self._decoder.feed(data):
            if isinstance(item, FrameDiscarded | ProtocolError):
                events.append(BadFrame(item))
                continue
            self._last_heard = now
            if isinstance(item, Hello):
                events.extend(self._on_hello(item, now))
            elif isinstance(item, Stat | Alrm | Evt):
                if self.phase is Phase.READY and self._in_sequence(item):
                    events.append(DeviceMessage(item))
            elif isinstance(item, Err):
                events.append(CommandFailed(item))
            elif isinstance(item, Ok):
                pass  # answers we do not wait on
        return events

    # --- internals ------------------------------------------------------------

    def send(self, command: HostCommand) -> None:
        """Queue a command for the port (see data_to_send)."""
        self._outbox += encode(command)

    def _send_id(self, now: float) -> None:
        self._id_sent_at = now
        self.send(IdCommand())

    def _start_handshake(self, now: float) -> None:
        self.phase = Phase.HANDSHAKING
        self._probing = False
        self._send_id(now)
        self._deadline = now + HELLO_TIMEOUT_S

    def _on_hello(self, hello: Hello, now: float) -> list[SessionEvent]:
        if hello.proto != SUPPORTED_PROTOCOL:
            self.phase = Phase.REFUSED
            self._deadline = None
            return [
                LinkDown(
                    f"programmer speaks PTP/{hello.proto}, this gateway speaks "
                    f"PTP/{SUPPORTED_PROTOCOL}: refusing it"
                )
            ]
        was_ready = self.phase is Phase.READY
        # A HELLO soon after our ID is most likely its answer (or the power-up
        # HELLO that was waiting in the line); anything else means a restart.
        answers_our_id = now - self._id_sent_at < HELLO_TIMEOUT_S and hello == self.hello
        self.hello = hello
        self.phase = Phase.READY
        self._deadline = None
        self._probing = False
        self._retry_s = HELLO_TIMEOUT_S
        self._last_seq = None  # spec 6: after a HELLO, seq may start again from 0
        # Re-arm streaming after every HELLO: idempotent, and a restart whose
        # HELLO looked like an answer still gets its STREAM back.
        self.send(PollCommand())
        self.send(StreamCommand(self.poll_interval_s))
        if not was_ready:
            return [LinkUp(hello)]
        return [] if answers_our_id else [ProgrammerRestarted(hello)]

    def _in_sequence(self, message: Stat | Alrm | Evt) -> bool:
        seq = message.seq
        if isinstance(message, Evt) and message.kind == "RESET":
            self._last_seq = seq  # the programmer restarted its count
            return True
        last = self._last_seq
        if last is not None:
            step = (seq - last) % SEQ_MODULO
            if step == 0 or step > SEQ_MODULO // 2:
                self._duplicates += 1  # duplicate or replay: ignore it
                return False
            self._lost += step - 1
        self._last_seq = seq
        return True
