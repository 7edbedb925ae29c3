"""Home Assistant MQTT discovery: which retained messages should exist, built without IO.

With ``[homeassistant] enabled = true`` every pump becomes a Home Assistant
device (sensors for reservoir, days to refill, battery, programmed flow and
measured drain; one ``problem`` binary sensor per alert type), linked to the
gateway's own device (programmer link, ``link_lost``) by ``via_device``.
Everything here is pure: ``Discovery`` builds the config payloads,
``Announcer`` remembers what was announced and says what to publish or clear
next; the daemon stores the result in the outbox and logs it.

What Home Assistant does with these payloads decides their shape (the files,
versions and the full check are in tests/ha_mqtt_schema.py):

* Config topics are ``<prefix>/<component>/<node_id>/<object_id>/config``;
  both ids may hold only ``[a-zA-Z0-9_-]`` (mqtt/discovery.py), hence ``slug``.
* A sensor template that renders ``None`` makes the sensor *unknown*; one
  that renders an empty string is ignored and the old value stays
  (mqtt/sensor.py, ``PAYLOAD_NONE``). A JSON ``null`` therefore renders as
  ``None``: never 0, never empty.
* ``volume_storage`` takes mL and ``duration`` takes d; ``volume_flow_rate``
  has no mL/d (sensor/const.py ``DEVICE_CLASS_UNITS``), so the two flow
  sensors have a unit and a state class but no device class.
* Unknown keys in the ``device`` block invalidate the whole entity (its
  schema is strict), so only keys Home Assistant has had for years are used.
* A JSON attribute named ``state`` is dropped (mqtt/entity.py,
  ``MQTT_ATTRIBUTES_BLOCKED``): the alert's state is shown as ``alert_state``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.config import Config, HomeAssistantSection
from gateway.contract import GATEWAY_PUMP, AlertType, Problems, Topics
from gateway.engine import EngineState

QOS = 1
SENSOR = "sensor"
BINARY_SENSOR = "binary_sensor"
ONLINE, OFFLINE = "online", "offline"  # the gateway's status payloads, HA's defaults too
ORIGIN_NAME = "pumpgw"
PUMP_MODEL = "Intrathecal drug pump"
GATEWAY_MODEL = "Pump telemetry gateway"

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def slug(text: str) -> str:
    """``text`` as a discovery topic level or id: ``[A-Za-z0-9_-]`` only."""
    return _UNSAFE.sub("_", text)


def status_topic(ha: HomeAssistantSection) -> str | None:
    """Where Home Assistant says ``online`` when it (re)starts; None while discovery is off."""
    return f"{ha.discovery_prefix}/status" if ha.enabled else None


# --- payloads (Home Assistant's full key names; None is left out) --------------------


class _Discovery(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class Device(_Discovery):
    identifiers: list[str]
    name: str
    manufacturer: str | None = None
    model: str | None = None
    sw_version: str | None = None
    via_device: str | None = None


class Origin(_Discovery):
    name: str
    sw_version: str


class Availability(_Discovery):
    topic: str
    payload_available: str = ONLINE
    payload_not_available: str = OFFLINE
    value_template: str | None = None


class _Entity(_Discovery):
    name: str
    unique_id: str
    state_topic: str
    value_template: str
    qos: int = QOS
    availability: list[Availability]
    availability_mode: Literal["all"] | None = None
    device: Device
    origin: Origin
    icon: str | None = None
    entity_category: Literal["diagnostic"] | None = None
    json_attributes_topic: str | None = None
    json_attributes_template: str | None = None


class SensorConfig(_Entity):
    device_class: str | None = None
    state_class: Literal["measurement"] = "measurement"
    unit_of_measurement: str
    suggested_display_precision: int


class BinarySensorConfig(_Entity):
    device_class: Literal["problem", "connectivity"]


# --- what each pump shows -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SensorSpec:
    key: str  # ends the object id and the unique id
    name: str
    field: str  # of the pump's state payload
    unit: str
    device_class: str | None
    precision: int
    icon: str | None = None


PUMP_SENSORS: tuple[SensorSpec, ...] = (
    SensorSpec("reservoir", "Reservoir", "reservoir_ml", "mL", "volume_storage", 1),
    SensorSpec(
        "days_to_refill", "Days to refill", "days_to_low_reservoir_alarm", "d", "duration", 1
    ),
    SensorSpec("battery", "Battery", "battery_pct", "%", "battery", 0),
    SensorSpec("flow", "Programmed flow", "flow_ml_per_day", "mL/d", None, 2, "mdi:water-pump"),
    SensorSpec("drain", "Measured drain", "drain_ml_per_day", "mL/d", None, 2, "mdi:water-outline"),
)

PROBLEM_NAMES: Mapping[AlertType, str] = {
    AlertType.RESERVOIR_LOW: "Reservoir low",
    AlertType.REFILL_DUE: "Refill due",
    AlertType.BATTERY_LOW: "Battery low",
    AlertType.PUMP_FAULT: "Pump fault",
    AlertType.TELEMETRY_LOST: "Telemetry lost",
    AlertType.LINK_LOST: "Programmer link lost",
    AlertType.DOSE_OUT_OF_RANGE: "Dose out of range",
    AlertType.FLOW_DEVIATION: "Flow deviation",
    AlertType.DATA_INVALID: "Invalid data",
}
PUMP_PROBLEMS = tuple(t for t in AlertType if t is not AlertType.LINK_LOST)
GATEWAY_PROBLEMS = (AlertType.LINK_LOST,)


def number_template(field_name: str) -> str:
    """The field's number, or ``None`` (unknown in Home Assistant) for JSON null."""
    value = f"value_json.{field_name}"
    return f"{{{{ 'None' if {value} is none else {value} }}}}"


