"""The machine-readable MQTT contract in ``docs/contract/``, generated from ``gateway.contract``.

One JSON Schema per JSON payload (``payload_schemas()``, draft 2020-12) and an
AsyncAPI 3.0 document with the topics, their parameters, retained flags and
QoS. Nothing here is written by hand, so the files cannot drift from what the
daemon publishes; ``tests/test_contract.py`` fails when they are stale.

    python -m gateway.contract_docs --write   # regenerate docs/contract/
    python -m gateway.contract_docs --check   # exit 1 if a file is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

from gateway.contract import (
    GATEWAY_PUMP,
    AckCommand,
    Alert,
    AlertState,
    AlertType,
    BrokerStatus,
    CommandResult,
    Counters,
    Event,
    EventKind,
    Info,
    OutboxStatus,
    Problems,
    ProgrammerIdentity,
    PumpState,
    Severity,
    payload_schemas,
)

CONTRACT_DIR = Path(__file__).resolve().parent.parent / "docs" / "contract"
REGENERATE = "python -m gateway.contract_docs --write"
ASYNCAPI_FILE = "asyncapi.yaml"
ID_PREFIX = "urn:pumpgw:contract:"
# AsyncAPI tools must understand draft-07; the schemas declare 2020-12 and use
# only keywords that mean the same in both (tests/test_contract.py checks it).
SCHEMA_FORMAT = "application/schema+json;version=draft-07"
QOS = 1
STATUS_VALUES = ("online", "offline")


def schema_file(role: str) -> str:
    """``cmd_ack`` -> ``cmd-ack.schema.json``."""
    return f"{role.replace('_', '-')}.schema.json"


def schema_id(role: str) -> str:
    return ID_PREFIX + role.replace("_", "-")


def contract_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every payload role, with its ``$id``, ``$schema`` first."""
    out: dict[str, dict[str, Any]] = {}
    for role, schema in payload_schemas().items():
        rest = {k: v for k, v in schema.items() if k != "$schema"}
        out[role] = {"$schema": schema["$schema"], "$id": schema_id(role), **rest}
    return out


# --- AsyncAPI -------------------------------------------------------------------------

_AT = datetime(2026, 11, 30, 8, 0, 0, 120000, tzinfo=UTC)


def _examples() -> dict[str, Any]:
    """One example payload per role, built with the models so it is valid by construction."""
    alert = Alert(
        alert_id="01M8NQFJ004CGAETXH215VGQN2",
        pump_id="PMP-0001",
        type=AlertType.RESERVOIR_LOW,
        severity=Severity.CRITICAL,
        state=AlertState.ACTIVE,
        message="Reservoir 1.9 mL (critical at 2 mL)",
        value=1.9,
        threshold=2.0,
        raised_at=datetime(2026, 11, 29, 20, 0, tzinfo=UTC),
        updated_at=_AT,
    )
    models = {
        "info": Info(
            gateway_id="bed-12",
            version="0.1.0",
            started_at=datetime(2026, 11, 30, 7, 0, 0, 120000, tzinfo=UTC),
            link="up",
            programmer=ProgrammerIdentity(
                vendor="ACME", model="ITP-200", serial="PRG00042", firmware="2.3.1", protocol=1
            ),
            counters=Counters(frames_ok=120),
            broker=BrokerStatus(connected=True, last_error=None, disconnects=0),
            outbox=OutboxStatus(pending=0, bytes=0, over_limit=False, error=None),
        ),
        "state": PumpState(
            pump_id="PMP-0001",
            label="Bed 12",
            seq=17,
            device_time=datetime(2026, 11, 30, 8, 0, tzinfo=UTC),
            received_at=_AT,
            reservoir_ml=12.4,
            capacity_ml=20.0,
            low_reservoir_alarm_ml=2.0,
            battery_pct=81,
            battery_v=3.01,
            dose_mcg_per_day=300.0,
            concentration_mcg_per_ml=500.0,
            flow_ml_per_day=0.6,
            drain_ml_per_day=None,
            days_to_low_reservoir_alarm=17.3,
            days_to_empty=20.7,
            refill_due=datetime(2026, 12, 17, 15, 12, tzinfo=UTC),
            flags=[],
            stale=False,
        ),
        "alert": alert,
        "problems": Problems.of("PMP-0001", [AlertType.RESERVOIR_LOW, AlertType.REFILL_DUE]),
        "event": Event(
            event_id="01M8NQFJ004CGAETXH215VGQN3",
            at=_AT,
            kind=EventKind.ALERT_ESCALATED,
            pump_id="PMP-0001",
            alert=alert,
        ),
        "cmd_ack": AckCommand(
            alert_id="01M8NQFJ004CGAETXH215VGQN2", by="nurse-jane", note="called the patient"
        ),
        "cmd_result": CommandResult(ok=True, command="ack", alert_id="01M8NQFJ004CGAETXH215VGQN2"),
    }
    return {role: json.loads(model.to_json()) for role, model in models.items()}


