"""systemd: the unit file, and the notify/watchdog protocol against the real daemon.

``FakeSystemd`` plays systemd's side of sd_notify: it binds a unix datagram
socket, takes each datagram with the sender's credentials (as systemd does
for ``NotifyAccess=main``) and the time it arrived. The daemon runs as a real
process with ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` set, talking to a real
mosquitto and the simulated programmer on a real pty.

A stuck serial reader is made for real: the test ptrace-stops that one
thread (``PTRACE_SEIZE`` + ``PTRACE_INTERRUPT``), so it hangs inside its
``select`` exactly as a thread wedged in a USB-serial driver would, while the
rest of the process runs on. See docs/systemd.md for why this and not a hook.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from processes import Process, gateway_config, simulator

from drivers.serial_link import READ_TIMEOUT_S, THREAD_NAME
from gateway.broker import BrokerEndpoint
from gateway.daemon import READER_GRACE_S
from gateway.sdnotify import Notifier

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "pumpgw.service"
MAX_EXPOSURE = 2.0
WATCHDOG_USEC = 2_000_000  # systemd would kill after 2 s without a ping
DEADLINE_S = 30.0


# --- the unit file ------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_declares_notify_watchdog_user_and_serial_friendly_hardening() -> None:
    s = unit_settings()
    one = {key: values[-1] for key, values in s.items()}
    assert one["Type"] == "notify"
    assert one["NotifyAccess"] == "main"
    assert one["WatchdogSec"] == "30"
    assert one["Restart"] == "on-failure"
    assert one["StateDirectory"] == "pumpgw"
    assert one["User"] == "pumpgw"
    assert one["SupplementaryGroups"] == "dialout"
    assert one["ExecStart"].endswith("pumpgw run --config /etc/pumpgw/gateway.toml")
    assert one["ExecReload"].endswith("kill -HUP $MAINPID")
    # Serial stays reachable: a device ACL, not PrivateDevices= (which hides /dev/tty*).
    assert one["DevicePolicy"] == "closed"
    assert set(s["DeviceAllow"]) == {"char-ttyUSB rw", "char-ttyACM rw"}
    assert "PrivateDevices" not in s
    assert one["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    for key in ("ProtectHome", "NoNewPrivileges", "PrivateTmp", "MemoryDenyWriteExecute"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert one["CapabilityBoundingSet"] == ""


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return tool


def runnable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's pumpgw (verify wants
    the binary to exist); everything else as shipped."""
    pumpgw = Path(sys.executable).with_name("pumpgw")
    if not pumpgw.exists():
        pytest.skip(f"no pumpgw console script next to {sys.executable}")
    text = UNIT.read_text().replace("/usr/local/bin/pumpgw", str(pumpgw))
    path = tmp_path / "pumpgw.service"
    path.write_text(text)
    return path


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    tool = systemd_analyze()
    unit = runnable_unit(tmp_path)
    done = subprocess.run(
        [tool, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # unknown keys are warnings, not errors


def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    tool = systemd_analyze()
    unit = runnable_unit(tmp_path)
    done = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in done.stderr and ("unrecognized" in done.stderr or "Unknown" in done.stderr):
        pytest.skip("systemd-analyze is older than 250: no `security --offline`")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, done.stdout


# --- sd_notify, in process ------------------------------------------------------------


@dataclass(frozen=True)
class Note:
    at: float  # time.monotonic() when it arrived
    pid: int  # the sender, from SCM_CREDENTIALS
    fields: dict[str, str]


class FakeSystemd:
    """systemd's end of NOTIFY_SOCKET: records every datagram with its sender."""

    def __init__(self, address: str) -> None:
        self.address = address  # as NOTIFY_SOCKET spells it ("@name" is abstract)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.notes: list[Note] = []
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-systemd", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        creds = struct.calcsize("3i")
        while not self._stop.is_set():
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds))
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:creds])[0]
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self.cond:
                self.notes.append(Note(time.monotonic(), pid, fields))
                self.cond.notify_all()

    def wait_for(
        self, predicate: Callable[[Note], bool], what: str, timeout: float = DEADLINE_S
    ) -> Note:
        with self.cond:
            found: list[Note] = []

            def seen() -> bool:
                found[:] = [n for n in self.notes if predicate(n)]
                return bool(found)

            if not self.cond.wait_for(seen, timeout):
                raise AssertionError(f"no {what} within {timeout} s; got {self.notes}")
            return found[0]

    def pings(self, after: float = 0.0) -> list[float]:
        with self.cond:
            return [n.at for n in self.notes if n.fields.get("WATCHDOG") == "1" and n.at > after]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def fake_systemd() -> Iterator[FakeSystemd]:
    fake = FakeSystemd(f"@pumpgw-test-{uuid.uuid4().hex}")
    try:
        yield fake
    finally:
        fake.close()


