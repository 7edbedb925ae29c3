"""The daemon: wires serial, session, engine and MQTT around one queue.

The serial reader thread and paho's network thread only put values on
``inbox``; the main thread blocks on it (until the next deadline at the
latest), feeds the sans-IO session and the pure engine, and publishes what
they produce. All clinical state is touched by the main thread alone.

Under systemd (``Type=notify``, see docs/systemd.md) the main loop also says
``READY=1`` once the serial side has settled (handshake done, or its first
attempt failed and retrying started), ``STATUS=`` on link and broker changes,
and ``WATCHDOG=1`` only while the serial reader and paho's network thread are
alive: a wedged thread, or a main loop that stops turning, misses the ping
and systemd restarts the gateway.

With ``[homeassistant] enabled = true`` each turn also queues the Home
Assistant discovery messages that changed (``gateway.homeassistant`` decides
which): retained, coalesced rows of the same outbox, stored together with the
record of what is announced, so a restart can clear what is gone.
"""

from __future__ import annotations

import faulthandler
import logging
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType

from drivers import session as ses
from drivers.logfmt import log_event
from drivers.ptp import Alrm, Evt, PollCommand, ProtocolError, Stat
from drivers.serial_link import BytesRead, PortClosed, PortEvent, PortOpened, SerialLink
from gateway import engine
from gateway.commands import parse_ack
from gateway.config import Config, ConfigError, load_config
from gateway.contract import (
    BrokerStatus,
    CommandResult,
    Counters,
    Event,
    EventKind,
    Info,
    OutboxStatus,
    ProgrammerIdentity,
)
from gateway.delivery import Delivery
from gateway.homeassistant import Announcer, Plan, load_record, status_topic
from gateway.mqtt_link import (
    BrokerConnected,
    BrokerDisconnected,
    BrokerEvent,
    CommandReceived,
    MqttLink,
    PublishAcked,
)
from gateway.outbox import Outbox, Outgoing
from gateway.sdnotify import Notifier

log = logging.getLogger("pumpgw.daemon")

TICK_S = 1.0  # resolution of silence timeouts (telemetry, link)
BATCH = 256  # inputs handled per outbox transaction when they arrive in a burst
SHUTDOWN_FLUSH_S = 3.0  # how long a clean stop waits for the broker to take the rest
OUTBOX_FILE = "outbox.sqlite3"
# How late the serial reader's heartbeat may be (on top of the read timeout it
# announced) before the watchdog ping is withheld. A late ping is harmless;
# systemd acts only when pings stay away for WatchdogSec.
READER_GRACE_S = 2.0
UNHEALTHY_RECHECK_S = 1.0  # while a ping is withheld, look again this often


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


@dataclass(frozen=True, slots=True)
class ReloadRequested:
    """SIGHUP: read the configuration file again."""


DaemonInput = PortEvent | BrokerEvent | StopRequested | ReloadRequested
# What a reload changes; the rest needs a restart.
LIVE_SECTIONS = ("thresholds", "pumps", "homeassistant")