def _param(description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, **extra}


_PARAMETERS: dict[str, dict[str, Any]] = {
    "prefix": _param(
        "`mqtt.topic_prefix` of the gateway config: levels of `A-Za-z0-9_.-` separated by `/`.",
        default="pumpgw",
    ),
    "gateway": _param(
        "`gateway.id` of the gateway config (default: the host name); `A-Za-z0-9_.-`.",
        examples=["bed-12"],
    ),
    "pump": _param(
        "The pump's serial number, as in the payload's `pump_id`. Gateway-wide alerts "
        f"(`link_lost`) and their problems use `{GATEWAY_PUMP}`.",
        examples=["PMP-0001", GATEWAY_PUMP],
        location="$message.payload#/pump_id",
    ),
    "type": _param(
        "The alert type, as in the payload's `type`.",
        enum=[t.value for t in AlertType],
        location="$message.payload#/type",
    ),
}


class _Channel(NamedTuple):
    address: str  # under {prefix}/{gateway}/
    role: str | None  # the payload role (``payload_schemas()``); None: plain-text status
    retained: bool
    message: str  # message id, also the example's name
    title: str
    description: str


_CHANNELS: dict[str, _Channel] = {
    "status": _Channel(
        "status",
        None,
        True,
        "status",
        "Gateway status",
        "`online` (retained) on every connection to the broker; `offline` on a clean "
        "shutdown, and the same retained `offline` as the Last Will when the gateway vanishes.",
    ),
    "info": _Channel(
        "info",
        "info",
        True,
        "info",
        "Gateway info",
        "Gateway and programmer identity, link state, counters, broker and outbox status. "
        "Published on connect, when the link goes up or down, and when counters change "
        "(at most every `mqtt.info_interval_s`).",
    ),
    "state": _Channel(
        "pumps/{pump}/state",
        "state",
        True,
        "state",
        "Pump state",
        "Latest telemetry of one pump and what was derived from it: one message per valid "
        "STAT, republished with `stale: true` when telemetry stops.",
    ),
    "alert": _Channel(
        "pumps/{pump}/alerts/{type}",
        "alert",
        True,
        "alert",
        "Alert",
        "Current state of one alert of one pump, so a dashboard that connects late sees "
        "every active alert. A cleared alert stays retained with `state: cleared`.",
    ),
    "problems": _Channel(
        "pumps/{pump}/problems",
        "problems",
        True,
        "problems",
        "Pump problems",
        "Which alert types of one pump are open now: one flag per alert type, true while "
        "an alert of that type is active or acknowledged. Exists from the moment the pump "
        "is announced, so a consumer can tell 'no problem' from 'not known yet'. Published "
        "only with Home Assistant discovery enabled (`[homeassistant] enabled = true`), "
        "when the pump is announced and whenever its alerts change; cleared (an empty "
        "retained message) when the pump is removed or discovery is turned off.",
    ),
    "events": _Channel(
        "events",
        "event",
        False,
        "event",
        "Event",
        "Every alert transition and pump event, in order. Each has a unique `event_id`: a "
        "consumer that sees an id twice (QoS 1 redelivery) drops the copy.",
    ),
    "cmdAck": _Channel(
        "cmd/ack",
        "cmd_ack",
        False,
        "cmdAck",
        "Acknowledge an alert",
        "The gateway subscribes: acknowledge an alert. Publish it not retained. Every "
        "command is answered on `cmd/result`.",
    ),
    "cmdResult": _Channel(
        "cmd/result",
        "cmd_result",
        False,
        "cmdResult",
        "Command result",
        "The answer to every command, good or bad. Malformed JSON, a payload that is not an "
        "object or is over 4 KiB, unknown fields, a missing `by`, and an unknown or already "
        "cleared alert get `ok: false` with a reason and change nothing.",
    ),
}


