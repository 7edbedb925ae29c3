"""The imperative shell: carries the programmer's bytes over a pty or TCP.

One thread, one ``selectors`` loop. It blocks until host input, a signal, or
the next streamed batch is due, never polls. Output never blocks: bytes the
other end is not reading are dropped, as a UART with no listener drops them.

Signals (through ``signal.set_wakeup_fd``, handled inside the loop):
SIGTERM and SIGINT stop the loop, SIGUSR1 power-cycles the programmer,
SIGUSR2 pulls the programmer's cable out or plugs it back in (``unplug`` /
``replug``). A cable pull does not restart the programmer: the pumps age,
streaming and ``seq`` go on, and what it sends meanwhile is dropped. On
replug the port's name is printed again on stdout (a pty comes back under a
new path, a TCP port on the same one).
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
_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)

_log = logging.getLogger(__name__)

InputCallback = Callable[[bytes], None]


class Transport(Protocol):
    port_name: str
    """What the gateway puts in ``serial.port`` to reach this transport."""
    bytes_dropped: int
    plugged: bool
    """False between ``unplug`` and ``replug``."""

    def register(self, selector: selectors.BaseSelector, on_input: InputCallback) -> None:
        """Watch the transport's files; a key's data is the callable to run when ready."""
        ...

    def write(self, data: bytes) -> None:
        """Send without blocking; what cannot be sent now is dropped and counted."""
        ...

    def unplug(self) -> None:
        """The cable is pulled: the port vanishes; until ``replug`` output is dropped."""
        ...

    def replug(self) -> None:
        """The cable is back: the port reappears at ``port_name``. Raises OSError."""
        ...

    def close(self) -> None: ...


def _open_pty(avoid: str = "") -> tuple[int, int]:
    """(master, slave) of a new pty whose slave path is not ``avoid``; slave raw, master
    non-blocking."""
    master, slave = os.openpty()
    if os.ttyname(slave) == avoid:
        # The kernel reuses a freed pty number: hold this one while taking the next.
        try:
            other = os.openpty()
        finally:
            os.close(slave)
            os.close(master)
        master, slave = other
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave


class PtyTransport:
    """A pseudo-terminal; the gateway opens its slave side like a serial port.

    The simulator keeps its own slave fd open so the pty survives the gateway
    closing and reopening the port; it never reads from it. The slave is raw
    (no echo, no line editing) and the master non-blocking.

    ``unplug`` closes both the slave and the master, so a gateway holding the
    port open gets EOF/EIO and the path disappears, as when a USB-CDC device
    vanishes; ``replug`` opens a new pty, always under a new path.
    """

    def __init__(self) -> None:
        self._master, self._slave = _open_pty()
        self.port_name = os.ttyname(self._slave)
        self.bytes_dropped = 0
        self.plugged = True
        self._selector: selectors.BaseSelector  # set by register()
        self._on_input: InputCallback

    def register(self, selector: selectors.BaseSelector, on_input: InputCallback) -> None:
        self._selector, self._on_input = selector, on_input
        self._watch()

    def _watch(self) -> None:
        callback = partial(self._read, self._master, self._on_input)
        self._selector.register(self._master, selectors.EVENT_READ, callback)

    def _read(self, master: int, on_input: InputCallback) -> None:
        if not self.plugged or master != self._master:
            return  # unplugged earlier in the same select() round
        try:
            data = os.read(master, _READ_SIZE)
        except BlockingIOError:
            return
        on_input(data)

    def write(self, data: bytes) -> None:
        try:
            sent = os.write(self._master, data) if self.plugged and data else 0
        except BlockingIOError:
            sent = 0
        self.bytes_dropped += len(data) - sent

    def unplug(self) -> None:
        if not self.plugged:
            return
        self._selector.unregister(self._master)
        # Slave first: once the master closes, the host sees the hangup and the
        # path is gone, with nothing of the old pty left open here.
        os.close(self._slave)
        os.close(self._master)
        self.plugged = False

    def replug(self) -> None:
        if self.plugged:
            return
        self._master, self._slave = _open_pty(avoid=self.port_name)
        self.port_name = os.ttyname(self._slave)
        self.plugged = True
        self._watch()

    def close(self) -> None:
        if self.plugged:
            os.close(self._master)
            os.close(self._slave)
            self.plugged = False


class TcpTransport:
    """A TCP listener on 127.0.0.1 (pyserial: ``socket://127.0.0.1:PORT``).

    One client at a time: a new connection replaces the old one. With no
    client, output is dropped. ``unplug`` drops the client and closes the
    listener (connecting is refused); ``replug`` listens on the same port again.
    """

    def __init__(self, port: int) -> None:
        self._listener = _listen(port)
        self._port: int = self._listener.getsockname()[1]
        self.port_name = f"socket://127.0.0.1:{self._port}"
        self.bytes_dropped = 0
        self.plugged = True
        self._client: socket.socket | None = None
        self._selector: selectors.BaseSelector  # set by register(), before any client
        self._on_input: InputCallback

    def register(self, selector: selectors.BaseSelector, on_input: InputCallback) -> None:
        self._selector, self._on_input = selector, on_input
        self._watch()

    def _watch(self) -> None:
        callback = partial(self._accept, self._on_input)
        self._selector.register(self._listener, selectors.EVENT_READ, callback)

    def _accept(self, on_input: InputCallback) -> None:
        if not self.plugged:
            return  # unplugged earlier in the same select() round
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

    def unplug(self) -> None:
        if not self.plugged:
            return
        # Listener first: once the client sees the connection drop, connecting fails.
        self._selector.unregister(self._listener)
        self._listener.close()
        self.plugged = False
        self._drop_client("unplugged")

    def replug(self) -> None:
        if self.plugged:
            return
        self._listener = _listen(self._port)
        self.plugged = True
        self._watch()

    def close(self) -> None:
        """Close the sockets (after the loop, whose selector is gone by then)."""
        if self._client is not None:
            self._client.close()
        self._listener.close()


def _listen(port: int) -> socket.socket:
    listener = socket.create_server(("127.0.0.1", port))
    listener.setblocking(False)
    return listener


@contextmanager
def signal_wakeups() -> Iterator[socket.socket]:
    """A socket that receives one byte (the signal number) per SIGTERM/SIGINT/SIGUSR1/SIGUSR2.

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


def print_port(port_name: str) -> None:
    """The port on a line of its own on stdout, flushed at once."""
    print(port_name, flush=True)


def serve(
    programmer: Programmer,
    transport: Transport,
    wakeups: socket.socket,
    clock: Callable[[], float] = time.monotonic,
    announce: Callable[[str], None] = print_port,
) -> None:
    """Run until SIGTERM or SIGINT arrives on ``wakeups`` (see ``signal_wakeups``).

    ``announce`` gets the port's name after every replug.
    """

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
                    if signum == signal.SIGUSR2:
                        _toggle_plug(transport, announce)
                        continue
                    log_event(_log, "power_cycle", signal=signal.Signals(signum).name)
                    transport.write(programmer.power_cycle())
            transport.write(programmer.on_due(clock()))


def _toggle_plug(transport: Transport, announce: Callable[[str], None]) -> None:
    """Pull the cable, or plug it back in; a failed replug leaves it unplugged."""
    if transport.plugged:
        transport.unplug()
        log_event(_log, "unplugged", port=transport.port_name)
        return
    try:
        transport.replug()
    except OSError as exc:
        log_event(_log, "replug_failed", level=logging.ERROR, port=transport.port_name, error=exc)
        return
    log_event(_log, "replugged", port=transport.port_name)
    announce(transport.port_name)
