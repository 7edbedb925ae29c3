"""Gateway configuration: the TOML file, validated by pydantic, per-pump resolution.

``load_config(path)`` returns a ``Config`` or raises ``ConfigError`` listing
every problem as (key, message), so ``pumpgw check-config`` can print them
all at once. Unknown keys are errors: a typo never silently falls back to a
default.
"""

from __future__ import annotations

import re
import socket
import ssl
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

PUMP_ID_PATTERN = r"^[A-Z0-9-]{1,16}$"
# A gateway id becomes an MQTT topic level: no wildcards, no separators.
TOPIC_LEVEL_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
TopicLevel = Annotated[str, StringConstraints(pattern=TOPIC_LEVEL_PATTERN)]
# Topic levels separated by '/': no wildcards ('+', '#'), no empty level.
TOPIC_PATH_PATTERN = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"


def default_gateway_id() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64]
    return name or "pumpgw"


class _Section(BaseModel):
    # TOML values are typed: `true` or "60" where a number belongs is a mistake.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


FilePath = Annotated[Path, Field(strict=False)]  # TOML gives paths as strings


class GatewaySection(_Section):
    id: TopicLevel = Field(default_factory=default_gateway_id)
    state_dir: FilePath = Path("/var/lib/pumpgw")
    # Alerts and events are never dropped; past this, old state messages go.
    outbox_max_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024, le=16 * 1024**3)


class SerialSection(_Section):
    port: str = Field(min_length=1, description="device path or pyserial URL")
    baudrate: Literal[9600, 19200, 38400, 57600, 115200] = 115200
    poll_interval_s: int = Field(default=60, ge=1, le=3600)
    link_timeout_s: float = Field(default=30.0, gt=0, le=86400)


MQTT_PORT = 1883
MQTT_TLS_PORT = 8883


class MqttSection(_Section):
    host: str = Field(default="localhost", min_length=1, max_length=253)
    port: int = Field(default=MQTT_PORT, ge=1, le=65535)  # MQTT_TLS_PORT with tls = true
    topic_prefix: str = Field(default="pumpgw", max_length=128, pattern=TOPIC_PATH_PATTERN)
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    username: str | None = Field(default=None, min_length=1, max_length=256)
    password_file: FilePath | None = None
    # TLS: the broker's certificate is verified against ca_file (else the
    # system's CAs) and must name mqtt.host; there is no way to turn that off.
    tls: bool = False
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None  # client certificate, with key_file
    key_file: FilePath | None = None  # unencrypted PEM (a daemon cannot ask for a passphrase)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    info_interval_s: float = Field(default=10.0, gt=0, le=3600)

    @model_validator(mode="before")
    @classmethod
    def _tls_port(cls, data: Any) -> Any:
        """Without an explicit port, TLS uses MQTT's TLS port."""
        if isinstance(data, dict) and data.get("tls") is True and "port" not in data:
            return {**data, "port": MQTT_TLS_PORT}
        return data


class HomeAssistantSection(_Section):
    """Home Assistant MQTT discovery (docs/homeassistant.md); off unless enabled."""

    enabled: bool = False
    # Home Assistant's own discovery prefix setting (its default is "homeassistant").
    discovery_prefix: str = Field(
        default="homeassistant", max_length=128, pattern=TOPIC_PATH_PATTERN
    )


class _ThresholdFields(_Section):
    """Alert thresholds; every one can be overridden per pump."""

    reservoir_warning_ml: float = Field(default=5.0, ge=0, le=40)
    reservoir_critical_ml: float = Field(default=2.0, ge=0, le=40)
    reservoir_hysteresis_ml: float = Field(default=0.5, ge=0, le=40)
    battery_warning_pct: float = Field(default=25, ge=0, le=100)
    battery_critical_pct: float = Field(default=10, ge=0, le=100)
    battery_hysteresis_pct: float = Field(default=3, ge=0, le=100)
    telemetry_timeout_s: float = Field(default=180, gt=0, le=86400)
    data_invalid_clear_readings: int = Field(default=3, ge=1, le=1000)
    # refill_due: projected days until the pump's own low-reservoir alarm
    refill_warning_days: float = Field(default=7.0, ge=0, le=365)
    refill_critical_days: float = Field(default=2.0, ge=0, le=365)
    refill_hysteresis_days: float = Field(default=0.5, ge=0, le=365)
    # flow_deviation: measured drain rate against the programmed flow
    flow_deviation_pct: float = Field(default=15.0, gt=0, le=1000)
    flow_hysteresis_pct: float = Field(default=5.0, ge=0, le=1000)
    flow_window_h: float = Field(default=24.0, gt=0, le=24 * 14)
    flow_min_span_h: float = Field(default=12.0, gt=0, le=24 * 14)
    # dose_out_of_range
    dose_min_mcg: float = Field(default=22.0, ge=0, le=100_000)
    dose_max_mcg: float = Field(default=1400.0, gt=0, le=100_000)
    allowed_concentrations: list[float] | None = Field(default=None, min_length=1)
    # alert_reminder for active, unacknowledged alerts (0 disables)
    renotify_critical_s: float = Field(default=900, ge=0, le=7 * 86400)
    renotify_warning_s: float = Field(default=14400, ge=0, le=7 * 86400)


