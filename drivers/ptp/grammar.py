"""PTP/1 BODY grammar: text fields <-> typed messages, with the spec's ranges.

``parse_body`` turns a CRC-checked BODY into a message or raises
``ProtocolViolation``; ``format_body`` is its inverse. One table,
``_SCHEMAS``, says for every message type which fields it has, of what kind,
and whether an empty field (unknown) is allowed, so parsing and encoding
can never disagree.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from drivers.ptp.messages import (
    ALARM_ACTIONS,
    ALARM_CODES,
    CAPACITIES_ML,
    ERROR_CODES,
    EVENT_KINDS,
    KNOWN_FLAG_BITS,
    Alrm,
    Err,
    Evt,
    Flag,
    Hello,
    IdCommand,
    Message,
    Ok,
    PollCommand,
    Stat,
    StreamCommand,
    TimeCommand,
)

SEQ_MODULO = 65536


class ProtocolViolation(ValueError):
    """A frame with a good CRC whose content breaks the spec."""


_INT = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_PUMP_ID = re.compile(r"[A-Z0-9-]{1,16}")
_FLAGS = re.compile(r"[0-9A-Fa-f]{4}")
_TEXT_FORBIDDEN = re.compile(r"[,$*]|[^\x20-\x7e]")


def _parse_int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise ProtocolViolation(f"not an integer: {text!r}")
    return int(text)


def _parse_decimal(text: str) -> float:
    if not _DECIMAL.fullmatch(text):
        raise ProtocolViolation(f"not a decimal: {text!r}")
    return float(text)


def _format_decimal(value: Any) -> str:
    # Decimal(repr) is exact and positional, never an exponent.
    return format(Decimal(repr(float(value))), "f")


def parse_time(text: str) -> datetime:
    if not _TIME.fullmatch(text):
        raise ProtocolViolation(f"not a time YYYY-MM-DDTHH:MM:SSZ: {text!r}")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise ProtocolViolation(f"not a valid time: {text!r}") from exc


def format_time(value: datetime) -> str:
    # isoformat, not strftime("%Y"), which writes year 999 as "999", not "0999".
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _parse_pump_id(text: str) -> str:
    if not _PUMP_ID.fullmatch(text):
        raise ProtocolViolation(f"not a pump id [A-Z0-9-]{{1,16}}: {text!r}")
    return text


def _parse_text(text: str) -> str:
    return text


def _format_text(value: Any) -> str:
    text = str(value)
    if _TEXT_FORBIDDEN.search(text):
        raise ValueError(f"text field may not hold ',', '$', '*' or control bytes: {text!r}")
    return text


def _parse_flags(text: str) -> Flag:
    if not _FLAGS.fullmatch(text):
        raise ProtocolViolation(f"flags are not 4 hex digits: {text!r}")
    bits = int(text, 16)
    if bits & ~KNOWN_FLAG_BITS:
        raise ProtocolViolation(f"reserved flag bit set: {text}")
    return Flag(bits)


def _format_flags(value: Any) -> str:
    return f"{int(value):04X}"


def _choice(allowed: frozenset[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ProtocolViolation(f"{text!r} is not one of {', '.join(sorted(allowed))}")
        return text

    return parse


@dataclass(frozen=True, slots=True)
class _Field:
    parse: Callable[[str], Any]
    format: Callable[[Any], str]
    optional: bool = False


_INTEGER = _Field(_parse_int, str)
_DECIMAL_F = _Field(_parse_decimal, _format_decimal)
_TIME_F = _Field(parse_time, format_time)
_PUMP = _Field(_parse_pump_id, str)
_TEXT_F = _Field(_parse_text, _format_text)


def _optional(field: _Field) -> _Field:
    return _Field(field.parse, field.format, optional=True)


def _check_range(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        raise ProtocolViolation(f"{name} {value} outside {low}..{high}")


def _check_seq(msg: Any) -> None:
    _check_range("seq", msg.seq, 0, SEQ_MODULO - 1)


def _check_stat(msg: Any) -> None:
    stat: Stat = msg
    _check_seq(stat)
    if stat.cap_ml is not None and stat.cap_ml not in CAPACITIES_ML:
        raise ProtocolViolation(f"cap_ml {stat.cap_ml} is not 10, 20 or 40")
    _check_range("res_ml", stat.res_ml, 0.0, stat.cap_ml if stat.cap_ml is not None else 40.0)
    _check_range("lra_ml", stat.lra_ml, 0.5, 10.0)
    _check_range("bat_pct", stat.bat_pct, 0, 100)
    _check_range("bat_v", stat.bat_v, 2.0, 4.0)
    if stat.dose_mcg_day is not None and stat.dose_mcg_day <= 0:
        raise ProtocolViolation(f"dose_mcg_day {stat.dose_mcg_day} is not > 0")
    _check_range("conc_mcg_ml", stat.conc_mcg_ml, 1.0, 3000.0)


def _check_evt(msg: Any) -> None:
    evt: Evt = msg
    _check_seq(evt)
    if evt.kind == "RESET" and evt.detail is not None:
        raise ProtocolViolation("EVT RESET carries no detail")


def _check_stream(msg: Any) -> None:
    interval = msg.interval_s
    if interval != 0:
        _check_range("STREAM interval", interval, 1, 3600)


def _no_check(msg: Any) -> None:
    return None


@dataclass(frozen=True, slots=True)
class _Schema:
    cls: type[Any]
    fields: tuple[_Field, ...]
    check: Callable[[Any], None] = _no_check
    optional_tail: int = 0  # how many trailing fields may be left off entirely
    rest_is_text: bool = False  # last field takes the remaining commas (ERR text)


_SCHEMAS: dict[str, _Schema] = {
    "HELLO": _Schema(
        Hello,
        (_INTEGER, _TEXT_F, _TEXT_F, _TEXT_F, _TEXT_F, _optional(_INTEGER)),
    ),
    "STAT": _Schema(
        Stat,
        (
            _INTEGER,
            _PUMP,
            _optional(_TIME_F),
            *[_optional(_DECIMAL_F)] * 3,
            _optional(_INTEGER),
            *[_optional(_DECIMAL_F)] * 3,
            _Field(_parse_flags, _format_flags, optional=True),
        ),
        check=_check_stat,
    ),
    "ALRM": _Schema(
        Alrm,
        (
            _INTEGER,
            _PUMP,
            _optional(_TIME_F),
            _Field(_choice(ALARM_CODES), str),
            _Field(_choice(ALARM_ACTIONS), str),
        ),
        check=_check_seq,
    ),
    "EVT": _Schema(
        Evt,
        (
            _INTEGER,
            _PUMP,
            _optional(_TIME_F),
            _Field(_choice(EVENT_KINDS), str),
            _optional(_DECIMAL_F),
        ),
        check=_check_evt,
    ),
    "OK": _Schema(Ok, (_TEXT_F,)),
    "ERR": _Schema(Err, (_TEXT_F, _Field(_choice(ERROR_CODES), str), _TEXT_F), rest_is_text=True),
    "ID": _Schema(IdCommand, ()),
    "POLL": _Schema(PollCommand, (_PUMP,), optional_tail=1),
    "STREAM": _Schema(StreamCommand, (_INTEGER,), check=_check_stream),
    "TIME": _Schema(TimeCommand, (_TIME_F,)),
}

DEVICE_TYPES = frozenset({"HELLO", "STAT", "ALRM", "EVT", "OK", "ERR"})
HOST_TYPES = frozenset({"ID", "POLL", "STREAM", "TIME"})


def parse_body(body: str, accepted_types: frozenset[str]) -> Message:
    """Parse a BODY whose CRC already matched. Raises ProtocolViolation."""
    parts = body.split(",")
    kind = parts[0]
    if kind not in accepted_types:
        raise ProtocolViolation(f"unknown message type {kind!r}")
    schema = _SCHEMAS[kind]
    values = parts[1:]
    expected = len(schema.fields)
    if schema.rest_is_text and len(values) > expected:
        values = [*values[: expected - 1], ",".join(values[expected - 1 :])]
    if not expected - schema.optional_tail <= len(values) <= expected:
        raise ProtocolViolation(f"{kind} has {len(values)} fields, expected {expected}")
    parsed: list[Any] = []
    for spec, text in zip(schema.fields, values, strict=False):
        # An empty field is unknown where the spec allows it; elsewhere the
        # field's own parser rejects "" (text fields may be empty).
        parsed.append(None if text == "" and spec.optional else spec.parse(text))
    msg = schema.cls(*parsed)
    schema.check(msg)
    return msg  # type: ignore[no-any-return]


def format_body(msg: Message) -> str:
    """The BODY text of a message. Raises ValueError for a message the spec forbids."""
    schema = _SCHEMAS[msg.TYPE]
    out = [msg.TYPE]
    for spec, field in zip(schema.fields, fields(msg), strict=True):
        value = getattr(msg, field.name)
        if value is None:
            if schema.optional_tail and field is fields(msg)[-1]:
                break
            if not spec.optional:
                raise ValueError(f"{msg.TYPE}.{field.name} may not be unknown")
            out.append("")
        else:
            out.append(spec.format(value))
    try:
        schema.check(msg)
    except ProtocolViolation as exc:
        raise ValueError(str(exc)) from exc
    return ",".join(out)
