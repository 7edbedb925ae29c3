"""Property-based tests of the PTP/1 codec (hypothesis, derandomized: same cases every run).

The oracle for what a byte stream must decode to is ``reference_decode``: the
receiver rules of PTP1.md section 2 read literally, one ``$`` at a time, on the
whole input at once. The decoder under test sees the same bytes in arbitrary
chunks and must agree with it item for item.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.ptp import (
    Alrm,
    DecodedItem,
    Err,
    Evt,
    Flag,
    FrameDiscarded,
    Hello,
    IdCommand,
    Message,
    Ok,
    PollCommand,
    ProtocolError,
    Stat,
    StreamCommand,
    StreamDecoder,
    TimeCommand,
    crc16,
    encode,
)
from drivers.ptp.codec import MAX_FRAME
from drivers.ptp.grammar import (
    DEVICE_TYPES,
    HOST_TYPES,
    ProtocolViolation,
    format_body,
    parse_body,
)
from drivers.ptp.messages import ALARM_ACTIONS, ALARM_CODES, ERROR_CODES

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ROLES = ("host", "device")
OTHER_ROLE = {"host": "device", "device": "host"}

# --- valid messages, within the spec's ranges ---------------------------------

_TEXT_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters=",$*")
_TEXT = st.text(_TEXT_CHARS, max_size=24)
_PUMP_IDS = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1, max_size=16)
_SEQS = st.integers(0, 65535)
_TIMES = st.datetimes(
    min_value=datetime(1, 1, 1),
    max_value=datetime(9999, 12, 31, 23, 59, 59),
    timezones=st.just(UTC),
).map(lambda t: t.replace(microsecond=0))


def _short(value: float) -> bool:
    # Every finite float round-trips (the encoder writes its repr positionally), but
    # 1e-300 takes 300 digits; keep the six decimals of a STAT inside one frame.
    return len(format(Decimal(repr(value)), "f")) <= 24


def _decimals(low: float, high: float, *, exclude_low: bool = False) -> st.SearchStrategy[float]:
    """Wire-like values (two places) and arbitrary floats, all in [low, high]."""
    return st.one_of(
        st.decimals(low, high, places=2).map(float).filter(lambda x: x > low or not exclude_low),
        st.floats(low, high, exclude_min=exclude_low).filter(_short),
    )


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The field, or None (empty on the wire: unknown)."""
    return st.none() | strategy


# Strategies are built once, here: building them inside a draw costs more than drawing.
_RES_ML = {cap: _maybe(_decimals(0.0, cap or 40.0)) for cap in (None, 10.0, 20.0, 40.0)}
_LRA_ML = _maybe(_decimals(0.5, 10.0))
_BAT_V = _maybe(_decimals(2.0, 4.0))
_DOSE = _maybe(_decimals(0.0, 100_000.0, exclude_low=True))
_CONC = _maybe(_decimals(1.0, 3000.0))
_FLAGS = _maybe(st.integers(0, 0x7F).map(Flag))
_EVT_DETAILS = {"REFILL": _maybe(_decimals(0.0, 40.0)), "PROG": _DOSE, "RESET": st.none()}


@st.composite
def stats(draw: st.DrawFn) -> Stat:
    cap = draw(_maybe(st.sampled_from([10.0, 20.0, 40.0])))
    return Stat(
        seq=draw(_SEQS),
        pump_id=draw(_PUMP_IDS),
        time=draw(_maybe(_TIMES)),
        res_ml=draw(_RES_ML[cap]),
        cap_ml=cap,
        lra_ml=draw(_LRA_ML),
        bat_pct=draw(_maybe(st.integers(0, 100))),
        bat_v=draw(_BAT_V),
        dose_mcg_day=draw(_DOSE),
        conc_mcg_ml=draw(_CONC),
        flags=draw(_FLAGS),
    )


@st.composite
def evts(draw: st.DrawFn) -> Evt:
    kind = draw(st.sampled_from(sorted(_EVT_DETAILS)))
    time = draw(_maybe(_TIMES))
    return Evt(draw(_SEQS), draw(_PUMP_IDS), time, kind, draw(_EVT_DETAILS[kind]))


