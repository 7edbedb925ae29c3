"""2. Throughput: readings per second, frames fed faster than any serial line.

* ``codec``: ``StreamDecoder.feed`` over 4 KiB chunks of STAT frames.
* ``engine``: ``engine.step(state, Reading(stat), now, config)`` alone.
* ``pipeline_in_process``: codec + session + engine + payloads + the durable
  outbox (one SQLite transaction per 4 KiB chunk, as the daemon batches a
  burst) + paho QoS 1 to mosquitto, until every durable message is PUBACKed
  and deleted: the daemon's path without its serial thread and queue.
* ``daemon``: the real daemon (``pumpgw run``) with the benchmark writing the
  frames into its pty as fast as the pty takes them; the clock stops when the
  subscriber holds the last reading's ``state`` of every pump (``steady``:
  4 pumps, no alert) or the last alert transition (``alerts``: every
  reading raises or clears ``reservoir_low``, so every reading costs durable
  alert and event rows that are never coalesced). The daemon's own counters
  (``frames_lost``, ``frames_discarded`` in ``info``) must stay 0.
* ``raw_relay``: the steady blast through ``benchmarks/relay.py``: the rate
  of a relay that does nothing, and proof that the pty delivers every byte.
* ``reading_cost_us``: one reading at a time, one commit each (the latency
  benchmark's case): microseconds per reading spent decoding, in the engine,
  building the JSON payloads, dumping the engine snapshot and in the outbox
  commit (SQLite, fsync), i.e. the daemon's main-thread work per reading.

Two mixes throughout: ``steady`` readings (state only) and ``alerts``
(each reading one alert transition). A 115200-baud line carries about 110
STAT frames a second (~105 bytes each).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import (
    LOOPBACK,
    PROGRAMMER_HELLO,
    BenchError,
    Broker,
    CpuMeter,
    FakeProgrammer,
    FrameMatcher,
    Recorder,
    log,
    now_ns,
    proc_status,
    start_gateway,
    stat_frame,
    summarize_ms,
)
from benchmarks.latency import alert_value, start_relay
from drivers import session as ses
from drivers.ptp import Stat, StreamDecoder, encode
from gateway import engine
from gateway.config import Config, parse_config
from gateway.contract import Topics
from gateway.delivery import Delivery
from gateway.mqtt_link import BrokerConnected, BrokerEvent, MqttLink, PublishAcked
from gateway.outbox import Outbox, Outgoing

PREFIX = "bench"
PUMPS = ("TP-1", "TP-2", "TP-3", "TP-4")
CHUNK = 4096
LINE_FRAMES_PER_S = 115200 / 10 / 105  # a 115200-baud line, ~105-byte STAT frames


def frames(n: int, mix: str, first_seq: int = 0) -> list[bytes]:
    """``n`` STAT frames over ``PUMPS`` round robin; ``alerts``: each one a transition."""
    out = []
    for i in range(n):
        pump = PUMPS[i % len(PUMPS)]
        if mix == "steady":
            res = 15.0 - (i // len(PUMPS)) * 1e-4  # draining slowly, never low
        else:
            res, _ = alert_value(i // len(PUMPS))
        out.append(stat_frame(first_seq + i, pump, res))
    return out


def bench_config(port: int, state_dir: Path, gateway_id: str) -> Config:
    return parse_config(
        {
            "serial": {"port": "unused"},
            "gateway": {"id": gateway_id, "state_dir": str(state_dir)},
            "mqtt": {"host": LOOPBACK, "port": port, "topic_prefix": PREFIX},
        }
    )


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("nan")


# --- codec and engine alone -------------------------------------------------------


def codec_only(n: int, mix: str) -> dict[str, Any]:
    data = b"".join(frames(n, mix))
    decoder = StreamDecoder(role="host")
    t0 = time.perf_counter()
    got = 0
    for off in range(0, len(data), CHUNK):
        got += len(decoder.feed(data[off : off + CHUNK]))
    seconds = time.perf_counter() - t0
    if got != n:
        raise BenchError(f"codec decoded {got} of {n} frames")
    return {"readings": n, "seconds": round(seconds, 4), "readings_per_s": _rate(n, seconds)}


def engine_only(n: int, mix: str, config: Config) -> dict[str, Any]:
    decoder = StreamDecoder(role="host")
    stats = [m for m in decoder.feed(b"".join(frames(n, mix))) if isinstance(m, Stat)]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    state = engine.initial_state(config, now)
    transitions = 0
    t0 = time.perf_counter()
    for i, stat in enumerate(stats):
        outcome = engine.step(state, engine.Reading(stat), now + timedelta(milliseconds=i), config)
        state = outcome.state
        transitions += sum(1 for e in outcome.events if e.alert is not None)
    seconds = time.perf_counter() - t0
    return {
        "readings": n,
        "seconds": round(seconds, 4),
        "readings_per_s": _rate(n, seconds),
        "alert_transitions": transitions,
    }


def outbox_commit(workdir: Path, n: int) -> dict[str, Any]:
    """One small durable write (one transaction, fsync): what every batch pays."""
    outbox = Outbox(workdir / "commit-probe.sqlite3", 64 * 1024 * 1024)
    try:
        samples = []
        for i in range(n):
            t0 = now_ns()
            outbox.write([Outgoing("bench/probe/events", b"x" * 400, retain=False)], f"{i}")
            samples.append(now_ns() - t0)
    finally:
        outbox.close()
    return summarize_ms(samples)


def reading_cost(workdir: Path, n: int, mix: str, config: Config) -> dict[str, Any]:
    """Where one reading's time goes on the daemon's main thread, one reading per
    commit (as in the latency benchmark): microseconds per reading, by stage."""
    topics = Topics(PREFIX, config.gateway.id)
    outbox = Outbox(workdir / f"cost-{mix}.sqlite3", 64 * 1024 * 1024)
    decoder = StreamDecoder(role="host")
    state = engine.initial_state(config, datetime.now(UTC))
    spent = dict.fromkeys(("decode", "engine", "payloads", "snapshot", "outbox_commit"), 0)
    try:
        for frame in frames(n, mix):
            t0 = now_ns()
            (stat,) = decoder.feed(frame)
            t1 = now_ns()
            assert isinstance(stat, Stat)
            outcome = engine.step(state, engine.Reading(stat), datetime.now(UTC), config)
            state = outcome.state
            t2 = now_ns()
            messages = []
            for ev in outcome.events:
                if ev.alert is not None:
                    topic = topics.alert(ev.alert.pump_id, ev.alert.type)
                    messages.append(Outgoing(topic, ev.alert.to_json(), retain=True))
                messages.append(Outgoing(topics.events, ev.to_json(), retain=False))
            for st in outcome.pump_states:
                messages.append(
                    Outgoing(topics.state(st.pump_id), st.to_json(), retain=True, coalesce=True)
                )
            t3 = now_ns()
            snapshot = engine.dump_state(state) if outcome.events else None
            t4 = now_ns()
            outbox.write(messages, snapshot)
            t5 = now_ns()
            for key, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                spent[key] += dt
    finally:
        outbox.close()
    per = {key: round(total / n / 1000, 1) for key, total in spent.items()}
    return {"readings": n, **per, "total_us": round(sum(per.values()), 1)}


# --- the pipeline in one process ---------------------------------------------------------


@dataclass
class _Wired:
    mqtt: MqttLink
    delivery: Delivery
    events: queue.SimpleQueue[BrokerEvent]

    def handle_waiting(self, block_s: float | None = None) -> int:
        """Take the broker's events (PUBACKs) as the daemon does, then pump."""
        handled = 0
        try:
            item = self.events.get(timeout=block_s) if block_s else self.events.get_nowait()
            while True:
                if isinstance(item, PublishAcked):
                    self.delivery.acked(item.mid)
                handled += 1
                item = self.events.get_nowait()
        except queue.Empty:
            pass
        self.delivery.pump()
        return handled


