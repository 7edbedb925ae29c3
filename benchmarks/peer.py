"""5. Peer: mqtt-io (PyPI ``mqtt-io``), a generic serial-to-MQTT relay, same run.

mqtt-io lives in its own virtualenv, ``benchmarks/.peer-venv`` (git-ignored,
never a project dependency), made on first use when ``--peer-install`` allows
it. Its ``serial`` stream module is pointed at a pty the benchmark writes
to, exactly as for the gateway and the raw relay; its stream is published on
``{topic_prefix}/stream/{name}``.

What the numbers mean: mqtt-io *polls* the port every ``read_interval``
seconds (lowest allowed 0.01 s; default 60 s), publishes whatever bytes are
waiting as one QoS 0 message, and checks nothing (no framing, no CRC, no
sequence, no clinical rule). Its latency is therefore set by the polling
interval, not by its code: about half the interval on average and up to a
whole interval. Measured three ways:

* ``fast``: ``read_interval: 0.01``, one frame at a time (as for the gateway);
* ``fast_line_paced``: the same, but the frames trickle in at 115200 baud as
  on a real serial line; then a poll often catches half a frame, and frames
  are split across messages (counted);
* ``default``: its default interval, one frame every 2 s written open-loop
  for a window of a little over two intervals; every frame written in one
  interval arrives bundled in one message. A poll reads only what the tty's
  input buffer holds (``in_waiting``, at most 4095 bytes, ~39 STAT frames),
  so at its default mqtt-io carries at most ~39 frames a minute: offered
  more, it falls behind by whole intervals (a first run at 2 frames/s had 96
  of 250 frames still waiting 65 s after the last write; on a real UART
  without flow control they would have been dropped).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ROOT,
    BenchSkipped,
    Broker,
    Child,
    FakeProgrammer,
    FrameMatcher,
    Recorder,
    log,
    stat_frame,
    summarize_ms,
)
from benchmarks.latency import SAMPLE_TIMEOUT_S, sample_raw_stream

PEER_VENV = ROOT / "benchmarks" / ".peer-venv"
PEER_REQUIREMENTS = ["mqtt-io==2.7.0", "pyserial>=3.5"]
PEER_DEFAULT_INTERVAL_S = 60.0  # mqtt-io's documented default read_interval
PREFIX = "bench/peer"
# At the default interval one frame every 2 s: 30 frames (~3.2 KB) a poll. Each
# poll takes only what the tty's input buffer holds (in_waiting, at most 4095
# bytes, ~39 frames): offered more, mqtt-io falls behind by whole intervals (on a
# pty the rest waits in the kernel; on a real UART without flow control it is
# dropped). The latency figure is meant to show the interval, not that cap.
DEFAULT_EVERY_S = 2.0
TTY_BUFFER_BYTES = 4095
BAUD = 115200


def peer_python(install: bool) -> Path:
    """The peer venv's python with mqtt-io importable; made when ``install`` allows."""
    python = PEER_VENV / "bin" / "python"
    if python.exists() and _importable(python):
        return python
    if not install:
        raise BenchSkipped(
            f"mqtt-io is not installed in {PEER_VENV.relative_to(ROOT)} "
            "(run with --peer-install yes to create it)"
        )
    log(f"peer: installing {' '.join(PEER_REQUIREMENTS)} into {PEER_VENV.relative_to(ROOT)}")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True, timeout=300)
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchSkipped(f"could not create the peer venv: {exc}") from None
    if done.returncode != 0 or not _importable(python):
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise BenchSkipped(f"pip could not install mqtt-io: {tail}")
    return python


def _importable(python: Path) -> bool:
    done = subprocess.run(
        [str(python), "-c", "import mqtt_io, serial"], capture_output=True, check=False
    )
    return done.returncode == 0


