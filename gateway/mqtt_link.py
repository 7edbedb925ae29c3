"""The broker side: a paho-mqtt 2.x client with its own network thread.

``connect_async`` + ``loop_start``: a broker that is down at start, or goes
away later, never stops the daemon; paho reconnects with a capped backoff.
With ``mqtt.tls`` the broker's certificate must chain to ``ca_file`` (or the
system's CAs) and name ``mqtt.host``; a failed handshake is one ERROR line
naming the certificate problem, then retries like any other outage. TLS is
never dropped for plain TCP. The Last Will publishes a retained ``offline``;
every (re)connect publishes a retained ``online`` and re-subscribes to the
command topic and any topic ``watch``ed (Home Assistant's status). Callbacks
only hand values to the daemon's queue and never let an exception escape
into paho's thread.
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from drivers.logfmt import log_event
from gateway.config import Config, MqttSection, exposed_secret_files, ssl_error_text
from gateway.contract import Topics

log = logging.getLogger("pumpgw.mqtt")

QOS = 1
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
MAX_COMMAND_BYTES = 4096
MAX_INFLIGHT = 100  # QoS 1 messages on the wire awaiting PUBACK (paho queues the rest)
# OpenSSL's verify codes for a certificate that does not name the host we dialled
_NAME_MISMATCH = {62, 64}  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


@dataclass(frozen=True, slots=True)
class BrokerConnected:
    pass


@dataclass(frozen=True, slots=True)
class BrokerDisconnected:
    reason: str


@dataclass(frozen=True, slots=True)
class CommandReceived:
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class PublishAcked:
    """The broker acknowledged (PUBACK) the message with this paho ``mid``."""

    mid: int


BrokerEvent = BrokerConnected | BrokerDisconnected | CommandReceived | PublishAcked


class MqttLink:
    def __init__(
        self,
        config: Config,
        password: str | None,
        sink: Callable[[BrokerEvent], None],
    ) -> None:
        self.config = config
        self.topics = Topics(config.mqtt.topic_prefix, config.gateway.id)
        self._sink = sink
        self._connected = threading.Event()
        self.last_error: str | None = None  # kept after a reconnect, for info
        self._failure_logged: str | None = None
        # A connection the broker drops before its CONNACK (a TLS port dialled
        # without TLS, a refused client certificate) reaches neither on_connect
        # nor on_connect_fail: on_disconnect tells it by this flag.
        self._connack_seen = False
        self._stopping = False
        self.disconnects = 0
        # Topics besides cmd/ack whose messages go to the daemon (Home Assistant's
        # status); replaced by watch() from the main thread, read on every connect.
        self._watch_lock = threading.Lock()
        self._watched: frozenset[str] = frozenset()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        client.suppress_exceptions = True  # a bug in a callback must not end the loop
        if config.mqtt.username is not None:
            client.username_pw_set(config.mqtt.username, password)
        client.will_set(self.topics.status, b"offline", qos=QOS, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        client.max_inflight_messages_set(MAX_INFLIGHT)
        self._client = client
        # Set when the TLS files cannot be loaded (changed since the config was
        # checked): the link then never connects rather than go without TLS.
        self._tls_error: str | None = None
        if config.mqtt.tls:
            self._set_up_tls()

    def _set_up_tls(self) -> None:
        mq = self.config.mqtt
        try:
            # PROTOCOL_TLS_CLIENT: TLS 1.2 at least, CERT_REQUIRED, check_hostname.
            self._client.tls_set(
                ca_certs=str(mq.ca_file) if mq.ca_file is not None else None,
                certfile=str(mq.cert_file) if mq.cert_file is not None else None,
                keyfile=str(mq.key_file) if mq.key_file is not None else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
                keyfile_password="",  # never a passphrase prompt on a terminal
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._tls_error = (
                f"TLS set-up failed: {_describe_error(exc)}; not connecting (fix, then restart)"
            )
            return
        self._client.tls_insecure_set(False)  # keeps hostname checking on

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        mq = self.config.mqtt
        for key, path, mode in exposed_secret_files(self.config):
            log_event(
                log,
                "secret_file_readable_by_others",
                logging.WARNING,
                key=key,
                path=path,
                mode=f"{mode:04o}",
                fix=f"chmod 600 {path}, owned by the gateway's user",
            )
        if self._tls_error is not None:
            self._report_failure(self._tls_error)
            return
        log_event(
            log,
            "mqtt_connecting",
            host=mq.host,
            port=mq.port,
            tls="on" if mq.tls else "off",
            client_id=self.config.client_id,
            username=mq.username,
        )
        self._client.connect_async(mq.host, mq.port, keepalive=mq.keepalive_s)
        self._client.loop_start()

    def loop_alive(self) -> bool:
        """Whether paho's network thread (``loop_start``) is running.

        paho has no public liveness check, so this reads its private
        ``Client._thread`` (None before ``loop_start`` and once the loop has
        returned; paho 2.x, pinned below 3 in pyproject.toml). If a paho
        release renames it, the daemon logs ``watchdog_ignores_mqtt`` at start
        and tests/test_systemd.py fails on that line.
        """
        thread = getattr(self._client, "_thread", None)
        return isinstance(thread, threading.Thread) and thread.is_alive()

    def watch(self, topics: Iterable[str]) -> None:
        """Also hand messages on ``topics`` to the daemon (as ``CommandReceived``),
        from now on and after every reconnect; replaces the topics watched before."""
        new = frozenset(topics)
        with self._watch_lock:
            old, self._watched = self._watched, new
        if not self.connected:
            return  # _on_connect subscribes
        for topic in sorted(old - new):
            self._client.unsubscribe(topic)
        for topic in sorted(new - old):
            self._client.subscribe(topic, qos=QOS)

    def publish(self, topic: str, payload: bytes, retain: bool) -> mqtt.MQTTMessageInfo:
        """QoS 1; ``PublishAcked(mid)`` follows the broker's PUBACK. paho keeps
        a message it has taken in memory and resends it after a reconnect."""
        return self._client.publish(topic, payload, qos=QOS, retain=retain)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Publish the retained ``offline``, wait for it (bounded), disconnect."""
        self._stopping = True
        if self.connected:
            info = self.publish(self.topics.status, b"offline", retain=True)
            try:
                info.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError) as exc:
                log_event(log, "mqtt_offline_not_sent", logging.WARNING, error=exc)
        self._client.disconnect()
        self._client.loop_stop()

    # --- paho callbacks (network thread) ---------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            self._connack_seen = True
            if reason.is_failure:
                self._report_failure(f"broker refused the connection: {reason}")
                return
            self._failure_logged = None
            self._connected.set()
            log_event(log, "mqtt_connected", host=self.config.mqtt.host)
            client.publish(self.topics.status, b"online", qos=QOS, retain=True)
            with self._watch_lock:
                watched = sorted(self._watched)
            for topic in [self.topics.cmd_ack, *watched]:
                client.subscribe(topic, qos=QOS)
            self._sink(BrokerConnected())
        except Exception:
            log.exception("event=mqtt_callback_failed callback=on_connect")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError:` around the connect
        # attempt, so the exception is still the one being handled.
        try:
            error = _connect_failure(sys.exc_info()[1], self.config.mqtt)
            self._report_failure(error)
        except Exception:
            log.exception("event=mqtt_callback_failed callback=on_connect_fail")

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            was_connected = self._connected.is_set()
            self._connected.clear()
            if was_connected:
                self.disconnects += 1
                self.last_error = f"disconnected: {reason}"
                log_event(log, "mqtt_disconnected", logging.WARNING, reason=reason)
                self._sink(BrokerDisconnected(str(reason)))
            elif not self._connack_seen and not self._stopping:
                self._report_failure(self._closed_before_connack())
            self._connack_seen = False
        except Exception:
            log.exception("event=mqtt_callback_failed callback=on_disconnect")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._sink(CommandReceived(message.topic, bytes(message.payload)))
        except Exception:
            log.exception("event=mqtt_callback_failed callback=on_message")

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            self._sink(PublishAcked(mid))
        except Exception:
            log.exception("event=mqtt_callback_failed callback=on_publish")

    def _closed_before_connack(self) -> str:
        mq = self.config.mqtt
        if not mq.tls:
            hint = "is mqtt.port a TLS listener? then set mqtt.tls = true"
        elif mq.cert_file is None:
            hint = "does the broker require a client certificate? mqtt.cert_file, mqtt.key_file"
        else:
            hint = "does the broker accept this client certificate?"
        return f"the broker closed the connection before answering CONNECT ({hint})"

    def _report_failure(self, error: str) -> None:
        """One log line per change of error, not one per retry."""
        self.last_error = error
        if error != self._failure_logged:
            self._failure_logged = error
            log_event(log, "mqtt_connect_failed", logging.ERROR, error=error)
            self._sink(BrokerDisconnected(error))


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return ssl_error_text(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _connect_failure(exc: BaseException | None, mq: MqttSection) -> str:
    """Why a connection attempt failed, for the log and ``info`` (no secrets)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        problem = exc.verify_message or _describe_error(exc)
        if exc.verify_code in _NAME_MISMATCH:
            hint = "mqtt.host must be a name or address the certificate lists"
        elif mq.ca_file is not None:
            hint = "is mqtt.ca_file the CA that signed the broker's certificate?"
        else:
            hint = "the system's CAs do not trust it: set mqtt.ca_file"
        return f"TLS: broker certificate rejected: {problem} ({hint})"
    if mq.tls and isinstance(exc, ConnectionResetError | ssl.SSLEOFError | ssl.SSLZeroReturnError):
        # A plain MQTT listener drops a TLS ClientHello as a malformed packet.
        return (
            "TLS handshake failed: the broker closed the connection "
            "(is mqtt.port its TLS listener?)"
        )
    if isinstance(exc, ssl.SSLError):
        text = f"TLS handshake failed: {_describe_error(exc)}"
        if exc.reason == "WRONG_VERSION_NUMBER":
            text += " (is mqtt.port the broker's TLS listener?)"
        return text
    if isinstance(exc, OSError):
        return f"cannot reach the broker: {_describe_error(exc)}"
    return "cannot reach the broker"
