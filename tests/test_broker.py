"""LocalBroker: mosquitto subprocess and amqtt thread, retained QoS 1, restart, cleanup."""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import threading
import uuid
from pathlib import Path

import pytest
from broker_fixtures import (
    MqttClientFactory,
    Subscriber,
    close_client,
    make_client,
    publish,
    wait_connected,
)

from gateway import broker as broker_mod
from gateway.broker import BrokerEndpoint, BrokerError, LocalBroker, free_loopback_port

# CONNACK refusals for bad credentials, as paho names them.  mosquitto 2.0.11 answers
# 5 "not authorized" for a missing user name *and* for a wrong password (never 4).
REFUSED = {"Not authorized", "Bad user name or password"}


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


def _need_mosquitto() -> None:
    if broker_mod.find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run `apt-get install -y mosquitto`")


def _connack(
    endpoint: BrokerEndpoint, username: str | None = None, password: str | None = None
) -> str:
    """Connect once (no retries) and return paho's name of the CONNACK reason code."""
    client = make_client()
    if username is not None:
        client.username_pw_set(username, password)
    answered = threading.Event()
    codes: list[str] = []

    def on_connect(*args: object) -> None:
        codes.append(str(args[3]))  # (client, userdata, flags, reason_code, properties)
        answered.set()

    client.on_connect = on_connect
    client.connect(endpoint.host, endpoint.port, keepalive=30)
    client.loop_start()
    try:
        assert answered.wait(10.0), f"no CONNACK from {endpoint}"
    finally:
        close_client(client)
    return codes[0]


def _qos1_round_trip_as(
    endpoint: BrokerEndpoint, factory: MqttClientFactory, username: str, password: str
) -> None:
    topic = _topic("auth")
    publisher = factory(endpoint, configure=lambda c: c.username_pw_set(username, password))
    sub = Subscriber(endpoint, topic, qos=1)
    sub.client.username_pw_set(username, password)
    with sub:
        publish(publisher, topic, {"user": username}, qos=1)
        assert sub.wait_for(lambda m: m.topic == topic).json() == {"user": username}


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


# ------------------------------------------------------------------ password authentication


def test_mosquitto_users_refuse_anonymous_and_wrong_password(
    mqtt_client_factory: MqttClientFactory,
) -> None:
    _need_mosquitto()
    with LocalBroker(prefer="mosquitto", users={"gw": "right", "ops": "s3cret:x"}) as broker:
        endpoint = broker.endpoint
        assert _connack(endpoint) in REFUSED
        assert _connack(endpoint, "gw", "wrong") in REFUSED
        assert _connack(endpoint, "gw") in REFUSED  # user name without password
        assert _connack(endpoint, "nobody", "right") in REFUSED
        assert _connack(endpoint, "gw", "right") == "Success"
        assert _connack(endpoint, "ops", "s3cret:x") == "Success"
        _qos1_round_trip_as(endpoint, mqtt_client_factory, "gw", "right")

        workdir = broker.workdir
        assert workdir is not None
        passwd = workdir / "passwd"
        conf = (workdir / "mosquitto.conf").read_text()
        assert "allow_anonymous false" in conf and f"password_file {passwd}" in conf
        assert "allow_anonymous true" not in conf
        # Hashed by mosquitto_passwd, private to the owner (mosquitto runs as us/root).
        lines = passwd.read_text().splitlines()
        assert [line.split(":", 1)[0] for line in lines] == ["gw", "ops"]
        assert all(line.split(":", 1)[1].startswith("$7$") for line in lines)
        assert "right" not in passwd.read_text()
        assert stat.S_IMODE(passwd.stat().st_mode) == 0o600
        assert passwd.stat().st_uid == os.geteuid()
        assert not (workdir / "passwd.new").exists()
        log_text = (workdir / "mosquitto.log").read_text()
        assert "not authorised" in log_text
        # No complaints about the password file (mosquitto >= 2.0.16 warns about
        # world-readable or foreign-owned files; 2.0.11 fails hard if it cannot read it).
        assert "pwfile" not in log_text and "password file" not in log_text.lower()
        assert "Warning: File" not in log_text
    assert not workdir.exists()


def test_mosquitto_set_users_then_restart_changes_password(
    mqtt_client_factory: MqttClientFactory,
) -> None:
    _need_mosquitto()
    with LocalBroker(prefer="mosquitto", users={"gw": "right"}) as broker:
        endpoint = broker.endpoint
        old_pid = broker.pid
        assert _connack(endpoint, "gw", "right") == "Success"
        broker.set_users({"gw": "rotated"})
        assert _connack(endpoint, "gw", "right") == "Success"  # not before restart()
        assert broker.restart() == endpoint
        assert broker.pid not in (None, old_pid)
        assert _connack(endpoint, "gw", "right") in REFUSED
        assert _connack(endpoint, "gw", "rotated") == "Success"
        _qos1_round_trip_as(endpoint, mqtt_client_factory, "gw", "rotated")

        broker.set_users(None)  # back to anonymous
        broker.restart()
        assert _connack(endpoint) == "Success"

        broker.set_users({})  # nobody may connect
        broker.restart()
        assert _connack(endpoint, "gw", "rotated") in REFUSED
        assert _connack(endpoint) in REFUSED


