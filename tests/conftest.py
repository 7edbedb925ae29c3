"""Shared fixtures: a real mosquitto broker and connected paho clients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from broker_fixtures import MqttClientFactory, close_client, connect_client

from gateway.broker import BrokerEndpoint, LocalBroker, find_mosquitto


@pytest.fixture
def mosquitto_broker() -> Iterator[LocalBroker]:
    """A running mosquitto LocalBroker (for tests that need restart()); stopped after."""
    if find_mosquitto() is None:
        pytest.fail(
            "mosquitto is not installed; these tests need a real broker. "
            "Run `apt-get install -y mosquitto`.",
            pytrace=False,
        )
    broker = LocalBroker(prefer="mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto(mosquitto_broker: LocalBroker) -> BrokerEndpoint:
    """Endpoint of a fresh mosquitto on a free loopback port."""
    return mosquitto_broker.endpoint


@pytest.fixture
def mqtt_client_factory() -> Iterator[MqttClientFactory]:
    """``factory(endpoint, client_id="", clean_session=True, configure=None)`` -> a paho
    client (VERSION2 callbacks) that is connected, looping, and closed at teardown."""
    clients: list[mqtt.Client] = []

    def factory(endpoint: BrokerEndpoint, **kwargs: Any) -> mqtt.Client:
        client = connect_client(endpoint, **kwargs)
        clients.append(client)
        return client

    yield factory
    for client in reversed(clients):
        close_client(client)
