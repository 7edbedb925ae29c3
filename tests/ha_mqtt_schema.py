"""Home Assistant's MQTT discovery schema for ``sensor`` and ``binary_sensor``, as plain data.

Transcribed from Home Assistant's own source (github.com/home-assistant/core);
where a file was read at a known commit it is named, otherwise the version is
described by what the file contains:

* ``homeassistant/components/mqtt/config.py`` @ a5c8209270205b905bb35a9082c39708b0d5f52f:
  ``MQTT_BASE_SCHEMA`` (``qos``, ``encoding``) and ``MQTT_RO_SCHEMA``
  (``state_topic`` required, ``value_template``).
* ``homeassistant/components/mqtt/schemas.py`` @ c6ca7f5f416326437e8e652a5623aa5eff7b3d00:
  the availability schemas (``availability_topic`` and ``availability`` are
  exclusive; ``availability_mode`` in all/any/latest), the device schema (a
  strict schema: an unknown key invalidates the entity; identifiers or
  connections required), the origin schema (``name`` required) and
  ``MQTT_ENTITY_COMMON_SCHEMA``.
* ``homeassistant/components/mqtt/sensor.py``, the 2025 version (entities from
  ``.entity``, ``validate_sensor_state_and_device_class_config``): the sensor
  keys; ``options`` only with device class ``enum`` and without unit or state
  class; ``last_reset_value_template`` only with state class ``total``; a
  rendered ``None`` (``PAYLOAD_NONE``) sets the sensor to unknown, an empty
  rendering of a numeric sensor is ignored.
* ``homeassistant/components/mqtt/binary_sensor.py``, the 2024 version
  (``write_state_on_attr_change``): the binary sensor keys, ``payload_on``
  ``ON`` and ``payload_off`` ``OFF`` by default; ``None`` is unknown, an empty
  rendering is ignored.
* ``homeassistant/components/mqtt/entity.py`` @ e79ecb303a76099cddc4af480a2079172ba581a3:
  ``MQTT_ATTRIBUTES_BLOCKED``; availability: every topic of a list starts
  unavailable, ``all`` needs ``payload_available`` on each.
* ``homeassistant/components/mqtt/discovery.py`` (2024.11+, with device
  discovery): ``TOPIC_MATCHER`` for ``<component>/[<node_id>/]<object_id>/config``.
* ``homeassistant/components/sensor/const.py`` @ 3fd1a330015df2a3af1aeba46d208060a5295664:
  ``SensorDeviceClass``, ``SensorStateClass``, ``DEVICE_CLASS_STATE_CLASSES``
  and, for the device classes whose units are volumes, times or percentages,
  ``DEVICE_CLASS_UNITS``.
* ``homeassistant/const.py`` of Home Assistant 2025.5 (``UnitOfVolume``,
  ``UnitOfVolumeFlowRate``, ``UnitOfTime``, ``PERCENTAGE``): there is no mL/d.
* ``homeassistant/components/binary_sensor/__init__.py``: ``BinarySensorDeviceClass``.
* ``homeassistant/helpers/template.py``, ``async_render_with_possible_json_value``:
  the template sees ``value`` (the payload text) and ``value_json`` (the
  payload parsed as JSON, when it is JSON); the result is stripped.

The gateway writes full key names only, so the discovery abbreviations of
``mqtt/abbreviations.py`` play no part: an abbreviated key would fail the
unknown-key check here.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

# --- topics ----------------------------------------------------------------------------

# discovery.py TOPIC_MATCHER, applied to the topic without "<discovery prefix>/"
TOPIC_MATCHER = re.compile(
    r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config"
)

# --- keys ---------------------------------------------------------------------------------

BASE_KEYS = {"qos", "encoding"}  # MQTT_BASE_SCHEMA
RO_KEYS = {"state_topic", "value_template"}  # MQTT_RO_SCHEMA; state_topic required
AVAILABILITY_KEYS = {  # MQTT_AVAILABILITY_SINGLE_SCHEMA + MQTT_AVAILABILITY_LIST_SCHEMA
    "availability_topic",
    "availability_template",
    "payload_available",
    "payload_not_available",
    "availability_mode",
    "availability",
}
AVAILABILITY_ITEM_KEYS = {"topic", "payload_available", "payload_not_available", "value_template"}
AVAILABILITY_MODES = {"all", "any", "latest"}
ENTITY_COMMON_KEYS = {  # MQTT_ENTITY_COMMON_SCHEMA
    "device",
    "origin",
    "enabled_by_default",
    "entity_category",
    "icon",
    "json_attributes_topic",
    "json_attributes_template",
    "object_id",
    "unique_id",
}
ENTITY_CATEGORIES = {"config", "diagnostic"}
DEVICE_KEYS = {
    "identifiers",
    "connections",
    "manufacturer",
    "model",
    "model_id",
    "name",
    "hw_version",
    "serial_number",
    "sw_version",
    "via_device",
    "suggested_area",
    "configuration_url",
}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}  # name required
SENSOR_KEYS = {
    "device_class",
    "expire_after",
    "force_update",
    "last_reset_value_template",
    "name",
    "options",
    "suggested_display_precision",
    "state_class",
    "unit_of_measurement",
}
BINARY_SENSOR_KEYS = {
    "device_class",
    "expire_after",
    "force_update",
    "name",
    "off_delay",
    "payload_off",
    "payload_on",
}
COMMON_KEYS = BASE_KEYS | RO_KEYS | AVAILABILITY_KEYS | ENTITY_COMMON_KEYS
PLATFORM_KEYS = {
    "sensor": COMMON_KEYS | SENSOR_KEYS,
    "binary_sensor": COMMON_KEYS | BINARY_SENSOR_KEYS,
}
STRING_KEYS = {
    "state_topic",
    "value_template",
    "availability_topic",
    "availability_template",
    "payload_available",
    "payload_not_available",
    "json_attributes_topic",
    "json_attributes_template",
    "object_id",
    "unique_id",
    "name",
    "unit_of_measurement",
    "last_reset_value_template",
    "payload_on",
    "payload_off",
    "encoding",
}
TEMPLATE_KEYS = {
    "value_template",
    "availability_template",
    "json_attributes_template",
    "last_reset_value_template",
}
POSITIVE_INT_KEYS = {"expire_after", "off_delay", "suggested_display_precision"}

# entity.py: attributes Home Assistant drops from json_attributes
MQTT_ATTRIBUTES_BLOCKED = {
    "assumed_state",
    "available",
    "device_class",
    "device_info",
    "entity_category",
    "entity_picture",
    "entity_registry_enabled_default",
    "extra_state_attributes",
    "force_update",
    "icon",
    "friendly_name",
    "should_poll",
    "state",
    "supported_features",
    "unique_id",
    "unit_of_measurement",
}
SENSOR_ATTRIBUTES_BLOCKED = {"last_reset", "state_class"}  # sensor.py

PAYLOAD_NONE = "None"  # mqtt/const.py: a rendered "None" means unknown

# --- device classes, state classes, units (sensor/const.py, const.py) ---------------------

SENSOR_DEVICE_CLASSES = {
    "date", "enum", "timestamp", "apparent_power", "aqi", "area", "atmospheric_pressure",
    "battery", "blood_glucose_concentration", "carbon_monoxide", "carbon_dioxide",
    "conductivity", "current", "data_rate", "data_size", "distance", "duration", "energy",
    "energy_distance", "energy_storage", "frequency", "gas", "humidity", "illuminance",
    "irradiance", "moisture", "monetary", "nitrogen_dioxide", "nitrogen_monoxide",
    "nitrous_oxide", "ozone", "ph", "pm1", "pm10", "pm25", "power_factor", "power",
    "precipitation", "precipitation_intensity", "pressure", "reactive_power",
    "signal_strength", "sound_pressure", "speed", "sulphur_dioxide", "temperature",
    "volatile_organic_compounds", "volatile_organic_compounds_parts", "voltage", "volume",
    "volume_storage", "volume_flow_rate", "water", "weight", "wind_direction", "wind_speed",
}  # fmt: skip
NON_NUMERIC_DEVICE_CLASSES = {"date", "enum", "timestamp"}
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}

PERCENTAGE = "%"
UNIT_OF_VOLUME = {"ft³", "CCF", "m³", "L", "mL", "gal", "fl. oz."}
UNIT_OF_VOLUME_FLOW_RATE = {"m³/h", "m³/s", "ft³/min", "L/h", "L/min", "L/s", "gal/min", "mL/s"}
# DEVICE_CLASS_UNITS of the device classes measured in volumes, times or percentages.
DEVICE_CLASS_UNITS: dict[str, set[str | None]] = {
    "battery": {PERCENTAGE},
    "duration": {"d", "h", "min", "s", "ms", "\u00b5s"},
    "gas": {"CCF", "ft³", "m³", "L"},
    "humidity": {PERCENTAGE},
    "moisture": {PERCENTAGE},
    "power_factor": {PERCENTAGE, None},
    "volume": set(UNIT_OF_VOLUME),
    "volume_flow_rate": set(UNIT_OF_VOLUME_FLOW_RATE),
    "volume_storage": set(UNIT_OF_VOLUME),
    "water": {"CCF", "ft³", "m³", "gal", "L"},
}
_ALL = STATE_CLASSES
_MEASUREMENT = {"measurement"}
_TOTALS = {"total", "total_increasing"}
DEVICE_CLASS_STATE_CLASSES: dict[str, set[str]] = {
    "apparent_power": _MEASUREMENT, "aqi": _MEASUREMENT, "area": _ALL,
    "atmospheric_pressure": _MEASUREMENT, "battery": _MEASUREMENT,
    "blood_glucose_concentration": _MEASUREMENT, "carbon_monoxide": _MEASUREMENT,
    "carbon_dioxide": _MEASUREMENT, "conductivity": _MEASUREMENT, "current": _MEASUREMENT,
    "data_rate": _MEASUREMENT, "data_size": _ALL, "date": set(), "distance": _ALL,
    "duration": _ALL, "energy": _TOTALS, "energy_distance": _MEASUREMENT,
    "energy_storage": _MEASUREMENT, "enum": set(), "frequency": _MEASUREMENT, "gas": _TOTALS,
    "humidity": _MEASUREMENT, "illuminance": _MEASUREMENT, "irradiance": _MEASUREMENT,
    "moisture": _MEASUREMENT, "monetary": {"total"}, "nitrogen_dioxide": _MEASUREMENT,
    "nitrogen_monoxide": _MEASUREMENT, "nitrous_oxide": _MEASUREMENT, "ozone": _MEASUREMENT,
    "ph": _MEASUREMENT, "pm1": _MEASUREMENT, "pm10": _MEASUREMENT, "pm25": _MEASUREMENT,
    "power_factor": _MEASUREMENT, "power": _MEASUREMENT, "precipitation": _ALL,
    "precipitation_intensity": _MEASUREMENT, "pressure": _MEASUREMENT,
    "reactive_power": _MEASUREMENT, "signal_strength": _MEASUREMENT,
    "sound_pressure": _MEASUREMENT, "speed": _MEASUREMENT, "sulphur_dioxide": _MEASUREMENT,
    "temperature": _MEASUREMENT, "timestamp": set(),
    "volatile_organic_compounds": _MEASUREMENT,
    "volatile_organic_compounds_parts": _MEASUREMENT, "voltage": _MEASUREMENT,
    "volume": _TOTALS, "volume_storage": _MEASUREMENT, "volume_flow_rate": _MEASUREMENT,
    "water": _TOTALS, "weight": {"measurement", "total", "total_increasing"},
    "wind_direction": {"measurement_angle"}, "wind_speed": _MEASUREMENT,
}  # fmt: skip
BINARY_SENSOR_DEVICE_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
    "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving",
    "occupancy", "opening", "plug", "power", "presence", "problem", "running", "safety",
    "smoke", "sound", "tamper", "update", "vibration", "window",
}  # fmt: skip

# --- validation -------------------------------------------------------------------------


def _is_topic(value: Any) -> bool:
    return isinstance(value, str) and value != "" and "\0" not in value


def _template_problems(key: str, value: Any) -> list[str]:
    if not isinstance(value, str):
        return [f"{key}: not a string"]
    try:
        ENVIRONMENT.parse(value)
    except jinja2.TemplateSyntaxError as exc:
        return [f"{key}: not a valid template: {exc}"]
    return []


def _availability_problems(config: Mapping[str, Any]) -> list[str]:
    problems = []
    if "availability_topic" in config and "availability" in config:
        problems.append("availability_topic and availability are exclusive")
    mode = config.get("availability_mode")
    if mode is not None and mode not in AVAILABILITY_MODES:
        problems.append(f"availability_mode: {mode!r} not in {sorted(AVAILABILITY_MODES)}")
    items = config.get("availability", [])
    if not isinstance(items, list):
        items = [items]
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"availability[{i}]: not a mapping")
            continue
        problems += [
            f"availability[{i}].{k}: unknown key" for k in item.keys() - AVAILABILITY_ITEM_KEYS
        ]
        if not _is_topic(item.get("topic")):
            problems.append(f"availability[{i}].topic: required topic is missing")
        if "value_template" in item:
            problems += _template_problems(
                f"availability[{i}].value_template", item["value_template"]
            )
    return problems


def device_problems(device: Any) -> list[str]:
    if not isinstance(device, dict):
        return ["device: not a mapping"]
    problems = [
        f"device.{k}: unknown key (the device schema is strict)"
        for k in device.keys() - DEVICE_KEYS
    ]
    identifiers = device.get("identifiers", [])
    if isinstance(identifiers, str):
        identifiers = [identifiers]
    if not isinstance(identifiers, list) or not all(isinstance(i, str) for i in identifiers):
        problems.append("device.identifiers: not a list of strings")
    if not identifiers and not device.get("connections"):
        problems.append("device: needs at least one identifier or connection")
    for key in DEVICE_KEYS - {"identifiers", "connections"}:
        if key in device and not isinstance(device[key], str):
            problems.append(f"device.{key}: not a string")
    return problems


def origin_problems(origin: Any) -> list[str]:
    if not isinstance(origin, dict):
        return ["origin: not a mapping"]
    problems = [f"origin.{k}: unknown key" for k in origin.keys() - ORIGIN_KEYS]
    if not isinstance(origin.get("name"), str):
        problems.append("origin.name: required string is missing")
    return problems


def _sensor_problems(config: Mapping[str, Any]) -> list[str]:
    problems = []
    device_class = config.get("device_class")
    state_class = config.get("state_class")
    unit = config.get("unit_of_measurement")
    if device_class is not None and device_class not in SENSOR_DEVICE_CLASSES:
        problems.append(f"device_class: {device_class!r} is no sensor device class")
    if state_class is not None and state_class not in STATE_CLASSES:
        problems.append(f"state_class: {state_class!r} is no state class")
    if "last_reset_value_template" in config and state_class != "total":
        problems.append("last_reset_value_template needs state_class total")
    if "options" in config and (device_class != "enum" or state_class or unit):
        problems.append("options needs device_class enum and no state_class or unit")
    if device_class in DEVICE_CLASS_UNITS and unit not in DEVICE_CLASS_UNITS[device_class]:
        problems.append(f"unit {unit!r} is not valid for device class {device_class!r}")
    allowed_states = DEVICE_CLASS_STATE_CLASSES.get(device_class or "", STATE_CLASSES)
    if state_class is not None and state_class not in allowed_states:
        problems.append(f"state_class {state_class!r} is not valid for {device_class!r}")
    return problems


def _binary_sensor_problems(config: Mapping[str, Any]) -> list[str]:
    device_class = config.get("device_class")
    if device_class is not None and device_class not in BINARY_SENSOR_DEVICE_CLASSES:
        return [f"device_class: {device_class!r} is no binary sensor device class"]
    return []


def config_problems(component: str, config: Any) -> list[str]:
    """Everything Home Assistant would refuse (or warn about) in one discovery config."""
    if component not in PLATFORM_KEYS:
        return [f"component {component!r} is not sensor or binary_sensor"]
    if not isinstance(config, dict):
        return ["payload: not a JSON object"]
    problems = [f"{k}: unknown key" for k in sorted(config.keys() - PLATFORM_KEYS[component])]
    if not _is_topic(config.get("state_topic")):
        problems.append("state_topic: required topic is missing")
    for key in STRING_KEYS & config.keys():
        if not isinstance(config[key], str):
            problems.append(f"{key}: not a string")
    for key in TEMPLATE_KEYS & config.keys():
        problems += _template_problems(key, config[key])
    for key in POSITIVE_INT_KEYS & config.keys():
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(f"{key}: not a positive integer")
    if config.get("qos", 0) not in (0, 1, 2):
        problems.append("qos: not 0, 1 or 2")
    if "icon" in config and ":" not in str(config["icon"]):
        problems.append("icon: not of the form prefix:name")
    if "entity_category" in config and config["entity_category"] not in ENTITY_CATEGORIES:
        problems.append(f"entity_category: {config['entity_category']!r} is no entity category")
    problems += _availability_problems(config)
    if "device" in config:
        problems += device_problems(config["device"])
    if "origin" in config:
        problems += origin_problems(config["origin"])
    if component == "sensor":
        return problems + _sensor_problems(config)
    return problems + _binary_sensor_problems(config)


# --- rendering templates as Home Assistant does -------------------------------------------

ENVIRONMENT = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)


def render(template: str, payload: bytes) -> str:
    """``async_render_with_possible_json_value``: ``value`` and ``value_json``, stripped."""
    text = payload.decode()
    variables: dict[str, Any] = {"value": text}
    with contextlib.suppress(ValueError):  # not JSON: the template sees `value` only
        variables["value_json"] = json.loads(text)
    return ENVIRONMENT.from_string(template).render(variables).strip()


def sensor_state(config: Mapping[str, Any], payload: bytes) -> str | None:
    """The sensor's state after this payload: None for unknown, else the rendered text."""
    rendered = render(config["value_template"], payload)
    assert rendered != "", "an empty rendering is ignored: the sensor would keep a stale value"
    return None if rendered == PAYLOAD_NONE else rendered


def binary_sensor_state(config: Mapping[str, Any], payload: bytes) -> bool | None:
    """True (on), False (off) or None (unknown) after this payload."""
    rendered = render(config["value_template"], payload)
    if rendered == config.get("payload_on", "ON"):
        return True
    if rendered == config.get("payload_off", "OFF"):
        return False
    assert rendered == PAYLOAD_NONE, f"{rendered!r} matches no payload: the state would not move"
    return None


def availability_of(item: Mapping[str, Any], payload: bytes) -> bool | None:
    """One availability topic's verdict on this payload (None: no change)."""
    template = item.get("value_template")
    rendered = render(template, payload) if template else payload.decode()
    if rendered == item.get("payload_available", "online"):
        return True
    if rendered == item.get("payload_not_available", "offline"):
        return False
    return None


def attributes(config: Mapping[str, Any], payload: bytes) -> dict[str, Any]:
    """The entity's attributes from ``json_attributes_topic`` after this payload."""
    template = config.get("json_attributes_template")
    text = render(template, payload) if template else payload.decode()
    data = json.loads(text)
    assert isinstance(data, dict), "json attributes must be an object"
    return {k: v for k, v in data.items() if k not in MQTT_ATTRIBUTES_BLOCKED}