def pipeline_in_process(broker: Broker, workdir: Path, n: int, mix: str) -> dict[str, Any]:
    config = bench_config(broker.port, workdir, f"inproc-{mix}")
    events: queue.SimpleQueue[BrokerEvent] = queue.SimpleQueue()
    link = MqttLink(config, None, events.put)
    outbox = Outbox(workdir / f"outbox-{mix}.sqlite3", config.gateway.outbox_max_bytes)
    wired = _Wired(link, Delivery(outbox, link), events)
    link.start()
    try:
        deadline = time.monotonic() + 10
        while not isinstance(
            events.get(timeout=max(0.1, deadline - time.monotonic())), BrokerConnected
        ):
            pass
        session = ses.ProgrammerSession(60)
        session.connection_made(time.monotonic())
        session.receive_data(encode(PROGRAMMER_HELLO), time.monotonic())
        state = engine.initial_state(config, datetime.now(UTC))
        topics = link.topics
        data = b"".join(frames(n, mix))
        readings = rows = 0
        t0 = time.perf_counter()
        for off in range(0, len(data), CHUNK):
            outgoing: list[Outgoing] = []
            dirty = False
            for event in session.receive_data(data[off : off + CHUNK], time.monotonic()):
                if not isinstance(event, ses.DeviceMessage) or not isinstance(event.message, Stat):
                    continue
                readings += 1
                outcome = engine.step(
                    state, engine.Reading(event.message), datetime.now(UTC), config
                )
                state = outcome.state
                dirty = dirty or bool(outcome.events)
                for ev in outcome.events:  # as Daemon._feed builds them
                    if ev.alert is not None:
                        topic = topics.alert(ev.alert.pump_id, ev.alert.type)
                        outgoing.append(Outgoing(topic, ev.alert.to_json(), retain=True))
                    outgoing.append(Outgoing(topics.events, ev.to_json(), retain=False))
                for st in outcome.pump_states:
                    outgoing.append(
                        Outgoing(topics.state(st.pump_id), st.to_json(), retain=True, coalesce=True)
                    )
            rows += len(outgoing)
            wired.delivery.store(outgoing, engine.dump_state(state) if dirty else None)
            wired.handle_waiting()
        t_fed = time.perf_counter()
        deadline = time.monotonic() + 120
        while not (wired.delivery.idle and outbox.rows == 0):
            if time.monotonic() > deadline:
                raise BenchError(f"in-process pipeline: {outbox.rows} rows never acknowledged")
            wired.handle_waiting(block_s=0.5)
        seconds = time.perf_counter() - t0
    finally:
        link.stop()
        outbox.close()
    if readings != n:
        raise BenchError(f"in-process pipeline: the session passed {readings} of {n} readings")
    return {
        "readings": n,
        "messages_stored": rows,
        "seconds": round(seconds, 3),
        "seconds_feeding": round(t_fed - t0, 3),
        "readings_per_s": _rate(n, seconds),
    }