def peer_version(python: Path) -> str:
    done = subprocess.run(
        [str(python), "-m", "pip", "show", "mqtt-io"], capture_output=True, text=True, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


class _Switch:
    """One subscriber, whose messages go to the matcher of the current phase."""

    def __init__(self) -> None:
        self.matcher = FrameMatcher()

    def on_message(self, t: int, topic: str, payload: bytes) -> None:
        self.matcher.on_message(t, topic, payload)


def _start_peer(
    python: Path,
    broker: Broker,
    workdir: Path,
    name: str,
    device: str,
    read_interval_s: float | None,
) -> Child:
    workdir.mkdir(parents=True, exist_ok=True)
    interval = "" if read_interval_s is None else f"\n    read_interval: {read_interval_s}"
    config = workdir / f"{name}.yml"
    config.write_text(
        f"""\
mqtt:
  host: 127.0.0.1
  port: {broker.port}
  client_id: bench-{name}
  topic_prefix: {PREFIX}/{name}
options:
  install_requirements: no
stream_modules:
  - name: programmer
    module: serial
    device: {device}
    baud: {BAUD}{interval}
"""
    )
    return Child([str(python), "-m", "mqtt_io", str(config)], workdir / f"{name}.log")


def _wait_running(broker: Broker, name: str, child: Child, timeout_s: float = 60) -> None:
    """mqtt-io publishes a retained ``running`` on ``{prefix}/status`` when it is up."""
    import threading

    up = threading.Event()

    def on_status(t: int, topic: str, payload: bytes) -> None:
        if payload == b"running":
            up.set()

    with Recorder(broker.port, [f"{PREFIX}/{name}/status"], on_status):
        deadline = time.monotonic() + timeout_s
        while not up.wait(0.2):
            if child.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchSkipped(
                    f"mqtt-io did not come up (exit {child.proc.poll()}):\n{child.tail()}"
                )


def trickle(prog: FakeProgrammer, data: bytes, baud: int = BAUD, chunk: int = 8) -> None:
    """Write ``data`` at the pace of a UART at ``baud`` (8N1: 10 bits a byte)."""
    per_s = baud / 10
    start = time.monotonic()
    for off in range(0, len(data), chunk):
        delay = start + off / per_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        prog.write(data[off : off + chunk])


def measure_fast(
    python: Path,
    broker: Broker,
    workdir: Path,
    samples: int,
    warmup: int,
    gap_s: float,
    paced_frames: int,
) -> dict[str, Any]:
    name = "fast"
    switch = _Switch()
    topic = f"{PREFIX}/{name}/stream/programmer"
    with FakeProgrammer() as prog, Recorder(broker.port, [topic], switch.on_message, qos=1):
        peer = _start_peer(python, broker, workdir, name, prog.path, 0.01)
        try:
            _wait_running(broker, name, peer)
            time.sleep(0.3)
            lat, timeouts = sample_raw_stream(
                prog, switch.matcher, samples, warmup, gap_s, SAMPLE_TIMEOUT_S
            )
            counts = switch.matcher.counts()
            # The same frames at the pace of a real 115200-baud line.
            switch.matcher = FrameMatcher()
            frames = [stat_frame(prog.next_seq(), "RAW-1", 3.5) for _ in range(paced_frames)]
            trickle(prog, b"".join(frames))
            time.sleep(0.5)
            paced = switch.matcher.counts()
        finally:
            peer.stop(timeout_s=5)
    return {
        "read_interval_s": 0.01,
        "frame": summarize_ms(lat),
        "timeouts": timeouts,
        "stream": counts,
        "line_paced": {"frames_written": paced_frames, "baud": BAUD, **paced},
    }


def measure_default(
    python: Path, broker: Broker, workdir: Path, window_s: float, every_s: float
) -> dict[str, Any]:
    name = "default"
    matcher = FrameMatcher()
    topic = f"{PREFIX}/{name}/stream/programmer"
    with FakeProgrammer() as prog, Recorder(broker.port, [topic], matcher.on_message, qos=1):
        peer = _start_peer(python, broker, workdir, name, prog.path, None)
        try:
            _wait_running(broker, name, peer)
            written: dict[int, int] = {}
            end = time.monotonic() + window_s
            while time.monotonic() < end:
                seq = prog.next_seq()
                written[seq] = prog.write(stat_frame(seq, "RAW-1", 3.5))
                time.sleep(every_s)
            deadline = time.monotonic() + PEER_DEFAULT_INTERVAL_S + 5
            last = max(written)
            matcher.wait_seq(last, max(0.0, deadline - time.monotonic()))
        finally:
            peer.stop(timeout_s=5)
    lat = [matcher.arrived[s] - t for s, t in written.items() if s in matcher.arrived]
    return {
        "read_interval_s": PEER_DEFAULT_INTERVAL_S,
        "window_s": window_s,
        "one_frame_every_s": every_s,
        "max_bytes_per_poll": TTY_BUFFER_BYTES,
        "max_frames_per_minute": round(TTY_BUFFER_BYTES / 105 / PEER_DEFAULT_INTERVAL_S * 60),
        "frames_written": len(written),
        "frames_received": len(lat),
        "frame": summarize_ms(lat),
        "stream": matcher.counts(),
    }


def run(
    broker: Broker,
    workdir: Path,
    samples: int,
    gap_s: float,
    install: bool,
    default_window_s: float,
    paced_frames: int,
) -> dict[str, Any]:
    python = peer_python(install)
    version = peer_version(python)
    warmup = max(5, min(50, samples // 20))
    log(f"peer: mqtt-io {version} at read_interval 0.01 s, {samples} frames")
    fast = measure_fast(python, broker, workdir / "peer", samples, warmup, gap_s, paced_frames)
    result: dict[str, Any] = {
        "peer": f"mqtt-io {version}",
        "venv": str(PEER_VENV.relative_to(ROOT)),
        "notes": [
            "mqtt-io polls the port every read_interval: its latency is set by that interval",
            "it publishes whatever bytes are waiting as one QoS 0 message: frames are split "
            "across messages or bundled together",
            "it checks nothing: no framing, CRC, sequence or clinical rule; no outbox",
        ],
        "fast": fast,
    }
    if default_window_s > 0:
        log(f"peer: mqtt-io at its default read_interval (60 s), {default_window_s:g} s window")
        result["default"] = measure_default(
            python, broker, workdir / "peer", default_window_s, DEFAULT_EVERY_S
        )
    else:
        result["default"] = {"skipped": "needs minutes at a 60 s interval (not with --quick)"}
    return result
