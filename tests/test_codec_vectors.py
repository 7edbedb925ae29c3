"""The shared PTP/1 test vectors, fed whole and byte by byte."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from drivers.ptp import Flag, Message, StreamDecoder, crc16, flag_names
from drivers.ptp.codec import FrameDiscarded, ProtocolError
from drivers.ptp.grammar import format_time

HERE = Path(__file__).parent
VECTORS = HERE / "vectors.jsonl"
SHARED_VECTORS = HERE.parent.parent / "shared" / "protocol" / "vectors.jsonl"
CASES = [json.loads(line) for line in VECTORS.read_text().splitlines() if line.strip()]


def as_vector_dict(message: Message) -> dict[str, Any]:
    """A message in the vectors' form: type first, flags by name, times as text."""
    out: dict[str, Any] = {"type": message.TYPE}
    for field in dataclasses.fields(message):
        value = getattr(message, field.name)
        if isinstance(value, Flag):
            value = flag_names(value)
        elif isinstance(value, datetime):
            value = format_time(value)
        out[field.name] = value
    return out


def decode(chunks: list[bytes]) -> tuple[list[dict[str, Any]], int]:
    decoder = StreamDecoder()
    messages: list[dict[str, Any]] = []
    errors = 0
    for chunk in chunks:
        for item in decoder.feed(chunk):
            if isinstance(item, FrameDiscarded | ProtocolError):
                errors += 1
            else:
                messages.append(as_vector_dict(item))
    counters = decoder.counters
    assert counters.frames_discarded + counters.protocol_errors == errors
    assert counters.frames_ok == len(messages)
    return messages, errors


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector_fed_whole(case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["hex"])
    assert decode([data]) == (case["messages"], case["errors"])


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector_fed_byte_by_byte(case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["hex"])
    assert decode([data[i : i + 1] for i in range(len(data))]) == (
        case["messages"],
        case["errors"],
    )


def test_crc_check_value() -> None:
    assert crc16(b"123456789") == 0x29B1


@pytest.mark.skipif(not SHARED_VECTORS.exists(), reason="no ../shared checkout beside the repo")
def test_vendored_vectors_match_shared_copy() -> None:
    assert VECTORS.read_bytes() == SHARED_VECTORS.read_bytes()
