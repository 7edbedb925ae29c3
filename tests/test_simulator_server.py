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
from drivers.simulator.server import PtyTransport

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
        return process, first_line(process)

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


def first_line(process: subprocess.Popen[bytes]) -> str:
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