# --- through the real daemon ------------------------------------------------------------


class _Tally:
    """Counts what the daemon published: last state seq per pump, alert transitions."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._cond = threading.Condition()
        self.last_seq: dict[str, tuple[int, int]] = {}  # pump -> (seq, t_ns)
        self.transitions = 0
        self.t_transition = 0
        self.info: dict[str, Any] | None = None
        self.messages = 0

    def on_message(self, t: int, topic: str, payload: bytes) -> None:
        data = json.loads(payload)
        with self._cond:
            self.messages += 1
            if topic.endswith("/state"):
                self.last_seq[data["pump_id"]] = (data["seq"], t)
            elif topic == f"{self.base}/events" and data["kind"] in (
                "alert_raised",
                "alert_cleared",
            ):
                if data["pump_id"] in PUMPS:
                    self.transitions += 1
                    self.t_transition = t
            elif topic == f"{self.base}/info":
                self.info = data
            self._cond.notify_all()

    def wait(self, predicate: Any, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout_s)


def daemon_end_to_end(broker: Broker, workdir: Path, n: int, mix: str) -> dict[str, Any]:
    gw_id = f"tp-{mix}"
    base = f"{PREFIX}/{gw_id}"
    tally = _Tally(base)
    with (
        FakeProgrammer() as prog,
        Recorder(
            broker.port,
            [f"{base}/pumps/+/state", f"{base}/events", f"{base}/info"],
            tally.on_message,
        ),
    ):
        gw = start_gateway(
            workdir,
            gateway_id=gw_id,
            port=prog.path,
            broker_port=broker.port,
            prefix=PREFIX,
            info_interval_s=1.0,
        )
        try:
            gw.wait_for(r"event=link_up", 30)
            gw.wait_for(r"event=mqtt_connected", 30)
            if not prog.streaming.wait(10):
                raise BenchError(f"the daemon never sent STREAM:\n{gw.tail()}")
            time.sleep(0.3)
            first = prog.next_seq()
            data = frames(n, mix, first_seq=first)
            for _ in range(n - 1):
                prog.next_seq()
            last = {PUMPS[i % len(PUMPS)]: (first + i) % 65536 for i in range(n)}
            cpu = CpuMeter(gw.pid)
            t0 = prog.write(b"".join(data))
            t_written = now_ns()
            if mix == "steady":
                done = tally.wait(
                    lambda: all(tally.last_seq.get(p, (-1, 0))[0] == s for p, s in last.items()),
                    300,
                )
                t_end = max(t for _, t in tally.last_seq.values())
            else:
                done = tally.wait(lambda: tally.transitions >= n, 300)
                t_end = tally.t_transition
            load = cpu.read()
            mem = proc_status(gw.pid)
            if not done:
                raise BenchError(
                    f"daemon ({mix}): not everything arrived within 300 s "
                    f"(transitions {tally.transitions}, last {tally.last_seq}):\n{gw.tail()}"
                )
            time.sleep(1.5)  # one more info with the final counters
            counters = (tally.info or {}).get("counters", {})
        finally:
            rc = gw.stop()
    seconds = (t_end - t0) / 1e9
    return {
        "readings": n,
        "seconds": round(seconds, 3),
        "seconds_writing": round((t_written - t0) / 1e9, 3),
        "readings_per_s": _rate(n, seconds),
        "alert_transitions": tally.transitions if mix == "alerts" else None,
        "messages_received": tally.messages,
        "daemon_counters": counters,
        # Should both be 0: the pty delivers every byte (the raw relay shows it).
        "frames_lost": counters.get("frames_lost"),
        "frames_discarded": counters.get("frames_discarded"),
        "daemon_cpu": load,
        "daemon_rss_kb": mem.get("VmRSS"),
        "daemon_peak_rss_kb": mem.get("VmHWM"),
        "daemon_exit_code": rc,
    }


def relay_blast(broker: Broker, workdir: Path, n: int) -> dict[str, Any]:
    """The same blast through the raw relay: its rate, and that the pty loses nothing."""
    topic = f"{PREFIX}/relay-blast/raw"
    matcher = FrameMatcher()
    with FakeProgrammer() as prog, Recorder(broker.port, [topic], matcher.on_message):
        relay = start_relay(prog.path, broker, topic, workdir / "relay-blast.log")
        try:
            relay.wait_for(r"relay_ready", 30)
            time.sleep(0.2)
            first = prog.next_seq()
            data = frames(n, "steady", first_seq=first)
            for _ in range(n - 1):
                prog.next_seq()
            last = (first + n - 1) % 65536
            t0 = prog.write(b"".join(data))
            t_last = matcher.wait_seq(last, 120)
            time.sleep(0.5)
        finally:
            relay.stop()
    received = sum(1 for i in range(n) if (first + i) % 65536 in matcher.arrived)
    seconds = (t_last - t0) / 1e9 if t_last is not None else float("nan")
    return {
        "frames": n,
        "received": received,
        "lost": n - received,
        "seconds": round(seconds, 3),
        "frames_per_s": _rate(n, seconds),
        "messages": matcher.counts()["messages"],
    }


def run(broker: Broker, workdir: Path, n_steady: int, n_alerts: int) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = bench_config(broker.port, workdir, "engine-only")
    result: dict[str, Any] = {"line_115200_frames_per_s": round(LINE_FRAMES_PER_S, 1)}
    sizes = {"steady": n_steady, "alerts": n_alerts}
    log(f"throughput: codec, engine, outbox commit ({sizes})")
    result["codec"] = {mix: codec_only(n, mix) for mix, n in sizes.items()}
    result["engine"] = {mix: engine_only(n, mix, config) for mix, n in sizes.items()}
    result["outbox_commit"] = outbox_commit(workdir, 200 if n_steady >= 2000 else 20)
    cost_n = 1000 if n_steady >= 2000 else 50
    result["reading_cost_us"] = {
        mix: reading_cost(workdir, cost_n, mix, config) for mix in ("steady", "alerts")
    }
    log("throughput: in-process pipeline with PUBACKs")
    result["pipeline_in_process"] = {
        mix: pipeline_in_process(broker, workdir / f"inproc-{mix}", n, mix)
        for mix, n in sizes.items()
    }
    log("throughput: the real daemon, frames blasted into its pty")
    result["daemon"] = {
        mix: daemon_end_to_end(broker, workdir / f"daemon-{mix}", n, mix)
        for mix, n in sizes.items()
    }
    log("throughput: the same blast through the raw relay")
    result["raw_relay"] = relay_blast(broker, workdir, n_steady)
    e2e = result["daemon"]["steady"]["readings_per_s"]
    e2e_alerts = result["daemon"]["alerts"]["readings_per_s"]
    result["ratios"] = {
        "daemon_steady_over_115200_line": round(e2e / LINE_FRAMES_PER_S, 1),
        "daemon_alerts_over_115200_line": round(e2e_alerts / LINE_FRAMES_PER_S, 1),
        "daemon_steady_over_raw_relay": round(e2e / result["raw_relay"]["frames_per_s"], 3),
    }
    result["goals"] = [
        {
            "goal": ">= 5,000 readings/s end to end (real daemon, steady readings)",
            "measured": e2e,
            "met": e2e >= 5000,
        }
    ]
    lost = {
        mix: (d["frames_lost"] or 0) + (d["frames_discarded"] or 0)
        for mix, d in result["daemon"].items()
    }
    result["goals"].append(
        {
            "goal": "check (not an issue goal): the daemon loses no frame under the blast",
            "measured": lost,
            "met": not any(lost.values()),
        }
    )
    result["notes"] = [
        "the goal is judged on steady readings; 'alerts' (every reading one alert "
        "transition, ~3.5 durable messages each) is the worst case, shown for scale"
    ]
    return result