def test_mosquitto_users_without_mosquitto_passwd(
    monkeypatch: pytest.MonkeyPatch, mqtt_client_factory: MqttClientFactory
) -> None:
    """Without the tool, LocalBroker writes mosquitto's $7$ (PBKDF2-SHA512) hashes itself."""
    _need_mosquitto()
    monkeypatch.setattr(broker_mod, "find_mosquitto_passwd", lambda: None)
    with LocalBroker(prefer="mosquitto", users={"gw": "right", "ops": "pässwörd"}) as broker:
        endpoint = broker.endpoint
        assert _connack(endpoint) in REFUSED
        assert _connack(endpoint, "gw", "wrong") in REFUSED
        assert _connack(endpoint, "ops", "pässwörd") == "Success"
        _qos1_round_trip_as(endpoint, mqtt_client_factory, "gw", "right")
        assert broker.workdir is not None
        passwd = broker.workdir / "passwd"
        assert stat.S_IMODE(passwd.stat().st_mode) == 0o600
        assert passwd.read_text().startswith("gw:$7$101$")


def test_mosquitto_passwd_failure_is_a_clear_error_without_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _need_mosquitto()
    fake = tmp_path / "mosquitto_passwd"
    fake.write_text("#!/bin/sh\necho 'Error: fake tool is broken' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(broker_mod, "find_mosquitto_passwd", lambda: str(fake))
    broker = LocalBroker(prefer="mosquitto", users={"gw": "hunter2"})
    with pytest.raises(BrokerError, match="fake tool is broken") as excinfo:
        broker.start()
    assert "hunter2" not in str(excinfo.value)
    assert "'gw'" in str(excinfo.value)
    assert broker.pid is None and broker.workdir is None


@pytest.mark.parametrize("name", ["", "a:b", "#gw", " gw", "gw\n", "g\x00w"])
def test_unusable_user_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="user name"):
        LocalBroker(users={name: "pw"})
    broker = LocalBroker()
    with pytest.raises(ValueError, match="user name"):
        broker.set_users({name: "pw"})


def test_amqtt_users_refuse_anonymous_and_wrong_password(
    mqtt_client_factory: MqttClientFactory,
) -> None:
    with LocalBroker(prefer="amqtt", users={"gw": "right"}) as broker:
        endpoint = broker.endpoint
        assert endpoint.kind == "amqtt"
        assert _connack(endpoint) in REFUSED
        assert _connack(endpoint, "gw", "wrong") in REFUSED
        assert _connack(endpoint, "nobody", "right") in REFUSED
        assert _connack(endpoint, "gw", "right") == "Success"
        _qos1_round_trip_as(endpoint, mqtt_client_factory, "gw", "right")
        workdir = broker.workdir
        assert workdir is not None
        passwd = workdir / "passwd"
        assert passwd.read_text().startswith("gw:$argon2")
        assert stat.S_IMODE(passwd.stat().st_mode) == 0o600

        broker.set_users({"gw": "rotated"})
        assert broker.restart() == endpoint
        assert _connack(endpoint, "gw", "right") in REFUSED
        assert _connack(endpoint, "gw", "rotated") == "Success"
    assert not workdir.exists()


def test_amqtt_without_users_has_no_workdir() -> None:
    with LocalBroker(prefer="amqtt") as broker:
        assert broker.workdir is None
        assert _connack(broker.endpoint) == "Success"


# ------------------------------------------------------------------ stop() never leaks


def test_mosquitto_stop_kills_a_broker_stuck_while_persisting(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mqtt_client_factory: MqttClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGTERM makes mosquitto save its database before exiting; if that never finishes
    (here: the process is frozen with SIGSTOP), stop() falls back to SIGKILL."""
    _need_mosquitto()
    monkeypatch.setattr(broker_mod, "STOP_TIMEOUT_S", 0.5)
    db = tmp_path / "db"
    topic = _topic("persisted")
    broker = LocalBroker(prefer="mosquitto", persistence_dir=db, users={"gw": "right"})
    endpoint = broker.start()
    publisher = mqtt_client_factory(endpoint, configure=lambda c: c.username_pw_set("gw", "right"))
    publish(publisher, topic, b"keep-me", retain=True)
    broker.restart()  # clean SIGTERM stop: the retained message is on disk now
    assert (db / "mosquitto.db").is_file()
    pid, workdir = broker.pid, broker.workdir
    assert pid is not None and workdir is not None

    os.kill(pid, signal.SIGSTOP)
    with caplog.at_level(logging.WARNING, logger="gateway.broker"):
        broker.stop()
    assert "reason=terminate_timeout" in caplog.text
    assert _process_gone(pid)
    assert not workdir.exists()
    assert broker.pid is None
    assert _refuses_connections(endpoint.port)

    # A broker killed mid-save leaves a usable database behind (mosquitto writes
    # mosquitto.db.new and renames it).
    with (
        LocalBroker(prefer="mosquitto", persistence_dir=db) as again,
        Subscriber(again.endpoint, topic) as sub,
    ):
        msg = sub.wait_for(lambda m: m.topic == topic)
        assert (msg.payload, msg.retain) == (b"keep-me", True)


def test_mosquitto_stop_and_restart_after_the_broker_was_killed(tmp_path: Path) -> None:
    _need_mosquitto()
    broker = LocalBroker(prefer="mosquitto", persistence_dir=tmp_path / "db")
    endpoint = broker.start()
    pid = broker.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert broker.restart() == endpoint  # reaps the dead one, starts a new one
    new_pid = broker.pid
    assert new_pid is not None and new_pid != pid
    assert _process_gone(pid)
    os.kill(new_pid, signal.SIGKILL)
    broker.stop()
    assert _process_gone(new_pid)
    assert broker.pid is None and broker.workdir is None
