"""The serial port: open (device path or pyserial URL), read in a thread, reopen.

The reader thread blocks in ``read`` (with a timeout only so that ``stop``
is noticed) and hands every chunk to ``sink``; when the port fails (cable
pulled, programmer gone, node renamed) it closes it, reports why, and
retries with a capped exponential backoff. Everything it learns goes to
``sink`` as ``PortOpened``, ``BytesRead`` or ``PortClosed``, in order.

Liveness: before every call that may block (open, read, close, backoff wait)
the thread promises when it will be back (``_beat``); ``overdue_s`` says how
late it is. A thread wedged in a syscall (a USB-serial driver that never
returns from ``read``) or dead shows up there, and the daemon then withholds
systemd's watchdog ping. The thread names itself ``serial-reader`` at the OS
level too (``ps -L``, ``top -H``, ``/proc/PID/task/*/comm``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import serial

from drivers.logfmt import log_event

log = logging.getLogger("pumpgw.serial")

READ_TIMEOUT_S = 1.0
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
OPEN_BUDGET_S = 10.0  # a pyserial URL (socket://, rfc2217://) may connect over TCP
THREAD_NAME = "serial-reader"


@dataclass(frozen=True, slots=True)
class PortOpened:
    port: str


@dataclass(frozen=True, slots=True)
class PortClosed:
    reason: str


@dataclass(frozen=True, slots=True)
class BytesRead:
    data: bytes


PortEvent = PortOpened | PortClosed | BytesRead


class SerialLink:
    def __init__(self, url: str, baudrate: int, sink: Callable[[PortEvent], None]) -> None:
        self.url = url
        self.baudrate = baudrate
        self._sink = sink
        self._stop = threading.Event()
        self._reopen = threading.Event()
        self._lock = threading.Lock()
        self._port: serial.SerialBase | None = None
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._beat_due = time.monotonic() + OPEN_BUDGET_S

    def start(self) -> None:
        self._beat(OPEN_BUDGET_S)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._interrupt()
        self._thread.join(timeout=2 * READ_TIMEOUT_S + 1)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def overdue_s(self) -> float:
        """How many seconds the reader thread is late for its next heartbeat
        (0.0 while it keeps its promise; meaningful once started)."""
        return max(0.0, time.monotonic() - self._beat_due)

    def _beat(self, back_within_s: float) -> None:
        """Heartbeat: alive now, and back here within ``back_within_s``."""
        self._beat_due = time.monotonic() + back_within_s

    def reopen(self) -> None:
        """Close and reopen the port (e.g. the device stopped answering)."""
        self._reopen.set()
        self._interrupt()

    def write(self, data: bytes) -> None:
        with self._lock:
            port = self._port
        if port is None or not data:
            return
        try:
            port.write(data)
        except (serial.SerialException, OSError) as exc:
            log_event(log, "serial_write_failed", logging.WARNING, port=self.url, error=exc)
            self.reopen()

    def _interrupt(self) -> None:
        with self._lock:
            port = self._port
        cancel = getattr(port, "cancel_read", None)
        if cancel is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                cancel()

    def _run(self) -> None:
        _name_os_thread(THREAD_NAME)
        backoff = BACKOFF_START_S
        last_error = ""
        while not self._stop.is_set():
            self._beat(OPEN_BUDGET_S)
            try:
                port = serial.serial_for_url(
                    self.url, baudrate=self.baudrate, timeout=READ_TIMEOUT_S, exclusive=True
                )
            except (serial.SerialException, OSError, ValueError) as exc:
                error = str(exc)
                if error != last_error:  # one line per change, not per retry
                    log_event(
                        log, "serial_open_failed", logging.WARNING, port=self.url, error=error
                    )
                    self._sink(PortClosed(f"cannot open {self.url}: {error}"))
                    last_error = error
                self._beat(backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            backoff = BACKOFF_START_S
            last_error = ""
            reason = self._read_until_failure(port)
            if not self._stop.is_set():
                log_event(log, "serial_closed", logging.WARNING, port=self.url, reason=reason)
                self._sink(PortClosed(reason))
                self._beat(BACKOFF_START_S)
                self._stop.wait(BACKOFF_START_S)

    def _read_until_failure(self, port: serial.SerialBase) -> str:
        with self._lock:
            self._port = port
        self._reopen.clear()
        log_event(log, "serial_opened", port=self.url, baudrate=self.baudrate)
        self._sink(PortOpened(self.url))
        try:
            while not self._stop.is_set() and not self._reopen.is_set():
                self._beat(READ_TIMEOUT_S)
                data = port.read(getattr(port, "in_waiting", 0) or 1)
                if data:
                    self._sink(BytesRead(data))
            return "reopen requested" if self._reopen.is_set() else "stopped"
        except (serial.SerialException, OSError) as exc:
            return f"port failed: {exc}"
        finally:
            with self._lock:
                self._port = None
            self._beat(READ_TIMEOUT_S)
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()


def _name_os_thread(name: str) -> None:
    """Give the calling thread its name at the OS level (Linux; 15 bytes at most)."""
    try:
        with open("/proc/thread-self/comm", "w") as comm:
            comm.write(name[:15])
    except OSError as exc:  # not Linux, or /proc not mounted: only cosmetic
        log_event(log, "thread_name_not_set", logging.DEBUG, thread=name, error=exc)
