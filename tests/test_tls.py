"""Security at the gateway's edges: MQTT over TLS, credentials, secret files, input limits.

The broker is a real mosquitto with a TLS listener and a password file; the CAs and
certificates are made here with the ``openssl`` command (EC P-256, valid two days).
The daemon is the real ``pumpgw run`` reading the simulated programmer.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from broker_fixtures import Received, Subscriber, publish
from processes import Process, gateway, gateway_config, run_cli, simulator

from drivers.ptp.codec import ProtocolError, StreamDecoder, crc16
from drivers.ptp.messages import Stat
from gateway.broker import (
    BrokerEndpoint,
    BrokerError,
    BrokerTls,
    LocalBroker,
    find_mosquitto,
)
from gateway.config import (
    ConfigError,
    exposed_secret_files,
    load_config,
    parse_config,
)
from gateway.mqtt_link import MAX_COMMAND_BYTES, BrokerEvent, MqttLink

BASE = "pumpgw/e2e"
DEADLINE_S = 60.0
USER = "bed-12"
PASSWORD = "Tq7-unlikely-password-zx9"  # distinctive, so a leak is found by grep
OPENSSL = shutil.which("openssl")

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")


# --- certificates --------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _openssl(*args: str | Path) -> None:
    assert OPENSSL is not None
    done = subprocess.run(
        [OPENSSL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"openssl {args[0]} failed:\n{done.stderr}"


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


def make_ca(directory: Path, name: str) -> Pair:
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    _openssl(
        "req", "-x509", *_EC, "-keyout", pair.key, "-out", pair.cert, "-days", "2",
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    return pair


def issue(ca: Pair, directory: Path, name: str, sans: str, usage: str = "serverAuth") -> Pair:
    """A certificate signed by ``ca`` for ``sans`` (e.g. ``DNS:localhost,IP:127.0.0.1``)."""
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    csr, ext = directory / f"{name}.csr", directory / f"{name}.ext"
    ext.write_text(
        f"subjectAltName={sans}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={usage}\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl("req", "-new", *_EC, "-keyout", pair.key, "-out", csr, "-subj", f"/CN={name}")
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-set_serial",
        str(time.time_ns()), "-days", "2", "-extfile", ext, "-out", pair.cert,
    )  # fmt: skip
    return pair


@dataclass(frozen=True)
class Pki:
    ca: Pair  # the clinic's CA: the gateway trusts it
    other_ca: Pair  # someone else's
    server: Pair  # by ca, for localhost and 127.0.0.1
    server_other_ca: Pair  # by other_ca, same names
    server_other_host: Pair  # by ca, for "otherhost" only
    client: Pair  # by ca, a client certificate for the gateway
    encrypted_key: Path  # client.key under a passphrase


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other = make_ca(d, "clinic-ca"), make_ca(d, "other-ca")
    names = "DNS:localhost,IP:127.0.0.1"
    client = issue(ca, d, "gateway-client", "DNS:bed-12", usage="clientAuth")
    encrypted = d / "encrypted.key"
    _openssl("pkey", "-in", client.key, "-aes256", "-passout", "pass:secret", "-out", encrypted)
    return Pki(
        ca=ca,
        other_ca=other,
        server=issue(ca, d, "server", names),
        server_other_ca=issue(other, d, "server-other-ca", names),
        server_other_host=issue(ca, d, "server-other-host", "DNS:otherhost"),
        client=client,
        encrypted_key=encrypted,
    )


def listener(server: Pair, ca: Pair, require_certificate: bool = False) -> BrokerTls:
    return BrokerTls(
        certfile=server.cert,
        keyfile=server.key,
        cafile=ca.cert,
        require_certificate=require_certificate,
    )


# --- helpers -------------------------------------------------------------------------


def wait_until(check: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextmanager
def tls_broker(tmp_path: Path, tls: BrokerTls) -> Iterator[LocalBroker]:
    if find_mosquitto() is None:
        pytest.fail("these tests need mosquitto: apt-get install -y mosquitto", pytrace=False)
    with LocalBroker(users={USER: PASSWORD}, tls=tls, log_path=tmp_path / "mosquitto.log") as b:
        yield b


def password_file(tmp_path: Path, password: str = PASSWORD, mode: int = 0o600) -> Path:
    path = tmp_path / "mqtt-password"
    path.write_text(password + "\n")
    path.chmod(mode)
    return path


def tls_config(
    tmp_path: Path,
    *,
    port: str,
    broker: LocalBroker,
    ca: Path | None,
    secret: Path,
    host: str = "127.0.0.1",
    extra: str = "",
) -> Path:
    """``gateway_config`` with TLS, credentials and ``host`` (the name the daemon dials)."""
    ca_line = f'ca_file = "{ca}"\n' if ca is not None else ""
    mqtt = f'tls = true\n{ca_line}username = "{USER}"\npassword_file = "{secret}"\n{extra}'
    path = gateway_config(tmp_path, port=port, broker_port=broker.endpoint.port, mqtt_extra=mqtt)
    text = path.read_text()
    assert text.count('host = "127.0.0.1"') == 1
    path.write_text(text.replace('host = "127.0.0.1"', f'host = "{host}"'))
    return path


def tls_subscriber(
    endpoint: BrokerEndpoint,
    ca: Path,
    topic_filter: str = f"{BASE}/#",
    client: Pair | None = None,
) -> Subscriber:
    sub = Subscriber(endpoint, topic_filter)
    if client is None:
        sub.client.tls_set(ca_certs=str(ca))
    else:
        sub.client.tls_set(ca_certs=str(ca), certfile=str(client.cert), keyfile=str(client.key))
    sub.client.username_pw_set(USER, PASSWORD)
    return sub


def wait_message(sub: Subscriber, match: Callable[[Received], bool], what: str) -> Received:
    found: list[Received] = []

    def check() -> bool:
        found[:] = [m for m in sub.messages() if match(m)]
        return bool(found)

    wait_until(check, what)
    return found[0]


def connect_failures(gw: Process) -> list[str]:
    return [line for line in gw.log().splitlines() if "event=mqtt_connect_failed" in line]


def assert_one_error_then_still_running(
    gw: Process, broker_log: Path, marker: str, attempts: int = 2
) -> str:
    """One ERROR line however often paho retries (``attempts`` seen by the broker, each
    logged with ``marker``); the daemon keeps running and judging the pumps."""
    wait_until(lambda: bool(connect_failures(gw)), "a connect error")
    wait_until(
        lambda: broker_log.read_text().count(marker) >= attempts,
        f"{attempts} refused attempts ({marker})",
    )
    (line,) = connect_failures(gw)
    assert " ERROR " in line
    wait_until(lambda: "event=alert_raised" in gw.log(), "pumps still read and judged")
    assert gw.proc.poll() is None, "the daemon must keep running"
    assert PASSWORD not in gw.log()
    return line


# --- the daemon against a TLS broker -------------------------------------------------------


def test_connects_with_the_right_ca_and_credentials(tmp_path: Path, pki: Pki) -> None:
    """The daemon dials "localhost" (DNS name in the certificate); the subscriber dials
    127.0.0.1 (IP address in the certificate). The password reaches neither log nor info."""
    secret = password_file(tmp_path)
    with (
        tls_broker(tmp_path, listener(pki.server, pki.ca)) as broker,
        simulator(tmp_path, "--pump", "PMP-0001=low-reservoir", "--speed", "100000") as (_, port),
    ):
        endpoint = broker.endpoint
        assert endpoint.tls
        config = tls_config(
            tmp_path, port=port, broker=broker, ca=pki.ca.cert, secret=secret, host="localhost"
        )
        assert load_config(config).mqtt.port == endpoint.port
        with tls_subscriber(endpoint, pki.ca.cert) as sub, gateway(config) as gw:
            wait_message(sub, lambda m: m.topic == f"{BASE}/status" and m.payload == b"online",
                         "status online over TLS")  # fmt: skip
            info = wait_message(sub, lambda m: m.topic == f"{BASE}/info", "info")
            wait_message(sub, lambda m: m.topic.startswith(f"{BASE}/pumps/PMP-0001/"), "pump data")
            # An oversized command travels through the broker and is refused by the gateway.
            publish(sub.client, f"{BASE}/cmd/ack", b" " * (MAX_COMMAND_BYTES + 1))
            result = wait_message(sub, lambda m: m.topic == f"{BASE}/cmd/result", "cmd/result")
            assert result.json()["ok"] is False
            assert f"exceeds {MAX_COMMAND_BYTES}" in result.json()["error"]
            log = gw.log()
        connecting = next(line for line in log.splitlines() if "event=mqtt_connecting" in line)
        assert "tls=on" in connecting and f"username={USER}" in connecting
        assert "secret_file_readable_by_others" not in log  # 0600
        assert "event=mqtt_connect_failed" not in log
        for text in (log, info.payload.decode(), *(m.payload.decode() for m in sub.messages())):
            assert PASSWORD not in text


def test_client_certificate_when_the_broker_requires_one(tmp_path: Path, pki: Pki) -> None:
    secret = password_file(tmp_path)
    tls = listener(pki.server, pki.ca, require_certificate=True)
    with (
        tls_broker(tmp_path, tls) as broker,
        simulator(tmp_path, "--speed", "100000") as (_, port),
    ):
        endpoint = broker.endpoint
        client = f'cert_file = "{pki.client.cert}"\nkey_file = "{pki.client.key}"\n'
        config = tls_config(
            tmp_path, port=port, broker=broker, ca=pki.ca.cert, secret=secret, extra=client
        )
        sub = tls_subscriber(endpoint, pki.ca.cert, f"{BASE}/status", client=pki.client)
        with sub, gateway(config):
            wait_message(sub, lambda m: m.payload == b"online", "status online with a client cert")


def test_refuses_a_server_certificate_from_another_ca(tmp_path: Path, pki: Pki) -> None:
    """A broker whose certificate another CA signed is never talked to; the daemon says
    why once, keeps working, and connects as soon as the broker has the right one."""
    secret = password_file(tmp_path)
    broker_log = tmp_path / "mosquitto.log"
    with (
        tls_broker(tmp_path, listener(pki.server_other_ca, pki.other_ca)) as broker,
        simulator(tmp_path, "--pump", "PMP-0001=low-reservoir", "--speed", "100000") as (_, port),
    ):
        endpoint = broker.endpoint
        config = tls_config(tmp_path, port=port, broker=broker, ca=pki.ca.cert, secret=secret)
        with gateway(config) as gw:
            line = assert_one_error_then_still_running(gw, broker_log, "alert unknown ca")
            assert re.search(
                r"broker certificate rejected: (self-signed certificate in certificate chain"
                r"|unable to get local issuer certificate)",
                line,
            ), line
            assert "mqtt.ca_file" in line  # what to check
            assert "New client connected" not in broker_log.read_text()  # no MQTT CONNECT
            broker.set_tls(listener(pki.server, pki.ca))
            broker.restart()
            with tls_subscriber(endpoint, pki.ca.cert, f"{BASE}/status") as sub:
                wait_message(sub, lambda m: m.payload == b"online", "online once trusted")


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("127.0.0.1", "IP address mismatch, certificate is not valid for '127.0.0.1'"),
        ("localhost", "Hostname mismatch, certificate is not valid for 'localhost'"),
    ],
)
def test_refuses_a_certificate_for_another_host(
    tmp_path: Path, pki: Pki, host: str, problem: str
) -> None:
    """Signed by the trusted CA, but for "otherhost": the name check alone refuses it."""
    secret = password_file(tmp_path)
    broker_log = tmp_path / "mosquitto.log"
    with (
        tls_broker(tmp_path, listener(pki.server_other_host, pki.ca)) as broker,
        simulator(tmp_path, "--pump", "PMP-0001=low-reservoir", "--speed", "100000") as (_, port),
    ):
        config = tls_config(
            tmp_path, port=port, broker=broker, ca=pki.ca.cert, secret=secret, host=host
        )
        with gateway(config) as gw:
            line = assert_one_error_then_still_running(gw, broker_log, "alert bad certificate")
            assert problem in line, line
            assert "mqtt.host must be a name or address the certificate lists" in line


def test_wrong_credentials_over_tls_clear_error_keeps_running(tmp_path: Path, pki: Pki) -> None:
    """TLS is fine, the password is not. The password file is also readable by others:
    a warning naming the file and its mode, never its contents."""
    wrong = "Wr0ng-but-also-secret-q1"
    secret = password_file(tmp_path, wrong, mode=0o644)
    broker_log = tmp_path / "mosquitto.log"
    with (
        tls_broker(tmp_path, listener(pki.server, pki.ca)) as broker,
        simulator(tmp_path, "--pump", "PMP-0001=low-reservoir", "--speed", "100000") as (_, port),
    ):
        config = tls_config(tmp_path, port=port, broker=broker, ca=pki.ca.cert, secret=secret)
        with gateway(config) as gw:
            line = assert_one_error_then_still_running(gw, broker_log, "not authorised", 3)
            assert "broker refused the connection: not authori" in line.lower()
            log = gw.log()
    warnings = [x for x in log.splitlines() if "event=secret_file_readable_by_others" in x]
    assert len(warnings) == 1
    assert " WARNING " in warnings[0]
    assert f"path={secret}" in warnings[0] and "mode=0644" in warnings[0]
    assert "key=mqtt.password_file" in warnings[0]
    assert wrong not in log


# --- TLS settings checked at load time -----------------------------------------------------


def _toml(tmp_path: Path, mqtt: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[serial]\nport = "/dev/ttyACM0"\n\n[mqtt]\n{mqtt}\n')
    return path


def _rendered(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.render().splitlines()


def test_valid_tls_files_load(tmp_path: Path, pki: Pki) -> None:
    path = _toml(
        tmp_path,
        f'tls = true\nca_file = "{pki.ca.cert}"\n'
        f'cert_file = "{pki.client.cert}"\nkey_file = "{pki.client.key}"',
    )
    config = load_config(path)
    assert config.mqtt.tls and config.mqtt.port == 8883
    assert config.mqtt.key_file == pki.client.key
    done = run_cli("check-config", str(path))
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("what", "expected"),
    [
        ("ca-not-pem", "mqtt.ca_file: no usable PEM certificate in {bad}: "),
        ("cert-is-a-key", "mqtt.cert_file: no usable PEM certificate in {key}: "),
        ("key-not-pem", "mqtt.key_file: no usable PEM private key in {bad}: "),
        ("key-of-another-cert", "mqtt.key_file: {server_key} is not the key of {cert}"),
        ("encrypted-key", "mqtt.key_file: {enc} is encrypted; the gateway cannot ask for a"),
    ],
)
def test_unusable_tls_files_are_config_errors(
    tmp_path: Path, pki: Pki, what: str, expected: str
) -> None:
    bad = tmp_path / "garbage.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    ca, cert, key = pki.ca.cert, pki.client.cert, pki.client.key
    match what:
        case "ca-not-pem":
            ca = bad
        case "cert-is-a-key":
            cert = key
        case "key-not-pem":
            key = bad
        case "key-of-another-cert":
            key = pki.server.key
        case "encrypted-key":
            key = pki.encrypted_key
    path = _toml(
        tmp_path, f'tls = true\nca_file = "{ca}"\ncert_file = "{cert}"\nkey_file = "{key}"'
    )
    wanted = expected.format(
        bad=bad, key=key, cert=cert, server_key=pki.server.key, enc=pki.encrypted_key
    )
    (line,) = _rendered(path)
    assert line.startswith(f"{path}: {wanted}"), line
    assert "_ssl.c" not in line
    done = run_cli("run", "--config", str(path)) if what == "encrypted-key" else None
    if done is not None:  # `run` refuses it the same way, without asking for a passphrase
        assert done.returncode == 2
        assert f"{path}: {wanted}" in done.stderr


def test_tls_files_missing_or_half_a_pair(tmp_path: Path, pki: Pki) -> None:
    missing = tmp_path / "nope.crt"
    path = _toml(tmp_path, f'tls = true\nca_file = "{missing}"\ncert_file = "{pki.client.cert}"')
    assert _rendered(path) == [
        f"{path}: mqtt.cert_file: set mqtt.key_file too (a client certificate needs its key)",
        f"{path}: mqtt.ca_file: no such file: {missing}",
    ]
    path = _toml(tmp_path, f'tls = true\nkey_file = "{pki.client.key}"')
    assert _rendered(path) == [
        f"{path}: mqtt.key_file: set mqtt.cert_file too (a client certificate needs its key)"
    ]


def test_tls_files_without_tls_are_an_error(tmp_path: Path, pki: Pki) -> None:
    """Naming a CA but forgetting ``tls = true`` would send the password in clear."""
    path = _toml(tmp_path, f'ca_file = "{pki.ca.cert}"\nkey_file = "{pki.client.key}"')
    assert _rendered(path) == [
        f"{path}: mqtt.ca_file: only used with TLS: set mqtt.tls = true too",
        f"{path}: mqtt.key_file: only used with TLS: set mqtt.tls = true too",
    ]


# --- secret files and TLS files that break after the check ----------------------------------


@pytest.mark.parametrize(
    ("mode", "exposed"),
    [(0o600, False), (0o400, False), (0o640, True), (0o604, True), (0o620, True)],
)
def test_secret_files_open_to_group_or_others(
    tmp_path: Path, pki: Pki, mode: int, exposed: bool
) -> None:
    secret = password_file(tmp_path, mode=mode)
    key = tmp_path / "client.key"
    shutil.copyfile(pki.client.key, key)
    key.chmod(mode)
    config = parse_config(
        {
            "serial": {"port": "x"},
            "mqtt": {
                "username": USER,
                "password_file": str(secret),
                "tls": True,
                "cert_file": str(pki.client.cert),
                "key_file": str(key),
            },
        }
    )
    expected = [("mqtt.password_file", secret, mode), ("mqtt.key_file", key, mode)]
    assert exposed_secret_files(config) == (expected if exposed else [])


def test_tls_files_broken_after_the_check_never_fall_back_to_plain_tcp(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    ca = tmp_path / "ca.crt"
    shutil.copyfile(pki.ca.cert, ca)
    config = parse_config(
        {
            "serial": {"port": "x"},
            "gateway": {"id": "late"},
            "mqtt": {"tls": True, "ca_file": str(ca)},
        }
    )
    ca.write_text("replaced by something that is not a certificate\n")
    events: list[BrokerEvent] = []
    link = MqttLink(config, None, events.append)
    link.start()
    try:
        assert link.last_error is not None
        assert link.last_error.startswith("TLS set-up failed: "), link.last_error
        assert "not connecting" in link.last_error
        errors = [r for r in caplog.records if "event=mqtt_connect_failed" in r.getMessage()]
        assert len(errors) == 1 and errors[0].levelname == "ERROR"
        assert not link.connected
        assert not [t for t in threading.enumerate() if t.name.startswith("paho-mqtt-client-")]
    finally:
        link.stop()


# --- input limits: what becomes a topic level, oversized commands --------------------------


def _frame(body: str) -> bytes:
    return b"$%s*%04X\r\n" % (body.encode(), crc16(body.encode()))


@pytest.mark.parametrize("pump_id", ["PMP+1", "PMP#", "PMP/1", "+", "#", "a/b", "pmp-1"])
def test_pump_ids_that_are_not_topic_levels_are_refused_by_the_codec(pump_id: str) -> None:
    """Pump ids come from the programmer and become the {pump} topic level: the codec
    only lets [A-Z0-9-]{1,16} through, and a refused frame is attributed to no pump."""
    fields = "2026-11-30T08:00:00Z,12.40,20.0,2.0,81,3.01,300.0,500,0000"
    decoder = StreamDecoder()
    (good,) = decoder.feed(_frame(f"STAT,17,PMP-0001,{fields}"))
    assert isinstance(good, Stat)
    (item,) = decoder.feed(_frame(f"STAT,18,{pump_id},{fields}"))
    assert isinstance(item, ProtocolError), item
    assert "not a pump id" in item.reason
    assert item.pump_id is None


# --- a TLS port dialled without TLS and the other way round ---------------------------------


@pytest.mark.parametrize(
    ("broker_tls", "client_tls", "client_cert", "expected"),
    [
        pytest.param(
            "server", False, False,
            "the broker closed the connection before answering CONNECT "
            "(is mqtt.port a TLS listener? then set mqtt.tls = true)",
            id="plain-client-tls-port",
        ),
        pytest.param(
            None, True, False,
            "TLS handshake failed: the broker closed the connection "
            "(is mqtt.port its TLS listener?)",
            id="tls-client-plain-port",
        ),
        pytest.param(
            "server-requires-cert", True, False,
            "the broker closed the connection before answering CONNECT (does the broker "
            "require a client certificate? mqtt.cert_file, mqtt.key_file)",
            id="no-client-cert",
        ),
    ],
)  # fmt: skip
def test_port_and_tls_mix_ups_are_named(
    tmp_path: Path,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
    broker_tls: str | None,
    client_tls: bool,
    client_cert: bool,
    expected: str,
) -> None:
    """Connections the broker drops before CONNACK: one ERROR line saying what to check."""
    tls = None
    if broker_tls is not None:
        tls = listener(pki.server, pki.ca, require_certificate=broker_tls != "server")
    broker_log = tmp_path / "mosquitto.log"
    with LocalBroker(tls=tls, log_path=broker_log) as broker:
        mqtt: dict[str, object] = {"host": "127.0.0.1", "port": broker.endpoint.port}
        if client_tls:
            mqtt |= {"tls": True, "ca_file": str(pki.ca.cert)}
        config = parse_config({"serial": {"port": "x"}, "gateway": {"id": "mixup"}, "mqtt": mqtt})
        events: list[BrokerEvent] = []
        link = MqttLink(config, None, events.append)
        link.start()
        try:
            wait_until(lambda: link.last_error is not None, "a connect error", timeout=20)
            # The broker's readiness probe, then two attempts: still one line.
            attempts = re.compile(r"(New|Client) connection from 127\.0\.0\.1")
            wait_until(lambda: len(attempts.findall(broker_log.read_text())) >= 3, "a retry")
            time.sleep(0.2)
            assert link.last_error == expected
            lines = [r for r in caplog.records if "event=mqtt_connect_failed" in r.getMessage()]
            assert len(lines) == 1 and lines[0].levelname == "ERROR"
            assert not link.connected
        finally:
            link.stop()


def test_amqtt_has_no_tls_listener(pki: Pki) -> None:
    with pytest.raises(BrokerError, match="tls= needs mosquitto"):
        LocalBroker(prefer="amqtt", tls=listener(pki.server, pki.ca)).start()
