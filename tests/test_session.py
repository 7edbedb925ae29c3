"""The sans-IO programmer session: handshake, stream set-up, liveness, sequence rules.

The device side is played with ``drivers.ptp.encode``; what the session sends
is parsed back with a device-role ``StreamDecoder``. Time is a monotonic
float the tests move by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from drivers.ptp import (
    Alrm,
    Err,
    Evt,
    Flag,
    FrameDiscarded,
    Hello,
    HostCommand,
    IdCommand,
    Ok,
    PollCommand,
    ProtocolError,
    Stat,
    StreamCommand,
    StreamDecoder,
    crc16,
    encode,
)
from drivers.session import (
    HELLO_TIMEOUT_S,
    RETRY_BACKOFF_MAX_S,
    BadFrame,
    CommandFailed,
    DeviceMessage,
    LinkDown,
    LinkUp,
    Phase,
    ProgrammerRestarted,
    ProgrammerSession,
    SessionEvent,
)

T = datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC)
PUMP = "PMP-0001"
HELLO = Hello(1, "ACME", "ITP-200", "PRG00042", "2.3.1", 1)
POLL_S = 60


def stat(seq: int, pump: str = PUMP) -> Stat:
    return Stat(seq, pump, T, 12.4, 20.0, 2.0, 81, 3.01, 300.0, 500.0, Flag(0))


def raw_frame(body: str) -> bytes:
    """A frame with a correct CRC around any body (for protocol errors)."""
    data = body.encode("ascii")
    return b"$%s*%04X\r\n" % (data, crc16(data))


def sent(session: ProgrammerSession) -> list[HostCommand]:
    """The commands the session queued since the last call, parsed as a device would."""
    decoder = StreamDecoder(role="device")
    items = decoder.feed(session.data_to_send())
    assert decoder.counters.frames_discarded == decoder.counters.protocol_errors == 0
    return items  # type: ignore[return-value]


def seqs(events: list[SessionEvent]) -> list[int]:
    return [e.message.seq for e in events if isinstance(e, DeviceMessage)]


def new_session(now: float = 0.0) -> ProgrammerSession:
    session = ProgrammerSession(poll_interval_s=POLL_S)
    session.connection_made(now)
    return session


def ready_session(now: float = 0.0) -> ProgrammerSession:
    session = new_session(now)
    session.receive_data(encode(HELLO), now)
    sent(session)
    assert session.phase is Phase.READY
    return session


def feed(session: ProgrammerSession, *messages: object, now: float = 1.0) -> list[SessionEvent]:
    data = b"".join(encode(m) for m in messages)  # type: ignore[arg-type]
    return session.receive_data(data, now)


# --- handshake ----------------------------------------------------------------------


def test_connection_made_sends_id() -> None:
    assert ProgrammerSession(poll_interval_s=POLL_S).phase is Phase.CLOSED
    session = ProgrammerSession(poll_interval_s=POLL_S)
    session.connection_made(0.0)
    assert session.data_to_send() == b"$ID*A21B\r\n"  # the spec's example frame
    assert session.data_to_send() == b""  # drained
    assert session.phase is Phase.HANDSHAKING


@pytest.mark.parametrize("poll_interval_s", [1, 60, 3600])
def test_hello_proto_1_brings_the_link_up_and_starts_the_stream(poll_interval_s: int) -> None:
    session = ProgrammerSession(poll_interval_s=poll_interval_s)
    session.connection_made(0.0)
    sent(session)
    events = session.receive_data(encode(HELLO), 0.3)
    assert events == [LinkUp(HELLO)]
    assert sent(session) == [PollCommand(), StreamCommand(poll_interval_s)]
    assert session.phase is Phase.READY
    assert session.hello == HELLO


def test_hello_in_pieces() -> None:
    session = new_session()
    sent(session)
    frame = encode(HELLO)
    events: list[SessionEvent] = []
    for i in range(len(frame)):
        events += session.receive_data(frame[i : i + 1], 0.1)
    assert events == [LinkUp(HELLO)]


@pytest.mark.parametrize("proto", [2, 0, 10])
def test_other_protocol_version_is_refused(proto: int) -> None:
    session = new_session()
    sent(session)
    events = feed(session, Hello(proto, "ACME", "ITP-300", "PRG9", "4.0.0", 2), now=0.2)
    (event,) = events
    assert isinstance(event, LinkDown)
    assert f"PTP/{proto}" in event.reason
    assert "PTP/1" in event.reason
    assert sent(session) == []  # no POLL, no STREAM
    assert session.phase is Phase.REFUSED
    # a refused device is not streamed from, and not retried on its own
    assert feed(session, stat(1), now=1.0) == []
    assert session.tick(100.0) == []
    assert sent(session) == []


def test_no_hello_resends_id_with_backoff() -> None:
    session = new_session(now=0.0)
    sent(session)
    assert session.tick(HELLO_TIMEOUT_S - 0.001) == []
    assert sent(session) == []
    now = HELLO_TIMEOUT_S
    retries = []
    for _ in range(8):
        assert session.next_deadline() == pytest.approx(now)
        assert session.tick(now - 0.001) == []
        assert sent(session) == []
        assert session.tick(now) == []  # not up yet: nothing to report down
        assert sent(session) == [IdCommand()]
        deadline = session.next_deadline()
        assert deadline is not None
        retries.append(deadline - now)
        now = deadline
    assert retries == [4.0, 8.0, 16.0, RETRY_BACKOFF_MAX_S, 30.0, 30.0, 30.0, 30.0]
    assert session.phase is Phase.HANDSHAKING
    # a late HELLO still brings the link up, and the backoff starts over
    assert feed(session, HELLO, now=now + 1) == [LinkUp(HELLO)]
    session.connection_lost("unplugged")
    session.connection_made(500.0)
    sent(session)
    session.tick(500.0 + HELLO_TIMEOUT_S)
    assert session.next_deadline() == pytest.approx(500.0 + HELLO_TIMEOUT_S + 4.0)


def test_messages_before_the_handshake_are_not_applied() -> None:
    session = new_session()
    assert feed(session, stat(1), Evt(2, PUMP, T, "REFILL", 20.0), now=0.1) == []


# --- unprompted HELLO ------------------------------------------------------------------


def test_unprompted_hello_means_the_programmer_restarted() -> None:
    session = ready_session()
    assert seqs(feed(session, stat(500), stat(501), now=1.0)) == [500, 501]
    events = feed(session, HELLO, now=2.0)
    assert events == [ProgrammerRestarted(HELLO)]
    assert sent(session) == [PollCommand(), StreamCommand(POLL_S)]
    assert session.phase is Phase.READY
    # seq tracking starts over: 0 is neither a replay nor a gap
    assert seqs(feed(session, stat(0), stat(1), now=3.0)) == [0, 1]
    assert session.counters.frames_lost == 0
    assert session.counters.duplicates == 0


def test_unprompted_hello_with_new_identity_is_remembered() -> None:
    session = ready_session()
    upgraded = Hello(1, "ACME", "ITP-200", "PRG00042", "2.4.0", 1)
    assert feed(session, upgraded) == [ProgrammerRestarted(upgraded)]
    assert session.hello == upgraded


# --- sequence numbers -----------------------------------------------------------------------


def test_first_message_sets_the_sequence_without_a_gap() -> None:
    session = ready_session()
    assert seqs(feed(session, stat(17))) == [17]
    assert session.counters.frames_lost == 0


@pytest.mark.parametrize(
    ("sequence", "emitted", "lost"),
    [
        ([1, 2, 3], [1, 2, 3], 0),
        ([1, 3], [1, 3], 1),
        ([1, 5, 6, 10], [1, 5, 6, 10], 3 + 3),
        ([65534, 65535, 0, 1], [65534, 65535, 0, 1], 0),  # the wrap is not a gap
        ([65535, 0], [65535, 0], 0),
        ([65534, 1], [65534, 1], 2),  # 65535 and 0 lost across the wrap
    ],
)
def test_sequence_gaps_are_counted(sequence: list[int], emitted: list[int], lost: int) -> None:
    session = ready_session()
    assert seqs(feed(session, *(stat(s) for s in sequence))) == emitted
    assert session.counters.frames_lost == lost
    assert session.counters.duplicates == 0


@pytest.mark.parametrize(
    ("sequence", "emitted", "duplicates"),
    [
        ([5, 5], [5], 1),
        ([5, 6, 6, 6, 7], [5, 6, 7], 2),
        ([5, 6, 4], [5, 6], 1),  # backwards: a replay
        ([10, 11, 3, 12], [10, 11, 12], 1),
        ([0, 65535], [0], 1),  # backwards across the wrap
    ],
)
def test_duplicates_and_replays_are_dropped_and_counted(
    sequence: list[int], emitted: list[int], duplicates: int
) -> None:
    session = ready_session()
    assert seqs(feed(session, *(stat(s) for s in sequence))) == emitted
    assert session.counters.duplicates == duplicates
    assert session.counters.frames_lost == 0


def test_alrm_and_evt_share_the_sequence() -> None:
    session = ready_session()
    messages = [
        stat(1),
        Alrm(2, PUMP, T, "LOWRES", "SET"),
        Evt(3, PUMP, T, "REFILL", 20.0),
        Alrm(3, PUMP, T, "LOWRES", "CLR"),  # duplicate seq
        stat(5),
    ]
    events = feed(session, *messages)
    assert [e.message for e in events if isinstance(e, DeviceMessage)] == [
        messages[0],
        messages[1],
        messages[2],
        messages[4],
    ]
    assert session.counters.duplicates == 1
    assert session.counters.frames_lost == 1


def test_evt_reset_resets_the_sequence() -> None:
    session = ready_session()
    reset = Evt(0, PUMP, T, "RESET", None)
    events = feed(session, stat(900), stat(901), reset, stat(1), stat(2))
    assert seqs(events) == [900, 901, 0, 1, 2]
    assert [e.message for e in events if isinstance(e, DeviceMessage)][2] == reset
    assert session.counters.duplicates == 0
    assert session.counters.frames_lost == 0


def test_without_reset_a_restarted_count_is_a_replay() -> None:
    session = ready_session()
    assert seqs(feed(session, stat(900), stat(0), stat(1))) == [900]
    assert session.counters.duplicates == 2


# --- liveness ---------------------------------------------------------------------------


def test_silence_limit() -> None:
    assert ProgrammerSession(poll_interval_s=60).silence_limit_s == 2 * 60 + HELLO_TIMEOUT_S


def test_silent_device_is_probed_with_id() -> None:
    session = ready_session(now=0.0)
    feed(session, stat(1), now=10.0)
    limit = session.silence_limit_s
    assert session.next_deadline() == pytest.approx(10.0 + limit)
    assert session.tick(10.0 + limit - 0.001) == []
    assert sent(session) == []
    assert session.tick(10.0 + limit) == []  # probing is not yet a failure
    assert sent(session) == [IdCommand()]
    assert session.phase is Phase.READY


def test_data_postpones_the_probe() -> None:
    session = ready_session(now=0.0)
    limit = session.silence_limit_s
    for now in range(10, 1000, 60):
        feed(session, stat(now), now=float(now))
        assert session.tick(now + limit - 1) == []
    assert sent(session) == []


def test_answered_probe_changes_nothing() -> None:
    session = ready_session(now=0.0)
    limit = session.silence_limit_s
    session.tick(limit + 1)
    assert sent(session) == [IdCommand()]
    assert feed(session, HELLO, now=limit + 1.5) == []  # same programmer: all is well
    # Streaming is re-armed anyway (idempotent): a programmer that restarted
    # while its HELLO was lost would otherwise stay silent.
    assert sent(session) == [PollCommand(), StreamCommand(POLL_S)]
    assert session.phase is Phase.READY
    assert session.tick(limit + 1.5 + HELLO_TIMEOUT_S) == []  # no pending probe any more
    assert seqs(feed(session, stat(7), now=limit + 2)) == [7]
    assert session.next_deadline() == pytest.approx(limit + 2 + limit)


def test_unanswered_probe_takes_the_link_down_and_retries() -> None:
    session = ready_session(now=0.0)
    limit = session.silence_limit_s
    session.tick(limit)
    sent(session)
    assert session.tick(limit + HELLO_TIMEOUT_S - 0.001) == []
    events = session.tick(limit + HELLO_TIMEOUT_S)
    (event,) = events
    assert isinstance(event, LinkDown)
    assert "ID" in event.reason
    assert session.phase is Phase.HANDSHAKING
    assert sent(session) == [IdCommand()]
    # it comes back: a handshake like the first one
    assert feed(session, HELLO, now=limit + 5) == [LinkUp(HELLO)]
    assert sent(session) == [PollCommand(), StreamCommand(POLL_S)]


def test_liveness_probing_works_again_after_a_recovered_link() -> None:
    session = ready_session(now=0.0)
    limit = session.silence_limit_s
    session.tick(limit)
    session.tick(limit + HELLO_TIMEOUT_S)  # LinkDown
    back = limit + 5
    feed(session, HELLO, now=back)  # LinkUp
    sent(session)
    assert session.next_deadline() == pytest.approx(back + limit)
    session.tick(back + limit)
    assert sent(session) == [IdCommand()]
    assert session.tick(back + limit + HELLO_TIMEOUT_S) != []


def test_connection_lost_reports_down_only_when_it_was_up() -> None:
    session = new_session()
    assert session.connection_lost("port closed") == []
    session = ready_session()
    assert session.connection_lost("cable pulled") == [LinkDown("cable pulled")]
    assert session.phase is Phase.CLOSED
    assert session.next_deadline() is None
    assert session.tick(1e6) == []
    assert session.data_to_send() == b""


# --- bad frames and device errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind", "counter"),
    [
        (b"$STAT,1*0000\r\n", FrameDiscarded, "frames_discarded"),  # CRC mismatch
        (b"$HELLO,1,ACME\r\n", FrameDiscarded, "frames_discarded"),  # no '*'
        (b"$" + b"A" * 300 + b"\r\n", FrameDiscarded, "frames_discarded"),  # too long
        (raw_frame("STAT,1,PMP-0001"), ProtocolError, "protocol_errors"),  # too few fields
        (raw_frame("BOGUS,1"), ProtocolError, "protocol_errors"),  # unknown type
        (
            raw_frame("STAT,1,PMP-0001,2026-11-30T08:00:00Z,25.0,20.0,2.0,81,3.01,300,500,0000"),
            ProtocolError,
            "protocol_errors",
        ),  # res_ml above capacity
    ],
)
def test_bad_frames_are_reported_and_counted(data: bytes, kind: type, counter: str) -> None:
    session = ready_session()
    before = session.counters
    events = session.receive_data(data, 1.0)
    (event,) = events
    assert isinstance(event, BadFrame)
    assert isinstance(event.item, kind)
    after = session.counters
    assert getattr(after, counter) == getattr(before, counter) + 1
    assert after.frames_ok == before.frames_ok


def test_protocol_error_names_the_pump() -> None:
    session = ready_session()
    body = "STAT,1,PMP-0007,2026-11-30T08:00:00Z,25.0,20.0,2.0,81,3.01,300,500,0000"
    (event,) = session.receive_data(raw_frame(body), 1.0)
    assert isinstance(event, BadFrame)
    assert isinstance(event.item, ProtocolError)
    assert event.item.pump_id == "PMP-0007"


def test_bad_frames_do_not_disturb_good_ones() -> None:
    session = ready_session()
    data = b"noise" + encode(stat(1)) + b"$STAT,2*FFFF\r\n" + encode(stat(2)) + b"$HEL$"
    data += encode(stat(3))
    events = session.receive_data(data, 1.0)
    assert seqs(events) == [1, 2, 3]
    assert sum(isinstance(e, BadFrame) for e in events) == 2
    counters = session.counters
    assert counters.frames_discarded == 2
    assert counters.frames_ok == 1 + 3  # the HELLO and three STATs
    assert counters.frames_lost == 0


def test_bad_frames_do_not_count_as_signs_of_life() -> None:
    session = ready_session(now=0.0)
    limit = session.silence_limit_s
    session.receive_data(b"$garbage*0000\r\n", limit - 1)
    session.tick(limit)
    assert sent(session) == [IdCommand()]


def test_device_error_is_reported_and_ok_is_quiet() -> None:
    session = ready_session()
    err = Err("STREAM", "BADARG", "interval out of range")
    assert feed(session, Ok("POLL"), err) == [CommandFailed(err)]


def test_counters_start_at_zero() -> None:
    counters = ProgrammerSession(poll_interval_s=POLL_S).counters
    assert (
        counters.frames_ok,
        counters.frames_discarded,
        counters.protocol_errors,
        counters.frames_lost,
        counters.duplicates,
    ) == (0, 0, 0, 0, 0)


def test_power_up_hello_waiting_in_the_line_is_not_a_restart() -> None:
    """The programmer's power-up HELLO sat in the line; our ID's answer follows."""
    session = ProgrammerSession(POLL_S)
    session.connection_made(0.0)
    sent(session)
    assert feed(session, HELLO, now=0.01) == [LinkUp(HELLO)]
    assert feed(session, HELLO, now=0.02) == []  # the answer to our ID
    assert session.phase is Phase.READY
