"""MQTT test helpers: connected paho clients and a recording ``Subscriber``.

All waiting is done on ``threading.Condition``/``Event`` objects signalled from paho's
network thread; timeouts exist only so a broken test fails instead of hanging.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from gateway.broker import BrokerEndpoint

DEFAULT_TIMEOUT = 10.0

# Type of the ``mqtt_client_factory`` fixture:
#   factory(endpoint, *, client_id="", clean_session=True, configure=None) -> mqtt.Client
MqttClientFactory = Callable[..., mqtt.Client]


class Received(NamedTuple):
    """One message as seen by a subscriber."""

    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class _ConnectTracker:
    """Counts successful CONNACKs for a client; lets callers wait for the n-th one."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.connects = 0
        self.last_failure: str | None = None

    def on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        with self.cond:
            if reason_code.is_failure:
                self.last_failure = str(reason_code)
            else:
                self.connects += 1
            self.cond.notify_all()

    def wait(self, count: int, timeout: float, what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.connects >= count, timeout):
                raise AssertionError(
                    f"{what}: expected {count} successful CONNACK(s) within {timeout}s, "
                    f"got {self.connects} (last failure: {self.last_failure})"
                )


_TRACKERS: weakref.WeakKeyDictionary[mqtt.Client, _ConnectTracker] = weakref.WeakKeyDictionary()


def make_client(client_id: str = "", *, clean_session: bool = True) -> mqtt.Client:
    """A paho client with the VERSION2 callback API and quick reconnects."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
    )
    client.reconnect_delay_set(min_delay=1, max_delay=2)
    return client


def connect_client(
    endpoint: BrokerEndpoint,
    *,
    client_id: str = "",
    clean_session: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    configure: Callable[[mqtt.Client], None] | None = None,
) -> mqtt.Client:
    """Connect a client to ``endpoint``, start its network loop, wait for CONNACK.

    ``configure`` runs before connecting (set a will, extra callbacks, ...).  The client
    reconnects automatically if the broker goes away; ``wait_connected(client, n)``
    waits for the n-th successful connection.
    """
    client = make_client(client_id, clean_session=clean_session)
    tracker = _ConnectTracker()
    client.on_connect = tracker.on_connect
    _TRACKERS[client] = tracker
    if configure is not None:
        configure(client)
    client.connect(endpoint.host, endpoint.port, keepalive=30)
    client.loop_start()
    try:
        tracker.wait(1, timeout, f"client {client_id!r} -> {endpoint.host}:{endpoint.port}")
    except BaseException:
        client.loop_stop()
        raise
    return client


def wait_connected(client: mqtt.Client, count: int, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Wait until a client from ``connect_client`` has connected ``count`` times in total."""
    tracker = _TRACKERS.get(client)
    if tracker is None:
        raise TypeError("wait_connected() needs a client made by connect_client()")
    tracker.wait(count, timeout, "client reconnect")


def close_client(client: mqtt.Client) -> None:
    """Disconnect and stop the network thread; safe on already-closed clients."""
    try:
        client.disconnect()
    finally:
        client.loop_stop()


def publish(
    client: mqtt.Client,
    topic: str,
    payload: bytes | str | dict[str, Any] | list[Any],
    *,
    qos: int = 1,
    retain: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Publish and, for QoS > 0, wait until the broker acknowledged it."""
    if isinstance(payload, dict | list):
        payload = json.dumps(payload, separators=(",", ":"))
    info = client.publish(topic, payload, qos=qos, retain=retain)
    info.wait_for_publish(timeout)
    if not info.is_published():
        raise AssertionError(f"publish to {topic!r} not acknowledged within {timeout}s")


class Subscriber:
    """A paho client that records every message matching ``topic_filter`` (QoS 1).

    It (re)subscribes on every connect, so it keeps recording across broker restarts.
    Usable as a context manager; ``start()`` returns once the SUBACK arrived.
    """

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        topic_filter: str = "#",
        *,
        client_id: str = "",
        qos: int = 1,
        clean_session: bool = True,
    ) -> None:
        self.endpoint = endpoint
        self.topic_filter = topic_filter
        self.qos = qos
        self._cond = threading.Condition()
        self._messages: list[Received] = []
        self._subacks = 0
        self._client = make_client(client_id, clean_session=clean_session)
        self._tracker = _ConnectTracker()
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._started = False

    # -- lifecycle ---------------------------------------------------------------

    @property
    def client(self) -> mqtt.Client:
        return self._client

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> Subscriber:
        self._client.connect(self.endpoint.host, self.endpoint.port, keepalive=30)
        self._client.loop_start()
        self._started = True
        self.wait_subscribed(1, timeout)
        return self

    def close(self) -> None:
        if self._started:
            self._started = False
            close_client(self._client)

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_subscribed(self, count: int = 1, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait for the ``count``-th SUBACK (one per (re)connection)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._subacks >= count, timeout):
                raise AssertionError(
                    f"subscriber {self.topic_filter!r}: {self._subacks} SUBACK(s) within "
                    f"{timeout}s, wanted {count} (connects={self._tracker.connects}, "
                    f"last failure={self._tracker.last_failure})"
                )

    # -- paho callbacks (network thread) -----------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        self._tracker.on_connect(client, userdata, flags, reason_code, properties)
        if not reason_code.is_failure:
            client.subscribe(self.topic_filter, qos=self.qos)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Any,
    ) -> None:
        with self._cond:
            if any(rc.is_failure for rc in reason_codes):
                self._tracker.last_failure = f"SUBACK {[str(rc) for rc in reason_codes]}"
            else:
                self._subacks += 1
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self._messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    # -- queries -----------------------------------------------------------------

    def messages(self, topic_filter: str | None = None) -> list[Received]:
        """Recorded messages (in arrival order) whose topic matches ``topic_filter``."""
        with self._cond:
            snapshot = list(self._messages)
        if topic_filter is None:
            return snapshot
        return [m for m in snapshot if mqtt.topic_matches_sub(topic_filter, m.topic)]

    def json_payloads(self, topic: str) -> list[Any]:
        """Decoded JSON payloads of the messages matching ``topic`` (a topic or filter)."""
        return [m.json() for m in self.messages(topic)]

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def __iter__(self) -> Iterator[Received]:
        return iter(self.messages())

    def __len__(self) -> int:
        with self._cond:
            return len(self._messages)

    def wait_for(
        self,
        predicate: Callable[[Received], bool],
        timeout: float = DEFAULT_TIMEOUT,
        *,
        start: int = 0,
    ) -> Received:
        """Block until a recorded message (index >= ``start``) satisfies ``predicate``.

        Messages already received count.  On timeout raises AssertionError listing the
        last 20 topics received.
        """
        found: list[Received] = []

        def check() -> bool:
            for m in self._messages[start:]:
                if predicate(m):
                    found.append(m)
                    return True
            return False

        with self._cond:
            if self._cond.wait_for(check, timeout):
                return found[0]
            total = len(self._messages)
            recent = [f"{m.topic} (retain={m.retain})" for m in self._messages[-20:]]
        listing = "\n  ".join(recent) if recent else "(nothing)"
        raise AssertionError(
            f"subscriber {self.topic_filter!r}: no matching message within {timeout}s; "
            f"received {total} message(s), last {len(recent)}:\n  {listing}"
        )

    def wait_for_topic(self, topic_filter: str, timeout: float = DEFAULT_TIMEOUT) -> Received:
        """Shorthand: the first message whose topic matches ``topic_filter``."""
        return self.wait_for(lambda m: mqtt.topic_matches_sub(topic_filter, m.topic), timeout)
