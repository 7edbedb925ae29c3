"""LocalBroker: mosquitto subprocess and amqtt thread, retained QoS 1, restart, cleanup."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest
from broker_fixtures import MqttClientFactory, Subscriber, publish, wait_connected

from gateway import broker as broker_mod
from gateway.broker import BrokerEndpoint, BrokerError, LocalBroker, free_loopback_port


def _topic(name: str) -> str:
    return f"pumpgw/test/{uuid.uuid4().hex[:8]}/{name}"


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except OSError:
        return True


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _retained_round_trip(endpoint: BrokerEndpoint, factory: MqttClientFactory) -> None:
    topic = _topic("status")
    publisher = factory(endpoint, client_id=f"pub-{uuid.uuid4().hex[:6]}")
    publish(publisher, topic, {"state": "ok", "seq": 1}, qos=1, retain=True)

    # A client that subscribes only after the publish gets the retained copy.
    with Subscriber(endpoint, "pumpgw/test/#") as late:
        msg = late.wait_for(lambda m: m.topic == topic)
        assert msg.retain is True
        assert msg.json() == {"state": "ok", "seq": 1}
        assert late.json_payloads(topic) == [{"state": "ok", "seq": 1}]


def test_mosquitto_retained_qos1_reaches_late_subscriber(
    mosquitto: BrokerEndpoint, mqtt_client_factory: MqttClientFactory
) -> None:
    assert mosquitto.kind == "mosquitto"
    assert mosquitto.host == "127.0.0.1"
    _retained_round_trip(mosquitto, mqtt_client_factory)


def test_mosquitto_restart_keeps_port_and_clients_reconnect(
    mosquitto_broker: LocalBroker, mqtt_client_factory: MqttClientFactory
) -> None:
    endpoint = mosquitto_broker.endpoint
    old_pid = mosquitto_broker.pid
    assert old_pid is not None
    publisher = mqtt_client_factory(endpoint, client_id="pub-restart")
    topic = _topic("live")

    with Subscriber(endpoint, "pumpgw/test/#", client_id="sub-restart") as sub:
        publish(publisher, topic, b"before")
        sub.wait_for(lambda m: m.payload == b"before")

        assert mosquitto_broker.restart() == endpoint
        assert mosquitto_broker.endpoint.port == endpoint.port
        assert mosquitto_broker.pid not in (None, old_pid)
        assert _process_gone(old_pid)

        # Both paho clients reconnect on their own; the subscriber re-subscribes.
        wait_connected(publisher, 2)
        sub.wait_subscribed(2)
        publish(publisher, topic, b"after")
        msg = sub.wait_for(lambda m: m.payload == b"after")
        assert msg.topic == topic
        assert msg.retain is False
        assert [m.payload for m in sub.messages(topic)] == [b"before", b"after"]


def test_mosquitto_persistence_keeps_retained_across_restart(
    tmp_path: Path, mqtt_client_factory: MqttClientFactory
) -> None:
    if broker_mod.find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run `apt-get install -y mosquitto`")
    db = tmp_path / "db"
    log_path = tmp_path / "mosquitto.log"
    topic = _topic("persisted")
    with LocalBroker(prefer="mosquitto", persistence_dir=db, log_path=log_path) as broker:
        publisher = mqtt_client_factory(broker.endpoint)
        publish(publisher, topic, b"keep-me", retain=True)
        broker.restart()
        with Subscriber(broker.endpoint, topic) as sub:
            msg = sub.wait_for(lambda m: m.topic == topic)
            assert (msg.payload, msg.retain) == (b"keep-me", True)
    assert (db / "mosquitto.db").is_file()
    assert "running" in log_path.read_text()  # the caller's log file is kept


def test_mosquitto_stop_reaps_process_and_removes_temp_files() -> None:
    if broker_mod.find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run `apt-get install -y mosquitto`")
    broker = LocalBroker(prefer="mosquitto")
    endpoint = broker.start()
    pid, workdir = broker.pid, broker.workdir
    assert pid is not None and workdir is not None and workdir.is_dir()

    broker.stop()
    broker.stop()  # idempotent

    assert _process_gone(pid)
    assert not workdir.exists()
    assert broker.pid is None
    assert _refuses_connections(endpoint.port)
    with pytest.raises(BrokerError):
        _ = broker.endpoint


def test_amqtt_retained_qos1_round_trip(mqtt_client_factory: MqttClientFactory) -> None:
    broker = LocalBroker(prefer="amqtt")
    with broker:
        endpoint = broker.endpoint
        assert endpoint.kind == "amqtt"
        assert endpoint.port > 0
        thread = broker.thread
        assert thread is not None and thread.is_alive()
        _retained_round_trip(endpoint, mqtt_client_factory)
    assert not thread.is_alive()
    assert broker.thread is None
    assert _refuses_connections(endpoint.port)
    broker.stop()  # idempotent


def test_amqtt_honours_explicit_port() -> None:
    port = free_loopback_port()
    with LocalBroker(prefer="amqtt", port=port) as broker:
        assert broker.endpoint == BrokerEndpoint("127.0.0.1", port, None, "amqtt")


def test_mosquitto_explicit_port_in_use_is_a_clear_error() -> None:
    if broker_mod.find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run `apt-get install -y mosquitto`")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = LocalBroker(prefer="mosquitto", port=port)
        with pytest.raises(BrokerError, match=f"127.0.0.1:{port} is in use"):
            broker.start()
        assert broker.pid is None and broker.workdir is None


def test_mosquitto_early_exit_reports_log_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "mosquitto"
    fake.write_text("#!/bin/sh\necho 'Error: fake broker refused to start' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(broker_mod, "find_mosquitto", lambda: str(fake))
    broker = LocalBroker(prefer="mosquitto")
    with pytest.raises(BrokerError, match="status 3") as excinfo:
        broker.start()
    assert "fake broker refused to start" in str(excinfo.value)
    assert broker.pid is None and broker.workdir is None
