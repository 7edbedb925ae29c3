"""The MQTT contract: topic names and one pydantic model per payload.

The daemon publishes with these models and nothing else, so the JSON Schema
generated from them (``payload_schemas()``) is the contract dashboards read.
Unknown values are ``None`` (JSON ``null``), never 0.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

GATEWAY_PUMP = "_gateway"  # the {pump} of gateway-wide alerts (link_lost)


def format_utc(value: datetime) -> str:
    """ISO 8601 UTC with Z; milliseconds only when the time has a fraction."""
    value = value.astimezone(UTC)
    if value.microsecond:
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


UtcTime = Annotated[datetime, PlainSerializer(format_utc, return_type=str)]


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class Severity(enum.StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return 2 if self is Severity.CRITICAL else 1


class AlertType(enum.StrEnum):
    RESERVOIR_LOW = "reservoir_low"
    REFILL_DUE = "refill_due"
    BATTERY_LOW = "battery_low"
    PUMP_FAULT = "pump_fault"
    TELEMETRY_LOST = "telemetry_lost"
    LINK_LOST = "link_lost"
    DOSE_OUT_OF_RANGE = "dose_out_of_range"
    FLOW_DEVIATION = "flow_deviation"
    DATA_INVALID = "data_invalid"


class AlertState(enum.StrEnum):
    ACTIVE = "active"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"


class Alert(_Payload):
    """``{p}/{gw}/pumps/{pump}/alerts/{type}``: one alert of one pump, retained."""

    alert_id: str
    pump_id: str
    type: AlertType
    severity: Severity
    state: AlertState
    message: str
    value: float | None
    threshold: float | None
    raised_at: UtcTime
    updated_at: UtcTime
    acknowledged_by: str | None = None
    acknowledged_at: UtcTime | None = None


class EventKind(enum.StrEnum):
    ALERT_RAISED = "alert_raised"
    ALERT_ESCALATED = "alert_escalated"
    ALERT_ACKNOWLEDGED = "alert_acknowledged"
    ALERT_CLEARED = "alert_cleared"
    ALERT_REMINDER = "alert_reminder"
    REFILL = "refill"
    PROGRAM_CHANGE = "program_change"
    PROGRAMMER_RESET = "programmer_reset"
    LINK_UP = "link_up"
    LINK_DOWN = "link_down"
    GATEWAY_STARTED = "gateway_started"
    GATEWAY_STOPPING = "gateway_stopping"


class Event(_Payload):
    """``{p}/{gw}/events``: every alert transition and pump event, in order.

    ``alert`` is set for the ``alert_*`` kinds; ``detail`` carries the facts
    of the other kinds (e.g. the volume after a refill). ``pump_id`` is null
    for gateway-wide events.
    """

    event_id: str
    at: UtcTime
    kind: EventKind
    pump_id: str | None
    alert: Alert | None = None
    detail: dict[str, Any] | None = None


class PumpState(_Payload):
    """``{p}/{gw}/pumps/{pump}/state``: latest telemetry and what was derived."""

    pump_id: str
    label: str | None
    seq: int
    device_time: UtcTime | None
    received_at: UtcTime
    reservoir_ml: float | None
    capacity_ml: float | None
    low_reservoir_alarm_ml: float | None
    battery_pct: int | None
    battery_v: float | None
    dose_mcg_per_day: float | None
    concentration_mcg_per_ml: float | None
    flow_ml_per_day: float | None
    drain_ml_per_day: float | None
    days_to_low_reservoir_alarm: float | None
    days_to_empty: float | None
    refill_due: UtcTime | None
    flags: list[str] | None
    stale: bool


class Problems(_Payload):
    """``{p}/{gw}/pumps/{pump}/problems``: which alert types are open, retained.

    One flag per alert type: true while an alert of that type is active or
    acknowledged, false once it cleared or when there never was one. Published
    only with Home Assistant discovery enabled (docs/homeassistant.md), when the
    pump is announced and whenever its alerts change. ``link_lost`` is
    gateway-wide: it is true only on ``{pump}`` = ``_gateway``.
    """

    pump_id: str
    reservoir_low: bool
    refill_due: bool
    battery_low: bool
    pump_fault: bool
    telemetry_lost: bool
    link_lost: bool
    dose_out_of_range: bool
    flow_deviation: bool
    data_invalid: bool

    @classmethod
    def of(cls, pump_id: str, open_types: Iterable[AlertType]) -> Problems:
        """The flags of ``pump_id`` with ``open_types`` (active or acknowledged) set."""
        opened = set(open_types)
        return cls.model_validate({"pump_id": pump_id, **{t.value: t in opened for t in AlertType}})


class ProgrammerIdentity(_Payload):
    vendor: str
    model: str
    serial: str
    firmware: str
    protocol: int


class Counters(_Payload):
    frames_ok: int = 0
    frames_discarded: int = 0
    protocol_errors: int = 0
    frames_lost: int = 0
    commands_rejected: int = 0


class BrokerStatus(_Payload):
    connected: bool
    last_error: str | None  # why the last connection attempt failed or dropped
    disconnects: int


class OutboxStatus(_Payload):
    """The durable outbox: messages not yet acknowledged by the broker."""

    pending: int
    bytes: int
    over_limit: bool  # past gateway.outbox_max_bytes with alerts/events only
    error: str | None  # the disk refused a write (messages then kept in memory)


class Info(_Payload):
    """``{p}/{gw}/info``: gateway and programmer identity, link state, counters."""

    gateway_id: str
    version: str
    started_at: UtcTime
    link: Literal["up", "down"]
    link_error: str | None = None
    programmer: ProgrammerIdentity | None
    counters: Counters
    broker: BrokerStatus
    outbox: OutboxStatus


class AckCommand(_Payload):
    """``{p}/{gw}/cmd/ack``: acknowledge an alert."""

    alert_id: str = Field(min_length=1, max_length=64)
    by: str = Field(min_length=1, max_length=64)
    note: str | None = Field(default=None, max_length=500)


class CommandResult(_Payload):
    """``{p}/{gw}/cmd/result``: the answer to every command, good or bad."""

    ok: bool
    command: str
    alert_id: str | None = None
    error: str | None = None


class Topics:
    """Topic names of one gateway under one prefix."""

    def __init__(self, prefix: str, gateway_id: str) -> None:
        self.base = f"{prefix}/{gateway_id}"
        self.status = f"{self.base}/status"
        self.info = f"{self.base}/info"
        self.events = f"{self.base}/events"
        self.cmd_ack = f"{self.base}/cmd/ack"
        self.cmd_result = f"{self.base}/cmd/result"

    def state(self, pump_id: str) -> str:
        return f"{self.base}/pumps/{pump_id}/state"

    def alert(self, pump_id: str, alert_type: AlertType) -> str:
        return f"{self.base}/pumps/{pump_id}/alerts/{alert_type.value}"

    def problems(self, pump_id: str) -> str:
        return f"{self.base}/pumps/{pump_id}/problems"


# The JSON Schema of a time as ``format_utc`` writes it.
UTC_TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{3})?Z$"


class ContractJsonSchema(GenerateJsonSchema):
    """JSON Schema (draft 2020-12) of the payloads exactly as they are on the wire.

    Pydantic's defaults describe them more loosely than the daemon writes them:
    in serialization mode every field is always written (a default or ``None``
    included), so every property is required; and a ``UtcTime`` is a
    ``date-time`` string that ends in ``Z``, not any string.
    """

    def generate(self, schema: CoreSchema, mode: JsonSchemaMode = "validation") -> JsonSchemaValue:
        return {"$schema": self.schema_dialect, **super().generate(schema, mode)}

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        if self.mode == "serialization":
            return True  # model_dump_json writes every field, defaults included
        return super().field_is_required(field, total)

    def ser_schema(
        self,
        schema: core_schema.SerSchema
        | core_schema.IncExSeqSerSchema
        | core_schema.IncExDictSerSchema,
    ) -> JsonSchemaValue | None:
        if schema.get("type") == "function-plain" and schema.get("function") is format_utc:
            return {"type": "string", "format": "date-time", "pattern": UTC_TIME_PATTERN}
        return super().ser_schema(schema)


# Every JSON payload by topic role: the model and the side it is read from.
# What the gateway publishes is described as serialized; ``cmd_ack`` is what
# the gateway accepts, so it is described as validated (``note`` optional).
PAYLOAD_MODELS: dict[str, tuple[type[BaseModel], JsonSchemaMode]] = {
    "info": (Info, "serialization"),
    "state": (PumpState, "serialization"),
    "alert": (Alert, "serialization"),
    "problems": (Problems, "serialization"),
    "event": (Event, "serialization"),
    "cmd_ack": (AckCommand, "validation"),
    "cmd_result": (CommandResult, "serialization"),
}


def payload_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every JSON payload, by topic role (see ``ContractJsonSchema``)."""
    return {
        name: model.model_json_schema(mode=mode, schema_generator=ContractJsonSchema)
        for name, (model, mode) in PAYLOAD_MODELS.items()
    }
