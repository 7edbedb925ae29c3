"""Local MQTT broker for the demo and the test suite.

``LocalBroker`` runs mosquitto as a foreground subprocess when it is installed (and
preferred), otherwise an in-process amqtt broker on a background thread with its own
asyncio event loop.  Both listen on 127.0.0.1 only and allow anonymous clients, unless
``users`` is given: then only those user names and passwords may connect (for tests of
the gateway with wrong credentials).  ``tls`` (mosquitto only) makes the listener
speak TLS with the given server certificate and key. ``websockets=True`` adds a
second, plain listener that speaks MQTT over WebSockets (for the browser dashboard);
its port is ``endpoint.ws_port``; with ``http_dir`` (mosquitto only) that listener
also serves the files of that directory over plain HTTP, as a clinic's broker can
serve the exported dashboard.

Usage::

    with LocalBroker() as broker:
        endpoint = broker.endpoint  # BrokerEndpoint(host="127.0.0.1", port=..., ...)

    with LocalBroker(users={"gw": "right"}) as broker:
        ...
        broker.set_users({"gw": "changed"})
        broker.restart()  # same port, new password file

    with LocalBroker(tls=BrokerTls(certfile=crt, keyfile=key, cafile=ca)) as broker:
        ...  # clients: tls_set(ca_certs=ca); broker.set_tls(...) + restart() swaps it
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

__all__ = [
    "BrokerEndpoint",
    "BrokerError",
    "BrokerTls",
    "LocalBroker",
    "find_mosquitto",
    "find_mosquitto_passwd",
    "free_loopback_port",
]

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
MOSQUITTO_FALLBACK_PATH = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD_FALLBACK_PATH = "/usr/bin/mosquitto_passwd"
PASSWD_FILE_NAME = "passwd"
PASSWD_TOOL_TIMEOUT_S = 10.0
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
AMQTT_SHUTDOWN_S = 2.0
_PORT_RETRIES = 3
_LOG_TAIL_LINES = 30
_CONNECT_POLL_S = 0.05
# mosquitto 2.0's "$7$" password hash: PBKDF2-HMAC-SHA512, 101 rounds, 12-byte salt
# (what mosquitto_passwd writes; used only when mosquitto_passwd is not installed).
_MOSQUITTO_HASH_ROUNDS = 101
_MOSQUITTO_SALT_BYTES = 12

Kind = Literal["mosquitto", "amqtt"]


@dataclass(frozen=True)
class BrokerEndpoint:
    host: str
    port: int
    ws_port: int | None
    kind: str  # "mosquitto" or "amqtt"
    tls: bool = False


@dataclass(frozen=True)
class BrokerTls:
    """A TLS listener: the server's certificate and key (PEM).

    ``cafile`` is what mosquitto verifies client certificates against; clients must
    present one only with ``require_certificate``.
    """

    certfile: Path
    keyfile: Path
    cafile: Path | None = None
    require_certificate: bool = False


class BrokerError(RuntimeError):
    """The local broker failed to start or stop."""


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _find_tool(name: str, fallback: str) -> str | None:
    """``name`` on PATH, else at ``fallback`` (Debian puts mosquitto in /usr/sbin)."""
    found = shutil.which(name)
    if found:
        return found
    return fallback if os.access(fallback, os.X_OK) else None


def find_mosquitto() -> str | None:
    """Path of the mosquitto executable, or None when it is not installed."""
    return _find_tool("mosquitto", MOSQUITTO_FALLBACK_PATH)


def find_mosquitto_passwd() -> str | None:
    """Path of the mosquitto_passwd executable, or None when it is not installed."""
    return _find_tool("mosquitto_passwd", MOSQUITTO_PASSWD_FALLBACK_PATH)


def _checked_users(users: Mapping[str, str] | None) -> dict[str, str] | None:
    """Copy of ``users``, rejecting names a password file cannot hold.

    mosquitto and amqtt both read ``name:hash`` lines, skip ``#`` comment lines and
    (amqtt) strip whitespace; mosquitto_passwd writes an empty name but cannot read the
    file back afterwards.  Passwords are only hashed, but go through argv: no NUL.
    """
    if users is None:
        return None
    checked = dict(users)
    for name, password in checked.items():
        if not isinstance(name, str) or not isinstance(password, str):
            raise TypeError("users must map user name (str) to password (str)")
        if (
            not name
            or ":" in name
            or name.startswith("#")
            or name != name.strip()
            or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name)
        ):
            raise ValueError(f"user name not usable in a password file: {name!r}")
        if "\0" in password:
            raise ValueError(f"password of user {name!r} contains a NUL character")
    return checked


def _mosquitto_password_hash(password: str) -> str:
    """A mosquitto 2.0 ``$7$`` hash, as ``mosquitto_passwd`` would write it."""
    salt = os.urandom(_MOSQUITTO_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _MOSQUITTO_HASH_ROUNDS)
    b64 = base64.b64encode
    return f"$7${_MOSQUITTO_HASH_ROUNDS}${b64(salt).decode()}${b64(digest).decode()}"


def _write_mosquitto_passwd(path: Path, users: Mapping[str, str]) -> None:
    """Create mosquitto's password file ``path`` (mode 0600) for ``users``.

    Uses ``mosquitto_passwd -b -c`` / ``-b`` when installed, else writes the hashes
    itself.  The file is built under a temporary name and renamed into place.
    """
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    tool = find_mosquitto_passwd()
    if tool is None or not users:  # mosquitto_passwd cannot create an empty file
        lines = [f"{name}:{_mosquitto_password_hash(pw)}\n" for name, pw in users.items()]
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.writelines(lines)
    else:
        for index, (name, password) in enumerate(users.items()):
            create = ["-c"] if index == 0 else []
            try:
                done = subprocess.run(
                    [tool, "-b", *create, str(tmp), name, password],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=PASSWD_TOOL_TIMEOUT_S,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                # Not `from exc`: TimeoutExpired's text shows argv, i.e. the password.
                reason = (
                    exc.strerror
                    if isinstance(exc, OSError)
                    else f"timed out after {PASSWD_TOOL_TIMEOUT_S:.0f}s"
                )
                raise BrokerError(f"{tool} failed for user {name!r}: {reason}") from None
            if done.returncode != 0:
                message = (done.stderr or done.stdout).decode(errors="replace").strip()
                raise BrokerError(
                    f"{tool} exited with status {done.returncode} for user {name!r}: {message}"
                )
    # mosquitto_passwd -c honours the umask (0644); the hashes are nobody else's business.
    # The file stays owned by us: as root mosquitto reads it as root ("user root"), as
    # anyone else it runs as that same user.
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _write_amqtt_passwd(path: Path, users: Mapping[str, str]) -> None:
    """Create a password file for amqtt's FileAuthPlugin (argon2 hashes, mode 0600)."""
    try:
        from amqtt.plugins import authentication
        from pwdlib import PasswordHash
        from pwdlib.hashers.argon2 import Argon2Hasher
    except ImportError as exc:
        raise BrokerError(
            f"users= needs amqtt's FileAuthPlugin with argon2 hashes (amqtt >= 0.12): {exc}; "
            "install mosquitto or upgrade amqtt"
        ) from exc
    if not hasattr(authentication, "FileAuthPlugin") or not hasattr(
        authentication, "Argon2Hasher"
    ):  # amqtt 0.11 only verified sha512-crypt hashes through passlib
        raise BrokerError(
            "users= needs amqtt's FileAuthPlugin with argon2 hashes (amqtt >= 0.12); "
            "install mosquitto or upgrade amqtt"
        )
    hasher = PasswordHash((Argon2Hasher(),))
    lines = [f"{name}:{hasher.hash(password)}\n" for name, password in users.items()]
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.writelines(lines)
    os.replace(tmp, path)


