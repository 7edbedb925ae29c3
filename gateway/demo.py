"""``pumpgw demo``: a broker, a simulated programmer and the gateway, watched live.

Starts a local MQTT broker (mosquitto when installed, else the embedded
amqtt broker), the simulated programmer on a pseudo-terminal with five pumps
in different scenarios at high speed, and ``pumpgw run`` against both, then
shows pump state and alerts from the broker until Ctrl-C (or ``--duration``).
The broker also listens for MQTT over WebSockets, and the clinic dashboard is
served on ``--dashboard-port`` (its URL is printed and shown in the view).
Everything it started is stopped on the way out.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.broker import BrokerEndpoint, LocalBroker
from gateway.dashboard.server import DashboardServer, DashboardSettings
from gateway.watch import LiveFeed, RenderOptions, Screen, WatchState

GATEWAY_ID = "demo-bed"
PREFIX = "pumpgw"
DEMO_PUMPS = {
    "PMP-0001": ("low-reservoir", "Bed 1"),
    "PMP-0002": ("battery-eri-eos", "Bed 2"),
    "PMP-0003": ("motor-stall", "Bed 3"),
    "PMP-0004": ("normal", "Bed 4"),
    "PMP-0005": ("over-infusion", "Bed 5"),
}


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


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_demo(
    speed: float, duration_s: float | None, broker: str = "mosquitto", dashboard_port: int = 8080
) -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # like Ctrl-C
    try:
        return _demo(speed, duration_s, broker, dashboard_port)
    except KeyboardInterrupt:
        return 0


def _start_dashboard(endpoint: BrokerEndpoint, port: int) -> DashboardServer:
    """The dashboard on ``port``, or on a free one when that is taken."""
    settings = DashboardSettings(
        broker_url=f"ws://{endpoint.host}:{endpoint.ws_port}/", prefix=PREFIX
    )
    try:
        server = DashboardServer(settings, endpoint.host, port)
    except OSError as exc:
        server = DashboardServer(settings, endpoint.host, 0)
        print(f"port {port} is taken ({exc.strerror}); dashboard on another port", flush=True)
    server.start()
    return server


def _demo(speed: float, duration_s: float | None, prefer: str, dashboard_port: int) -> int:
    stop = threading.Event()
    workdir = Path(tempfile.mkdtemp(prefix="pumpgw-demo-"))
    feed = LiveFeed(WatchState(PREFIX), f"{PREFIX}/{GATEWAY_ID}/#")
    with contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(LocalBroker(prefer=prefer, websockets=True)).start()
        print(
            f"broker: {endpoint.kind} on {endpoint.host}:{endpoint.port} "
            f"(WebSockets on {endpoint.ws_port})",
            flush=True,
        )
        dashboard = _start_dashboard(endpoint, dashboard_port)
        stack.callback(dashboard.stop)
        print(f"dashboard: {dashboard.url}", flush=True)
        view = RenderOptions(
            title="pumpgw demo",
            color=True,
            device_time=True,
            footer=(f"dashboard {dashboard.url}", "Ctrl-C stops"),
        )
        screen = Screen(sys.stdout, view)  # a terminal is redrawn; a pipe gets a line per event
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
        feed.attach(client)
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
                screen.update(feed)
        finally:
            print(f"demo stopping; logs kept in {workdir}", flush=True)
    return 0