def _operation_binding(retain: bool) -> dict[str, Any]:
    return {"mqtt": {"qos": QOS, "retain": retain, "bindingVersion": "0.2.0"}}


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the gateway, as a plain dict."""
    examples = _examples()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for channel_id, ch in _CHANNELS.items():
        address = "{prefix}/{gateway}/" + ch.address
        names = re.findall(r"\{(\w+)\}", address)
        message_ref = {"$ref": f"#/channels/{channel_id}/messages/{ch.message}"}
        channels[channel_id] = {
            "address": address,
            "title": ch.title,
            "description": ch.description,
            "parameters": {n: {"$ref": f"#/components/parameters/{n}"} for n in names},
            "messages": {ch.message: {"$ref": f"#/components/messages/{ch.message}"}},
        }
        message: dict[str, Any] = {"name": ch.message, "title": ch.title}
        if ch.role is None:
            message |= {
                "contentType": "text/plain",
                "payload": {"type": "string", "enum": list(STATUS_VALUES)},
                "examples": [{"name": value, "payload": value} for value in STATUS_VALUES],
            }
        else:
            message |= {
                "contentType": "application/json",
                "payload": {
                    "schemaFormat": SCHEMA_FORMAT,
                    "schema": {"$ref": f"./{schema_file(ch.role)}"},
                },
                "examples": [{"name": ch.message, "payload": examples[ch.role]}],
            }
        messages[ch.message] = message
        if ch.role == "cmd_ack":
            result = _CHANNELS["cmdResult"]
            operations["receiveAck"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "summary": "The gateway takes an acknowledgement and answers on cmd/result.",
                "messages": [message_ref],
                "bindings": _operation_binding(False),
                "reply": {
                    "channel": {"$ref": "#/channels/cmdResult"},
                    "messages": [{"$ref": f"#/channels/cmdResult/messages/{result.message}"}],
                },
            }
        else:
            retained = "retained" if ch.retained else "not retained"
            operations["send" + ch.message[0].upper() + ch.message[1:]] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "summary": f"The gateway publishes it at QoS {QOS}, {retained}.",
                "messages": [message_ref],
                "bindings": _operation_binding(ch.retained),
            }

    last_will = {
        "topic": "{prefix}/{gateway}/status",
        "qos": QOS,
        "message": "offline",
        "retain": True,
    }
    server_bindings = {
        "mqtt": {
            "cleanSession": True,
            "lastWill": last_will,
            "keepAlive": 30,
            "bindingVersion": "0.2.0",
        }
    }
    return {
        "asyncapi": "3.0.0",
        "id": ID_PREFIX + "asyncapi",
        "info": {
            "title": "pumpgw MQTT contract",
            "version": _package_version(),
            "description": (
                "What a clinic dashboard, a nurse-call bridge or another gateway can rely on: "
                "the topics, payloads, retained flags and QoS of one pumpgw gateway.\n\n"
                "Generated from the pydantic models in `gateway/contract.py` (the only models "
                f"the daemon publishes with) by `{REGENERATE}`; do not edit by hand. The prose "
                "contract is `docs/mqtt.md`.\n\n"
                "Payloads are UTF-8 JSON objects except `status` (plain text). Every field is "
                "always present; **an unknown value is `null`, never `0`**. Times are ISO 8601 "
                "UTC ending in `Z`, with milliseconds when the time has a fraction. Volumes in "
                "mL, doses in mcg/day. Everything is published and subscribed at QoS 1.\n\n"
                "The JSON Schemas declare draft 2020-12 and use only keywords that mean the "
                "same in draft-07, the schema format AsyncAPI tools must read."
            ),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "broker": {
                "host": "{host}:{port}",
                "protocol": "mqtt",
                "protocolVersion": "3.1.1",
                "description": "The broker of `mqtt.host` and `mqtt.port` in the gateway "
                "config. The gateway connects with MQTT 3.1.1, a clean session, client id "
                "`mqtt.client_id` (default `pumpgw-` + `gateway.id`), keep-alive "
                "`mqtt.keepalive_s` (30 s) and a retained `offline` on `status` as Last Will.",
                "variables": {
                    "host": {"default": "localhost"},
                    "port": {"default": "1883"},
                },
                "bindings": server_bindings,
            },
            "brokerTls": {
                "host": "{host}:{port}",
                "protocol": "secure-mqtt",
                "protocolVersion": "3.1.1",
                "description": "The same broker over TLS (`mqtt.tls = true`): the broker's "
                "certificate must name `host`; client certificates when the broker asks.",
                "variables": {
                    "host": {"default": "localhost"},
                    "port": {"default": "8883"},
                },
                "bindings": server_bindings,
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "parameters": _PARAMETERS},
    }


def _package_version() -> str:
    try:
        return version("pumpgw")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


# --- YAML (a small emitter, so generating the contract needs no YAML library) ---------

_PLAIN = re.compile(r"[A-Za-z_$][A-Za-z0-9_$.\-/+]*")
_NOT_PLAIN = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _yaml_key(key: str) -> str:
    return key if _PLAIN.fullmatch(key) and key.lower() not in _NOT_PLAIN else json.dumps(key)


def _yaml_scalar(value: Any, indent: int) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if not isinstance(value, str):
        raise TypeError(f"cannot write {type(value).__name__} as YAML")
    if "\n" in value and not value.startswith(" ") and not value.endswith("\n"):
        pad = " " * indent
        lines = [pad + line if line else "" for line in value.split("\n")]
        return "|-\n" + "\n".join(lines)
    if _PLAIN.fullmatch(value) and value.lower() not in _NOT_PLAIN:
        return value
    return json.dumps(value, ensure_ascii=False)


def _yaml_lines(value: Any, indent: int) -> list[str]:
    """Block-style lines of a dict or list at ``indent`` spaces."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        items: list[tuple[str, Any]] = [(pad + _yaml_key(k) + ":", v) for k, v in value.items()]
    else:
        items = [(pad + "-", v) for v in value]
    for head, item in items:
        if isinstance(item, dict | list) and item:
            if isinstance(value, list) and isinstance(item, dict):
                # "- key: value" with the rest of the mapping aligned under the key
                nested = _yaml_lines(item, indent + 2)
                lines.append(head + " " + nested[0].lstrip())
                lines += nested[1:]
            else:
                lines.append(head)
                lines += _yaml_lines(item, indent + 2)
        elif isinstance(item, dict | list):
            lines.append(head + (" {}" if isinstance(item, dict) else " []"))
        else:
            lines.append(head + " " + _yaml_scalar(item, indent + 2))
    return lines