def flag_template(field_name: str) -> str:
    return f"{{{{ 'ON' if value_json.{field_name} else 'OFF' }}}}"


LINK_TEMPLATE = "{{ 'ON' if value_json.link == 'up' else 'OFF' }}"
# A pump whose telemetry stopped (state `stale`) shows its values as unavailable.
FRESH_TEMPLATE = f"{{{{ '{OFFLINE}' if value_json.stale else '{ONLINE}' }}}}"
# The alert payload as attributes; its `state` is renamed (HA drops `state`).
ALERT_ATTRIBUTES_TEMPLATE = (
    "{{ {'alert_id': value_json.alert_id, 'severity': value_json.severity, "
    "'alert_state': value_json.state, 'message': value_json.message, "
    "'raised_at': value_json.raised_at, 'updated_at': value_json.updated_at, "
    "'acknowledged_by': value_json.acknowledged_by} | tojson }}"
)


@dataclass(frozen=True, slots=True)
class Discovery:
    """The discovery messages of one gateway: config topic -> retained JSON payload."""

    prefix: str
    topics: Topics
    gateway_id: str
    version: str

    @property
    def node_id(self) -> str:
        return f"pumpgw_{slug(self.gateway_id)}"

    def config_topic(self, component: str, object_id: str) -> str:
        return f"{self.prefix}/{component}/{self.node_id}/{object_id}/config"

    def gateway_device(self) -> Device:
        return Device(
            identifiers=[self.node_id],
            name=f"pumpgw {self.gateway_id}",
            manufacturer=ORIGIN_NAME,
            model=GATEWAY_MODEL,
            sw_version=self.version,
        )

    def pump_device(self, pump_id: str, label: str | None) -> Device:
        return Device(
            identifiers=[f"{self.node_id}_{slug(pump_id)}"],
            name=label or pump_id,
            model=PUMP_MODEL,
            via_device=self.node_id,
        )

    @property
    def origin(self) -> Origin:
        return Origin(name=ORIGIN_NAME, sw_version=self.version)

    @property
    def online(self) -> Availability:
        """Available while the gateway's status is ``online``."""
        return Availability(topic=self.topics.status)

    def gateway_messages(self, problems: Problems) -> dict[str, bytes]:
        """The gateway's device (programmer link, ``link_lost``) and its problems."""
        device = self.gateway_device()
        link = BinarySensorConfig(
            name="Programmer link",
            unique_id=f"{self.node_id}_gateway_link",
            state_topic=self.topics.info,
            value_template=LINK_TEMPLATE,
            device_class="connectivity",
            entity_category="diagnostic",
            availability=[self.online],
            device=device,
            origin=self.origin,
        )
        messages = {self.config_topic(BINARY_SENSOR, "gateway_link"): link.to_json()}
        messages |= self._problem_messages(device, GATEWAY_PUMP, "gateway", GATEWAY_PROBLEMS)
        messages[self.topics.problems(GATEWAY_PUMP)] = problems.to_json()
        return messages

    def pump_messages(
        self, pump_id: str, label: str | None, problems: Problems
    ) -> dict[str, bytes]:
        """One pump's device (sensors, one problem sensor per alert type) and its problems."""
        device = self.pump_device(pump_id, label)
        messages: dict[str, bytes] = {}
        for spec in PUMP_SENSORS:
            object_id = f"{slug(pump_id)}_{spec.key}"
            sensor = self._sensor(device, pump_id, spec, object_id)
            messages[self.config_topic(SENSOR, object_id)] = sensor.to_json()
        messages |= self._problem_messages(device, pump_id, slug(pump_id), PUMP_PROBLEMS)
        messages[self.topics.problems(pump_id)] = problems.to_json()
        return messages

    def _sensor(
        self, device: Device, pump_id: str, spec: SensorSpec, object_id: str
    ) -> SensorConfig:
        state_topic = self.topics.state(pump_id)
        return SensorConfig(
            name=spec.name,
            unique_id=f"{self.node_id}_{object_id}",
            state_topic=state_topic,
            value_template=number_template(spec.field),
            device_class=spec.device_class,
            unit_of_measurement=spec.unit,
            suggested_display_precision=spec.precision,
            icon=spec.icon,
            # unavailable while the gateway is offline or the pump's telemetry is stale
            availability=[
                self.online,
                Availability(topic=state_topic, value_template=FRESH_TEMPLATE),
            ],
            availability_mode="all",
            device=device,
            origin=self.origin,
        )

    def _problem_messages(
        self, device: Device, pump_id: str, prefix: str, alert_types: Iterable[AlertType]
    ) -> dict[str, bytes]:
        """One problem binary sensor per alert type, by config topic."""
        messages = {}
        for alert_type in alert_types:
            object_id = f"{prefix}_{alert_type.value}"
            config = self._problem(device, pump_id, alert_type, object_id)
            messages[self.config_topic(BINARY_SENSOR, object_id)] = config.to_json()
        return messages

    def _problem(
        self, device: Device, pump_id: str, alert_type: AlertType, object_id: str
    ) -> BinarySensorConfig:
        return BinarySensorConfig(
            name=PROBLEM_NAMES[alert_type],
            unique_id=f"{self.node_id}_{object_id}",
            state_topic=self.topics.problems(pump_id),
            value_template=flag_template(alert_type.value),
            device_class="problem",
            json_attributes_topic=self.topics.alert(pump_id, alert_type),
            json_attributes_template=ALERT_ATTRIBUTES_TEMPLATE,
            availability=[self.online],
            device=device,
            origin=self.origin,
        )