def test_notifier_is_a_no_op_without_notify_socket() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    assert notifier.ready("x") is False


def test_notifier_sends_to_a_path_socket_and_an_abstract_one(
    fake_systemd: FakeSystemd, tmp_path: Path
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": fake_systemd.address})
    assert notifier.ready("link up,\nbroker connected")
    note = fake_systemd.wait_for(lambda n: "READY" in n.fields, "READY=1")
    # A newline in a value cannot become a field of its own.
    assert note.fields == {"READY": "1", "STATUS": "link up, broker connected"}
    assert note.pid == os.getpid()

    path = tmp_path / "notify"
    fake = FakeSystemd(str(path))
    try:
        assert Notifier({"NOTIFY_SOCKET": str(path)}).stopping("bye")
        note = fake.wait_for(lambda n: "STOPPING" in n.fields, "STOPPING=1")
        assert note.fields == {"STOPPING": "1", "STATUS": "bye"}
    finally:
        fake.close()


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = {"NOTIFY_SOCKET": "@x"}
    assert Notifier({**base, "WATCHDOG_USEC": "30000000"}).watchdog_interval_s == 15.0
    mine = {**base, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_interval_s == 1.0
    theirs = {**base, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(theirs).watchdog_interval_s is None
    assert Notifier({**base, "WATCHDOG_USEC": "soon"}).watchdog_interval_s is None
    assert "event=sd_watchdog_invalid" in caplog.text


def test_notify_failures_are_logged_once_and_the_recovery_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pumpgw.sdnotify")
    path = tmp_path / "notify"
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    assert notifier.watchdog() is False  # nobody listening yet
    assert notifier.watchdog() is False
    failures = [r for r in caplog.records if "event=sd_notify_failed" in r.getMessage()]
    assert len(failures) == 1
    assert "FileNotFoundError" in failures[0].getMessage()
    fake = FakeSystemd(str(path))
    try:
        assert notifier.watchdog()
        assert "event=sd_notify_recovered lost=2" in caplog.text
    finally:
        fake.close()


# --- the real daemon under a fake systemd ------------------------------------------------


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long
    return libc


PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000  # waitpid's __WALL: wait for a thread we trace


class FrozenThread:
    """One thread of another process, stopped by ptrace until ``thaw``.

    Only that thread stops (SIGSTOP would stop the whole process). Stopped in
    a system call it holds no GIL, so the rest of the interpreter runs on."""

    def __init__(self, pid: int, name: str) -> None:
        self.pid = pid
        self.tid = _find_thread(pid, name)
        self._libc = _libc()
        self.attached = False

    def freeze(self) -> None:
        for _ in range(20):
            self._ptrace(PTRACE_SEIZE)
            self.attached = True
            self._ptrace(PTRACE_INTERRUPT)
            os.waitpid(self.tid, WALL)
            # "-1 ..." would mean it stopped outside a system call, maybe holding the GIL.
            syscall = Path(f"/proc/{self.pid}/task/{self.tid}/syscall").read_text()
            if not syscall.startswith("-1"):
                return
            self.thaw()
            time.sleep(0.05)
        raise AssertionError(f"thread {self.tid} never stopped inside a system call")

    def thaw(self) -> None:
        if self.attached:
            self._ptrace(PTRACE_DETACH)
            self.attached = False

    def reap(self, deadline: float) -> None:
        """After the process was killed: collect our tracee's exit, or the
        process's zombie would wait for it forever."""
        while self.attached and time.monotonic() < deadline:
            try:
                tid, _status = os.waitpid(self.tid, WALL | os.WNOHANG)
            except ChildProcessError:
                break
            if tid == self.tid:
                break
            time.sleep(0.05)
        self.attached = False

    def _ptrace(self, request: int) -> None:
        if self._libc.ptrace(request, self.tid, None, None) != 0:
            err = ctypes.get_errno()
            if err in (errno.EPERM, errno.EACCES) and request == PTRACE_SEIZE:
                pytest.skip(f"ptrace is not permitted here ({os.strerror(err)})")
            raise OSError(err, f"ptrace({request:#x}, {self.tid}): {os.strerror(err)}")


def _find_thread(pid: int, name: str) -> int:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                if (task / "comm").read_text().strip() == name:
                    return int(task.name)
        time.sleep(0.05)
    raise AssertionError(f"no thread named {name!r} in process {pid}")


# Runs the daemon as the unit's MemoryDenyWriteExecute=yes would: Linux >= 6.3
# has the same rule as prctl(PR_SET_MDWE), kept across the exec.
MDWE_EXEC = """
import ctypes, os, sys
err = 0 if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) == 0 else ctypes.get_errno()
print("mdwe: " + ("on" if not err else "unavailable: " + os.strerror(err)), file=sys.stderr)
os.execv(sys.argv[1], sys.argv[1:])
"""


def _kernel_has_mdwe() -> bool:
    release = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return release is not None and (int(release[1]), int(release[2])) >= (6, 3)


def start_gateway(config: Path, fake: FakeSystemd, mdwe: bool = False) -> Process:
    wrapper = [sys.executable, "-c", MDWE_EXEC] if mdwe else []
    env = {
        **os.environ,
        "NOTIFY_SOCKET": fake.address,
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "PYTHONUNBUFFERED": "1",
    }
    return Process(
        [*wrapper, sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
        config.parent / "gateway.log",
        env=env,
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ptrace and /proc are Linux")
def test_ready_status_and_watchdog_then_a_stuck_reader_stops_the_pings(
    tmp_path: Path, mosquitto: BrokerEndpoint, fake_systemd: FakeSystemd
) -> None:
    interval = WATCHDOG_USEC / 2e6
    with simulator(tmp_path, "--pump", "PMP-0001=normal", "--speed", "100") as (_sim, port):
        config = gateway_config(tmp_path, port=port, broker_port=mosquitto.port)
        gw = start_gateway(config, fake_systemd, mdwe=True)
        frozen: FrozenThread | None = None
        try:

            def fail(what: str) -> AssertionError:
                return AssertionError(f"{what}\n--- gateway log:\n{gw.log()[-4000:]}")

            try:
                ready = fake_systemd.wait_for(lambda n: n.fields.get("READY") == "1", "READY=1")
                assert (tmp_path / "state" / "outbox.sqlite3").exists()
                # The serial side settled first: here, with the handshake done.
                assert ready.fields["STATUS"].startswith("link up, "), ready.fields
                fake_systemd.wait_for(
                    lambda n: "broker connected" in n.fields.get("STATUS", ""),
                    "STATUS=... broker connected",
                )
                # Regular pings, never as far apart as WATCHDOG_USEC.
                deadline = time.monotonic() + DEADLINE_S
                while len(fake_systemd.pings(after=ready.at)) < 4:
                    assert time.monotonic() < deadline, "fewer than 4 pings"
                    time.sleep(0.1)
            except AssertionError as exc:
                raise fail(str(exc)) from None
            if _kernel_has_mdwe():  # ran all along with no writable+executable memory
                assert "mdwe: on" in gw.log(), gw.log()[:2000]
            pings = fake_systemd.pings()
            gaps = [b - a for a, b in itertools.pairwise(pings)]
            assert max(gaps) < WATCHDOG_USEC / 1e6, gaps
            # paho's thread was found, so a dead one would withhold the ping too.
            assert "event=watchdog_ignores_mqtt" not in gw.log()
            # Everything came from the main PID (NotifyAccess=main).
            assert {n.pid for n in fake_systemd.notes} == {gw.proc.pid}

            frozen = FrozenThread(gw.proc.pid, THREAD_NAME)
            frozen.freeze()
            frozen_at = time.monotonic()
            # The reader is overdue after its read timeout plus the grace; the
            # ping due after that is withheld.
            latest_ping = frozen_at + READ_TIMEOUT_S + READER_GRACE_S + interval + 0.5
            silence = WATCHDOG_USEC / 1e6 + 1.0  # systemd would have fired by now
            deadline = latest_ping + silence + 5.0
            while True:
                last = fake_systemd.pings()[-1]
                if time.monotonic() - last > silence:
                    break
                if time.monotonic() > deadline:
                    raise fail(f"pings went on after the reader froze at {frozen_at}: {last}")
                time.sleep(0.1)
            assert last <= latest_ping, (last - frozen_at, gw.log()[-2000:])
            # The process is alive and its main loop turning: it says why it is silent.
            assert gw.proc.poll() is None
            assert "event=watchdog_withheld component=serial-reader" in gw.log()

            # systemd's WatchdogSignal (SIGABRT): the stacks of every thread go
            # to the journal, and the process dies of it, so Restart=on-failure
            # starts a fresh one.
            gw.proc.send_signal(signal.SIGABRT)
            frozen.reap(time.monotonic() + DEADLINE_S)
            assert gw.proc.wait(timeout=DEADLINE_S) == -signal.SIGABRT
            log = gw.log()
            assert "Fatal Python error: Aborted" in log
            assert "serial_link.py" in log and "_read_until_failure" in log
        finally:
            if frozen is not None and gw.proc.poll() is None:
                frozen.thaw()
            gw.stop()


def test_reader_that_cannot_open_its_port_still_means_ready(
    tmp_path: Path, mosquitto: BrokerEndpoint, fake_systemd: FakeSystemd
) -> None:
    """READY=1 also when the first attempt failed and retrying started; the
    watchdog keeps pinging while the reader retries (it is alive, not stuck);
    a reload says RELOADING=1 then READY=1; a stop says STOPPING=1."""
    config = gateway_config(
        tmp_path, port=str(tmp_path / "no-such-tty"), broker_port=mosquitto.port
    )
    gw = start_gateway(config, fake_systemd)
    try:
        ready = fake_systemd.wait_for(lambda n: n.fields.get("READY") == "1", "READY=1")
        assert ready.fields["STATUS"].startswith("link down (cannot open"), ready.fields
        deadline = time.monotonic() + DEADLINE_S
        while len(fake_systemd.pings(after=ready.at)) < 3:
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.1)
        # systemctl reload: SIGHUP, and the daemon brackets the reload for systemd.
        gw.proc.send_signal(signal.SIGHUP)
        reloading = fake_systemd.wait_for(lambda n: "RELOADING" in n.fields, "RELOADING=1")
        assert int(reloading.fields["MONOTONIC_USEC"]) > 0
        fake_systemd.wait_for(
            lambda n: n.fields.get("READY") == "1" and n.at >= reloading.at, "READY=1 after reload"
        )
        assert gw.stop() == 0
        stopping = fake_systemd.wait_for(lambda n: "STOPPING" in n.fields, "STOPPING=1")
        assert stopping.fields["STATUS"] == "stopping: SIGTERM"
    finally:
        gw.stop()