def to_yaml(value: dict[str, Any]) -> str:
    return "\n".join(_yaml_lines(value, 0)) + "\n"


# --- files --------------------------------------------------------------------------


def _json_text(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def contract_files() -> dict[str, str]:
    """Every file of ``docs/contract/`` by name, with its exact text."""
    files = {schema_file(role): _json_text(s) for role, s in contract_schemas().items()}
    header = (
        f"# Generated by `{REGENERATE}` from gateway/contract.py; do not edit.\n"
        "# JSON Schemas of the payloads: the *.schema.json files beside this one.\n"
    )
    files[ASYNCAPI_FILE] = header + to_yaml(asyncapi_document())
    return files


def stale_files(directory: Path = CONTRACT_DIR) -> list[str]:
    """Names in ``directory`` that are missing, differ, or are no longer generated."""
    expected = contract_files()
    stale = [
        name
        for name, text in sorted(expected.items())
        if not (directory / name).is_file() or (directory / name).read_text() != text
    ]
    if directory.is_dir():  # the schema of a payload that is gone
        stale += sorted(
            p.name
            for p in directory.iterdir()
            if p.name.endswith(".schema.json") and p.name not in expected
        )
    return stale


def write_files(directory: Path = CONTRACT_DIR) -> list[str]:
    """Write every contract file, remove ones no longer generated; the names changed."""
    changed = stale_files(directory)
    directory.mkdir(parents=True, exist_ok=True)
    expected = contract_files()
    for name in changed:
        path = directory / name
        if name in expected:
            path.write_text(expected[name])
        elif path.is_file():
            path.unlink()
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.contract_docs",
        description="Generate or check the MQTT contract files (JSON Schema, AsyncAPI).",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="regenerate the files")
    action.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    parser.add_argument("--dir", type=Path, default=CONTRACT_DIR, help=f"default: {CONTRACT_DIR}")
    args = parser.parse_args(argv)
    if args.write:
        changed = write_files(args.dir)
        for name in changed:
            done = "wrote" if (args.dir / name).exists() else "removed"
            print(f"{done} {args.dir / name}")
        if not changed:
            print(f"{args.dir}: up to date")
        return 0
    stale = stale_files(args.dir)
    for name in stale:
        print(f"stale: {args.dir / name}", file=sys.stderr)
    if stale:
        print(f"regenerate with: {REGENERATE}", file=sys.stderr)
        return 1
    print(f"{args.dir}: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
