"""The daemon: wires serial, session, engine and MQTT around one queue.

The serial reader thread and paho's network thread only put values on
``inbox``; the main thread blocks on it (until the next deadline at the
latest), feeds the sans-IO session and the pure engine, and publishes what
they produce. All clinical state is touched by the main thread alone.
"""

from __future__ import annotations

import logging
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from types import FrameType

from drivers import session as ses
from drivers.logfmt import log_event
from drivers.ptp import Alrm, Evt, PollCommand, ProtocolError, Stat
from drivers.serial_link import BytesRead, PortClosed, PortEvent, PortOpened, SerialLink
from gateway import engine
from gateway.commands import parse_ack
from gateway.config import Config
from gateway.contract import (
    GATEWAY_PUMP,
    CommandResult,
    Counters,
    EventKind,
    Info,
    ProgrammerIdentity,
)
from gateway.mqtt_link import (
    BrokerConnected,
    BrokerDisconnected,
    BrokerEvent,
    CommandReceived,
    MqttLink,
)

log = logging.getLogger("pumpgw.daemon")

TICK_S = 1.0  # resolution of silence timeouts (telemetry, link)


def utc_now() -> datetime:
    return datetime.now(UTC)


def package_version() -> str:
    try:
        return version("pumpgw")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True, slots=True)
class StopRequested:
    why: str


DaemonInput = PortEvent | BrokerEvent | StopRequested