class Thresholds(_ThresholdFields):
    pass


class PumpSection(_ThresholdFields):
    label: str | None = Field(default=None, max_length=64)

    def overrides(self) -> dict[str, Any]:
        """Only the thresholds written in the file for this pump."""
        return {k: getattr(self, k) for k in self.model_fields_set if k != "label"}


class Config(_Section):
    gateway: GatewaySection = Field(default_factory=GatewaySection)
    serial: SerialSection
    mqtt: MqttSection = Field(default_factory=MqttSection)
    homeassistant: HomeAssistantSection = Field(default_factory=HomeAssistantSection)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    pumps: dict[Annotated[str, StringConstraints(pattern=PUMP_ID_PATTERN)], PumpSection] = Field(
        default_factory=dict
    )

    def thresholds_for(self, pump_id: str) -> Thresholds:
        pump = self.pumps.get(pump_id)
        if pump is None or not pump.model_fields_set - {"label"}:
            return self.thresholds
        return self.thresholds.model_copy(update=pump.overrides())

    def label_for(self, pump_id: str) -> str | None:
        pump = self.pumps.get(pump_id)
        return pump.label if pump else None

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"pumpgw-{self.gateway.id}"


@dataclass(frozen=True)
class Problem:
    key: str
    message: str


class ConfigError(Exception):
    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(f"{self.source}: {p.key}: {p.message}" for p in self.problems)


# (lower, upper): the first must stay strictly below the second
_ORDERED = (
    ("reservoir_critical_ml", "reservoir_warning_ml"),
    ("battery_critical_pct", "battery_warning_pct"),
    ("refill_critical_days", "refill_warning_days"),
    ("dose_min_mcg", "dose_max_mcg"),
    ("flow_hysteresis_pct", "flow_deviation_pct"),
    ("flow_min_span_h", "flow_window_h"),
)


def _order_problems(scope: str, t: _ThresholdFields, only: set[str] | None = None) -> list[Problem]:
    """Lower below upper; ``only``: check just the pairs these keys touch."""
    out = []
    for lower, upper in _ORDERED:
        if only is not None and not {lower, upper} & only:
            continue
        low, high = getattr(t, lower), getattr(t, upper)
        if low >= high:
            out.append(Problem(f"{scope}{lower}", f"must be below {upper} ({low:g} >= {high:g})"))
    return out


def _semantic_problems(config: Config) -> list[Problem]:
    problems = _order_problems("thresholds.", config.thresholds)
    for pump_id, pump in config.pumps.items():
        scope = f'pumps."{pump_id}".'
        problems += _order_problems(scope, config.thresholds_for(pump_id), pump.model_fields_set)
    pw = config.mqtt.password_file
    if pw is not None and not pw.is_file():
        problems.append(Problem("mqtt.password_file", f"no such file: {pw}"))
    if pw is not None and config.mqtt.username is None:
        problems.append(Problem("mqtt.password_file", "set mqtt.username too"))
    return problems + _tls_problems(config.mqtt)


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> str:
    raise _EncryptedKey


def ssl_error_text(exc: ssl.SSLError) -> str:
    """OpenSSL's words without the ``[LIB: CODE]`` prefix and ``(_ssl.c:NNN)`` suffix."""
    text = re.sub(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "", str(exc))
    return text or str(exc)


