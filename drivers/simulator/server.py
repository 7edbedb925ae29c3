"""The imperative shell: carries the programmer's bytes over a pty or TCP.

One thread, one ``selectors`` loop. It blocks until host input, a signal, or
the next streamed batch is due, never polls. Output never blocks: bytes the
other end is not reading are dropped, as a UART with no listener drops them.

Signals (through ``signal.set_wakeup_fd``, handled inside the loop):
SIGTERM and SIGINT stop the loop, SIGUSR1 power-cycles the programmer.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Protocol

from drivers.logfmt import log_event
from drivers.simulator.device import Programmer

_READ_SIZE = 4096
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

_log = logging.getLogger(__name__)

InputCallback = Callable[[bytes], None]


class Transport(Protocol):
    port_name: str
    """What the gateway puts in ``serial.port`` to reach this transport."""
    bytes_dropped: int

    def register(self, selector: selectors.BaseSelector, on_input: InputCallback) -> None:
        """Watch the transport's files; a key's data is the callable to run when ready."""
        ...

    def write(self, data: bytes) -> None:
        """Send without blocking; what cannot be sent now is dropped and counted."""
        ...

    def close(self) -> None: ...


class PtyTransport:
    """A pseudo-terminal; the gateway opens its slave side like a serial port.

    The simulator keeps its own slave fd open so the pty survives the gateway
    closing and reopening the port; it never reads from it. The slave is raw
    (no echo, no line editing) and the master non-blocking.
    """

    def __init__(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port_name = os.ttyname(self._slave)
        self.bytes_dropped = 0

    def register(self, selector: selectors.BaseSelector, on_input: InputCallback) -> None:
        selector.register(self._master, selectors.EVENT_READ, partial(self._read, on_input))

    def _read(self, on_input: InputCallback) -> None:
        try:
            data = os.read(self._master, _READ_SIZE)
        except BlockingIOError:
            return
        on_input(data)

    def write(self, data: bytes) -> None:
        try:
            sent = os.write(self._master, data) if data else 0
        except BlockingIOError:
            sent = 0
        self.bytes_dropped += len(data) - sent

    def close(self) -> None:
        os.close(self._master)
        os.close(self._slave)


class TcpTransport:
    """A TCP listener on 127.0.0.1 (pyserial: ``socket://127.0.0.1:PORT``).

    One client at a time: a new connection replaces the old one. With no
    client, output is dropped.
    """

    def __init__(self, port: int) -> None:
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.setblocking(False)
        self.port_name = f"socket://127.0.0.1:{self._listener.getsockname()[1]}"
        self.bytes_dropped = 0
        self._client: socket.socket | None = None
        self._selector: selectors.BaseSelector  # set by register(), before any client

    def register(self, selector: selectors.BaseSelector, on_input: InputCallback) -> None:
        self._selector = selector
        selector.register(self._listener, selectors.EVENT_READ, partial(self._accept, on_input))

    def _accept(self, on_input: InputCallback) -> None:
        try:
            client, address = self._listener.accept()
        except BlockingIOError:
            return
        self._drop_client("replaced by a new connection")
        client.setblocking(False)
        self._client = client
        self._selector.register(client, selectors.EVENT_READ, partial(self._read, client, on_input))
        log_event(_log, "client_connected", peer=f"{address[0]}:{address[1]}")

    def _read(self, client: socket.socket, on_input: InputCallback) -> None:
        if client is not self._client:
            return  # replaced earlier in the same select() round
        try:
            data = client.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._drop_client(exc.strerror or type(exc).__name__)
            return
        if data:
            on_input(data)
        else:
            self._drop_client("closed by the client")

    def write(self, data: bytes) -> None:
        sent = 0
        if self._client is not None and data:
            try:
                sent = self._client.send(data)
            except BlockingIOError:
                pass
            except OSError as exc:
                self._drop_client(exc.strerror or type(exc).__name__)
        self.bytes_dropped += len(data) - sent

    def _drop_client(self, reason: str) -> None:
        if self._client is None:
            return
        self._selector.unregister(self._client)
        self._client.close()
        self._client = None
        log_event(_log, "client_disconnected", reason=reason)

    def close(self) -> None:
        """Close the sockets (after the loop, whose selector is gone by then)."""
        if self._client is not None:
            self._client.close()
        self._listener.close()


@contextmanager
def signal_wakeups() -> Iterator[socket.socket]:
    """A socket that receives one byte (the signal number) per SIGTERM/SIGINT/SIGUSR1.

    While inside, those signals no longer kill the process; the loop reads
    them from the socket. Previous handlers are restored on exit.
    """
    receiver, sender = socket.socketpair()
    receiver.setblocking(False)
    sender.setblocking(False)
    previous_fd = signal.set_wakeup_fd(sender.fileno(), warn_on_full_buffer=False)
    previous = {signum: signal.signal(signum, _note_only) for signum in _HANDLED_SIGNALS}
    try:
        yield receiver
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(previous_fd)
        receiver.close()
        sender.close()


def _note_only(signum: int, frame: object) -> None:
    """The wakeup fd already recorded the signal; the loop acts on it."""


def serve(
    programmer: Programmer,
    transport: Transport,
    wakeups: socket.socket,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run until SIGTERM or SIGINT arrives on ``wakeups`` (see ``signal_wakeups``)."""

    def on_input(data: bytes) -> None:
        transport.write(programmer.receive(data, clock()))

    with selectors.DefaultSelector() as selector:
        transport.register(selector, on_input)
        selector.register(wakeups, selectors.EVENT_READ)
        transport.write(programmer.power_cycle())
        log_event(_log, "started", port=transport.port_name)
        while True:
            due = programmer.next_due()
            timeout = None if due is None else max(0.0, due - clock())
            for key, _ in selector.select(timeout):
                if key.fileobj is not wakeups:
                    key.data()
                    continue
                for signum in wakeups.recv(_READ_SIZE):
                    if signum in _STOP_SIGNALS:
                        log_event(
                            _log,
                            "stopped",
                            signal=signal.Signals(signum).name,
                            bytes_dropped=transport.bytes_dropped,
                        )
                        return
                    log_event(_log, "power_cycle", signal=signal.Signals(signum).name)
                    transport.write(programmer.power_cycle())
            transport.write(programmer.on_due(clock()))