class Daemon:
    def __init__(
        self,
        config: Config,
        password: str | None,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self.monotonic = monotonic
        # SimpleQueue.put is reentrant: safe from the signal handler even when the
        # main thread is interrupted inside get() (queue.Queue can deadlock there).
        self.inbox: queue.SimpleQueue[DaemonInput] = queue.SimpleQueue()
        self.session = ses.ProgrammerSession(config.serial.poll_interval_s)
        self.serial = SerialLink(config.serial.port, config.serial.baudrate, self.inbox.put)
        self.mqtt = MqttLink(config, password, self.inbox.put)
        self.topics = self.mqtt.topics
        self.started_at = clock()
        self.state = engine.initial_state(config, self.started_at)
        self.commands_rejected = 0
        self._next_tick = 0.0
        self._info_due: float | None = None
        self._published_counters: Counters | None = None

    # --- main loop --------------------------------------------------------------

    def request_stop(self, why: str) -> None:
        self.inbox.put(StopRequested(why))

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> int:
        cfg = self.config
        log_event(
            log,
            "gateway_starting",
            gateway_id=cfg.gateway.id,
            version=package_version(),
            serial_port=cfg.serial.port,
            broker=f"{cfg.mqtt.host}:{cfg.mqtt.port}",
        )
        self.mqtt.start()
        self.serial.start()
        self._feed(engine.Lifecycle(EventKind.GATEWAY_STARTED))
        while True:
            try:
                item = self.inbox.get(timeout=self._wait_s())
            except queue.Empty:
                item = None
            if isinstance(item, StopRequested):
                log_event(log, "gateway_stopping", why=item.why)
                break
            if item is not None:
                self._handle(item)
            self._on_time_passed()
        self._shutdown()
        return 0

    def _wait_s(self) -> float:
        now = self.monotonic()
        deadlines = [self._next_tick]
        session_deadline = self.session.next_deadline()
        if session_deadline is not None:
            deadlines.append(session_deadline)
        if self._info_due is not None:
            deadlines.append(self._info_due)
        return max(0.0, min(deadlines) - now)

    def _on_time_passed(self) -> None:
        now = self.monotonic()
        self._session_events(self.session.tick(now))
        if now >= self._next_tick:
            self._next_tick = now + TICK_S
            self._feed(engine.Tick())
        self.serial.write(self.session.data_to_send())
        self._publish_info_if_due(now)

    def _shutdown(self) -> None:
        self._feed(engine.Lifecycle(EventKind.GATEWAY_STOPPING))
        self.serial.stop()
        self.mqtt.stop()
        log_event(log, "gateway_stopped")

    # --- inputs -------------------------------------------------------------------

    def _handle(self, item: DaemonInput) -> None:
        now = self.monotonic()
        match item:
            case BytesRead(data=data):
                self._session_events(self.session.receive_data(data, now))
            case PortOpened():
                self.session.connection_made(now)
            case PortClosed(reason=reason):
                self._session_events(self.session.connection_lost(reason))
                self._feed(engine.LinkChanged(False, reason))
                self._info_now()
            case BrokerConnected():
                self._info_now()
            case BrokerDisconnected():
                pass  # paho reconnects by itself; the log line is written there
            case CommandReceived(topic=topic, payload=payload):
                self._command(topic, payload)

    def _session_events(self, events: list[ses.SessionEvent]) -> None:
        for event in events:
            match event:
                case ses.DeviceMessage(message=Stat() as stat):
                    self._feed(engine.Reading(stat))
                case ses.DeviceMessage(message=Alrm() as alrm):
                    # ALRM is an early hint; ask for the STAT that carries the truth.
                    log_event(
                        log, "pump_alarm", pump_id=alrm.pump_id, code=alrm.code, action=alrm.action
                    )
                    self.session.send(PollCommand(alrm.pump_id))
                case ses.DeviceMessage(message=Evt() as evt):
                    self._feed(engine.PumpEventReceived(evt))
                case ses.LinkUp(hello=hello):
                    log_event(
                        log,
                        "link_up",
                        vendor=hello.vendor,
                        model=hello.model,
                        serial=hello.programmer_sn,
                        firmware=hello.firmware,
                    )
                    self._feed(engine.LinkChanged(True, f"handshake with {hello.programmer_sn}"))
                    self._info_now()
                case ses.LinkDown(reason=reason):
                    log_event(log, "link_down", logging.WARNING, reason=reason)
                    self._feed(engine.LinkChanged(False, reason))
                    self._info_now()
                case ses.ProgrammerRestarted(hello=hello):
                    log_event(
                        log, "programmer_restarted", logging.WARNING, serial=hello.programmer_sn
                    )
                    self._feed(engine.ProgrammerRestarted("unprompted HELLO"))
                case ses.BadFrame(item=ProtocolError() as error):
                    log_event(
                        log,
                        "protocol_error",
                        logging.WARNING,
                        pump_id=error.pump_id,
                        reason=error.reason,
                        body=error.body,
                    )
                    if error.pump_id is not None:
                        self._feed(engine.InvalidData(error.pump_id, error.reason))
                case ses.BadFrame(item=discarded):
                    log_event(log, "frame_discarded", reason=discarded.reason)
                case ses.CommandFailed(error=err):
                    log_event(
                        log,
                        "device_error",
                        logging.WARNING,
                        command=err.command,
                        code=err.code,
                        text=err.text,
                    )

    def _command(self, topic: str, payload: bytes) -> None:
        parsed = parse_ack(payload) if topic == self.topics.cmd_ack else None
        if parsed is None:
            parsed = CommandResult(ok=False, command=topic, error="unknown command topic")
        if isinstance(parsed, CommandResult):
            self.commands_rejected += 1
            log_event(log, "command_rejected", logging.WARNING, topic=topic, error=parsed.error)
            self._publish_result(parsed)
            return
        self._feed(engine.Acknowledge(parsed.alert_id, parsed.by, parsed.note))

    # --- engine and publishing ------------------------------------------------------

    def _feed(self, event: engine.EngineInput) -> None:
        outcome = engine.step(self.state, event, self.clock(), self.config)
        self.state = outcome.state
        for ev in outcome.events:
            if ev.alert is not None:
                alert = ev.alert
                log_event(
                    log,
                    ev.kind.value,
                    logging.WARNING,
                    pump_id=alert.pump_id,
                    type=alert.type.value,
                    severity=alert.severity.value,
                    alert_id=alert.alert_id,
                    message=alert.message,
                )
                self.mqtt.publish(
                    self.topics.alert(alert.pump_id or GATEWAY_PUMP, alert.type),
                    alert.to_json(),
                    retain=True,
                )
            self.mqtt.publish(self.topics.events, ev.to_json(), retain=False)
        for pump_state in outcome.pump_states:
            self.mqtt.publish(
                self.topics.state(pump_state.pump_id), pump_state.to_json(), retain=True
            )
        for result in outcome.results:
            if not result.ok:
                self.commands_rejected += 1
            self._publish_result(result)

    def _publish_result(self, result: CommandResult) -> None:
        self.mqtt.publish(self.topics.cmd_result, result.to_json(), retain=False)

    def _counters(self) -> Counters:
        c = self.session.counters
        return Counters(
            frames_ok=c.frames_ok,
            frames_discarded=c.frames_discarded,
            protocol_errors=c.protocol_errors,
            frames_lost=c.frames_lost,
            commands_rejected=self.commands_rejected,
        )

    def _info_now(self) -> None:
        self._info_due = self.monotonic()

    def _publish_info_if_due(self, now: float) -> None:
        counters = self._counters()
        if self._info_due is None and counters != self._published_counters:
            self._info_due = now + self.config.mqtt.info_interval_s
        if self._info_due is None or now < self._info_due or not self.mqtt.connected:
            return
        hello = self.session.hello
        info = Info(
            gateway_id=self.config.gateway.id,
            version=package_version(),
            started_at=self.started_at,
            link="up" if self.state.link_up else "down",
            link_error=None if self.state.link_up else self.state.link_reason,
            programmer=None
            if hello is None
            else ProgrammerIdentity(
                vendor=hello.vendor,
                model=hello.model,
                serial=hello.programmer_sn,
                firmware=hello.firmware,
                protocol=hello.proto,
            ),
            counters=counters,
        )
        self.mqtt.publish(self.topics.info, info.to_json(), retain=True)
        self._published_counters = counters
        self._info_due = None
