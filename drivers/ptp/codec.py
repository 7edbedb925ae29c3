"""Sans-IO PTP/1 codec: bytes in, typed messages out; messages in, bytes out.

No port, socket or clock in here. ``StreamDecoder.feed(data)`` accepts any
slicing of the byte stream (whole chunks or one byte at a time give the same
result) and returns what completed: messages, discarded frames and protocol
errors. Between calls it keeps at most one partial frame (256 bytes).
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

from drivers.ptp.grammar import (
    DEVICE_TYPES,
    HOST_TYPES,
    ProtocolViolation,
    format_body,
    parse_body,
)
from drivers.ptp.messages import Message

MAX_FRAME = 256  # bytes, '$' to '\n' inclusive
_MAX_CONTENT = MAX_FRAME - 2  # between '$' and '\n', '\r' included
_PRINTABLE_BODY = re.compile(rb"[\x20-\x7e]*")
_CRC_TEXT = re.compile(rb"[0-9A-Fa-f]{4}")
_SEQUENCED_PREFIX = re.compile(r"(?:STAT|ALRM|EVT),[^,]*,([A-Z0-9-]{1,16}),")


def crc16(body: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF); ``b"123456789"`` -> 0x29B1."""
    return binascii.crc_hqx(body, 0xFFFF)


@dataclass(frozen=True, slots=True)
class FrameDiscarded:
    """Bytes that started as a frame but were not one (length, CRC, bytes, no '*')."""

    reason: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A frame with a good CRC whose content breaks the spec; never applied.

    ``pump_id`` names the pump when the frame says which one, so the gateway
    can attribute bad data to it.
    """

    reason: str
    body: str
    pump_id: str | None


DecodedItem = Message | FrameDiscarded | ProtocolError


@dataclass(slots=True)
class DecoderCounters:
    frames_ok: int = 0
    frames_discarded: int = 0
    protocol_errors: int = 0


def encode(message: Message) -> bytes:
    """The whole frame for a message, CRC upper case, CRLF terminated."""
    body = format_body(message).encode("ascii")
    frame = b"$%s*%04X\r\n" % (body, crc16(body))
    if len(frame) > MAX_FRAME:
        raise ValueError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME}")
    return frame


class StreamDecoder:
    """Reassembles frames from a byte stream and parses them.

    ``role="host"`` parses what a device sends (HELLO, STAT, ...);
    ``role="device"`` parses host commands (ID, POLL, ...).
    """

    def __init__(self, role: str = "host") -> None:
        if role not in ("host", "device"):
            raise ValueError(f"role must be 'host' or 'device', not {role!r}")
        self._accepted = DEVICE_TYPES if role == "host" else HOST_TYPES
        self._buf = bytearray()  # bytes after the current frame's '$'
        self._in_frame = False
        self.counters = DecoderCounters()

    def feed(self, data: bytes) -> list[DecodedItem]:
        out: list[DecodedItem] = []
        buf = self._buf
        buf += data
        while buf:
            if not self._in_frame:
                start = buf.find(b"$")
                if start < 0:
                    buf.clear()  # noise before a '$' is skipped, not counted
                    break
                del buf[: start + 1]
                self._in_frame = True
                continue
            end = _first_of(buf, b"$", b"\n")
            if end > _MAX_CONTENT or (end < 0 and len(buf) > _MAX_CONTENT):
                # Too long: discard, then resynchronise on the next '$' (the
                # rest of this frame is skipped as noise).
                cut = end if end >= 0 else len(buf)
                out.append(self._discard("frame longer than 256 bytes", bytes(buf[:cut])))
                del buf[:cut]
                self._in_frame = False
                continue
            if end < 0:
                break
            content = bytes(buf[:end])
            terminator = buf[end]
            del buf[: end + 1]
            if terminator == ord("$"):
                # A '$' inside a frame starts a new one; the partial one is
                # counted when it had any byte after its '$'.
                if content:
                    out.append(self._discard("frame restarted by '$'", content))
                continue
            self._in_frame = False
            out.append(self._complete(content))
        return out

    def _discard(self, reason: str, raw: bytes) -> FrameDiscarded:
        self.counters.frames_discarded += 1
        return FrameDiscarded(reason, raw)

    def _complete(self, content: bytes) -> DecodedItem:
        if content.endswith(b"\r"):
            content = content[:-1]
        star = content.find(b"*")
        if star < 0:
            return self._discard("no '*' before the CRC", content)
        body, crc_text = content[:star], content[star + 1 :]
        if not _CRC_TEXT.fullmatch(crc_text):
            return self._discard("CRC is not 4 hex digits", content)
        if not _PRINTABLE_BODY.fullmatch(body):
            return self._discard("byte outside 0x20..0x7E in body", content)
        if int(crc_text, 16) != crc16(body):
            return self._discard("CRC mismatch", content)
        text = body.decode("ascii")
        try:
            message = parse_body(text, self._accepted)
        except ProtocolViolation as exc:
            self.counters.protocol_errors += 1
            match = _SEQUENCED_PREFIX.match(text)
            return ProtocolError(str(exc), text, match.group(1) if match else None)
        self.counters.frames_ok += 1
        return message


def _first_of(buf: bytearray, a: bytes, b: bytes) -> int:
    i, j = buf.find(a), buf.find(b)
    if i < 0:
        return j
    if j < 0:
        return i
    return min(i, j)
