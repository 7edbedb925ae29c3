"""The machine-readable MQTT contract in docs/contract/: current, well-formed, and obeyed.

* The committed JSON Schemas and AsyncAPI document are exactly what
  ``gateway.contract_docs`` generates from the pydantic models now.
* They are valid (draft 2020-12, and draft-07 as the AsyncAPI document says),
  every reference resolves, and they agree with the topic table of docs/mqtt.md.
* End to end: every message the real daemon publishes while simulated pumps
  run through several scenarios, with good and bad commands, matches a channel
  of the AsyncAPI document and validates against that channel's schema.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from broker_fixtures import Received, Subscriber, publish
from jsonschema import Draft7Validator, Draft202012Validator, FormatChecker
from jsonschema.exceptions import best_match
from processes import Process, gateway, gateway_config, simulator

from gateway import contract_docs
from gateway.broker import BrokerEndpoint
from gateway.contract import PAYLOAD_MODELS, AlertType, EventKind, Problems

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "docs" / "contract"
REGENERATE = f"run `{contract_docs.REGENERATE}` (from {ROOT}) and commit docs/contract/"

FORMATS = FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _is_utc_time(value: object) -> bool:
    """A real instant in UTC; the schemas' pattern pins the exact spelling."""
    if not isinstance(value, str):
        return True
    return datetime.fromisoformat(value.replace("Z", "+00:00")).utcoffset() is not None


def schema_files() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(CONTRACT.glob("*.schema.json"))}


def asyncapi() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((CONTRACT / contract_docs.ASYNCAPI_FILE).read_text())
    return doc


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=FORMATS)


def refs(value: Any) -> Iterator[tuple[dict[str, Any], str]]:
    """Every ``$ref`` object in a document, with its target."""
    if isinstance(value, dict):
        if isinstance(value.get("$ref"), str):
            yield value, value["$ref"]
        for item in value.values():
            yield from refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


def pointer(doc: Any, ref: str) -> Any:
    """The target of a local ``#/a/b`` reference (raises KeyError if there is none)."""
    assert ref.startswith("#/"), ref
    for part in ref[2:].split("/"):
        doc = doc[part.replace("~1", "/").replace("~0", "~")]
    return doc


# --- the committed files ------------------------------------------------------------


def test_committed_contract_files_are_current() -> None:
    stale = contract_docs.stale_files(CONTRACT)
    assert not stale, (
        f"docs/contract/ is stale ({', '.join(stale)}): the pydantic models in "
        f"gateway/contract.py or the generator changed. {REGENERATE}."
    )
    # Generating is deterministic: the same text twice, so the check cannot flap.
    assert contract_docs.contract_files() == contract_docs.contract_files()


def test_one_schema_per_payload_role() -> None:
    expected = {contract_docs.schema_file(role) for role in PAYLOAD_MODELS}
    assert set(schema_files()) == expected
    assert {"info", "state", "alert", "problems", "event", "cmd_ack", "cmd_result"} == set(
        PAYLOAD_MODELS
    )


def test_problems_has_one_flag_per_alert_type() -> None:
    fields = list(Problems.model_fields)
    assert fields[0] == "pump_id"
    assert set(fields[1:]) == {t.value for t in AlertType}
    flags = Problems.of("PMP-0001", [AlertType.PUMP_FAULT, AlertType.PUMP_FAULT]).model_dump()
    assert {k for k, v in flags.items() if v is True} == {"pump_fault"}
    assert Problems.of("PMP-0001", []).model_dump() == {
        "pump_id": "PMP-0001",
        **{t.value: False for t in AlertType},
    }


@pytest.mark.parametrize("name", sorted(schema_files()))
def test_schema_is_valid_2020_12_and_draft_07(name: str) -> None:
    schema = schema_files()[name]
    assert list(schema)[:2] == ["$schema", "$id"]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == contract_docs.schema_id(name.removesuffix(".schema.json"))
    Draft202012Validator.check_schema(schema)
    # The AsyncAPI document declares draft-07 (what its tools must read): a $ref with
    # sibling keywords would mean something else there, and refs must stay in the file.
    Draft7Validator.check_schema(schema)
    for obj, target in refs(schema):
        assert set(obj) == {"$ref"}, f"{name}: $ref with siblings: {obj}"
        pointer(schema, target)
    assert schema["additionalProperties"] is False
    if name != "cmd-ack.schema.json":
        # The daemon writes every field, defaults and nulls included.
        assert schema["required"] == list(schema["properties"])


