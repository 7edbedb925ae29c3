"""6. Fleet: N gateways x 4 simulated pumps, one mosquitto, one dashboard.

Real processes throughout: N simulated programmers (``python -m
drivers.simulator``, 4 pumps each: refill-cycle, low-reservoir,
battery-eri-eos, motor-stall, at ``--fleet-speed`` x 1.0 .. 1.5 spread over the
gateways, so they do not alarm in lockstep) and N daemons (``pumpgw
run``, ``poll_interval_s`` = 3600: one STAT per pump every 3600/speed real
seconds), all publishing to one mosquitto (``$SYS`` every second). One
dashboard subscriber (QoS 1, ``fleet/#``) counts everything and checks every
alert transition (``alert_*`` on ``{p}/{gw}/events``):

* lost: a transition the daemon logged (it logs each one once it is in its
  outbox) that the dashboard never got and that is not still in the daemon's
  outbox at the end (a clean stop leaves undeliverable rows there);
* misattributed: the topic's gateway is not the gateway whose simulator
  owns the payload's pump (pump ``G07-P2`` belongs to ``fleet-07``), or the
  ``event_id`` is not one that gateway logged;
* messages/s: what the dashboard received (it subscribes to everything, so
  every PUBLISH the gateways sent), and mosquitto's own ``$SYS`` packet
  counts in and out (PUBLISH + PUBACK + PINGREQ...);
* lag (whole run, and the measuring window alone, without the start-up
  burst): dashboard receive time - the event's ``at`` (the daemon's clock when
  the engine produced it, ms resolution; same machine, same wall clock).

Timeline: start everything, wait until every daemon has its link up, measure
``--fleet-s`` seconds (messages/s at the broker from ``$SYS``, and at the
dashboard), stop the daemons (SIGTERM: they flush for up to 3 s), wait for the
dashboard to go quiet, compare.
"""

from __future__ import annotations

import json
import re
import select
import signal
import sqlite3
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    PYTHON,
    BenchError,
    Broker,
    Child,
    CpuMeter,
    Recorder,
    log,
    proc_status,
    start_gateway,
    summarize_ms,
)

PREFIX = "fleet"
SCENARIOS = ("refill-cycle", "low-reservoir", "battery-eri-eos", "motor-stall")
POLL_INTERVAL_S = 3600
# mosquitto's own counts of MQTT packets in and out (PUBLISH, PUBACK, PINGREQ...):
# in ~ the gateways' PUBLISHes + the dashboard's PUBACKs, out ~ the reverse.
SYS_RECEIVED = "$SYS/broker/messages/received"
SYS_SENT = "$SYS/broker/messages/sent"
LOGGED = re.compile(r"event=(alert_\w+) event_id=(\S+) pump_id=(\S+)")


def gateway_id(k: int) -> str:
    return f"fleet-{k:02d}"


def gateway_speed(speed: float, k: int, n: int) -> float:
    """Gateway k's simulator runs at speed x 1.0 .. x 1.5: programmers started
    together would otherwise refill and alarm in lockstep, a burst no real fleet
    of independent pumps makes."""
    return round(speed * (1 + 0.5 * (k - 1) / max(1, n - 1)))


def pump_owner(pump_id: str) -> str | None:
    match = re.fullmatch(r"G(\d+)-P\d", pump_id)
    return gateway_id(int(match.group(1))) if match else None


