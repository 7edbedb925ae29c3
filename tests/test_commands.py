"""parse_ack: every cmd/ack payload becomes an AckCommand or an ok:false CommandResult."""

from __future__ import annotations

import json

import pytest

from gateway.commands import parse_ack
from gateway.contract import AckCommand, CommandResult
from gateway.mqtt_link import MAX_COMMAND_BYTES

ALERT_ID = "01JDXYZ0000000000000000000"


def ack(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def rejected(payload: bytes) -> CommandResult:
    result = parse_ack(payload)
    assert isinstance(result, CommandResult), result
    assert result.ok is False
    assert result.command == "ack"
    assert result.error
    return result


# --- valid -------------------------------------------------------------------------


def test_valid_ack() -> None:
    result = parse_ack(ack(alert_id=ALERT_ID, by="nurse-jane", note="refill booked"))
    assert result == AckCommand(alert_id=ALERT_ID, by="nurse-jane", note="refill booked")


@pytest.mark.parametrize(
    "payload",
    [
        ack(alert_id=ALERT_ID, by="nurse-jane"),
        ack(alert_id=ALERT_ID, by="nurse-jane", note=None),
        ack(by="nurse-jane", alert_id=ALERT_ID),
        b'  {"alert_id": "%s", "by": "nurse-jane"}\n' % ALERT_ID.encode(),
    ],
)
def test_note_is_optional(payload: bytes) -> None:
    assert parse_ack(payload) == AckCommand(alert_id=ALERT_ID, by="nurse-jane", note=None)


def test_utf8_text() -> None:
    result = parse_ack(ack(alert_id=ALERT_ID, by="infirmière-zoé", note="ok ✓"))
    assert isinstance(result, AckCommand)
    assert result.by == "infirmière-zoé"


# --- malformed -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{",
        b"{'alert_id': 'x', 'by': 'y'}",
        b'{"alert_id": "x", "by": "y",}',
        b"alert_id=x&by=y",
        b"\xff\xfe\x00garbage",
    ],
)
def test_malformed_json(payload: bytes) -> None:
    assert rejected(payload).error.startswith("malformed JSON")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "payload", [b"[]", b'["alert_id", "by"]', b'"ack"', b"42", b"null", b"true", b"NaN"]
)
def test_not_an_object(payload: bytes) -> None:
    result = rejected(payload)
    assert result.error == "payload must be a JSON object"
    assert result.alert_id is None


def test_unknown_field() -> None:
    result = rejected(ack(alert_id=ALERT_ID, by="nurse-jane", urgency="high"))
    assert result.error == "urgency: unknown field"
    assert result.alert_id == ALERT_ID  # so the answer can be matched to the alert


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (ack(alert_id=ALERT_ID), "by"),
        (ack(alert_id=ALERT_ID, by=None), "by"),
        (ack(alert_id=ALERT_ID, by=""), "by"),
        (ack(alert_id=ALERT_ID, by=7), "by"),
        (ack(alert_id=ALERT_ID, by="x" * 65), "by"),
        (ack(by="nurse-jane"), "alert_id"),
        (ack(alert_id="", by="nurse-jane"), "alert_id"),
        (ack(alert_id=ALERT_ID, by="nurse-jane", note="x" * 501), "note"),
        (ack(alert_id=ALERT_ID, by="nurse-jane", note=5), "note"),
    ],
)
def test_invalid_field(payload: bytes, field: str) -> None:
    error = rejected(payload).error
    assert error is not None
    assert error.startswith(f"{field}: ")


def test_missing_by_says_so() -> None:
    result = rejected(ack(alert_id=ALERT_ID))
    assert result.error == "by: Field required"
    assert result.alert_id == ALERT_ID


def test_all_problems_are_listed() -> None:
    error = rejected(ack(alert_id=5, extra=1)).error
    assert error is not None
    assert "alert_id: " in error
    assert "by: Field required" in error
    assert "extra: unknown field" in error


def test_non_string_alert_id_is_not_echoed() -> None:
    assert rejected(ack(alert_id=["x"], by="nurse-jane")).alert_id is None


# --- size ---------------------------------------------------------------------------------


def _padded(size: int) -> bytes:
    core = ack(alert_id=ALERT_ID, by="nurse-jane")
    return core + b" " * (size - len(core))  # trailing whitespace is valid JSON


def test_payload_at_the_size_limit_is_accepted() -> None:
    assert isinstance(parse_ack(_padded(MAX_COMMAND_BYTES)), AckCommand)


def test_oversized_payload() -> None:
    result = rejected(_padded(MAX_COMMAND_BYTES + 1))
    assert result.error == f"payload of {MAX_COMMAND_BYTES + 1} bytes exceeds {MAX_COMMAND_BYTES}"


def test_huge_payload_is_rejected_before_parsing() -> None:
    result = rejected(b"{" * 1_000_000)
    assert "exceeds" in result.error  # type: ignore[operator]


@pytest.mark.parametrize("payload", [b"[" * 2000, b"[" * MAX_COMMAND_BYTES])
def test_deeply_nested_json_is_rejected_not_raised(payload: bytes) -> None:
    assert len(payload) <= MAX_COMMAND_BYTES
    rejected(payload)


def test_result_serializes_to_the_contract_shape() -> None:
    result = rejected(b"{")
    assert set(result.model_dump(mode="json")) == {"ok", "command", "alert_id", "error"}