def test_schemas_reject_what_the_daemon_never_writes() -> None:
    examples = {
        m["name"]: m["examples"][0]["payload"]
        for m in asyncapi()["components"]["messages"].values()
    }
    state = validator(schema_files()["state.schema.json"])
    good = examples["state"]
    assert state.is_valid(good)
    assert not state.is_valid({**good, "reservoir_ml": "12.4"})
    assert not state.is_valid({**good, "color": "red"})
    assert not state.is_valid({k: v for k, v in good.items() if k != "drain_ml_per_day"})
    for time in ["2026-11-30T08:00:00+00:00", "2026-11-30 08:00:00Z", "2026-11-30T08:00:00.1Z"]:
        assert not state.is_valid({**good, "received_at": time}), time
    assert not state.is_valid({**good, "received_at": "2026-02-30T08:00:00Z"})  # no such day

    ack = validator(schema_files()["cmd-ack.schema.json"])
    assert ack.is_valid({"alert_id": "01M8", "by": "nurse-jane"})  # note is optional
    assert not ack.is_valid({"alert_id": "01M8"})
    assert not ack.is_valid({"alert_id": "01M8", "by": ""})
    assert not ack.is_valid({"alert_id": "01M8", "by": "x", "color": "red"})

    event = validator(schema_files()["event.schema.json"])
    assert event.is_valid(examples["event"])
    assert not event.is_valid({**examples["event"], "kind": "alert_exploded"})


# --- the AsyncAPI document ----------------------------------------------------------


def test_asyncapi_yaml_is_the_generated_document() -> None:
    """The hand-rolled YAML emitter writes what a YAML parser reads back."""
    assert asyncapi() == contract_docs.asyncapi_document()
    assert asyncapi()["asyncapi"] == "3.0.0"


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "",
        "yes",
        "No",
        "null",
        "~",
        "1.0",
        "0x1F",
        "3",
        "a: b",
        "a #b",
        "#x",
        "- x",
        "{p}/{gw}",
        "'q'",
        '"dq"',
        "tab\there",
        "two\nlines",
        "trailing\n",
        " lead\nx",
        "ünï",
        "back\\slash",
        "$ref",
        "@x",
        "%x",
    ],
)
def test_yaml_emitter_round_trips_awkward_strings(value: str) -> None:
    doc = {"k": value, value or "e": [value, {"n": value}], "list": [], "map": {}, "x": None}
    assert yaml.safe_load(contract_docs.to_yaml(doc)) == doc


def test_asyncapi_references_resolve() -> None:
    doc = asyncapi()
    seen_files = set()
    for _, target in refs(doc):
        if target.startswith("#/"):
            pointer(doc, target)
        else:
            assert (CONTRACT / target).is_file(), target
            seen_files.add(Path(target).name)
    assert seen_files == set(schema_files())


def test_asyncapi_channels_operations_and_parameters() -> None:
    doc = asyncapi()
    for channel_id, channel in doc["channels"].items():
        names = re.findall(r"\{(\w+)\}", channel["address"])
        assert list(channel["parameters"]) == names, channel_id
        for name in names:
            assert name in doc["components"]["parameters"]
    assert doc["components"]["parameters"]["type"]["enum"] == [t.value for t in AlertType]
    ops = doc["operations"]
    assert {pointer(doc, op["channel"]["$ref"])["address"] for op in ops.values()} == {
        ch["address"] for ch in doc["channels"].values()
    }
    for name, op in ops.items():
        assert op["bindings"]["mqtt"]["qos"] == 1, name
        for message in op["messages"]:
            pointer(doc, message["$ref"])
    assert [n for n, op in ops.items() if op["action"] == "receive"] == ["receiveAck"]
    for server in doc["servers"].values():
        will = server["bindings"]["mqtt"]["lastWill"]
        assert will == {
            "topic": doc["channels"]["status"]["address"],
            "qos": 1,
            "message": "offline",
            "retain": True,
        }
    # Every example validates against its message's schema.
    for message in doc["components"]["messages"].values():
        schema = message_schema(message)
        for example in message["examples"]:
            validator(schema).validate(example["payload"])