def _tls_problems(mq: MqttSection) -> list[Problem]:
    """TLS keys and files, read now so a bad file is a config error, not a
    broker link that never comes up."""
    files = {"ca_file": mq.ca_file, "cert_file": mq.cert_file, "key_file": mq.key_file}
    if not mq.tls:
        return [
            Problem(f"mqtt.{key}", "only used with TLS: set mqtt.tls = true too")
            for key, path in files.items()
            if path is not None
        ]
    problems = []
    if (mq.cert_file is None) != (mq.key_file is None):
        given, missing = (
            ("cert_file", "key_file") if mq.key_file is None else ("key_file", "cert_file")
        )
        problems.append(
            Problem(f"mqtt.{given}", f"set mqtt.{missing} too (a client certificate needs its key)")
        )
    for key, path in files.items():
        if path is not None and not path.is_file():
            problems.append(Problem(f"mqtt.{key}", f"no such file: {path}"))
    if problems:
        return problems
    if mq.ca_file is not None:
        problems += _pem_certificate_problems("mqtt.ca_file", mq.ca_file)
    if mq.cert_file is not None and mq.key_file is not None:
        cert_problems = _pem_certificate_problems("mqtt.cert_file", mq.cert_file)
        problems += cert_problems or _key_problems(mq.cert_file, mq.key_file)
    return problems


def _pem_certificate_problems(key: str, path: Path) -> list[Problem]:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        return [Problem(key, f"no usable PEM certificate in {path}: {ssl_error_text(exc)}")]
    except OSError as exc:
        return [Problem(key, f"cannot read {path}: {exc.strerror or exc}")]
    return []


def _key_problems(cert_file: Path, key_file: Path) -> list[Problem]:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
            cert_file, key_file, password=_no_passphrase
        )
    except _EncryptedKey:
        message = f"{key_file} is encrypted; the gateway cannot ask for a passphrase"
        return [Problem("mqtt.key_file", message)]
    except ssl.SSLError as exc:
        reason = ssl_error_text(exc)
        if exc.reason == "KEY_VALUES_MISMATCH":
            return [Problem("mqtt.key_file", f"{key_file} is not the key of {cert_file}")]
        return [Problem("mqtt.key_file", f"no usable PEM private key in {key_file}: {reason}")]
    except OSError as exc:
        return [Problem("mqtt.key_file", f"cannot read {key_file}: {exc.strerror or exc}")]
    return []


def _key(loc: tuple[int | str, ...]) -> str:
    parts = []
    loc = tuple(p for p in loc if p != "[key]")  # pydantic's marker for a bad dict key
    for i, part in enumerate(loc):
        text = str(part)
        # dict keys of [pumps] hold dashes: quote them as TOML does
        if i > 0 and loc[i - 1] == "pumps" and not re.fullmatch(r"[A-Za-z0-9_]+", text):
            text = f'"{text}"'
        parts.append(text)
    return ".".join(parts) or "(file)"


def _message(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    return f"{error['msg']} (got {error['input']!r})"


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            source, [Problem(_key(e["loc"]), _message(e)) for e in exc.errors()]
        ) from None
    problems = _semantic_problems(config)
    if problems:
        raise ConfigError(source, problems)
    return config


def load_config(path: Path) -> Config:
    source = str(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(source, [Problem("(file)", exc.strerror or str(exc))]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [Problem("(syntax)", str(exc))]) from None
    return parse_config(data, source)


# Secret files nobody but the gateway's user should be able to open.
_SECRET_FILE_KEYS = ("password_file", "key_file")


def exposed_secret_files(config: Config) -> list[tuple[str, Path, int]]:
    """``(key, path, mode)`` of each secret file that group or others may access.

    The daemon logs a warning for each at start-up (never the contents).
    """
    exposed = []
    for name in _SECRET_FILE_KEYS:
        path: Path | None = getattr(config.mqtt, name)
        if path is None:
            continue
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue  # reading it fails loudly elsewhere
        if mode & 0o077:
            exposed.append((f"mqtt.{name}", path, mode))
    return exposed


def read_password(config: Config) -> str | None:
    """The MQTT password from ``password_file`` (first line). Never log it."""
    if config.mqtt.password_file is None:
        return None
    lines = config.mqtt.password_file.read_text().splitlines()
    return lines[0] if lines else ""
