"""Deterministic, time-sortable ids (ULID text form) for alerts and events.

The engine is pure, so ids come from what it is given: the time, the
gateway id and a counter kept in the engine state. Two gateways, or one
gateway at two different counters, never produce the same id.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def make_id(at: datetime, gateway_id: str, counter: int) -> str:
    millis = int(at.timestamp() * 1000) & ((1 << 48) - 1)
    digest = hashlib.blake2b(f"{gateway_id}\x00{counter}".encode(), digest_size=10).digest()
    value = (millis << 80) | int.from_bytes(digest, "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))
