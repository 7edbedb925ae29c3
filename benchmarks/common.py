"""Shared pieces of the benchmarks: child processes, a broker, a subscriber that
timestamps what it receives, the programmer's end of a pty, statistics, /proc.

Everything started here is registered in ``CHILDREN`` and stopped on the way
out (``stop_all``), so a run leaves no process behind, even when interrupted.
Every load goes to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from drivers.ptp import (
    Hello,
    IdCommand,
    Ok,
    PollCommand,
    Stat,
    StreamCommand,
    StreamDecoder,
    TimeCommand,
    encode,
)
from gateway.broker import find_mosquitto, free_loopback_port

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PYTHON = sys.executable


class BenchSkipped(Exception):
    """A benchmark (or part of one) that cannot run on this machine; says why."""


class BenchError(RuntimeError):
    """A benchmark failed to run (not a missed goal: those are reported)."""


def now_ns() -> int:
    """The one clock of every latency here: CLOCK_MONOTONIC, in this process."""
    return time.perf_counter_ns()


def log(message: str) -> None:
    """Progress on stderr (the table and the JSON are the results)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- child processes ------------------------------------------------------------


class Child:
    """A child process whose stderr lines are kept with their arrival time.

    ``wait_for(pattern)`` blocks until a line matches (or the process ends, or
    the timeout passes). Lines also go to ``log_path``.
    """

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        stdout: int | None = subprocess.DEVNULL,
        cwd: Path = ROOT,
    ) -> None:
        self.args = list(args)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[str] = log_path.open("w", encoding="utf-8", errors="replace")
        self.lines: list[tuple[int, str]] = []
        self._cond = threading.Condition()
        self.started_ns = now_ns()
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            text=True,
            errors="replace",
        )
        CHILDREN.append(self)
        self._reader = threading.Thread(target=self._read, name="child-stderr", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            t = now_ns()
            with self._cond:
                self.lines.append((t, line.rstrip("\n")))
                self._cond.notify_all()
            with contextlib.suppress(ValueError):
                self._log.write(line)
                self._log.flush()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout_s: float, start: int = 0) -> tuple[int, str]:
        """(arrival time, line) of the first line from index ``start`` matching ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for t, line in self.lines[start:]:
                    if regex.search(line):
                        return t, line
                start = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    break
                self._cond.wait(min(left, 0.5))
        raise BenchError(
            f"{Path(self.args[0]).name} {' '.join(self.args[1:4])}: no line matching "
            f"{pattern!r} within {timeout_s:g} s (exit code {self.proc.poll()}); last lines:\n"
            + self.tail()
        )

    def matching(self, pattern: str) -> list[str]:
        regex = re.compile(pattern)
        with self._cond:
            return [line for _, line in self.lines if regex.search(line)]

    def tail(self, n: int = 15) -> str:
        with self._cond:
            return "\n".join(f"  {line}" for _, line in self.lines[-n:])

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        with contextlib.suppress(ValueError):
            self._log.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


CHILDREN: list[Child] = []


def stop_all() -> None:
    """Stop every child still running, newest first (TERM, then KILL after a while)."""
    running = [c for c in reversed(CHILDREN) if c.proc.poll() is None]
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for child in running:
        try:
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()
    for child in CHILDREN:
        child.stop()
    CHILDREN.clear()


# --- the broker -------------------------------------------------------------------


class Broker:
    """mosquitto on 127.0.0.1 with the settings docs/reliability.md recommends
    (``max_queued_messages 100000``, ``max_inflight_messages 100``), so the broker
    never drops a slow subscriber's QoS 1 messages; ``sys_interval`` > 0 publishes
    its own counters under ``$SYS``. ``start`` after ``stop`` reuses the port."""

    def __init__(self, workdir: Path, *, sys_interval_s: int = 0, name: str = "broker") -> None:
        binary = find_mosquitto()
        if binary is None:
            raise BenchSkipped("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.workdir = workdir
        self.name = name
        self.sys_interval_s = sys_interval_s
        self.port = free_loopback_port()
        self.child: Child | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def pid(self) -> int | None:
        return None if self.child is None else self.child.pid

    def start(self, timeout_s: float = 10.0) -> None:
        conf = self.workdir / f"{self.name}.conf"
        lines = [
            f"listener {self.port} {LOOPBACK}",
            "allow_anonymous true",
            "persistence false",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
            f"sys_interval {self.sys_interval_s}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # see gateway/broker.py: no user "mosquitto" here
        conf.write_text("\n".join(lines) + "\n")
        self.child = Child([self.binary, "-c", str(conf)], self.workdir / f"{self.name}.log")
        deadline = time.monotonic() + timeout_s
        while not _accepts(self.port):
            if self.child.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(
                    f"mosquitto did not start on port {self.port}:\n{self.child.tail()}"
                )
            time.sleep(0.01)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None

    def version(self) -> str:
        out = subprocess.run([self.binary, "-h"], capture_output=True, text=True, check=False)
        first = (out.stdout or out.stderr).splitlines()
        return first[0].strip() if first else "mosquitto"


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((LOOPBACK, port)) == 0


# --- a subscriber that timestamps ---------------------------------------------------

Handler = Callable[[int, str, bytes], None]


class Recorder:
    """A paho client (QoS 1 by default) calling ``handler(t_ns, topic, payload)``
    from paho's network thread, with ``t_ns`` taken as the message is handed over."""

    def __init__(
        self,
        port: int,
        topics: Sequence[str],
        handler: Handler,
        *,
        qos: int = 1,
        client_id: str = "",
    ) -> None:
        self.port = port
        self.topics = list(topics)
        self.handler = handler
        self.qos = qos
        self._subscribed = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.max_inflight_messages_set(100)
        self.client = client

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe([(t, self.qos) for t in self.topics])

    def _on_subscribe(self, *args: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        t = now_ns()
        try:
            self.handler(t, msg.topic, bytes(msg.payload))
        except Exception as exc:  # a bad payload must not end paho's loop
            log(f"subscriber handler failed on {msg.topic}: {exc!r}")

    def start(self, timeout_s: float = 10.0) -> Recorder:
        self.client.connect(LOOPBACK, self.port, keepalive=60)
        self.client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise BenchError(f"subscriber to {self.topics} got no SUBACK in {timeout_s:g} s")
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FrameMatcher:
    """Reassembles a raw byte stream published in pieces (the raw relay, mqtt-io)
    and notes when each STAT frame's last byte arrived, by its seq; counts how the
    frames were cut into messages."""

    STAT_SEQ = re.compile(rb"\$STAT,(\d+),")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._cond = threading.Condition()
        self.arrived: dict[int, int] = {}  # seq -> t_ns of the message completing it
        self.messages = 0
        self.frames = 0
        self.messages_not_whole_frames = 0  # starts mid-frame or ends mid-frame
        self.frames_split = 0  # frames whose bytes came in more than one message
        self.max_frames_per_message = 0

    def on_message(self, t: int, topic: str, payload: bytes) -> None:
        with self._cond:
            self.messages += 1
            starts_clean = not self._buf and payload.startswith(b"$")
            ends_clean = payload.endswith(b"\n")
            if not (starts_clean and ends_clean):
                self.messages_not_whole_frames += 1
            carried = bool(self._buf)
            self._buf += payload
            complete = 0
            while (end := self._buf.find(b"\n")) >= 0:
                frame = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                complete += 1
                if carried and complete == 1:
                    self.frames_split += 1
                match = self.STAT_SEQ.search(frame)
                if match:
                    self.arrived.setdefault(int(match.group(1)), t)
                    self.frames += 1
            self.max_frames_per_message = max(self.max_frames_per_message, complete)
            self._cond.notify_all()

    def wait_seq(self, seq: int, timeout_s: float) -> int | None:
        with self._cond:
            self._cond.wait_for(lambda: seq in self.arrived, timeout_s)
            return self.arrived.get(seq)

    def counts(self) -> dict[str, int]:
        with self._cond:
            return {
                "messages": self.messages,
                "frames": self.frames,
                "messages_not_whole_frames": self.messages_not_whole_frames,
                "frames_split_across_messages": self.frames_split,
                "max_frames_in_one_message": self.max_frames_per_message,
            }


# --- the programmer's end of a pty ------------------------------------------------------

PROGRAMMER_HELLO = Hello(1, "BENCH", "BENCH-PTP1", "BENCH0001", "1.0", 1)
STAT_DEFAULTS: dict[str, Any] = {
    "cap_ml": 20.0,
    "lra_ml": 0.5,
    "bat_pct": 80,
    "bat_v": 3.1,
    # 50 mcg/day at 2000 mcg/mL: 0.025 mL/day, so even 3 mL is 100 days from the
    # pump's 0.5 mL alarm: refill_due never fires, only reservoir_low does.
    "dose_mcg_day": 50.0,
    "conc_mcg_ml": 2000.0,
}
DEVICE_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def stat_frame(seq: int, pump_id: str, res_ml: float, **overrides: Any) -> bytes:
    """One PTP/1 STAT frame; the device clock advances one second per seq."""
    values = {**STAT_DEFAULTS, **overrides}
    return encode(
        Stat(
            seq=seq % 65536,
            pump_id=pump_id,
            time=DEVICE_EPOCH + timedelta(seconds=seq),
            res_ml=res_ml,
            cap_ml=values["cap_ml"],
            lra_ml=values["lra_ml"],
            bat_pct=values["bat_pct"],
            bat_v=values["bat_v"],
            dose_mcg_day=values["dose_mcg_day"],
            conc_mcg_ml=values["conc_mcg_ml"],
            flags=values.get("flags", 0),
        )
    )


class FakeProgrammer:
    """The device end of a pseudo-terminal, played by the benchmark process itself,
    so a frame's write can be timestamped right where it happens.

    It answers the gateway's handshake (``ID`` -> ``HELLO``, ``POLL`` -> the
    ``stream_pumps``' STATs and ``OK``, ``STREAM`` -> ``OK``) and, once asked to,
    streams a STAT of each of ``stream_pumps`` every interval. ``write`` sends
    anything else (the benchmark's own frames) and returns the time just before
    the bytes went into the pty. One seq counter for everything it sends.
    """

    def __init__(self, *, stream_pumps: Sequence[str] = (), stream_res_ml: float = 15.0) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.stream_pumps = tuple(stream_pumps)
        self.stream_res_ml = stream_res_ml
        self._lock = threading.Lock()
        self._seq = 0
        self._decoder = StreamDecoder(role="device")
        self.commands: list[str] = []
        self.streaming = threading.Event()
        self._period: float | None = None
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._serve, name="fake-programmer", daemon=True)
        self._reader.start()

    def next_seq(self) -> int:
        with self._lock:
            seq = self._seq
            self._seq = (seq + 1) % 65536
            return seq

    def write(self, data: bytes) -> int:
        """Write all of ``data`` (blocking while the pty is full); the time just before."""
        with self._lock:
            t = now_ns()
            view = memoryview(data)
            while view:
                n = os.write(self.master, view)
                view = view[n:]
            return t

    def _stats(self) -> bytes:
        return b"".join(
            stat_frame(self.next_seq(), p, self.stream_res_ml) for p in self.stream_pumps
        )

    def _serve(self) -> None:
        next_due: float | None = None
        while not self._stop.is_set():
            wait = 0.2 if next_due is None else max(0.0, min(0.2, next_due - time.monotonic()))
            try:
                ready, _, _ = select.select([self.master], [], [], wait)
                data = os.read(self.master, 4096) if ready else b""
            except OSError:
                return
            for item in self._decoder.feed(data):
                match item:
                    case IdCommand():
                        self.commands.append("ID")
                        self.write(encode(PROGRAMMER_HELLO))
                    case PollCommand():
                        self.commands.append("POLL")
                        self.write(self._stats() + encode(Ok("POLL")))
                    case StreamCommand(interval_s=interval):
                        self.commands.append(f"STREAM,{interval}")
                        self._period = float(interval) if interval else None
                        next_due = None if not interval else time.monotonic() + interval
                        self.write(encode(Ok("STREAM")))
                        self.streaming.set()
                    case TimeCommand():
                        self.write(encode(Ok("TIME")))
            if next_due is not None and time.monotonic() >= next_due and self.stream_pumps:
                self.write(self._stats())
                assert self._period is not None
                next_due += self._period

    def close(self) -> None:
        self._stop.set()
        self._reader.join(timeout=2)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> FakeProgrammer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the real daemon -------------------------------------------------------------------


