"""Outbox -> real mosquitto: order, back-pressure, PUBACK bookkeeping, a full disk."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker_fixtures import Subscriber

from gateway.broker import BrokerEndpoint
from gateway.config import parse_config
from gateway.delivery import MAX_IN_FLIGHT, Delivery
from gateway.mqtt_link import BrokerConnected, BrokerEvent, MqttLink, PublishAcked
from gateway.outbox import Outbox, Outgoing

TIMEOUT_S = 30.0


class Wired:
    """A Delivery whose MqttLink events are handled the way the daemon does."""

    def __init__(self, endpoint: BrokerEndpoint, outbox: Outbox) -> None:
        config = parse_config(
            {
                "serial": {"port": "unused"},
                "gateway": {"id": "deliv"},
                "mqtt": {"host": endpoint.host, "port": endpoint.port},
            }
        )
        self.events: queue.SimpleQueue[BrokerEvent] = queue.SimpleQueue()
        self.mqtt = MqttLink(config, None, self.events.put)
        self.delivery = Delivery(outbox, self.mqtt)

    def run_until(self, done: object, what: str) -> None:
        """Handle link events until ``done()`` holds (deadline only against hangs)."""
        while not done():  # type: ignore[operator]
            try:
                event = self.events.get(timeout=TIMEOUT_S)
            except queue.Empty:
                raise AssertionError(f"no broker event while waiting for {what}") from None
            if isinstance(event, PublishAcked):
                self.delivery.acked(event.mid)
            self.delivery.pump()

    def wait_connected(self) -> None:
        while not isinstance(self.events.get(timeout=TIMEOUT_S), BrokerConnected):
            pass


@pytest.fixture
def wired(tmp_path: Path, mosquitto: BrokerEndpoint) -> Iterator[Wired]:
    w = Wired(mosquitto, Outbox(tmp_path / "outbox.sqlite3", 64 * 1024 * 1024))
    yield w
    w.mqtt.stop()


def test_backlog_is_delivered_in_order_with_bounded_in_flight(
    wired: Wired, mosquitto: BrokerEndpoint
) -> None:
    n = 3 * MAX_IN_FLIGHT
    wired.delivery.store(
        [Outgoing("deliv/events", f"{i}".encode(), retain=False) for i in range(n)], None
    )
    with Subscriber(mosquitto, "deliv/#") as sub:
        wired.mqtt.start()
        wired.wait_connected()
        wired.delivery.pump()
        assert wired.delivery.status().in_flight <= MAX_IN_FLIGHT
        wired.run_until(lambda: wired.delivery.idle, "the backlog to drain")
        sub.wait_for(lambda m: m.payload == f"{n - 1}".encode(), TIMEOUT_S)
        assert [int(m.payload) for m in sub.messages("deliv/events")] == list(range(n))
    wired.delivery.pump()  # deletes the last acknowledged rows
    assert wired.delivery.status().pending == 0


def test_full_disk_is_loud_and_messages_still_go_out(
    wired: Wired, mosquitto: BrokerEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = wired.delivery.outbox
    outbox.write([Outgoing("deliv/events", b"before", retain=False)])
    # A real SQLITE_FULL: cap the database at the pages it already has.
    pages = outbox._db.execute("PRAGMA page_count").fetchone()[0]
    outbox._db.execute(f"PRAGMA max_page_count = {pages}")
    with Subscriber(mosquitto, "deliv/#") as sub:
        wired.mqtt.start()
        wired.wait_connected()
        big = [Outgoing("deliv/events", b"x" * 50_000, retain=False)]
        assert wired.delivery.store(big, None) is False
        assert "outbox_write_failed" in caplog.text
        status = wired.delivery.status()
        assert status.error is not None and "full" in status.error
        sub.wait_for(lambda m: m.payload == big[0].payload, TIMEOUT_S)  # from memory
        wired.run_until(lambda: wired.delivery.idle, "the stored row to go out")
        sub.wait_for(lambda m: m.payload == b"before", TIMEOUT_S)
