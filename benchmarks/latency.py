"""1. Latency: a frame written on the pty -> a subscriber holding the message.

The benchmark process plays the programmer (``FakeProgrammer``): it answers the
daemon's handshake, then writes one STAT at a time, timestamping just before
the bytes enter the pty, and waits until its own subscriber (QoS 1, same
process, same monotonic clock) has received what that frame caused:

* ``state``: ``{p}/{gw}/pumps/{pump}/state`` with the frame's ``seq``;
* ``alert``: ``{p}/{gw}/pumps/{pump}/alerts/reservoir_low``, the first message
  of the alert transition (the ``events`` copy follows it).

Through the real daemon (``pumpgw run``): serial reader thread, session,
engine, the SQLite outbox (WAL, ``synchronous=FULL``: an fsync per commit),
paho, mosquitto on loopback. Readings alternate across the 5.0 mL warning
threshold: 3.xxx mL raises ``reservoir_low`` (warning), then 8.xxx mL is a rise
of more than 1 mL, i.e. a refill, which clears it (hysteresis reset) and adds a
``refill`` event. So every frame is exactly one alert transition (checked
on the ``events`` topic); the thousandths encode the sample, so an alert is
matched by its ``value``. The readings are isolated (one in flight, then a
pause of ``--gap-ms`` plus a random 0-10 ms), as a pump's are: a programmer
streams each pump at most every second.

Baseline, same run, same broker: ``benchmarks/relay.py`` (pyserial read ->
paho publish, QoS 1, no parsing) on its own pty.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    PYTHON,
    BenchError,
    Broker,
    Child,
    FakeProgrammer,
    FrameMatcher,
    Recorder,
    log,
    start_gateway,
    stat_frame,
    summarize_ms,
)

PREFIX = "bench"
PUMP = "LAT-1"
SAMPLE_TIMEOUT_S = 5.0
MAX_CONSECUTIVE_TIMEOUTS = 10
# After each sample the writer pauses gap + uniform(0, JITTER_S): the random part
# keeps the writes from locking onto a poller's phase (mqtt-io polls every 10 ms).
JITTER_S = 0.010


class Pause:
    """The pause between samples, random but the same sequence for every contender."""

    def __init__(self, gap_s: float, seed: int = 7) -> None:
        self.gap_s = gap_s
        self._rng = random.Random(seed)

    def __call__(self) -> None:
        time.sleep(self.gap_s + self._rng.uniform(0, JITTER_S))


def alert_value(i: int) -> tuple[float, str]:
    """The reservoir volume of sample ``i`` and the alert state it must cause."""
    fraction = (i % 1000) / 1000
    return (3.0 + fraction, "active") if i % 2 == 0 else (8.0 + fraction, "cleared")


class _GatewayMatcher:
    """Waits for the state (by seq) and the alert (by value and state) of one frame."""

    def __init__(self, state_topic: str, alert_topic: str, events_topic: str) -> None:
        self.state_topic, self.alert_topic, self.events_topic = (
            state_topic,
            alert_topic,
            events_topic,
        )
        self._cond = threading.Condition()
        self._seq: int | None = None
        self._value: float | None = None
        self._state: str | None = None
        self.t_state: int | None = None
        self.t_alert: int | None = None
        self.transitions = 0  # alert_* kinds seen on the events topic
        self.transitions_by_kind: dict[str, int] = {}

    def expect(self, seq: int, value: float, state: str) -> None:
        with self._cond:
            self._seq, self._value, self._state = seq, value, state
            self.t_state = self.t_alert = None

    def on_message(self, t: int, topic: str, payload: bytes) -> None:
        if topic == self.events_topic:
            kind = json.loads(payload)["kind"]
            if kind.startswith("alert_"):
                with self._cond:
                    self.transitions += 1
                    self.transitions_by_kind[kind] = self.transitions_by_kind.get(kind, 0) + 1
            return
        data = json.loads(payload)
        with self._cond:
            if topic == self.state_topic and data["seq"] == self._seq and self.t_state is None:
                self.t_state = t
            elif (
                topic == self.alert_topic
                and data["value"] == self._value
                and data["state"] == self._state
                and self.t_alert is None
            ):
                self.t_alert = t
            self._cond.notify_all()

    def wait(self, timeout_s: float) -> tuple[int | None, int | None]:
        with self._cond:
            self._cond.wait_for(
                lambda: self.t_state is not None and self.t_alert is not None, timeout_s
            )
            return self.t_state, self.t_alert


def measure_gateway(
    broker: Broker, workdir: Path, samples: int, warmup: int, gap_s: float
) -> dict[str, Any]:
    gw_id = "lat"
    base = f"{PREFIX}/{gw_id}"
    matcher = _GatewayMatcher(
        f"{base}/pumps/{PUMP}/state", f"{base}/pumps/{PUMP}/alerts/reservoir_low", f"{base}/events"
    )
    with (
        FakeProgrammer() as prog,
        Recorder(broker.port, [f"{base}/pumps/#", f"{base}/events"], matcher.on_message),
    ):
        gw = start_gateway(
            workdir, gateway_id=gw_id, port=prog.path, broker_port=broker.port, prefix=PREFIX
        )
        try:
            gw.wait_for(r"event=link_up", 30)
            gw.wait_for(r"event=mqtt_connected", 30)
            if not prog.streaming.wait(10):
                raise BenchError(f"the daemon never sent STREAM:\n{gw.tail()}")
            time.sleep(0.2)
            t_state: list[int] = []
            t_alert: list[int] = []
            timeouts = consecutive = 0
            pause = Pause(gap_s)
            for i in range(warmup + samples):
                value, state = alert_value(i)
                seq = prog.next_seq()
                frame = stat_frame(seq, PUMP, value)
                matcher.expect(seq, value, state)
                t0 = prog.write(frame)
                got_state, got_alert = matcher.wait(SAMPLE_TIMEOUT_S)
                if got_state is None or got_alert is None:
                    timeouts += 1
                    consecutive += 1
                    if consecutive >= MAX_CONSECUTIVE_TIMEOUTS:
                        raise BenchError(f"{consecutive} samples in a row timed out:\n{gw.tail()}")
                else:
                    consecutive = 0
                    if i >= warmup:
                        t_state.append(got_state - t0)
                        t_alert.append(got_alert - t0)
                pause()
            time.sleep(0.3)  # the last events message follows its alert
            counted = warmup + samples  # every frame written, warm-up included
            transitions = matcher.transitions
        finally:
            rc = gw.stop()
    return {
        "what": "real daemon (pumpgw run): pty -> codec -> session -> engine -> SQLite outbox "
        "(fsync) -> paho -> mosquitto -> subscriber",
        "state": summarize_ms(t_state),
        "alert": summarize_ms(t_alert),
        "timeouts": timeouts,
        "frames_written": counted,
        "alert_transitions_seen": transitions,
        "alert_transitions_per_frame": round(transitions / counted, 4) if counted else None,
        "transitions_by_kind": matcher.transitions_by_kind,
        "daemon_exit_code": rc,
    }


def sample_raw_stream(
    prog: FakeProgrammer,
    matcher: FrameMatcher,
    samples: int,
    warmup: int,
    gap_s: float,
    timeout_s: float,
    pump: str = "RAW-1",
) -> tuple[list[int], int]:
    """Closed loop over a raw byte relay: write a frame, wait for its last byte."""
    out: list[int] = []
    timeouts = 0
    pause = Pause(gap_s)
    for i in range(warmup + samples):
        seq = prog.next_seq()
        value, _ = alert_value(i)
        t0 = prog.write(stat_frame(seq, pump, value))
        t1 = matcher.wait_seq(seq, timeout_s)
        if t1 is None:
            timeouts += 1
            if timeouts >= MAX_CONSECUTIVE_TIMEOUTS and not out:
                raise BenchError(f"{timeouts} frames never came through the relay")
        elif i >= warmup:
            out.append(t1 - t0)
        pause()
    return out, timeouts


def start_relay(port: str, broker: Broker, topic: str, log_path: Path) -> Child:
    """The raw relay baseline (benchmarks/relay.py) on ``port``, publishing to ``topic``."""
    args = ["--port", port, "--mqtt-port", str(broker.port), "--topic", topic]
    return Child([PYTHON, "-m", "benchmarks.relay", *args], log_path)


def measure_relay(
    broker: Broker, workdir: Path, samples: int, warmup: int, gap_s: float
) -> dict[str, Any]:
    topic = f"{PREFIX}/relay/raw"
    matcher = FrameMatcher()
    with FakeProgrammer() as prog, Recorder(broker.port, [topic], matcher.on_message):
        relay = start_relay(prog.path, broker, topic, workdir / "relay.log")
        try:
            relay.wait_for(r"relay_ready", 30)
            time.sleep(0.2)
            lat, timeouts = sample_raw_stream(
                prog, matcher, samples, warmup, gap_s, SAMPLE_TIMEOUT_S
            )
        finally:
            relay.stop()
    return {
        "what": "benchmarks/relay.py: pyserial read -> paho publish (QoS 1), no parsing, no outbox",
        "frame": summarize_ms(lat),
        "timeouts": timeouts,
        "stream": matcher.counts(),
    }


def run(broker: Broker, workdir: Path, samples: int, gap_s: float) -> dict[str, Any]:
    warmup = max(5, min(50, samples // 20))
    log(f"latency: real daemon, {samples} frames (+{warmup} warm-up), gap {gap_s * 1000:g} ms")
    gateway = measure_gateway(broker, workdir / "latency-gateway", samples, warmup, gap_s)
    log("latency: raw relay baseline")
    relay = measure_relay(broker, workdir / "latency-relay", samples, warmup, gap_s)
    alert_p99 = gateway["alert"].get("p99_ms")
    state_p99 = gateway["state"].get("p99_ms")
    relay_p99 = relay["frame"].get("p99_ms")
    ratio_alert = round(alert_p99 / relay_p99, 2) if alert_p99 and relay_p99 else None
    ratio_state = round(state_p99 / relay_p99, 2) if state_p99 and relay_p99 else None
    ratio_p50 = (
        round(gateway["alert"]["p50_ms"] / relay["frame"]["p50_ms"], 2)
        if gateway["alert"].get("p50_ms") and relay["frame"].get("p50_ms")
        else None
    )
    return {
        "samples": samples,
        "warmup": warmup,
        "pause_ms": f"{gap_s * 1000:g} + uniform(0, {JITTER_S * 1000:g})",
        "gateway": gateway,
        "raw_relay": relay,
        "ratios": {
            "alert_p99_over_relay_p99": ratio_alert,
            "state_p99_over_relay_p99": ratio_state,
            "alert_p50_over_relay_p50": ratio_p50,
        },
        "goals": [
            {
                "goal": "alert p99 <= 10 ms",
                "measured": alert_p99,
                "met": alert_p99 is not None and alert_p99 <= 10.0,
            },
            {
                "goal": "alert p99 within 3x of the raw relay's p99",
                "measured": ratio_alert,
                "met": ratio_alert is not None and ratio_alert <= 3.0,
            },
        ],
    }