def test_asyncapi_agrees_with_the_topic_table_of_docs_mqtt_md() -> None:
    """docs/mqtt.md: | `{p}/{gw}/...` | retained | QoS | what |."""
    rows = re.findall(
        r"^\| `(\{p\}/\{gw\}/[^`]+)` \| (yes|no|-) \| (\d) \|",
        (ROOT / "docs/mqtt.md").read_text(),
        re.M,
    )
    assert len(rows) == 8, rows
    table = {
        topic.replace("{p}", "{prefix}").replace("{gw}", "{gateway}"): (retained, int(qos))
        for topic, retained, qos in rows
    }
    doc = asyncapi()
    assert set(table) == {ch["address"] for ch in doc["channels"].values()}
    for op in doc["operations"].values():
        address = pointer(doc, op["channel"]["$ref"])["address"]
        retained, qos = table[address]
        assert op["bindings"]["mqtt"]["qos"] == qos, address
        if op["action"] == "send":
            assert op["bindings"]["mqtt"]["retain"] == (retained == "yes"), address


def test_check_and_write_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "contract"
    assert contract_docs.main(["--check", "--dir", str(target)]) == 1
    assert contract_docs.REGENERATE in capsys.readouterr().err
    (target).mkdir()
    (target / "gone.schema.json").write_text("{}")
    assert contract_docs.main(["--write", "--dir", str(target)]) == 0
    assert not (target / "gone.schema.json").exists()
    assert contract_docs.main(["--check", "--dir", str(target)]) == 0
    assert {p.name: p.read_text() for p in target.iterdir()} == contract_docs.contract_files()


# --- end to end: what the daemon publishes obeys the contract -----------------------

PREFIX, GATEWAY = "pumpgw", "contract"
BASE = f"{PREFIX}/{GATEWAY}"
DEADLINE_S = 60.0
PUMPS = {
    "PMP-0001": "low-reservoir",
    "PMP-0002": "motor-stall",
    "PMP-0003": "noisy-line",
    "PMP-0004": "refill",
    "PMP-0005": "wrong-concentration",
    "PMP-0006": "battery-eri-eos",
    "PMP-0007": "link-loss",
    "PMP-0008": "over-infusion",
}
# Concentrations other than the first syringe's are a wrong refill: dose_out_of_range.
# Home Assistant discovery on: the gateway publishes the `problems` topics too.
EXTRA_CONFIG = (
    '[pumps."PMP-0005"]\nallowed_concentrations = [500.0]\n[homeassistant]\nenabled = true\n'
)


def message_schema(message: dict[str, Any]) -> dict[str, Any]:
    payload = message["payload"]
    if "schemaFormat" not in payload:
        return dict(payload)  # status: an inline schema of the plain text
    assert payload["schemaFormat"] == contract_docs.SCHEMA_FORMAT
    target: str = payload["schema"]["$ref"]
    schema: dict[str, Any] = json.loads((CONTRACT / target).read_text())
    return schema