def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _ensure_port_free(port: int) -> None:
    """Fail fast if something already listens on ``port``.

    Without this, the readiness probe could connect to the *other* listener before
    mosquitto notices its bind failure and exits.  SO_REUSEADDR mirrors mosquitto's own
    socket options, so a port in TIME_WAIT (e.g. during ``restart()``) counts as free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            raise BrokerError(
                f"cannot start mosquitto: {LOOPBACK}:{port} is in use ({exc})"
            ) from exc


def _tail(path: Path | None, lines: int = _LOG_TAIL_LINES) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class LocalBroker:
    """A throwaway MQTT broker bound to the loopback interface.

    ``prefer="mosquitto"`` uses mosquitto when it is installed and falls back to amqtt;
    ``prefer="amqtt"`` always uses amqtt.  ``port=0`` picks a free loopback port.
    ``persistence_dir`` enables mosquitto persistence (retained messages and sessions
    survive ``restart()``); amqtt keeps everything in memory.

    ``users`` (user name -> password) turns anonymous access off: only those credentials
    are accepted (CONNACK "not authorized" otherwise, for both brokers).  An empty
    mapping admits nobody.  ``set_users()`` changes them for the next ``start()`` or
    ``restart()``.  The password file lives in ``workdir``.

    ``tls`` turns the (only) listener into a TLS one (mosquitto only; amqtt raises
    ``BrokerError``); ``set_tls()`` changes it for the next ``start()``/``restart()``.
    """

    def __init__(
        self,
        *,
        prefer: str = "mosquitto",
        port: int = 0,
        persistence_dir: Path | None = None,
        log_path: Path | None = None,
        users: Mapping[str, str] | None = None,
        tls: BrokerTls | None = None,
        websockets: bool = False,
        http_dir: Path | None = None,
    ) -> None:
        if prefer not in ("mosquitto", "amqtt"):
            raise ValueError(f"prefer must be 'mosquitto' or 'amqtt', not {prefer!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
        self._prefer = prefer
        self._requested_port = port
        self._persistence_dir = persistence_dir
        self._log_path = log_path
        self._users = _checked_users(users)
        self._tls = tls
        self._websockets = websockets or http_dir is not None
        self._http_dir = http_dir
        self._lock = threading.RLock()
        self._endpoint: BrokerEndpoint | None = None
        # mosquitto state
        self._mosquitto_bin: str | None = None
        self._tmpdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr_file: IO[bytes] | None = None
        # amqtt state
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._abort = threading.Event()

    # ------------------------------------------------------------------ public API

    @property
    def kind(self) -> Kind:
        if self._prefer == "mosquitto" and find_mosquitto() is not None:
            return "mosquitto"
        return "amqtt"

    @property
    def endpoint(self) -> BrokerEndpoint:
        if self._endpoint is None:
            raise BrokerError("broker is not running")
        return self._endpoint

    @property
    def pid(self) -> int | None:
        """Process id of the mosquitto subprocess (None for amqtt or when stopped)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def workdir(self) -> Path | None:
        """Temporary directory holding mosquitto's config and logs, and the password file
        (for amqtt only that, and only with ``users``).  Removed by stop()."""
        return self._tmpdir

    def set_users(self, users: Mapping[str, str] | None) -> None:
        """Replace the accepted credentials (None: anonymous access again).

        Takes effect at the next ``start()`` or ``restart()``; a running broker keeps
        the old ones until then.
        """
        checked = _checked_users(users)
        with self._lock:
            self._users = checked

    def set_tls(self, tls: BrokerTls | None) -> None:
        """Replace the listener's TLS set-up (None: plain TCP again).

        Takes effect at the next ``start()`` or ``restart()``.
        """
        with self._lock:
            self._tls = tls

    @property
    def thread(self) -> threading.Thread | None:
        """The amqtt broker thread (None for mosquitto or when stopped)."""
        return self._thread

    def start(self) -> BrokerEndpoint:
        """Start the broker; returns once it accepts TCP connections."""
        with self._lock:
            if self._endpoint is not None:
                return self._endpoint
            kind = self.kind
            try:
                if kind == "mosquitto":
                    endpoint = self._start_mosquitto(self._requested_port)
                else:
                    endpoint = self._start_amqtt(self._requested_port, self._ws_port())
            except BaseException:
                self._teardown()
                raise
            self._endpoint = endpoint
            log.info(
                "broker.started kind=%s host=%s port=%d pid=%s auth=%s tls=%s",
                endpoint.kind,
                endpoint.host,
                endpoint.port,
                self.pid,
                self._auth_description(),
                "on" if endpoint.tls else "off",
            )
            return endpoint

    def stop(self) -> None:
        """Stop the broker and remove temporary files.  Safe to call repeatedly."""
        with self._lock:
            was_running = self._endpoint is not None
            self._teardown()
            if was_running:
                log.info("broker.stopped kind=%s", self.kind)

    def restart(self) -> BrokerEndpoint:
        """Stop and start the broker again on the same port.

        Connected clients are dropped and must reconnect.  Retained messages survive only
        with mosquitto and a ``persistence_dir``.
        """
        with self._lock:
            endpoint = self.endpoint
            log.info("broker.restarting kind=%s port=%d", endpoint.kind, endpoint.port)
            if endpoint.kind == "mosquitto":
                self._stop_mosquitto_process()
                try:
                    self._spawn_mosquitto(endpoint.port, endpoint.ws_port)
                    self._wait_mosquitto_ready(endpoint.port)
                except BaseException:
                    self._teardown()
                    raise
                endpoint = BrokerEndpoint(
                    host=endpoint.host,
                    port=endpoint.port,
                    ws_port=endpoint.ws_port,
                    kind=endpoint.kind,
                    tls=self._tls is not None,
                )
                self._endpoint = endpoint
            else:
                self._stop_amqtt()
                try:
                    new = self._start_amqtt(endpoint.port, endpoint.ws_port)
                except BaseException:
                    self._teardown()
                    raise
                if new.port != endpoint.port:  # pragma: no cover - defensive
                    raise BrokerError(f"amqtt restarted on {new.port}, expected {endpoint.port}")
            log.info(
                "broker.restarted kind=%s port=%d pid=%s auth=%s",
                endpoint.kind,
                endpoint.port,
                self.pid,
                self._auth_description(),
            )
            return endpoint

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _auth_description(self) -> str:
        if self._users is None:
            return "anonymous"
        return "password users=" + (",".join(sorted(self._users)) or "(none)")

    # ------------------------------------------------------------------ teardown

    def _teardown(self) -> None:
        self._endpoint = None
        self._stop_mosquitto_process()
        self._stop_amqtt()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    # ------------------------------------------------------------------ mosquitto

    def _mosquitto_log_file(self) -> Path:
        assert self._tmpdir is not None
        return self._log_path if self._log_path is not None else self._tmpdir / "mosquitto.log"

    def _write_mosquitto_config(self, port: int, ws_port: int | None) -> Path:
        assert self._tmpdir is not None
        log_file = self._mosquitto_log_file()
        log_file.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            "# generated by gateway.broker.LocalBroker",
            f"listener {port} {LOOPBACK}",
        ]
        if self._tls is not None:
            tls = self._tls
            lines += [
                f"certfile {tls.certfile.resolve()}",
                f"keyfile {tls.keyfile.resolve()}",
                "require_certificate " + ("true" if tls.require_certificate else "false"),
            ]
            if tls.cafile is not None:
                lines.append(f"cafile {tls.cafile.resolve()}")
        if ws_port is not None:
            lines += [f"listener {ws_port} {LOOPBACK}", "protocol websockets"]
            if self._http_dir is not None:
                lines.append(f"http_dir {self._http_dir.resolve()}")
        if self._users is None:
            lines.append("allow_anonymous true")
        else:
            passwd = self._tmpdir / PASSWD_FILE_NAME
            _write_mosquitto_passwd(passwd, self._users)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        lines += [
            f"log_dest file {log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # As root, mosquitto drops privileges to user "mosquitto" (which may not exist
            # in a container and cannot write our root-owned temp/persistence dirs).
            # "user root" keeps it as root; it only listens on loopback.  (mosquitto 2.0
            # reads password_file only *after* dropping privileges, so without this the
            # 0600 root-owned password file would be unreadable.)
            lines.append("user root")
        if self._persistence_dir is not None:
            self._persistence_dir.mkdir(parents=True, exist_ok=True)
            lines += [
                "persistence true",
                f"persistence_location {self._persistence_dir.resolve()}/",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        conf = self._tmpdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return conf

    def _spawn_mosquitto(self, port: int, ws_port: int | None) -> None:
        assert self._tmpdir is not None and self._mosquitto_bin is not None
        _ensure_port_free(port)
        if ws_port is not None:
            _ensure_port_free(ws_port)
        conf = self._write_mosquitto_config(port, ws_port)
        self._stderr_file = open(self._tmpdir / "mosquitto.stderr", "ab")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [self._mosquitto_bin, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=self._stderr_file,
            stderr=subprocess.STDOUT,
            close_fds=True,
        )
        log.debug(
            "broker.spawned kind=mosquitto pid=%d port=%d conf=%s", self._proc.pid, port, conf
        )

    def _failure_report(self) -> str:
        parts = []
        stderr_tail = _tail(self._tmpdir / "mosquitto.stderr" if self._tmpdir else None)
        if stderr_tail:
            parts.append(f"--- mosquitto stdout/stderr ---\n{stderr_tail}")
        log_tail = _tail(self._mosquitto_log_file() if self._tmpdir else self._log_path)
        if log_tail:
            parts.append(f"--- mosquitto log ---\n{log_tail}")
        return "\n".join(parts) or "(mosquitto wrote no log output)"

    def _wait_mosquitto_ready(self, port: int) -> None:
        """Poll until the port accepts connections or the process exits."""
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                report = self._failure_report()
                raise _MosquittoExited(
                    f"mosquitto exited with status {proc.returncode} before accepting "
                    f"connections on {LOOPBACK}:{port}\n{report}",
                    report,
                )
            if _accepts_connections(LOOPBACK, port) and proc.poll() is None:
                return
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"mosquitto (pid {proc.pid}) did not accept connections on "
                    f"{LOOPBACK}:{port} within {START_TIMEOUT_S:.0f}s\n{self._failure_report()}"
                )
            # Wait for the process to exit *or* the poll interval to elapse.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_CONNECT_POLL_S)

    def _start_mosquitto(self, port: int) -> BrokerEndpoint:
        self._mosquitto_bin = find_mosquitto()
        if self._mosquitto_bin is None:
            raise BrokerError("mosquitto is not installed (apt-get install -y mosquitto)")
        self._tmpdir = Path(tempfile.mkdtemp(prefix="pumpgw-mosquitto-"))
        attempts = 1 if port else _PORT_RETRIES
        for attempt in range(1, attempts + 1):
            chosen = port or free_loopback_port()
            ws_port = self._ws_port()
            try:
                self._spawn_mosquitto(chosen, ws_port)
                self._wait_mosquitto_ready(chosen)
            except (_PortInUse, _MosquittoExited) as exc:
                # An auto-picked port can be taken by someone else before mosquitto binds
                # it; pick another one.  An explicitly requested port is not retried.
                in_use = isinstance(exc, _PortInUse) or "Address already in use" in exc.report
                self._stop_mosquitto_process()
                if port or not in_use or attempt == attempts:
                    raise BrokerError(str(exc)) from None
                log.warning("broker.port_in_use kind=mosquitto port=%d attempt=%d", chosen, attempt)
                continue
            return BrokerEndpoint(
                host=LOOPBACK,
                port=chosen,
                ws_port=ws_port,
                kind="mosquitto",
                tls=self._tls is not None,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _stop_mosquitto_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    log.warning(
                        "broker.kill kind=mosquitto pid=%d reason=terminate_timeout", proc.pid
                    )
                    proc.kill()
                    proc.wait()
            log.debug("broker.reaped kind=mosquitto pid=%d status=%s", proc.pid, proc.returncode)
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None

    # ------------------------------------------------------------------ amqtt

    def _ws_port(self) -> int | None:
        return free_loopback_port() if self._websockets else None

    def _start_amqtt(self, port: int, ws_port: int | None) -> BrokerEndpoint:
        for option, value in (("tls", self._tls), ("http_dir", self._http_dir)):
            if value is not None:
                raise BrokerError(f"{option}= needs mosquitto (apt-get install -y mosquitto)")
        password_file: Path | None = None
        if self._users is not None:
            if self._tmpdir is None:
                self._tmpdir = Path(tempfile.mkdtemp(prefix="pumpgw-amqtt-"))
            password_file = self._tmpdir / PASSWD_FILE_NAME
            _write_amqtt_passwd(password_file, self._users)
        ready = threading.Event()
        result: dict[str, Any] = {}
        self._abort = threading.Event()
        thread = threading.Thread(
            target=self._amqtt_thread_main,
            args=(_AmqttListen(port, ws_port, password_file), ready, result),
            name="amqtt-broker",
            daemon=True,
        )
        self._thread = thread
        thread.start()
        if not ready.wait(START_TIMEOUT_S):
            raise BrokerError(f"amqtt broker did not start within {START_TIMEOUT_S:.0f}s")
        error = result.get("error")
        if error is not None:
            thread.join(STOP_TIMEOUT_S)
            self._thread = None
            raise BrokerError(
                f"amqtt broker failed to start on {LOOPBACK}:{port}: {error!r}"
            ) from error
        # Broker.start() has awaited asyncio.start_server(), so the socket is listening.
        # (No TCP probe here: amqtt logs an ERROR for a connection that sends no CONNECT.)
        bound: int = result["port"]
        return BrokerEndpoint(host=LOOPBACK, port=bound, ws_port=ws_port, kind="amqtt")

    def _amqtt_thread_main(
        self, listen: _AmqttListen, ready: threading.Event, result: dict[str, Any]
    ) -> None:
        try:
            asyncio.run(self._amqtt_serve(listen, ready, result))
        except BaseException as exc:  # reported to start() through `result`
            if not ready.is_set():
                result["error"] = exc
                ready.set()
            else:
                log.exception("broker.thread_error kind=amqtt")
        finally:
            ready.set()

    async def _amqtt_serve(
        self, listen: _AmqttListen, ready: threading.Event, result: dict[str, Any]
    ) -> None:
        from amqtt.broker import Broker

        # An explicit plugin map replaces amqtt's defaults (packet/event loggers and the
        # $SYS publisher): only authentication is needed here.  FileAuthPlugin alone
        # refuses clients without a user name (no plugin answers -> not authorized).
        plugin = "amqtt.plugins.authentication."
        auth: dict[str, Any]
        if listen.password_file is None:
            auth = {plugin + "AnonymousAuthPlugin": {"allow_anonymous": True}}
        else:
            auth = {plugin + "FileAuthPlugin": {"password_file": str(listen.password_file)}}
        tcp = {"type": "tcp", "bind": f"{LOOPBACK}:{listen.port}"}
        listeners: dict[str, Any] = {"default": tcp}
        if listen.ws_port is not None:
            listeners["websockets"] = {"type": "ws", "bind": f"{LOOPBACK}:{listen.ws_port}"}
        config: dict[str, Any] = {"listeners": listeners, "plugins": auth}
        abort = self._abort
        stop_event = asyncio.Event()
        # Publish loop and event *before* checking `abort`; _stop_amqtt() sets `abort`
        # before reading them, so a stop racing with startup is never lost.
        self._loop, self._stop_event = asyncio.get_running_loop(), stop_event
        broker = Broker(config, loop=asyncio.get_running_loop())
        await broker.start()
        try:
            result["port"] = _amqtt_bound_port(broker, listen.port)
            ready.set()
            if not abort.is_set():
                await stop_event.wait()
        finally:
            # amqtt waits for its WebSocket clients' handlers, which a client that
            # is still connected (a browser tab) keeps alive: give up on them.
            try:
                await asyncio.wait_for(broker.shutdown(), AMQTT_SHUTDOWN_S)
            except TimeoutError:
                log.debug("broker.shutdown_timeout kind=amqtt")

    def _stop_amqtt(self) -> None:
        self._abort.set()
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        self._thread = self._loop = self._stop_event = None
        if thread is None:
            return
        if loop is not None and stop_event is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(STOP_TIMEOUT_S)
        if thread.is_alive():
            log.error("broker.thread_leak kind=amqtt thread=%s", thread.name)
            raise BrokerError(f"amqtt broker thread {thread.name} did not stop")
        log.debug("broker.joined kind=amqtt thread=%s", thread.name)


@dataclass(frozen=True)
class _AmqttListen:
    port: int
    ws_port: int | None
    password_file: Path | None


class _PortInUse(BrokerError):
    pass


class _MosquittoExited(BrokerError):
    def __init__(self, message: str, report: str) -> None:
        super().__init__(message)
        self.report = report


def _amqtt_bound_port(broker: Any, requested: int) -> int:
    """Port actually bound by amqtt's default listener (resolves port 0)."""
    server = getattr(broker, "_servers", {}).get("default")
    sockets = getattr(getattr(server, "instance", None), "sockets", None) or ()
    for sock in sockets:
        name = sock.getsockname()
        if sock.family == socket.AF_INET and name[0] == LOOPBACK:
            return int(name[1])
    if requested:
        return requested
    raise BrokerError("could not determine the port bound by amqtt")