def gateway_toml(
    state_dir: Path,
    *,
    gateway_id: str,
    port: str,
    broker_port: int,
    prefix: str,
    poll_interval_s: int = 60,
    info_interval_s: float = 10.0,
) -> str:
    return f"""\
[gateway]
id = "{gateway_id}"
state_dir = "{state_dir}"

[serial]
port = "{port}"
poll_interval_s = {poll_interval_s}

[mqtt]
host = "{LOOPBACK}"
port = {broker_port}
topic_prefix = "{prefix}"
info_interval_s = {info_interval_s}
"""


def start_gateway(
    workdir: Path,
    *,
    gateway_id: str,
    port: str,
    broker_port: int,
    prefix: str,
    poll_interval_s: int = 60,
    info_interval_s: float = 10.0,
    env: dict[str, str] | None = None,
) -> Child:
    """``python -m gateway.cli run`` (what ``pumpgw run`` runs), its state on ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "gateway.toml"
    config.write_text(
        gateway_toml(
            workdir / "state",
            gateway_id=gateway_id,
            port=port,
            broker_port=broker_port,
            prefix=prefix,
            poll_interval_s=poll_interval_s,
            info_interval_s=info_interval_s,
        )
    )
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    return Child(
        [PYTHON, "-m", "gateway.cli", "run", "--config", str(config)],
        workdir / "gateway.log",
        env=env,
    )


# --- statistics --------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize_ms(samples_ns: Iterable[int]) -> dict[str, Any]:
    values = sorted(v / 1e6 for v in samples_ns)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min_ms": round(values[0], 3),
        "p50_ms": round(percentile(values, 50), 3),
        "p90_ms": round(percentile(values, 90), 3),
        "p99_ms": round(percentile(values, 99), 3),
        "max_ms": round(values[-1], 3),
        "mean_ms": round(sum(values) / len(values), 3),
    }


# --- /proc -----------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (/proc/PID/stat)."""
    data = Path(f"/proc/{pid}/stat").read_text()
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) in kB and Threads, from /proc/PID/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