class Daemon:
    def __init__(
        self,
        config: Config,
        password: str | None,
        config_path: Path | None = None,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
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
        self.outbox = Outbox(
            config.gateway.state_dir / OUTBOX_FILE, config.gateway.outbox_max_bytes
        )
        self.delivery = Delivery(self.outbox, self.mqtt)
        self.state = self._restore_state()
        self.announcer = self._restore_announcer()
        self.commands_rejected = 0
        self._outgoing: list[Outgoing] = []
        self._discovery_record: str | None = None  # to store with the next commit
        self._to_log: list[Event] = []
        self._snapshot_dirty = False
        self._next_tick = 0.0
        self._info_due: float | None = None
        self._published_counters: Counters | None = None
        # systemd: READY once the serial side settled; STATUS on changes; WATCHDOG
        self.notifier = Notifier() if notifier is None else notifier
        self._settled: str | None = None  # why the start-up is over, once it is
        self._ready = False
        self._told_state: tuple[object, ...] | None = None
        self._told_status = ""
        self._watchdog_due: float | None = None
        self._withheld: str | None = None  # the component a ping waits on
        self._watch_mqtt_loop = False

    def _restore_state(self) -> engine.EngineState:
        fresh = engine.initial_state(self.config, self.started_at)
        snapshot = self.outbox.load_engine_snapshot()
        if snapshot is None:
            return fresh
        try:
            state = engine.restore_state(snapshot, fresh, self.started_at)
        except ValueError as exc:
            log_event(
                log, "engine_state_unreadable", logging.ERROR, error=exc, action="start fresh"
            )
            return fresh
        active = state.active_alerts()
        log_event(log, "engine_state_restored", active_alerts=len(active), pending=self.outbox.rows)
        return state

    def _restore_announcer(self) -> Announcer:
        """What was announced to Home Assistant before this start (to clear what is gone)."""
        record = self.outbox.load_discovery_record()
        announced: dict[str, list[str]] = {}
        if record is not None:
            try:
                announced = load_record(record)
            except ValueError as exc:
                log_event(
                    log,
                    "discovery_record_unreadable",
                    logging.ERROR,
                    error=exc,
                    action="announce afresh; topics announced before are not cleared",
                )
        return Announcer(self.topics, package_version(), announced)

    # --- main loop --------------------------------------------------------------

    def request_stop(self, why: str) -> None:
        self.inbox.put(StopRequested(why))

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGHUP, lambda signum, frame: self.inbox.put(ReloadRequested()))
        # systemd's watchdog ends a hung gateway with SIGABRT: leave every
        # thread's stack in the journal first, so it says which one was stuck.
        faulthandler.enable(all_threads=True)

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
        self.notifier.status("starting: opening the serial port, connecting to the broker")
        self._watch_homeassistant()
        self.mqtt.start()
        self._watch_mqtt_loop = self.mqtt.loop_alive()
        if not self._watch_mqtt_loop:
            log_event(
                log,
                "watchdog_ignores_mqtt",
                logging.WARNING,
                reason="the MQTT network loop did not start",
            )
        self.serial.start()
        if self.notifier.watchdog_interval_s is not None:
            self._watchdog_due = self.monotonic()  # first ping on the first turn
            log_event(log, "watchdog_enabled", interval_s=self.notifier.watchdog_interval_s)
        self._feed(engine.Lifecycle(EventKind.GATEWAY_STARTED))
        while (stop := self._handle_batch()) is None:
            self._on_time_passed()
            self._sync_discovery()
            self._commit()
            self._tell_systemd()
        log_event(log, "gateway_stopping", why=stop.why)
        self.notifier.stopping(f"stopping: {stop.why}")
        self._shutdown()
        return 0

    def _handle_batch(self) -> StopRequested | None:
        """Block until something arrives or a deadline is due; then take what
        else is already waiting, up to BATCH, so a burst shares one commit."""
        try:
            item = self.inbox.get(timeout=self._wait_s())
        except queue.Empty:
            return None
        for taken in range(1, BATCH + 1):
            if isinstance(item, StopRequested):
                return item
            self._handle(item)
            if taken == BATCH:
                break  # the rest waits in the queue for the next batch
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                break
        return None

    def _commit(self) -> None:
        """Outbox first (with the engine state), then the broker."""
        if self._outgoing or self._snapshot_dirty or self._discovery_record is not None:
            snapshot = engine.dump_state(self.state) if self._snapshot_dirty else None
            self.delivery.store(self._outgoing, snapshot, self._discovery_record)
            self._outgoing = []
            self._snapshot_dirty = False
            self._discovery_record = None
            for ev in self._to_log:
                _log_event(ev)
            self._to_log = []
        self.delivery.pump()

    def _wait_s(self) -> float:
        now = self.monotonic()
        deadlines = [self._next_tick]
        session_deadline = self.session.next_deadline()
        if session_deadline is not None:
            deadlines.append(session_deadline)
        if self._info_due is not None:
            deadlines.append(self._info_due)
        if self._watchdog_due is not None:
            deadlines.append(self._watchdog_due)
        return max(0.0, min(deadlines) - now)

    def _on_time_passed(self) -> None:
        now = self.monotonic()
        handshake_due = (
            self.session.next_deadline() if self.session.phase is ses.Phase.HANDSHAKING else None
        )
        self._session_events(self.session.tick(now))
        if handshake_due is not None and now >= handshake_due:
            self._settle("no HELLO in answer to ID; retrying")
        if now >= self._next_tick:
            self._next_tick = now + TICK_S
            self._feed(engine.Tick())
        self.serial.write(self.session.data_to_send())
        self._publish_info_if_due(now)

    def _shutdown(self) -> None:
        self._feed(engine.Lifecycle(EventKind.GATEWAY_STOPPING))
        self.serial.stop()
        self._commit()
        # Give the broker a moment to take what is stored; the rest stays in
        # the outbox for the next start.
        deadline = self.monotonic() + SHUTDOWN_FLUSH_S
        while self.mqtt.connected and not self.delivery.idle:
            try:
                item = self.inbox.get(timeout=max(0.0, deadline - self.monotonic()))
            except queue.Empty:
                break
            if isinstance(item, PublishAcked):
                self.delivery.acked(item.mid)
            self.delivery.pump()
        self.delivery.pump()
        self.mqtt.stop()
        self.outbox.close()
        log_event(log, "gateway_stopped", undelivered=self.outbox.rows)
        self.notifier.close()

    # --- systemd --------------------------------------------------------------------

    def _settle(self, why: str) -> None:
        """The serial side's start-up is over (for better or worse): READY is due."""
        if self._settled is None:
            self._settled = why

    def _status_line(self) -> str:
        link = "link up" if self.state.link_up else f"link down ({self.state.link_reason})"
        if self.mqtt.connected:
            broker = "broker connected"
        elif self.mqtt.last_error is not None:
            broker = f"broker disconnected ({self.mqtt.last_error})"
        else:
            broker = "broker connecting"
        return f"{link}, {broker}, {self.outbox.rows} pending"

    def _tell_systemd(self) -> None:
        """READY once, STATUS when the link or the broker changed, and the
        watchdog ping when due: after the commit, from the main loop only."""
        if not self.notifier.enabled:
            return
        state = (
            self.state.link_up,
            self.state.link_reason,
            self.mqtt.connected,
            self.mqtt.last_error,
        )
        if not self._ready and self._settled is not None:
            self._ready = True
            status = self._status_line()
            log_event(log, "sd_ready", why=self._settled, status=status)
            self.notifier.ready(status)
            self._told_state, self._told_status = state, status
        elif self._ready and state != self._told_state:
            status = self._status_line()
            self.notifier.status(status)
            self._told_state, self._told_status = state, status
        now = self.monotonic()
        if self._watchdog_due is not None and now >= self._watchdog_due:
            self._watchdog(now)

    def _watchdog(self, now: float) -> None:
        interval = self.notifier.watchdog_interval_s
        assert interval is not None
        problem = self._liveness_problem()
        if problem is not None:
            component, detail = problem
            if component != self._withheld:
                log_event(
                    log,
                    "watchdog_withheld",
                    logging.ERROR,
                    component=component,
                    problem=detail,
                    action="systemd restarts the gateway unless it recovers",
                )
                self._withheld = component
            self._watchdog_due = now + min(interval, UNHEALTHY_RECHECK_S)
            return
        if self._withheld is not None:
            log_event(log, "watchdog_resumed", component=self._withheld)
            self._withheld = None
        # The ping carries the status too when only the pending count moved.
        status = self._status_line() if self._ready else self._told_status
        if status != self._told_status:
            self._told_status = status
            self.notifier.watchdog(status)
        else:
            self.notifier.watchdog()
        self._watchdog_due = now + interval

    def _liveness_problem(self) -> tuple[str, str] | None:
        """(component, what is wrong) when a thread the gateway needs is dead or stuck."""
        if not self.serial.is_alive():
            return "serial-reader", "the serial reader thread has exited"
        late = self.serial.overdue_s()
        if late > READER_GRACE_S:
            return "serial-reader", f"the serial reader is {late:.1f} s late (stuck in a call?)"
        if self._watch_mqtt_loop and not self.mqtt.loop_alive():
            return "mqtt-loop", "the MQTT network thread has exited"
        return None

    # --- inputs -------------------------------------------------------------------

    def _handle(self, item: DaemonInput) -> None:
        now = self.monotonic()
        match item:
            case BytesRead(data=data):
                self._session_events(self.session.receive_data(data, now))
            case PortOpened():
                self.session.connection_made(now)
            case PortClosed(reason=reason):
                self._settle(f"serial: {reason}")
                self._session_events(self.session.connection_lost(reason))
                self._feed(engine.LinkChanged(False, reason))
                self._info_now()
            case BrokerConnected():
                self._info_now()
            case PublishAcked(mid=mid):
                self.delivery.acked(mid)
            case BrokerDisconnected():
                pass  # paho reconnects by itself; the log line is written there
            case CommandReceived(topic=topic, payload=payload):
                if topic == status_topic(self.config.homeassistant):
                    self._homeassistant_status(payload)
                else:
                    self._command(topic, payload)
            case ReloadRequested():
                if self._ready:
                    self.notifier.reloading()
                self._reload()
                if self._ready:
                    self.notifier.ready(self._status_line())

    def _reload(self) -> None:
        """New thresholds and pumps take effect at once; a bad file changes nothing."""
        if self.config_path is None:
            return
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log_event(
                log, "config_reload_rejected", logging.ERROR, problems=exc.render(), kept="old"
            )
            return
        frozen = [
            name
            for name in type(new).model_fields
            if name not in LIVE_SECTIONS and getattr(new, name) != getattr(self.config, name)
        ]
        if frozen:
            log_event(
                log, "config_reload_needs_restart", logging.WARNING, sections=",".join(frozen)
            )
        self.config = self.config.model_copy(update={k: getattr(new, k) for k in LIVE_SECTIONS})
        self.announcer.config_changed()
        self._watch_homeassistant()
        log_event(log, "config_reloaded", path=self.config_path, pumps=len(self.config.pumps))

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
                    self._settle("handshake done")
                case ses.LinkDown(reason=reason, reopen_port=reopen):
                    log_event(log, "link_down", logging.WARNING, reason=reason)
                    if reopen:
                        self.serial.reopen()
                    self._feed(engine.LinkChanged(False, reason))
                    self._info_now()
                    self._settle(reason)
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
        reporter = _reporting_pump(event)
        if reporter is not None:
            self.announcer.pump_reported(reporter)
        if outcome.events:
            self._snapshot_dirty = True  # alerts or the id counter moved
        if any(ev.alert is not None for ev in outcome.events):
            self.announcer.alerts_changed()
        for ev in outcome.events:
            if ev.alert is not None:
                topic = self.topics.alert(ev.alert.pump_id, ev.alert.type)
                self._outgoing.append(Outgoing(topic, ev.alert.to_json(), retain=True))
            self._outgoing.append(Outgoing(self.topics.events, ev.to_json(), retain=False))
        self._to_log += outcome.events
        for st in outcome.pump_states:
            topic = self.topics.state(st.pump_id)
            self._outgoing.append(Outgoing(topic, st.to_json(), retain=True, coalesce=True))
        for result in outcome.results:
            if not result.ok:
                self.commands_rejected += 1
            self._publish_result(result)

    # --- Home Assistant discovery ---------------------------------------------------

    def _watch_homeassistant(self) -> None:
        topic = status_topic(self.config.homeassistant)
        self.mqtt.watch([] if topic is None else [topic])

    def _homeassistant_status(self, payload: bytes) -> None:
        """Home Assistant (re)started: announce everything again, as it asks."""
        if payload.strip() == b"online":
            log_event(log, "homeassistant_online", action="announce again")
            self.announcer.republish()

    def _sync_discovery(self) -> None:
        """Queue what Home Assistant discovery needs now (retained, newest wins)."""
        sync = self.announcer.sync(self.config, self.state)
        if sync is None:
            return
        self._outgoing += _discovery_outgoing(sync)
        for device, topics in sync.clear.items():
            log_event(log, "homeassistant_cleared", device=device, topics=len(topics))
        for device, messages in sync.publish.items():
            entities = sum(topic.endswith("/config") for topic in messages)
            if entities:
                log_event(log, "homeassistant_announced", device=device, entities=entities)
        if sync.record is not None:
            self._discovery_record = sync.record

    def _publish_result(self, result: CommandResult) -> None:
        self._outgoing.append(Outgoing(self.topics.cmd_result, result.to_json(), retain=False))

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
        delivery = self.delivery.status()
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
            broker=BrokerStatus(
                connected=self.mqtt.connected,
                last_error=self.mqtt.last_error,
                disconnects=self.mqtt.disconnects,
            ),
            outbox=OutboxStatus(
                pending=delivery.pending,
                bytes=delivery.bytes,
                over_limit=delivery.over_limit,
                error=delivery.error,
            ),
        )
        self._outgoing.append(
            Outgoing(self.topics.info, info.to_json(), retain=True, coalesce=True)
        )
        self._published_counters = counters
        self._info_due = None