class Dashboard:
    """Counts every message; keeps every alert transition with its lag."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages = 0
        self.bytes = 0
        self.transitions: list[dict[str, Any]] = []
        self.alert_topic_mismatches = 0
        self.sys: dict[str, list[tuple[float, int]]] = {}
        self.last_alert_at = time.monotonic()

    def on_message(self, t: int, topic: str, payload: bytes) -> None:
        wall = time.time()
        if topic.startswith("$SYS/"):
            with self._lock:
                self.sys.setdefault(topic, []).append((time.monotonic(), int(payload)))
            return
        with self._lock:
            self.messages += 1
            self.bytes += len(payload)
        parts = topic.split("/")
        if len(parts) < 3:
            return
        gw = parts[1]
        if parts[2] == "events":
            data = json.loads(payload)
            if not data["kind"].startswith("alert_"):
                return
            at = datetime.fromisoformat(data["at"]).timestamp()
            with self._lock:
                self.transitions.append(
                    {
                        "gw": gw,
                        "event_id": data["event_id"],
                        "pump_id": data["pump_id"],
                        "lag_ms": (wall - at) * 1000,
                        "t": time.monotonic(),
                    }
                )
                self.last_alert_at = time.monotonic()
        elif len(parts) == 6 and parts[2] == "pumps" and parts[4] == "alerts":
            data = json.loads(payload)
            owner = pump_owner(data["pump_id"])
            if data["pump_id"] != parts[3] or (owner is not None and owner != gw):
                # (the gateway's own alerts, pump "_gateway", have no owner by name)
                with self._lock:
                    self.alert_topic_mismatches += 1

    def count(self) -> tuple[int, int]:
        with self._lock:
            return self.messages, self.bytes

    def sys_value(self, topic: str) -> tuple[float, int] | None:
        with self._lock:
            values = self.sys.get(topic)
            return values[-1] if values else None


def _port_of(sim: Child, timeout_s: float) -> str:
    """The simulator prints its pty path as the first line on stdout."""
    assert sim.proc.stdout is not None
    ready, _, _ = select.select([sim.proc.stdout], [], [], timeout_s)
    line = sim.proc.stdout.readline().strip() if ready else ""
    if not line:
        raise BenchError(f"simulator printed no port:\n{sim.tail()}")
    return line


def _still_in_outbox(state_dir: Path) -> set[str]:
    """event_ids of events a stopped daemon left in its outbox."""
    path = state_dir / "outbox.sqlite3"
    if not path.exists():
        return set()
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT payload FROM outbox WHERE topic LIKE '%/events'").fetchall()
    finally:
        db.close()
    return {json.loads(bytes(r[0]))["event_id"] for r in rows}


def run(
    workdir: Path, gateways: int, seconds: float, speed: float, start_timeout_s: float
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker(workdir, sys_interval_s=1, name="fleet-broker")
    broker.start()
    dash = Dashboard()
    recorder = Recorder(
        broker.port,
        [f"{PREFIX}/#", SYS_RECEIVED, SYS_SENT],
        dash.on_message,
        client_id="fleet-dashboard",
    )
    recorder.start()
    sims: list[Child] = []
    gws: list[Child] = []
    speeds = [gateway_speed(speed, k, gateways) for k in range(1, gateways + 1)]
    offered = sum(len(SCENARIOS) * s / POLL_INTERVAL_S for s in speeds)
    period = POLL_INTERVAL_S / speed
    log(
        f"fleet: {gateways} gateways x 4 pumps at speed {speed:g} to {max(speeds):g} "
        f"(a STAT per pump every {period:.3f} s or less), {seconds:g} s window"
    )
    try:
        t_spawn = time.monotonic()
        for k in range(1, gateways + 1):
            pumps = [f"--pump=G{k:02d}-P{j + 1}={s}" for j, s in enumerate(SCENARIOS)]
            sims.append(
                Child(
                    [PYTHON, "-m", "drivers.simulator", *pumps, f"--speed={speeds[k - 1]:g}"],
                    workdir / f"sim-{k:02d}.log",
                    stdout=subprocess.PIPE,  # the port is its first line
                )
            )
        for k, sim in enumerate(sims, start=1):
            port = _port_of(sim, 60)
            gws.append(
                start_gateway(
                    workdir / gateway_id(k),
                    gateway_id=gateway_id(k),
                    port=port,
                    broker_port=broker.port,
                    prefix=PREFIX,
                    poll_interval_s=POLL_INTERVAL_S,
                )
            )
        for gw in gws:
            gw.wait_for(r"event=link_up", max(5.0, start_timeout_s - (time.monotonic() - t_spawn)))
        all_up_s = time.monotonic() - t_spawn
        log(f"fleet: all {gateways} links up after {all_up_s:.1f} s; measuring")
        sys0 = {t: dash.sys_value(t) for t in (SYS_RECEIVED, SYS_SENT)}
        m0, b0 = dash.count()
        t0 = time.monotonic()
        meters = [CpuMeter(gw.pid) for gw in gws]
        broker_meter = CpuMeter(broker.pid) if broker.pid else None
        time.sleep(seconds)
        window = time.monotonic() - t0
        m1, b1 = dash.count()
        time.sleep(1.2)  # one more $SYS update
        sys1 = {t: dash.sys_value(t) for t in (SYS_RECEIVED, SYS_SENT)}
        daemon_cpu = [m.read()["cpu_pct_of_core"] for m in meters]
        broker_cpu = broker_meter.read()["cpu_pct_of_core"] if broker_meter else None
        rss = [proc_status(gw.pid)["VmRSS"] / 1024 for gw in gws]
        log("fleet: stopping the daemons")
        for gw in gws:
            gw.proc.send_signal(signal.SIGTERM)
        codes = [gw.stop() for gw in gws]
        quiet_deadline = time.monotonic() + 15
        while time.monotonic() < quiet_deadline and time.monotonic() - dash.last_alert_at < 1.0:
            time.sleep(0.1)
    finally:
        for child in gws + sims:
            child.stop()
        recorder.stop()
        broker.stop()

    logged: dict[str, dict[str, str]] = {}  # gw -> event_id -> pump
    undelivered: dict[str, set[str]] = {}
    for k, gw in enumerate(gws, start=1):
        gid = gateway_id(k)
        logged[gid] = {
            m.group(2): m.group(3) for m in map(LOGGED.search, gw.matching("event=alert_")) if m
        }
        undelivered[gid] = _still_in_outbox(workdir / gid / "state")
    owner_of_event = {eid: gid for gid, ids in logged.items() for eid in ids}
    received_ids: set[str] = set()
    misattributed = duplicates = 0
    for tr in dash.transitions:
        if tr["event_id"] in received_ids:
            duplicates += 1
        received_ids.add(tr["event_id"])
        by_name = pump_owner(tr["pump_id"] or "")  # None for the gateway's own "_gateway"
        if (by_name is not None and by_name != tr["gw"]) or owner_of_event.get(
            tr["event_id"]
        ) != tr["gw"]:
            misattributed += 1
    expected = set(owner_of_event)
    still_stored = set().union(*undelivered.values()) if undelivered else set()
    missing = expected - received_ids
    lost = missing - still_stored
    unexpected = received_ids - expected
    sys_rate: dict[str, float | None] = {}
    for topic in (SYS_RECEIVED, SYS_SENT):
        a, b = sys0[topic], sys1[topic]
        ok = a is not None and b is not None and b[0] > a[0]
        sys_rate[topic] = round((b[1] - a[1]) / (b[0] - a[0]), 1) if ok else None  # type: ignore[index]
    lag = summarize_ms(int(tr["lag_ms"] * 1e6) for tr in dash.transitions)
    in_window = [tr for tr in dash.transitions if t0 <= tr["t"] <= t0 + window]
    lag_window = summarize_ms(int(tr["lag_ms"] * 1e6) for tr in in_window)
    return {
        "gateways": gateways,
        "pumps": gateways * len(SCENARIOS),
        "scenarios": list(SCENARIOS),
        "speed": [min(speeds), max(speeds)],
        "stat_period_s": [round(POLL_INTERVAL_S / max(speeds), 4), round(period, 4)],
        "readings_per_s_offered": round(offered, 1),
        "start_to_all_links_up_s": round(all_up_s, 1),
        "window_s": round(window, 2),
        "broker_packets_in_per_s": sys_rate[SYS_RECEIVED],
        "broker_packets_out_per_s": sys_rate[SYS_SENT],
        "dashboard_messages_per_s": round((m1 - m0) / window, 1),
        "dashboard_kbytes_per_s": round((b1 - b0) / window / 1024, 1),
        "alert_transitions_logged": len(expected),
        "alert_transitions_received": len(received_ids),
        "lost": len(lost),
        "missing_but_still_in_outbox": len(missing & still_stored),
        "misattributed": misattributed,
        "alert_topic_mismatches": dash.alert_topic_mismatches,
        "unexpected": len(unexpected),
        "duplicates": duplicates,
        "alert_transitions_in_window": len(in_window),
        "lag": lag,
        "lag_in_window": lag_window,
        "daemon_cpu_pct_of_core": {
            "mean": round(sum(daemon_cpu) / len(daemon_cpu), 2),
            "max": round(max(daemon_cpu), 2),
            "sum": round(sum(daemon_cpu), 1),
        },
        "broker_cpu_pct_of_core": broker_cpu,
        "daemon_rss_mb": {"mean": round(sum(rss) / len(rss), 1), "max": round(max(rss), 1)},
        "daemon_exit_codes": sorted(set(codes)),
        "goals": [
            {
                "goal": "no alert transition lost",
                "measured": len(lost),
                "met": len(lost) == 0 and len(received_ids) > 0,
            },
            {
                "goal": "no alert transition misattributed to another gateway",
                "measured": misattributed + dash.alert_topic_mismatches + len(unexpected),
                "met": misattributed == 0 and dash.alert_topic_mismatches == 0 and not unexpected,
            },
        ],
    }