DEVICE_MESSAGES: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Hello,
        proto=st.integers(0, 99),
        vendor=_TEXT,
        model=_TEXT,
        programmer_sn=_TEXT,
        firmware=_TEXT,
        pump_count=_maybe(st.integers(0, 255)),
    ),
    stats(),
    st.builds(
        Alrm,
        seq=_SEQS,
        pump_id=_PUMP_IDS,
        time=_maybe(_TIMES),
        code=st.sampled_from(sorted(ALARM_CODES)),
        action=st.sampled_from(sorted(ALARM_ACTIONS)),
    ),
    evts(),
    st.builds(Ok, command=_TEXT),
    st.builds(
        Err,
        command=_TEXT,
        code=st.sampled_from(sorted(ERROR_CODES)),
        text=st.text(_TEXT_CHARS, max_size=100),
    ),
)
HOST_COMMANDS: st.SearchStrategy[Message] = st.one_of(
    st.just(IdCommand()),
    st.builds(PollCommand, pump_id=_maybe(_PUMP_IDS)),
    st.builds(StreamCommand, interval_s=st.just(0) | st.integers(1, 3600)),
    st.builds(TimeCommand, time=_TIMES),
)
MESSAGES = {"host": DEVICE_MESSAGES, "device": HOST_COMMANDS}  # what each role decodes
MESSAGE_LISTS = {role: st.lists(MESSAGES[role], min_size=1, max_size=8) for role in ROLES}


# --- decoding -----------------------------------------------------------------


