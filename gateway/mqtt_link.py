"""The broker side: a paho-mqtt 2.x client with its own network thread.

``connect_async`` + ``loop_start``: a broker that is down at start, or goes
away later, never stops the daemon; paho reconnects with a capped backoff.
The Last Will publishes a retained ``offline``; every (re)connect publishes a
retained ``online`` and re-subscribes to the command topic. Callbacks only
hand values to the daemon's queue and never let an exception escape into
paho's thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from drivers.logfmt import log_event
from gateway.config import Config
from gateway.contract import Topics

log = logging.getLogger("pumpgw.mqtt")

QOS = 1
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
MAX_COMMAND_BYTES = 4096
MAX_INFLIGHT = 100  # QoS 1 messages on the wire awaiting PUBACK (paho queues the rest)


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
        self.disconnects = 0
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

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        mq = self.config.mqtt
        log_event(
            log, "mqtt_connecting", host=mq.host, port=mq.port, client_id=self.config.client_id
        )
        self._client.connect_async(mq.host, mq.port, keepalive=mq.keepalive_s)
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool) -> mqtt.MQTTMessageInfo:
        """QoS 1; ``PublishAcked(mid)`` follows the broker's PUBACK. paho keeps
        a message it has taken in memory and resends it after a reconnect."""
        return self._client.publish(topic, payload, qos=QOS, retain=retain)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Publish the retained ``offline``, wait for it (bounded), disconnect."""
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
            if reason.is_failure:
                self._report_failure(f"broker refused the connection: {reason}")
                return
            self._failure_logged = None
            self._connected.set()
            log_event(log, "mqtt_connected", host=self.config.mqtt.host)
            client.publish(self.topics.status, b"online", qos=QOS, retain=True)
            client.subscribe(self.topics.cmd_ack, qos=QOS)
            self._sink(BrokerConnected())
        except Exception:
            log.exception("event=mqtt_callback_failed callback=on_connect")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        try:
            self._report_failure("cannot reach the broker")
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

    def _report_failure(self, error: str) -> None:
        """One log line per change of error, not one per retry."""
        self.last_error = error
        if error != self._failure_logged:
            self._failure_logged = error
            log_event(log, "mqtt_connect_failed", logging.ERROR, error=error)
            self._sink(BrokerDisconnected(error))