class Channel:
    """One channel of the committed AsyncAPI document, bound to this gateway's topics."""

    def __init__(self, doc: dict[str, Any], channel_id: str) -> None:
        self.id = channel_id
        channel = doc["channels"][channel_id]
        (message_ref,) = channel["messages"].values()
        self.message = pointer(doc, message_ref["$ref"])
        self.schema = message_schema(self.message)
        self.validators = [
            Draft202012Validator(self.schema, format_checker=FORMATS),
            Draft7Validator(self.schema, format_checker=FORMATS),
        ]
        self.json = self.message["contentType"] == "application/json"
        ops = [
            op for op in doc["operations"].values() if op["channel"]["$ref"].endswith(channel_id)
        ]
        (op,) = ops
        self.action = op["action"]
        self.retain = op["bindings"]["mqtt"]["retain"]
        self.locations: dict[str, str] = {}
        pattern = ""
        for part in re.split(r"(\{\w+\})", channel["address"]):
            name = part.strip("{}")
            if part == "{prefix}":
                pattern += re.escape(PREFIX)
            elif part == "{gateway}":
                pattern += re.escape(GATEWAY)
            elif part.startswith("{"):
                param = pointer(doc, channel["parameters"][name]["$ref"])
                values = param.get("enum")
                choice = "|".join(map(re.escape, values)) if values else "[^/]+"
                pattern += f"(?P<{name}>{choice})"
                if "location" in param:
                    self.locations[name] = param["location"].removeprefix("$message.payload#/")
            else:
                pattern += re.escape(part)
        self.topic = re.compile(pattern)

    def check(self, msg: Received) -> Any:
        """The decoded payload; fails unless it obeys this channel's schema and parameters."""
        payload: Any = msg.json() if self.json else msg.payload.decode()
        for v in self.validators:
            error = best_match(v.iter_errors(payload))
            assert error is None, (
                f"{msg.topic}: {type(v).__name__} of {self.id}: {error.message} at "
                f"{'/'.join(map(str, error.absolute_path))}\n{msg.payload!r}"
            )
        match = self.topic.fullmatch(msg.topic)
        assert match is not None
        for name, field in self.locations.items():
            assert payload[field] == match[name], (msg.topic, field, payload[field])
        return payload


def channels() -> list[Channel]:
    doc = asyncapi()
    return [Channel(doc, channel_id) for channel_id in doc["channels"]]


def channel_of(chans: list[Channel], topic: str) -> Channel:
    found = [c for c in chans if c.topic.fullmatch(topic)]
    assert len(found) == 1, f"{topic}: no channel of asyncapi.yaml (or several): {found}"
    return found[0]


def wait(sub: Subscriber, gw: Process, predicate: Any, what: str, start: int = 0) -> Received:
    try:
        return sub.wait_for(predicate, DEADLINE_S, start=start)
    except AssertionError as exc:
        raise AssertionError(f"{what}\n{exc}\n--- gateway log:\n{gw.log()[-4000:]}") from None


def event(kind: str, pump: str | None = None, alert_type: str | None = None) -> Any:
    def match(m: Received) -> bool:
        if m.topic != f"{BASE}/events":
            return False
        ev = m.json()
        alert = ev.get("alert") or {}
        return (
            ev.get("kind") == kind
            and (pump is None or ev.get("pump_id") == pump)
            and (alert_type is None or alert.get("type") == alert_type)
        )

    return match