def _reporting_pump(event: engine.EngineInput) -> str | None:
    """The pump the programmer reported on with this input, if any."""
    match event:
        case engine.Reading(stat=stat):
            return stat.pump_id
        case engine.InvalidData(pump_id=pump_id):
            return pump_id
        case engine.PumpEventReceived(evt=evt):
            return evt.pump_id
    return None


def _discovery_outgoing(sync: Plan) -> list[Outgoing]:
    """Clears (empty retained payloads) first, then what is new or changed."""
    out = [
        Outgoing(topic, b"", retain=True, coalesce=True)
        for topics in sync.clear.values()
        for topic in topics
    ]
    out += [
        Outgoing(topic, payload, retain=True, coalesce=True)
        for messages in sync.publish.values()
        for topic, payload in messages.items()
    ]
    return out


def _log_event(ev: Event) -> None:
    """One line per event, written once it is safely in the outbox."""
    alert = ev.alert
    if alert is None:
        log_event(log, ev.kind.value, event_id=ev.event_id, pump_id=ev.pump_id, detail=ev.detail)
        return
    log_event(
        log,
        ev.kind.value,
        logging.WARNING,
        event_id=ev.event_id,
        pump_id=alert.pump_id,
        type=alert.type.value,
        severity=alert.severity.value,
        state=alert.state.value,
        alert_id=alert.alert_id,
        message=alert.message,
    )