# --- which pumps, and what to publish or clear -------------------------------------------


def problems_of(state: EngineState, pump_id: str) -> Problems:
    """The problems payload of a pump (or of ``_gateway``) from the engine's open alerts."""
    if pump_id == GATEWAY_PUMP:
        return Problems.of(pump_id, state.gateway_alerts)
    track = state.pumps.get(pump_id)
    return Problems.of(pump_id, () if track is None else track.alerts)


def pumps_to_announce(
    config: Config, state: EngineState, reported: Set[str], carried: Set[str]
) -> dict[str, str | None]:
    """Pump id -> label of every pump Home Assistant should show.

    The configured pumps, the pumps that reported since the gateway started,
    and the pumps announced before a restart (``carried``) until the engine
    finds their telemetry lost: a restart does not remove and re-add a pump
    that is still there, and one that is gone leaves.
    """
    kept = {
        pump_id
        for pump_id in carried
        if pump_id in state.pumps and AlertType.TELEMETRY_LOST not in state.pumps[pump_id].alerts
    }
    pump_ids = sorted(set(config.pumps) | set(reported) | kept)
    return {pump_id: config.label_for(pump_id) for pump_id in pump_ids}


def _config_first(topic: str) -> tuple[bool, str]:
    """Clear a pump's discovery configs before the topics its entities read."""
    return (not topic.endswith("/config"), topic)


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do: publish new or changed retained messages, clear what is no longer wanted."""

    publish: dict[str, dict[str, bytes]]  # device (pump id or _gateway) -> topic -> payload
    clear: dict[str, list[str]]  # device -> topics to empty, its configs first
    record: str | None = None  # what is announced now, to store; None: unchanged


def plan(
    desired: Mapping[str, Mapping[str, bytes]],
    published: Mapping[str, bytes],
    announced: Mapping[str, Collection[str]],
) -> Plan:
    """Publish what ``desired`` holds and ``published`` lacks; clear every announced
    topic ``desired`` no longer holds."""
    publish = {}
    for device, messages in desired.items():
        changed = {t: p for t, p in messages.items() if published.get(t) != p}
        if changed:
            publish[device] = changed
    wanted = {topic for messages in desired.values() for topic in messages}
    clear = {}
    for device, topics in announced.items():
        gone = sorted((t for t in topics if t not in wanted), key=_config_first)
        if gone:
            clear[device] = gone
    return Plan(publish, clear)


class _Record(BaseModel):
    """The announced topics by device, kept in the outbox database across restarts."""

    model_config = ConfigDict(extra="forbid")
    version: Literal[1] = 1
    devices: dict[str, list[str]]


def dump_record(announced: Mapping[str, Iterable[str]]) -> str:
    return _Record(devices={d: sorted(t) for d, t in announced.items()}).model_dump_json()


def load_record(text: str) -> dict[str, list[str]]:
    """Raises ValueError for a record this version cannot read."""
    try:
        return _Record.model_validate_json(text).devices
    except ValidationError as exc:
        raise ValueError(f"unreadable Home Assistant discovery record: {exc}") from None


@dataclass
class Announcer:
    """What is announced to Home Assistant, and what to publish or clear next. No IO.

    ``announced`` (device -> its retained topics) is what the broker may hold
    from this gateway under the discovery prefix and in ``problems``; the
    daemon stores it with the messages (``Plan.record``), so a restart clears
    what the new configuration no longer wants. ``published`` is what was
    queued in this run, so only changes are published again.
    """

    topics: Topics
    version: str
    announced: dict[str, list[str]] = field(default_factory=dict)
    published: dict[str, bytes] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)
    dirty: bool = True  # something that decides the messages may have changed
    carried: frozenset[str] = field(init=False)  # pumps announced before this run

    def __post_init__(self) -> None:
        self.carried = frozenset(self.announced) - {GATEWAY_PUMP}

    def pump_reported(self, pump_id: str) -> None:
        """The programmer reported this pump: announce it if it is new."""
        if pump_id not in self.reported:
            self.reported.add(pump_id)
            self.dirty = True

    def alerts_changed(self) -> None:
        self.dirty = True

    def config_changed(self) -> None:
        self.dirty = True

    def republish(self) -> None:
        """Publish every message again (Home Assistant restarted, the config changed)."""
        self.published.clear()
        self.dirty = True

    def sync(self, config: Config, state: EngineState) -> Plan | None:
        """The changes since the last sync, or None when nothing could have changed."""
        if not self.dirty:
            return None
        self.dirty = False
        desired = self._desired(config, state)
        result = plan(desired, self.published, self.announced)
        announced = {device: sorted(messages) for device, messages in desired.items()}
        if announced != self.announced:
            result = Plan(result.publish, result.clear, dump_record(announced))
        self.announced = announced
        self.published = {t: p for messages in desired.values() for t, p in messages.items()}
        return result

    def _desired(self, config: Config, state: EngineState) -> dict[str, dict[str, bytes]]:
        ha = config.homeassistant
        if not ha.enabled:
            return {}
        discovery = Discovery(ha.discovery_prefix, self.topics, config.gateway.id, self.version)
        desired = {GATEWAY_PUMP: discovery.gateway_messages(problems_of(state, GATEWAY_PUMP))}
        pumps = pumps_to_announce(config, state, self.reported, self.carried)
        for pump_id, label in pumps.items():
            problems = problems_of(state, pump_id)
            desired[pump_id] = discovery.pump_messages(pump_id, label, problems)
        return desired