def test_every_published_message_obeys_the_contract(
    tmp_path: Path, mosquitto: BrokerEndpoint, mqtt_client_factory: Any
) -> None:
    chans = channels()
    sim_args = ["--speed", "100000", "--seed", "7"]
    for pump_id, scenario in PUMPS.items():
        sim_args += ["--pump", f"{pump_id}={scenario}"]
    sent: list[tuple[bytes, bool]] = []  # our cmd/ack payloads, and whether the gateway takes it
    with (
        Subscriber(mosquitto, f"{BASE}/#") as sub,
        simulator(tmp_path, *sim_args) as (_sim, port),
    ):
        config = gateway_config(
            tmp_path, port=port, broker_port=mosquitto.port, gateway_id=GATEWAY, extra=EXTRA_CONFIG
        )
        with gateway(config) as gw:
            # Milestones of the scenarios: alert transitions and pump events of each kind.
            for what in [
                event("alert_raised", "PMP-0002", "pump_fault"),
                event("alert_escalated", "PMP-0001", "reservoir_low"),
                event("alert_escalated", "PMP-0006", "battery_low"),
                event("alert_raised", "PMP-0007", "telemetry_lost"),
                event("alert_cleared", "PMP-0007", "telemetry_lost"),
                event("refill", "PMP-0004"),
                event("refill", "PMP-0005"),
                event("alert_raised", "PMP-0005", "dose_out_of_range"),
                event("alert_raised", "PMP-0008", "flow_deviation"),
            ]:
                wait(sub, gw, what, "scenario milestone")
            fault = wait(sub, gw, event("alert_raised", "PMP-0002", "pump_fault"), "fault")
            alert_id = fault.json()["alert"]["alert_id"]

            client = mqtt_client_factory(mosquitto)
            for payload, accepted in [
                (b"{not json", False),
                (json.dumps({"alert_id": alert_id}).encode(), False),  # no `by`
                (json.dumps({"alert_id": alert_id, "by": "x", "color": "red"}).encode(), False),
                (json.dumps({"alert_id": "nope", "by": "nurse-jane"}).encode(), False),
                (
                    json.dumps({"alert_id": alert_id, "by": "nurse-jane", "note": "ok"}).encode(),
                    True,
                ),
            ]:
                start = len(sub)
                publish(client, f"{BASE}/cmd/ack", payload)
                result = wait(
                    sub, gw, lambda m: m.topic == f"{BASE}/cmd/result", "cmd/result", start
                ).json()
                assert result["ok"] is accepted, (payload, result)
                sent.append((payload, accepted))
            wait(sub, gw, event("alert_acknowledged", "PMP-0002", "pump_fault"), "ack event")

            # A dashboard connecting now gets the retained topics, and only those.
            retained_topics = {m.topic for m in sub.messages() if channel_of(chans, m.topic).retain}
            with Subscriber(mosquitto, f"{BASE}/#") as late:
                wait(
                    late,
                    gw,
                    lambda _: retained_topics <= {m.topic for m in late.messages() if m.retain},
                    f"retained copies of {sorted(retained_topics)}",
                )
                late_retained = [m for m in late.messages() if m.retain]

            assert gw.stop() == 0
            wait(sub, gw, lambda m: m.payload == b"offline", "status offline")
            wait(sub, gw, event("gateway_stopping"), "gateway_stopping event")

    ours = {payload for payload, _ in sent}
    seen: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    alert_types: set[str] = set()
    for msg in sub.messages():
        chan = channel_of(chans, msg.topic)
        seen[chan.id] += 1
        if chan.action == "receive":  # what we published on cmd/ack ourselves
            assert msg.payload in ours, msg
            continue
        payload = chan.check(msg)
        if chan.id == "status":
            assert msg.payload in (b"online", b"offline"), msg.payload
        if chan.id == "events":
            kinds[payload["kind"]] += 1
            # Not expressible in the schema: the alert_* kinds carry the alert.
            assert (payload["alert"] is not None) == payload["kind"].startswith("alert_"), payload
            if payload["alert"] is not None:
                alert_types.add(payload["alert"]["type"])
        if chan.id == "alert":
            alert_types.add(payload["type"])

    # cmd/ack: the schema takes what the gateway takes, except an unknown alert_id
    # (a fact of the moment, not of the payload's shape).
    ack = next(c for c in chans if c.id == "cmdAck")
    for payload, accepted in sent:
        try:
            shape_ok = ack.validators[0].is_valid(json.loads(payload))
        except ValueError:
            shape_ok = False
        assert shape_ok == (accepted or b'"nope"' in payload), payload

    assert {c.id for c in chans} == set(seen), f"channels never used: {seen}"
    assert sub.messages(f"{BASE}/status")[0].payload == b"online"
    assert sub.messages(f"{BASE}/status")[-1].payload == b"offline"
    assert {
        "alert_raised", "alert_escalated", "alert_acknowledged", "alert_cleared",
        "refill", "gateway_started", "gateway_stopping",
    } <= set(kinds), kinds  # fmt: skip
    assert set(kinds) <= {k.value for k in EventKind}
    assert len(alert_types) >= 6, alert_types

    for msg in late_retained:
        chan = channel_of(chans, msg.topic)
        assert chan.retain, f"{msg.topic} arrived retained but its channel is not retained"
        chan.check(msg)
    assert not [m for m in sub.messages() if m.retain], "a live message was marked retained"
    print(
        f"\ncontract e2e: {len(sub)} messages, by channel {dict(seen)}; "
        f"event kinds {dict(kinds)}; alert types {sorted(alert_types)}"
    )
