"""Commands from the broker, validated at the boundary.

Every payload on ``cmd/ack`` becomes either an ``AckCommand`` or a
``CommandResult`` with ``ok: false`` and a reason; nothing invalid reaches
the engine.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from gateway.contract import AckCommand, CommandResult
from gateway.mqtt_link import MAX_COMMAND_BYTES


def parse_ack(payload: bytes) -> AckCommand | CommandResult:
    def reject(error: str) -> CommandResult:
        return CommandResult(ok=False, command="ack", error=error)

    if len(payload) > MAX_COMMAND_BYTES:
        return reject(f"payload of {len(payload)} bytes exceeds {MAX_COMMAND_BYTES}")
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        return reject(f"malformed JSON: {type(exc).__name__}: {exc}")
    if not isinstance(data, dict):
        return reject("payload must be a JSON object")
    try:
        return AckCommand.model_validate(data)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            field = ".".join(str(p) for p in e["loc"]) or "payload"
            text = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
            problems.append(f"{field}: {text}")
        result = reject("; ".join(problems))
        alert_id = data.get("alert_id")
        return (
            result.model_copy(update={"alert_id": alert_id})
            if isinstance(alert_id, str)
            else result
        )
