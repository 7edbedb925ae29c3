"""Real processes for end-to-end tests: the simulated programmer and ``pumpgw run``."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

STOP_TIMEOUT_S = 15.0


class Process:
    """A child process with its stderr in a file, shown when a test fails."""

    def __init__(self, args: Sequence[str], log_path: Path, **popen: Any) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.proc = subprocess.Popen(list(args), stderr=self._log, **popen)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextmanager
def simulator(tmp_path: Path, *args: str) -> Iterator[tuple[Process, str]]:
    """``python -m drivers.simulator ARGS``; yields it and the port it prints."""
    sim = Process(
        [sys.executable, "-m", "drivers.simulator", *args],
        tmp_path / "simulator.log",
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.proc.stdout is not None
        port = sim.proc.stdout.readline().strip()
        assert port, f"simulator printed no port:\n{sim.log()}"
        yield sim, port
    finally:
        sim.stop()


def gateway_config(
    tmp_path: Path,
    *,
    port: str,
    broker_port: int,
    gateway_id: str = "e2e",
    extra: str = "",
    serial_extra: str = "",
    mqtt_extra: str = "",
    poll_interval_s: int = 60,
) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""\
[gateway]
id = "{gateway_id}"
state_dir = "{tmp_path / "state"}"

[serial]
port = "{port}"
poll_interval_s = {poll_interval_s}
{serial_extra}

[mqtt]
host = "127.0.0.1"
port = {broker_port}
info_interval_s = 0.2
{mqtt_extra}

{extra}
"""
    )
    return path


@contextmanager
def gateway(config: Path) -> Iterator[Process]:
    """The real daemon, ``pumpgw run --config CONFIG``; SIGTERM on the way out."""
    gw = Process(
        [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
        config.parent / "gateway.log",
    )
    try:
        yield gw
    finally:
        gw.stop()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
