"""``pumpgw demo``: a broker, a simulated programmer and the gateway, watched live.

Starts a local MQTT broker (mosquitto when installed, else the embedded
amqtt broker), the simulated programmer on a pseudo-terminal with five pumps
in different scenarios at high speed, and ``pumpgw run`` against both, then
shows pump state and alerts from the broker until Ctrl-C (or ``--duration``).
Everything it started is stopped on the way out.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.broker import LocalBroker

GATEWAY_ID = "demo-bed"
PREFIX = "pumpgw"
DEMO_PUMPS = {
    "PMP-0001": ("low-reservoir", "Bed 1"),
    "PMP-0002": ("battery-eri-eos", "Bed 2"),
    "PMP-0003": ("motor-stall", "Bed 3"),
    "PMP-0004": ("normal", "Bed 4"),
    "PMP-0005": ("over-infusion", "Bed 5"),
}
RED, YELLOW, GREEN, DIM, BOLD, RESET = (
    "\033[31m",
    "\033[33m",
    "\033[32m",
    "\033[2m",
    "\033[1m",
    "\033[0m",
)


def demo_config(port: str, broker_port: int, state_dir: Path) -> str:
    pumps = "\n".join(
        f'[pumps."{pid}"]\nlabel = "{label}"\n' for pid, (_, label) in DEMO_PUMPS.items()
    )
    return f"""\
[gateway]
id = "{GATEWAY_ID}"
state_dir = "{state_dir}"

[serial]
port = "{port}"
poll_interval_s = 300

[mqtt]
host = "127.0.0.1"
port = {broker_port}
topic_prefix = "{PREFIX}"
info_interval_s = 2

{pumps}"""


class LiveView:
    """What the broker says, kept for drawing (fed from paho's thread)."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.tty = out.isatty()
        self.lock = threading.Lock()
        self.changed = threading.Event()
        self.status = "?"
        self.info: dict[str, Any] = {}
        self.pumps: dict[str, dict[str, Any]] = {}
        self.alerts: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: deque[str] = deque(maxlen=12)

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")[2:]
        with self.lock:
            if parts == ["status"]:
                self.status = msg.payload.decode()
            elif parts == ["info"]:
                self.info = json.loads(msg.payload)
            elif len(parts) == 3 and parts[0] == "pumps" and parts[2] == "state":
                self.pumps[parts[1]] = json.loads(msg.payload)
            elif len(parts) == 4 and parts[2] == "alerts":
                self.alerts[(parts[1], parts[3])] = json.loads(msg.payload)
            elif parts == ["events"]:
                line = self._event_line(json.loads(msg.payload))
                self.events.append(line)
                if not self.tty:
                    print(line, file=self.out, flush=True)
        self.changed.set()

    @staticmethod
    def _event_line(ev: dict[str, Any]) -> str:
        at = ev["at"][11:19]
        alert = ev.get("alert")
        if alert:
            return (
                f"{at} {ev['kind']:<19} {alert['pump_id']:<9} {alert['type']:<15} "
                f"{alert['severity']:<8} {alert['message']}"
            )
        return f"{at} {ev['kind']:<19} {ev.get('pump_id') or '':<9} {ev.get('detail') or ''}"

    def draw(self) -> None:
        if not self.tty:
            return
        with self.lock:
            lines = [
                f"{BOLD}pumpgw demo{RESET}  gateway {GATEWAY_ID}: {self.status}, "
                f"programmer link {self.info.get('link', '?')}, "
                f"counters {self.info.get('counters', {})}",
                "",
            ]
            lines.append(
                f"{'pump':<9} {'label':<6} {'device time':<20} {'reservoir':>9} "
                f"{'to alarm':>9} {'battery':>7}  flags / alerts"
            )
            for pid in sorted(self.pumps):
                lines.append(self._pump_line(pid, self.pumps[pid]))
            lines += ["", f"{BOLD}events{RESET}", *self.events, "", f"{DIM}Ctrl-C stops{RESET}"]
        self.out.write("\033[H\033[2J" + "\n".join(lines) + "\n")
        self.out.flush()

    def _pump_line(self, pid: str, st: dict[str, Any]) -> str:
        def num(value: Any, unit: str) -> str:
            return "?" if value is None else f"{value:g}{unit}"

        active = [a for (p, _), a in self.alerts.items() if p == pid and a["state"] != "cleared"]
        tags = [
            f"{RED if a['severity'] == 'critical' else YELLOW}{a['type']}:{a['severity']}"
            f"{'(ack)' if a['state'] == 'acknowledged' else ''}{RESET}"
            for a in sorted(active, key=lambda a: a["severity"] != "critical")
        ]
        flags = ",".join(st.get("flags") or [])
        return (
            f"{pid:<9} {st.get('label') or '':<6} {st.get('device_time') or '?':<20} "
            f"{num(st['reservoir_ml'], ' mL'):>9} "
            f"{num(st['days_to_low_reservoir_alarm'], ' d'):>9} "
            f"{num(st['battery_pct'], '%'):>7}  {DIM}{flags}{RESET} "
            + (" ".join(tags) or f"{GREEN}ok{RESET}")
        )


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_demo(speed: float, duration_s: float | None, broker: str = "mosquitto") -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # like Ctrl-C
    try:
        return _demo(speed, duration_s, broker)
    except KeyboardInterrupt:
        return 0


def _demo(speed: float, duration_s: float | None, prefer: str) -> int:
    stop = threading.Event()
    workdir = Path(tempfile.mkdtemp(prefix="pumpgw-demo-"))
    view = LiveView(sys.stdout)
    with contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(LocalBroker(prefer=prefer)).start()
        print(f"broker: {endpoint.kind} on {endpoint.host}:{endpoint.port}", flush=True)
        sim_args = [sys.executable, "-m", "drivers.simulator", "--speed", str(speed)]
        for pid, (scenario, _) in DEMO_PUMPS.items():
            sim_args += ["--pump", f"{pid}={scenario}"]
        sim_log = stack.enter_context((workdir / "simulator.log").open("w"))
        sim = subprocess.Popen(sim_args, stdout=subprocess.PIPE, stderr=sim_log, text=True)
        stack.callback(_stop, sim)
        assert sim.stdout is not None
        port = sim.stdout.readline().strip()
        if not port:
            print(f"simulator did not start; see {workdir / 'simulator.log'}", file=sys.stderr)
            return 1
        config = workdir / "gateway.toml"
        config.write_text(demo_config(port, endpoint.port, workdir / "state"))
        gw_log = stack.enter_context((workdir / "gateway.log").open("w"))
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
            stderr=gw_log,
        )
        stack.callback(_stop, gateway)
        print(f"simulator on {port}; gateway logs in {workdir}", flush=True)

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pumpgw-demo-view")
        client.on_message = view.on_message
        client.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/{GATEWAY_ID}/#", qos=1)
        client.connect(endpoint.host, endpoint.port)
        client.loop_start()
        stack.callback(client.loop_stop)
        stack.callback(client.disconnect)

        timer = threading.Timer(duration_s, stop.set) if duration_s else None
        if timer:
            timer.start()
            stack.callback(timer.cancel)
        try:
            while not stop.wait(0.25):  # redraw at most 4 times a second
                if gateway.poll() is not None:
                    print(f"gateway exited ({gateway.returncode}); see {workdir}", file=sys.stderr)
                    return 1
                if view.changed.is_set():
                    view.changed.clear()
                    view.draw()
        finally:
            print(f"demo stopping; logs kept in {workdir}", flush=True)
    return 0