@dataclass
class CpuMeter:
    """CPU share of one process over a stretch of wall time (100 = one core)."""

    pid: int
    wall0: float = field(default_factory=time.monotonic)
    cpu0: float = 0.0

    def __post_init__(self) -> None:
        self.cpu0 = proc_cpu_s(self.pid)

    def read(self) -> dict[str, float]:
        wall = time.monotonic() - self.wall0
        cpu = proc_cpu_s(self.pid) - self.cpu0
        return {
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "cpu_pct_of_core": round(100 * cpu / wall, 3) if wall > 0 else math.nan,
        }


# --- the machine ------------------------------------------------------------------------------


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info(workdir: Path) -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    free = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout
    mosquitto = find_mosquitto()
    version = "not installed"
    if mosquitto is not None:
        out = subprocess.run([mosquitto, "-h"], capture_output=True, text=True, check=False)
        lines = (out.stdout or out.stderr).splitlines()
        version = lines[0].strip() if lines else "mosquitto"
    return {
        "nproc": int(nproc.strip() or os.cpu_count() or 0),
        "cpu_model": cpu_model,
        "free_h": free.rstrip(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mosquitto": version,
        "workdir": str(workdir),
        "workdir_filesystem": filesystem_of(workdir),
    }


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (the outbox's fsync cost depends on it)."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        target = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and target.startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], f"{parts[2]} ({parts[0]} on {parts[1]})"
    return kind


def busiest_processes(limit: int = 6) -> list[str]:
    """What else was eating CPU when the run started (the machine is shared)."""
    out = subprocess.run(
        ["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [" ".join(line.split()) for line in out.splitlines()[:limit]]


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def rmtree_quiet(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
