"""4. Footprint: the daemon's memory and CPU, idle and under load; start to READY.

The daemon (``pumpgw run``) talks to the benchmark's own programmer end of a
pty, which behaves like a programmer with one pump: it answers ``ID``,
``POLL`` and ``STREAM``, then streams that pump's STAT every
``serial.poll_interval_s`` = 60 s.

* ``ready``: from just before the process is spawned to (a) the ``READY=1``
  datagram on ``$NOTIFY_SOCKET`` (systemd's notify protocol, when
  ``gateway/sdnotify.py`` is there: the daemon says it once the serial
  handshake is done), and (b) the ``event=link_up`` log line. Several
  starts; the Python interpreter's start and imports are most of it.
* ``idle``: after a settling pause, CPU over ``--idle-s`` seconds (from
  ``/proc/PID/stat``, all threads, user + system), ``VmRSS`` and ``VmHWM``
  (peak) from ``/proc/PID/status``.
* ``load``: the same process fed ``--load-rate`` readings/s (4 pumps, paced
  writes) for ``--load-s`` seconds.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BenchError,
    Broker,
    Child,
    CpuMeter,
    FakeProgrammer,
    Recorder,
    log,
    now_ns,
    percentile,
    proc_status,
    start_gateway,
    stat_frame,
)

PREFIX = "bench"
PUMPS = ("FP-1", "FP-2", "FP-3", "FP-4")
SETTLE_S = 5.0


def sdnotify_available() -> bool:
    return importlib.util.find_spec("gateway.sdnotify") is not None


class NotifyListener:
    """A ``$NOTIFY_SOCKET`` of our own: the time the ``READY=1`` datagram came."""

    def __init__(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.t_ready: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="notify", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if self.t_ready is None and b"READY=1" in data.split(b"\n"):
                self.t_ready = now_ns()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def start_once(
    broker: Broker, workdir: Path, prog: FakeProgrammer, listener: NotifyListener | None
) -> tuple[Child, dict[str, float | None]]:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    if listener is not None:
        env["NOTIFY_SOCKET"] = str(listener.path)
    gw = start_gateway(
        workdir,
        gateway_id="fp",
        port=prog.path,
        broker_port=broker.port,
        prefix=PREFIX,
        poll_interval_s=60,
        env=env,
    )
    t_link, _ = gw.wait_for(r"event=link_up", 30)
    deadline = time.monotonic() + 10
    while listener is not None and listener.t_ready is None and time.monotonic() < deadline:
        time.sleep(0.01)
    ready_ms = None
    if listener is not None and listener.t_ready is not None:
        ready_ms = (listener.t_ready - gw.started_ns) / 1e6
    return gw, {"ready_notify_ms": ready_ms, "link_up_log_ms": (t_link - gw.started_ns) / 1e6}


def _load(prog: FakeProgrammer, rate: float, seconds: float) -> dict[str, int]:
    """Paced STATs over ``PUMPS``, written every 10 ms; the last seq per pump."""
    tick = 0.01
    per_tick = rate * tick
    owed = 0.0
    last: dict[str, int] = {}
    i = 0
    start = time.monotonic()
    next_t = start
    while time.monotonic() - start < seconds:
        owed += per_tick
        chunk = []
        while owed >= 1:
            pump = PUMPS[i % len(PUMPS)]
            seq = prog.next_seq()
            chunk.append(stat_frame(seq, pump, 15.0 - i * 1e-5))
            last[pump] = seq
            owed -= 1
            i += 1
        if chunk:
            prog.write(b"".join(chunk))
        next_t += tick
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return last


def run(
    broker: Broker, workdir: Path, trials: int, idle_s: float, load_rate: float, load_s: float
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    use_notify = sdnotify_available()
    starts: list[dict[str, float | None]] = []
    log(f"footprint: {trials} start(s) to READY, idle {idle_s:g} s, load {load_rate:g}/s")
    seen: dict[str, int] = {}
    cond = threading.Condition()

    def on_state(t: int, topic: str, payload: bytes) -> None:
        data = json.loads(payload)
        with cond:
            seen[data["pump_id"]] = data["seq"]
            cond.notify_all()

    with (
        FakeProgrammer(stream_pumps=("FP-1",)) as prog,
        Recorder(broker.port, [f"{PREFIX}/fp/pumps/+/state"], on_state),
    ):
        gw: Child | None = None
        try:
            for k in range(trials):
                listener = NotifyListener(workdir / f"notify-{k}.sock") if use_notify else None
                try:
                    gw, times = start_once(broker, workdir / f"start-{k}", prog, listener)
                finally:
                    if listener is not None:
                        listener.close()
                starts.append(times)
                if k < trials - 1:
                    gw.stop()
                    gw = None
            assert gw is not None
            time.sleep(SETTLE_S)
            meter = CpuMeter(gw.pid)
            time.sleep(idle_s)
            idle = {**meter.read(), **proc_status(gw.pid)}
            meter = CpuMeter(gw.pid)
            last = _load(prog, load_rate, load_s)
            with cond:
                done = cond.wait_for(lambda: all(seen.get(p) == s for p, s in last.items()), 60)
            load = {**meter.read(), **proc_status(gw.pid)}
            if not done:
                raise BenchError(
                    f"footprint: the load's last readings never came out:\n{gw.tail()}"
                )
        finally:
            rc = gw.stop() if gw is not None else None
    ready_key = "ready_notify_ms" if use_notify else "link_up_log_ms"
    ready_values = sorted(float(s[ready_key] or float("inf")) for s in starts)
    ready_median = percentile(ready_values, 50)
    ready_max = ready_values[-1]
    rss_idle_mb = idle["VmRSS"] / 1024
    rss_load_mb = load["VmRSS"] / 1024
    peak_mb = load["VmHWM"] / 1024
    return {
        "ready_signal": "sd_notify READY=1" if use_notify else "log line event=link_up",
        "starts": starts,
        "ready_median_ms": round(ready_median, 1),
        "ready_max_ms": round(ready_max, 1),
        "idle": {
            "pumps": 1,
            "poll_interval_s": 60,
            "seconds": idle_s,
            "cpu_pct_of_core": idle["cpu_pct_of_core"],
            "cpu_s": idle["cpu_s"],
            "rss_mb": round(rss_idle_mb, 1),
            "threads": idle.get("Threads"),
        },
        "load": {
            "readings_per_s": load_rate,
            "seconds": load_s,
            "cpu_pct_of_core": load["cpu_pct_of_core"],
            "rss_mb": round(rss_load_mb, 1),
            "peak_rss_mb": round(peak_mb, 1),
        },
        "daemon_exit_code": rc,
        "goals": [
            {
                "goal": "RSS <= 30 MB (idle, and peak under load)",
                "measured": round(max(rss_idle_mb, peak_mb), 1),
                "met": max(rss_idle_mb, peak_mb) <= 30,
            },
            {
                "goal": "idle CPU < 0.3% of a core",
                "measured": idle["cpu_pct_of_core"],
                "met": idle["cpu_pct_of_core"] < 0.3,
            },
            {
                "goal": "start to READY < 1 s (median of the starts; max also reported)",
                "measured": round(ready_median / 1000, 3),
                "met": ready_median < 1000,
            },
        ],
    }
