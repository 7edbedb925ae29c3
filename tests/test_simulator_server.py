"""The simulator as a real process, reached over a pty and over TCP with pyserial.

Deadlines are generous and only keep a broken build from hanging; no test
asserts how fast anything happens.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serial

from drivers.ptp import (
    DecodedItem,
    Hello,
    IdCommand,
    Message,
    Ok,
    PollCommand,
    Stat,
    StreamCommand,
    StreamDecoder,
    encode,
)
from drivers.simulator.server import PtyTransport, TcpTransport, Transport

REPO = Path(__file__).resolve().parent.parent
DEADLINE_S = 20.0

Simulator = tuple[subprocess.Popen[bytes], str]
StartSimulator = Callable[..., Simulator]


@pytest.fixture
def start_simulator(tmp_path: Path) -> Iterator[StartSimulator]:
    """``start_simulator(*args)`` -> (process, first stdout line); stopped at teardown."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> Simulator:
        stderr = (tmp_path / f"simulator-{len(processes)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "drivers.simulator", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        processes.append(process)
        return process, next_line(process)

    yield start
    for process in processes:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def next_line(process: subprocess.Popen[bytes]) -> str:
    """The next line the simulator prints (it prints one per port it opens)."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(DEADLINE_S):
            pytest.fail("the simulator printed no port in time")
    return process.stdout.readline().decode().rstrip("\n")


def read_until(
    port: serial.SerialBase, decoder: StreamDecoder, done: Callable[[object], bool]
) -> list[DecodedItem]:
    """Everything decoded up to and including the first message for which ``done`` is true."""
    items: list[DecodedItem] = []
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        for item in decoder.feed(port.read(4096)):
            items.append(item)
            if done(item):
                return items
    pytest.fail(f"gave up waiting; decoded so far: {items[-5:]}")


def exchange(
    port: serial.SerialBase, command: Message, done: Callable[[object], bool]
) -> list[DecodedItem]:
    decoder = StreamDecoder(role="host")
    port.write(encode(command))
    return read_until(port, decoder, done)


def is_hello(message: object) -> bool:
    return isinstance(message, Hello)


def low_stat(message: object) -> bool:
    return isinstance(message, Stat) and message.res_ml is not None and message.res_ml < 5.0


def poll_done(message: object) -> bool:
    return message == Ok("POLL")


def is_stat(message: object) -> bool:
    return isinstance(message, Stat)


def check_programmer(open_port: Callable[[], serial.SerialBase]) -> None:
    """Identify, stream until the reservoir is below 5 mL, then close, reopen, ask again."""
    with open_port() as port:
        hello = exchange(port, IdCommand(), is_hello)[-1]
        assert hello == Hello(1, "SIMU", "SIM-PTP1", "SIM00001", "0.1.0", 1)
        streamed = exchange(port, StreamCommand(60), low_stat)
        assert Ok("STREAM") in streamed
        stats = [m for m in streamed if isinstance(m, Stat)]
        reservoir = [s.res_ml for s in stats if s.res_ml is not None]
        assert reservoir == sorted(reservoir, reverse=True) and reservoir[0] > reservoir[-1]
        assert [s.seq for s in stats] == sorted({s.seq for s in stats})
    with open_port() as port:  # the port survives the gateway closing it
        assert is_hello(exchange(port, IdCommand(), is_hello)[-1])
        polled = exchange(port, PollCommand(), poll_done)
        assert any(isinstance(m, Stat) and m.pump_id == "PMP-0001" for m in polled)


def test_pty_streams_and_survives_reopen(start_simulator: StartSimulator) -> None:
    process, path = start_simulator("--scenario", "low-reservoir", "--speed", "100000")
    assert path.startswith("/dev/")
    check_programmer(lambda: serial.Serial(path, 115200, timeout=0.05))
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=DEADLINE_S) == 0


def test_tcp_streams_and_survives_reopen(start_simulator: StartSimulator) -> None:
    process, url = start_simulator("--scenario", "low-reservoir", "--speed", "100000", "--tcp", "0")
    assert url.startswith("socket://127.0.0.1:")
    check_programmer(lambda: serial.serial_for_url(url, 115200, timeout=0.05))
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=DEADLINE_S) == 0


def test_tcp_new_connection_replaces_the_old_one(start_simulator: StartSimulator) -> None:
    _, url = start_simulator("--tcp", "0")
    with serial.serial_for_url(url, timeout=0.05) as first:
        assert is_hello(exchange(first, IdCommand(), is_hello)[-1])
        with serial.serial_for_url(url, timeout=0.05) as second:
            assert is_hello(exchange(second, IdCommand(), is_hello)[-1])


def test_sigusr1_power_cycles_the_programmer(start_simulator: StartSimulator) -> None:
    process, path = start_simulator("--pump", "A=normal", "--pump", "refill", "--speed", "1000")
    with serial.Serial(path, 115200, timeout=0.05) as port:
        hello = exchange(port, IdCommand(), is_hello)[-1]
        assert isinstance(hello, Hello) and hello.pump_count == 2
        exchange(port, PollCommand(), poll_done)
        decoder = StreamDecoder(role="host")
        process.send_signal(signal.SIGUSR1)
        assert is_hello(read_until(port, decoder, is_hello)[-1])  # unprompted
        stats = [m for m in exchange(port, PollCommand(), poll_done) if isinstance(m, Stat)]
        assert [(s.seq, s.pump_id) for s in stats] == [(0, "A"), (1, "PMP-0002")]


def fails_like_a_vanished_device(port: serial.SerialBase) -> None:
    """Reads (draining what was already on its way) until the port raises."""
    deadline = time.monotonic() + DEADLINE_S
    with pytest.raises(serial.SerialException):
        while time.monotonic() < deadline:
            port.read(4096)


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("gave up waiting")
        time.sleep(0.01)


def open_pty(path: str) -> serial.SerialBase:
    return serial.Serial(path, timeout=0.05)


def open_url(url: str) -> serial.SerialBase:
    return serial.serial_for_url(url, timeout=0.05)


def unplug_and_replug(
    process: subprocess.Popen[bytes], port_name: str, open_port: Callable[[str], serial.SerialBase]
) -> str:
    """Stream; SIGUSR2: the open port fails and the old one cannot be opened; SIGUSR2:
    the port is printed again and the programmer carries on where it was (streaming,
    seq going on, no HELLO: a cable pull is no restart). Returns the port printed."""
    with open_port(port_name) as port:
        assert is_hello(exchange(port, IdCommand(), is_hello)[-1])
        before = exchange(port, StreamCommand(1), is_stat)[-1]
        assert isinstance(before, Stat)
        process.send_signal(signal.SIGUSR2)
        fails_like_a_vanished_device(port)
        with pytest.raises(serial.SerialException):
            open_port(port_name)  # (a pty's number stays taken while this host holds it)
    process.send_signal(signal.SIGUSR2)
    replugged = next_line(process)
    with open_port(replugged) as port:
        streamed = read_until(port, StreamDecoder(role="host"), is_stat)
        after = streamed[-1]
        assert isinstance(after, Stat) and after.seq > before.seq
        assert not any(isinstance(item, Hello) for item in streamed)
        assert is_hello(exchange(port, IdCommand(), is_hello)[-1])
    return replugged


def test_sigusr2_unplugs_the_pty_and_replugs_it_under_a_new_path(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    process, path = start_simulator("--speed", "1000")
    replugged = unplug_and_replug(process, path, open_pty)
    assert replugged.startswith("/dev/") and replugged != path
    # New each time, though the kernel would hand the number just freed out again.
    again = unplug_and_replug(process, replugged, open_pty)
    assert again != replugged
    process.send_signal(signal.SIGUSR2)
    wait_for(lambda: not os.path.exists(again))
    process.send_signal(signal.SIGTERM)  # stopping while unplugged is a clean stop
    assert process.wait(timeout=DEADLINE_S) == 0
    log = (tmp_path / "simulator-0.log").read_text()
    assert f"event=unplugged port={path}\n" in log
    assert f"event=replugged port={replugged}\n" in log
    assert log.count("event=unplugged") == 3 and log.count("event=replugged") == 2


def test_sigusr2_unplugs_tcp_and_replugs_it_on_the_same_port(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    process, url = start_simulator("--speed", "1000", "--tcp", "0")
    log_path = tmp_path / "simulator-0.log"
    assert unplug_and_replug(process, url, open_url) == url
    assert unplug_and_replug(process, url, open_url) == url
    process.send_signal(signal.SIGUSR2)
    wait_for(lambda: "event=unplugged" in log_path.read_text().split("event=replugged")[-1])
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=DEADLINE_S) == 0
    log = log_path.read_text()
    assert f"event=replugged port={url}\n" in log
    assert log.count("event=unplugged") == 3 and log.count("event=replugged") == 2


@pytest.mark.parametrize("make", [PtyTransport, lambda: TcpTransport(0)], ids=["pty", "tcp"])
def test_an_unplugged_transport_drops_output_and_toggles_once(
    make: Callable[[], Transport],
) -> None:
    transport = make()
    try:
        with selectors.DefaultSelector() as selector:
            transport.register(selector, lambda data: None)
            before = transport.port_name
            transport.unplug()
            transport.unplug()
            assert not transport.plugged and not selector.get_map()
            transport.write(b"lost")
            assert transport.bytes_dropped == 4
            transport.replug()
            transport.replug()
            assert transport.plugged and len(selector.get_map()) == 1
            assert (transport.port_name == before) == isinstance(transport, TcpTransport)
    finally:
        transport.close()


def test_tcp_replug_onto_a_port_taken_meanwhile_fails_and_stays_unplugged() -> None:
    transport = TcpTransport(0)
    port = int(transport.port_name.rsplit(":", 1)[1])
    try:
        with selectors.DefaultSelector() as selector:
            transport.register(selector, lambda data: None)
            transport.unplug()
            with socket.create_server(("127.0.0.1", port)):
                with pytest.raises(OSError):
                    transport.replug()
                assert not transport.plugged and not selector.get_map()
            transport.replug()
            assert transport.plugged
    finally:
        transport.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenario", "nope"], "unknown scenario 'nope'"),
        (["--pump", "pmp-1=normal"], "bad pump id 'pmp-1'"),
        (["--pump", "normal", "--pump", "PMP-0001=refill"], "PMP-0001 given twice"),
        (["--speed", "-3"], "speed must be a number > 0"),
        (["--start", "noon"], "start time must be ISO 8601 UTC"),
    ],
)
def test_bad_options_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "drivers.simulator", *args],
        cwd=REPO,
        capture_output=True,
        timeout=DEADLINE_S,
    )
    assert result.returncode == 2
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_pty_drops_output_nobody_reads_instead_of_blocking() -> None:
    transport = PtyTransport()
    try:
        chunk = b"x" * 4096
        for _ in range(256):  # 1 MiB, far beyond any pty buffer
            transport.write(chunk)
        assert 0 < transport.bytes_dropped < 256 * len(chunk)
        reader = os.open(transport.port_name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            assert os.read(reader, 100).startswith(b"x")
        finally:
            os.close(reader)
    finally:
        transport.close()


def test_a_busy_tcp_port_exits_1_with_one_log_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "drivers.simulator", "--tcp", str(port)],
            cwd=REPO,
            capture_output=True,
            timeout=DEADLINE_S,
        )
    assert result.returncode == 1
    assert result.stdout == b""
    [line] = result.stderr.decode().splitlines()
    assert "event=port_unavailable" in line