@st.composite
def chunkings(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at arbitrary points (empty chunks included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=24)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def decode(role: str, chunks: list[bytes]) -> list[DecodedItem]:
    """Everything a fresh decoder yields for these chunks; counters checked against it."""
    decoder = StreamDecoder(role)
    items: list[DecodedItem] = []
    for chunk in chunks:
        items += decoder.feed(chunk)
        assert len(decoder._buf) <= MAX_FRAME  # at most one partial frame is kept
    counters = decoder.counters
    assert counters.frames_ok == len(messages_of(items))
    assert counters.frames_discarded == sum(isinstance(i, FrameDiscarded) for i in items)
    assert counters.protocol_errors == sum(isinstance(i, ProtocolError) for i in items)
    return items


def messages_of(items: list[DecodedItem]) -> list[Message]:
    return [i for i in items if not isinstance(i, FrameDiscarded | ProtocolError)]


DISCARDED, REJECTED = "discarded", "protocol error"
Outcome = Message | str


def outcomes(items: list[DecodedItem]) -> list[Outcome]:
    """Items with the reasons and raw bytes left out, for comparing with the reference."""
    return [
        DISCARDED
        if isinstance(i, FrameDiscarded)
        else REJECTED
        if isinstance(i, ProtocolError)
        else i
        for i in items
    ]


_TERMINATOR = re.compile(rb"[$\n]")
_HEX4 = re.compile(rb"[0-9A-Fa-f]{4}")
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
_MAX_CONTENT = MAX_FRAME - 2  # '$' and '\n' are part of the 256


def _classify(content: bytes, accepted: frozenset[str]) -> Outcome:
    """A frame that ended at its '\\n': ``content`` is what lay between '$' and '\\n'."""
    if content.endswith(b"\r"):
        content = content[:-1]
    body, star, crc = content.partition(b"*")
    if not star or not _HEX4.fullmatch(crc) or not _PRINTABLE.fullmatch(body):
        return DISCARDED
    if int(crc, 16) != crc16(body):
        return DISCARDED
    try:
        return parse_body(body.decode("ascii"), accepted)
    except ProtocolViolation:
        return REJECTED


def reference_decode(data: bytes, role: str) -> list[Outcome]:
    """PTP1.md section 2, read literally: each '$' starts a frame that runs to the next '$'
    (abandoned: discarded if it had any byte) or '\\n' (complete: checked), and is
    discarded once it is longer than 256 bytes; bytes outside frames are skipped. A frame
    the input leaves unfinished (and not yet too long) yields nothing."""
    accepted = DEVICE_TYPES if role == "host" else HOST_TYPES
    out: list[Outcome] = []
    start = data.find(b"$")
    while start >= 0:
        match = _TERMINATOR.search(data, start + 1)
        end = match.start() if match else len(data)
        content = data[start + 1 : end]
        if len(content) > _MAX_CONTENT:
            out.append(DISCARDED)  # then resynchronise on the next '$'
            start = data.find(b"$", end)
        elif match is None:
            break
        elif data[end] == ord("$"):
            if content:
                out.append(DISCARDED)
            start = end
        else:
            out.append(_classify(content, accepted))
            start = data.find(b"$", end + 1)
    return out


# --- streams that look like PTP/1 -----------------------------------------------


def frame_around(body: bytes, crc: int | None = None, crlf: bytes = b"\r\n") -> bytes:
    """``$BODY*CRC`` + terminator around any body, with its right CRC unless given one."""
    return b"$%s*%04X%s" % (body, crc16(body) if crc is None else crc, crlf)


@st.composite
def mutated(draw: st.DrawFn, frames: st.SearchStrategy[bytes]) -> bytes:
    """A frame after one thing happened to it on the wire (some harmless, most fatal)."""
    frame = draw(frames)
    how = draw(st.sampled_from(["lower", "lf", "flip", "cut", "insert", "drop", "crc"]))
    star = frame.rindex(b"*")
    if how == "lower":  # receivers accept either case
        return frame[:star] + frame[star:].lower()
    if how == "lf":  # receivers accept a bare '\n'
        return frame.replace(b"\r\n", b"\n")
    if how == "crc":
        return frame[: star + 1] + b"%04X\r\n" % draw(st.integers(0, 0xFFFF))
    at = draw(st.integers(1, len(frame) - 1))
    if how == "flip":
        return frame[:at] + bytes([draw(st.integers(0, 255))]) + frame[at + 1 :]
    if how == "cut":
        return frame[:at]
    if how == "insert":
        return frame[:at] + draw(st.binary(min_size=1, max_size=3)) + frame[at:]
    return frame[:at] + frame[at + 1 :]  # drop


_NOT_PRINTABLE = st.sampled_from([0x7F, 0x1F, 0x80, 0x00, 0x0D, 0xFF]) | st.sampled_from(
    [b for b in [*range(0x20), *range(0x7F, 0x100)] if b != 0x0A]
)


@st.composite
def with_a_control_byte(draw: st.DrawFn, frames: st.SearchStrategy[bytes]) -> bytes:
    """A good frame with a byte outside 0x20..0x7E put into its body, CRC made right."""
    frame = draw(frames)
    body = frame[1 : frame.rindex(b"*")]
    at = draw(st.integers(0, len(body)))
    return frame_around(body[:at] + bytes([draw(_NOT_PRINTABLE)]) + body[at:])


@st.composite
def made_up_frames(draw: st.DrawFn) -> bytes:
    """A known type with any number of any fields, and a good CRC."""
    kind = draw(st.sampled_from(sorted(DEVICE_TYPES | HOST_TYPES)))
    return frame_around(",".join([kind, *draw(st.lists(_TEXT, max_size=12))]).encode())


# Just within and just beyond 256 bytes: a good frame ('$OK,' + n + '*XXXX\r\n' is 11 + n
# bytes, 10 + n with a bare '\n'); a frame restarted by '$'; one the input leaves open.
_AT_THE_LIMIT = st.one_of(
    st.sampled_from([244, 245, 246]).map(lambda n: frame_around(b"OK," + b"x" * n)),
    st.sampled_from([245, 246, 247]).map(lambda n: frame_around(b"OK," + b"x" * n, crlf=b"\n")),
    st.sampled_from([253, 254, 255]).map(lambda n: b"$" + b"y" * n + b"$"),
    st.sampled_from([253, 254, 255]).map(lambda n: b"$" + b"z" * n),
)


def _pieces(role: str) -> st.SearchStrategy[bytes]:
    valid = MESSAGES[role].map(encode)
    return st.one_of(
        valid,
        mutated(valid),
        st.one_of(  # a good CRC around something that is not a message for this role
            MESSAGES[OTHER_ROLE[role]].map(encode),
            with_a_control_byte(valid),
            st.binary(max_size=48).map(frame_around),
            _TEXT.map(lambda t: frame_around(t.encode())),
            made_up_frames(),
        ),
        st.one_of(  # line noise, stray framing bytes
            st.binary(max_size=48),
            st.sampled_from([b"$", b"\n", b"\r\n", b"*", b"$*", b"$\n", b"$*FFFF\n", b"\r"]),
        ),
        _AT_THE_LIMIT,
    )


PIECES = {role: _pieces(role) for role in ROLES}
STREAMS = {role: st.lists(PIECES[role], max_size=32).map(b"".join) for role in ROLES}
ARBITRARY = {role: st.binary(max_size=4096) | STREAMS[role] for role in ROLES}


# --- 1. arbitrary bytes never raise ---------------------------------------------


@PROPERTY
@given(role=st.sampled_from(ROLES), data=st.data())
def test_arbitrary_bytes_in_any_chunks_never_raise(role: str, data: st.DataObject) -> None:
    raw = data.draw(ARBITRARY[role], label="bytes")
    chunks = data.draw(chunkings(raw), label="chunks")
    items = decode(role, chunks)
    assert outcomes(decode(role, [raw])) == outcomes(items)  # slicing changes nothing


# --- 2. no message without a frame with its CRC ---------------------------------

_CANDIDATE = re.compile(rb"\$([^$\n]*?)\*([0-9A-Fa-f]{4})\r?\n")


@PROPERTY
@given(role=st.sampled_from(ROLES), data=st.data())
def test_every_message_comes_from_a_frame_whose_crc_matched(role: str, data: st.DataObject) -> None:
    raw = data.draw(STREAMS[role], label="bytes")
    accepted = DEVICE_TYPES if role == "host" else HOST_TYPES
    # Every '$...*XXXX\n' in the input whose CRC is right for its body, parsed.
    crc_checked = set()
    for body, crc in _CANDIDATE.findall(raw):
        if int(crc, 16) == crc16(body) and _PRINTABLE.fullmatch(body):
            with contextlib.suppress(ProtocolViolation):
                crc_checked.add(parse_body(body.decode("ascii"), accepted))
    for message in messages_of(decode(role, data.draw(chunkings(raw), label="chunks"))):
        assert message in crc_checked
        try:
            frame = encode(message)
        except ValueError:
            # Its own frame ('\r\n', numbers as the encoder writes them) would pass 256
            # bytes: the input said it more briefly (a bare '\n', "5" for 5.0, ...).
            assert len(format_body(message)) + len(b"$*XXXX\r\n") > MAX_FRAME
            continue
        assert StreamDecoder(role).feed(frame) == [message]


@PROPERTY
@given(role=st.sampled_from(ROLES), data=st.data())
def test_decoder_agrees_with_the_reference_reading_of_the_spec(
    role: str, data: st.DataObject
) -> None:
    raw = data.draw(STREAMS[role], label="bytes")
    chunks = data.draw(chunkings(raw), label="chunks")
    assert outcomes(decode(role, chunks)) == reference_decode(raw, role)


@PROPERTY
@given(role=st.sampled_from(ROLES), data=st.data())
def test_a_frame_with_a_wrong_crc_is_never_used(role: str, data: st.DataObject) -> None:
    frame = encode(data.draw(MESSAGES[role], label="message"))
    star = frame.rindex(b"*")
    body, crc = frame[1:star], int(frame[star + 1 : star + 5], 16)
    wrong_crc = data.draw(st.integers(0, 0xFFFF).filter(lambda c: c != crc), label="crc")
    at = data.draw(st.integers(0, len(body) - 1), label="at")
    other = data.draw(_TEXT_CHARS.filter(lambda c: ord(c) != body[at]), label="byte").encode()
    for bad in (
        frame_around(body, wrong_crc),
        frame_around(body[:at] + other + body[at + 1 :], crc),  # CRC-16 sees any 1-byte error
    ):
        [item] = decode(role, data.draw(chunkings(bad), label="chunks"))
        assert isinstance(item, FrameDiscarded) and item.reason == "CRC mismatch"


# --- 3. encode -> decode round trip ---------------------------------------------


@PROPERTY
@given(role=st.sampled_from(ROLES), data=st.data())
def test_valid_messages_round_trip(role: str, data: st.DataObject) -> None:
    messages = data.draw(MESSAGE_LISTS[role], label="messages")
    wire = b"".join(encode(m) for m in messages)
    assert all(len(encode(m)) <= MAX_FRAME and encode(m).endswith(b"\r\n") for m in messages)
    assert decode(role, [wire]) == messages
    assert decode(role, data.draw(chunkings(wire), label="chunks")) == messages
    assert decode(role, [wire[i : i + 1] for i in range(len(wire))]) == messages


@PROPERTY
@given(role=st.sampled_from(ROLES), data=st.data())
def test_a_message_sent_the_wrong_way_is_a_protocol_error(role: str, data: st.DataObject) -> None:
    message = data.draw(MESSAGES[OTHER_ROLE[role]], label="message")
    [item] = decode(role, [encode(message)])
    assert isinstance(item, ProtocolError)


# --- 4. valid frames survive noise ------------------------------------------------

_NO_DOLLAR = st.binary(max_size=64).map(lambda b: b.replace(b"$", b""))
# Noise for the second case: '$'-free, frame-like pieces, or anything up to 300 bytes.
_ANY_NOISE = {role: st.one_of(_NO_DOLLAR, PIECES[role], st.binary(max_size=300)) for role in ROLES}


@st.composite
def interleaved(
    draw: st.DrawFn, role: str, noise: st.SearchStrategy[bytes]
) -> tuple[list[Message], bytes]:
    messages = draw(st.lists(MESSAGES[role], max_size=24), label="messages")
    parts = [draw(noise)]
    for message in messages:
        parts += [encode(message), draw(noise)]
    return messages, b"".join(parts)


WITHOUT_DOLLAR = {role: interleaved(role, _NO_DOLLAR) for role in ROLES}
WITH_ANY_NOISE = {role: interleaved(role, _ANY_NOISE[role]) for role in ROLES}


@PROPERTY
@given(role=st.sampled_from(ROLES), data=st.data())
def test_noise_without_dollar_between_frames_is_skipped_silently(
    role: str, data: st.DataObject
) -> None:
    messages, wire = data.draw(WITHOUT_DOLLAR[role])
    # Noise may hold '\n', '\r', '*', anything but '$': outside a frame it is skipped.
    # Equal lists: those messages, in order, and not one discard or protocol error.
    assert decode(role, data.draw(chunkings(wire), label="chunks")) == messages


def _is_subsequence(wanted: list[Message], got: list[Message]) -> bool:
    rest = iter(got)
    return all(any(g == w for g in rest) for w in wanted)


@PROPERTY
@given(role=st.sampled_from(ROLES), data=st.data())
def test_every_valid_frame_survives_any_noise_before_it(role: str, data: st.DataObject) -> None:
    """A '$' in noise opens a partial frame; the real frame's own '$' abandons it (or
    it already ended at a '\\n' in the noise, or grew too long and was dropped), so the
    real frame always decodes. Noise may add discards, protocol errors, even messages of
    its own (a mutation can leave a frame valid), but never hides a valid frame."""
    messages, wire = data.draw(WITH_ANY_NOISE[role])
    items = decode(role, data.draw(chunkings(wire), label="chunks"))
    assert _is_subsequence(messages, messages_of(items))
    assert outcomes(items) == reference_decode(wire, role)


def test_reference_decoder_on_the_spec_rules() -> None:
    """The oracle itself, on the cases PTP1.md spells out."""
    ok = encode(Ok("POLL"))
    assert reference_decode(b"noise" + ok, "host") == [Ok("POLL")]
    assert reference_decode(b"$abc" + ok, "host") == [DISCARDED, Ok("POLL")]
    assert reference_decode(b"$" + ok, "host") == [Ok("POLL")]  # nothing after the '$'
    assert reference_decode(b"$OK,POLL\n" + ok[:-3], "host") == [DISCARDED]
    assert reference_decode(frame_around(b"OK,x", crc16(b"OK,x") ^ 1), "host") == [DISCARDED]
    assert reference_decode(frame_around(b"OK," + b"x" * 245), "host") == [Ok("x" * 245)]
    assert reference_decode(frame_around(b"OK," + b"x" * 246), "host") == [DISCARDED]
    long_lf = frame_around(b"OK," + b"x" * 246, crlf=b"\n")  # 256 bytes with a bare '\n'
    assert reference_decode(long_lf, "host") == [Ok("x" * 246)]
    assert reference_decode(b"$" + b"y" * 255, "host") == [DISCARDED]
    assert reference_decode(b"$" + b"y" * 254, "host") == []
    assert reference_decode(encode(IdCommand()), "host") == [REJECTED]
