"""systemd's notify protocol without a dependency: one datagram to ``$NOTIFY_SOCKET``.

A message is ``KEY=value`` lines (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``,
``STOPPING=1``...) sent as one datagram to the ``AF_UNIX`` socket systemd names
in ``$NOTIFY_SOCKET``; a leading ``@`` means Linux's abstract namespace. With
no ``$NOTIFY_SOCKET`` (not started by systemd, or not ``Type=notify``) every
call is a no-op. ``$WATCHDOG_USEC`` turns the watchdog on (we ping at half of
it) unless ``$WATCHDOG_PID`` names another process.

Sending never blocks the caller: a full socket buffer (systemd busy) or a
vanished socket is logged, once per change of error, with the number of
messages lost, and the next message tries again.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

from drivers.logfmt import log_event

log = logging.getLogger("pumpgw.sdnotify")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address: str | None = None
        self.watchdog_interval_s: float | None = None
        self._sock: socket.socket | None = None
        self._error: str | None = None  # the last send error, logged once
        self._lost = 0
        raw = env.get("NOTIFY_SOCKET", "")
        if not raw:
            return
        if raw[0] not in "/@":
            # systemd >= 253 may also hand out "vsock:..." for VMs; not ours.
            log_event(
                log,
                "sd_notify_unsupported",
                logging.ERROR,
                notify_socket=raw,
                action="not notifying systemd",
            )
            return
        self.address = "\0" + raw[1:] if raw[0] == "@" else raw
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
        except OSError as exc:
            log_event(
                log,
                "sd_notify_socket_failed",
                logging.ERROR,
                error=exc,
                action="not notifying systemd",
            )
            self.address = None
            return
        self._sock = sock
        self.watchdog_interval_s = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> bool:
        """``send(READY=1, STATUS="...")``: one datagram; False if it was not delivered."""
        if self._sock is None or self.address is None:
            return False
        # One field per line: a value must not smuggle in a line of its own.
        message = "\n".join(
            f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()
        )
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:
            self._lost += 1
            error = f"{type(exc).__name__}: {exc}"
            if error != self._error:  # one line per change, not per watchdog ping
                self._error = error
                log_event(
                    log,
                    "sd_notify_failed",
                    logging.ERROR,
                    socket=self.address.replace("\0", "@"),
                    error=error,
                    message=message.split("\n", 1)[0],
                )
            return False
        if self._error is not None:
            log_event(log, "sd_notify_recovered", lost=self._lost)
            self._error = None
            self._lost = 0
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def watchdog(self, status: str | None = None) -> bool:
        if status is None:
            return self.send(WATCHDOG=1)
        return self.send(WATCHDOG=1, STATUS=status)

    def reloading(self) -> bool:
        return self.send(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)

    def stopping(self, status: str) -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of ``$WATCHDOG_USEC``, if the watchdog is meant for this process."""
    raw = env.get("WATCHDOG_USEC")
    if raw is None:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None  # the watchdog belongs to another process (e.g. our parent)
    try:
        usec = int(raw)
    except ValueError:
        usec = 0
    if usec <= 0:
        log_event(
            log,
            "sd_watchdog_invalid",
            logging.ERROR,
            watchdog_usec=raw,
            action="not sending watchdog pings",
        )
        return None
    return usec / 2e6
