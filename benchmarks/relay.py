"""The baseline: a minimal raw relay, serial bytes straight to MQTT.

``python -m benchmarks.relay --port /dev/pts/N --mqtt-port P --topic T``: a
thread blocks in pyserial's ``read`` for the first byte of a burst, takes
what else is waiting, and publishes those bytes as one QoS 1 message (the
QoS the gateway uses). No parsing, no checks, no outbox, no engine: the
least any serial-to-MQTT bridge must do, so the gateway's latency can be put
against it. Prints ``relay_ready`` on stderr once the port is open and the
broker accepted it; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

import paho.mqtt.client as mqtt
import serial
from paho.mqtt.enums import CallbackAPIVersion


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.relay")
    parser.add_argument("--port", required=True, help="serial device or pyserial URL")
    parser.add_argument("--mqtt-port", type=int, required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--qos", type=int, default=1, choices=[0, 1])
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="")

    def on_connect(*_: Any) -> None:
        connected.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", args.mqtt_port, keepalive=60)
    client.loop_start()
    if not connected.wait(10):
        print("relay_failed reason=no-connack", file=sys.stderr, flush=True)
        return 1
    port = serial.serial_for_url(args.port, baudrate=115200, timeout=0.2)

    def pump_bytes() -> None:
        while not stop.is_set():
            data = port.read(1)  # blocks until the first byte of a burst
            if data:
                data += port.read(port.in_waiting)  # and takes the rest of it
                client.publish(args.topic, data, qos=args.qos)

    reader = threading.Thread(target=pump_bytes, name="relay-reader", daemon=True)
    reader.start()
    print("relay_ready", file=sys.stderr, flush=True)
    stop.wait()
    reader.join(timeout=1)
    port.close()
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
