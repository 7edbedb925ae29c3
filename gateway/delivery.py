"""From the outbox to the broker, and nothing forgotten before its PUBACK.

``store`` writes a batch to the durable outbox first. ``pump`` hands stored
messages to paho, oldest first, while the broker is connected and fewer than
``MAX_IN_FLIGHT`` await their PUBACK (back-pressure: paho's own queue stays
small and ``MQTT_ERR_QUEUE_SIZE`` is never hit). ``acked`` deletes a row once
the broker acknowledged exactly that message. paho resends what is in flight
after a reconnect; after a restart everything still stored is sent again,
so delivery is at least once and consumers drop copies by id.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from drivers.logfmt import log_event
from gateway.mqtt_link import MqttLink
from gateway.outbox import Outbox, Outgoing

log = logging.getLogger("pumpgw.delivery")

MAX_IN_FLIGHT = 500


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    pending: int
    bytes: int
    in_flight: int
    over_limit: bool
    error: str | None


class Delivery:
    def __init__(self, outbox: Outbox, mqtt_link: MqttLink) -> None:
        self.outbox = outbox
        self.mqtt = mqtt_link
        self._in_flight: dict[int, int] = {}  # paho mid -> outbox row id
        self._handed_up_to = 0  # rows up to this id were given to paho by this process
        self._acked: list[int] = []
        self.error: str | None = None

    def store(
        self,
        messages: Sequence[Outgoing],
        engine_snapshot: str | None,
        discovery_record: str | None = None,
    ) -> bool:
        """Durably store a batch; False (and published from memory) if the disk failed."""
        try:
            self.outbox.write(messages, engine_snapshot, discovery_record)
        except sqlite3.Error as exc:
            # Never silently: say it loudly, report it in info, and still try
            # to deliver from memory (paho queues while disconnected).
            self.error = f"outbox write failed: {exc}"
            log_event(log, "outbox_write_failed", logging.ERROR, error=exc, messages=len(messages))
            for m in messages:
                self.mqtt.publish(m.topic, m.payload, m.retain)
            return False
        if self.error is not None:
            log_event(log, "outbox_write_recovered")
            self.error = None
        if self.outbox.over_limit:
            log_event(
                log,
                "outbox_over_limit",
                logging.ERROR,
                bytes=self.outbox.bytes,
                limit=self.outbox.max_bytes,
                note="alerts and events are kept; check the broker link",
            )
        return True

    def acked(self, mid: int) -> None:
        row_id = self._in_flight.pop(mid, None)
        if row_id is not None:
            self._acked.append(row_id)

    def pump(self) -> None:
        if self._acked:
            try:
                self.outbox.delete(self._acked)
                self._acked.clear()
            except sqlite3.Error as exc:  # kept for the next try; a copy may be resent
                log_event(log, "outbox_delete_failed", logging.ERROR, error=exc)
        if not self.mqtt.connected:
            return
        room = MAX_IN_FLIGHT - len(self._in_flight)
        if room <= 0:
            return
        for row in self.outbox.pending(room, after_id=self._handed_up_to):
            info = self.mqtt.publish(row.topic, row.payload, row.retain)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                # e.g. MQTT_ERR_QUEUE_SIZE: keep it stored, try again later
                log_event(log, "publish_deferred", logging.WARNING, rc=info.rc, topic=row.topic)
                break
            self._in_flight[info.mid] = row.row_id
            self._handed_up_to = row.row_id

    @property
    def idle(self) -> bool:
        """Nothing in flight and nothing stored that was not handed over."""
        return not self._in_flight and not self.outbox.pending(1, after_id=self._handed_up_to)

    def status(self) -> DeliveryStatus:
        return DeliveryStatus(
            pending=self.outbox.rows,
            bytes=self.outbox.bytes,
            in_flight=len(self._in_flight),
            over_limit=self.outbox.over_limit,
            error=self.error,
        )
