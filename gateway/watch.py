"""``pumpgw watch``: every gateway and pump a broker knows about, for a nurse or technician.

Functional core, thin shell:

* ``WatchState.feed(topic, payload, now)`` keeps what the broker said (status, info,
  pump state, alerts, events and command answers of every gateway under a prefix);
  ``render(state, now, options)`` turns it into lines; ``parse_command`` and
  ``resolve_alert`` read what the user typed; ``LineEditor`` collects keystrokes.
  None of them touch the network, the terminal or the clock.
* ``LiveFeed`` feeds a ``WatchState`` from paho's network thread; ``Screen`` redraws a
  terminal, or prints one line per event when the output is not a terminal;
  ``run_watch`` wires them for ``--once``, the live view and ``--ack``.

``pumpgw demo`` draws its view with the same ``WatchState``, ``LiveFeed`` and ``Screen``.
Everything that came over the wire is stripped of control characters before it is
shown, so a payload cannot drive the user's terminal.
"""

from __future__ import annotations

import argparse
import codecs
import json
import math
import os
import select
import signal
import sys
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from gateway.contract import GATEWAY_PUMP, AckCommand

QOS = 1
STALE_AFTER_S = 300.0  # a pump state older than this is marked stale
ANSWER_TIMEOUT_S = 10.0  # how long an ack waits for the gateway's cmd/result
SETTLE_S = 0.5  # retained messages have all arrived once none came for this long
REDRAW_S = 0.2  # the terminal is redrawn at most this often
AGE_TICK_S = 1.0  # ... and at least this often (ages in the table move on)
SUFFIX_MIN = 4  # an alert may be named by the last characters of its id, at least this many
EVENTS_KEPT = 50
NOTES_KEPT = 5

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# SGR codes
BOLD, DIM, RED, GREEN, YELLOW, MAGENTA = "1", "2", "31", "32", "33", "35"
SEVERITY_STYLE: dict[str, tuple[str, ...]] = {"critical": (BOLD, RED), "warning": (YELLOW,)}
SEVERITY_RANK = {"critical": 2, "warning": 1}
# the pump-table column an alert type colours
ALERT_COLUMN = {"reservoir_low": "reservoir", "refill_due": "refill", "battery_low": "battery"}

Styled = tuple[tuple[str, ...], str]  # (SGR codes, plain text)


# --- pure helpers ---------------------------------------------------------------------


def clean(value: Any, limit: int = 80) -> str:
    """Text from the wire made safe to print: control and format characters (escape
    sequences, bidi overrides) become ``?``; longer than ``limit`` is cut with ``…``."""
    text = "" if value is None else str(value)
    text = "".join("?" if unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _fmt(value: Any, spec: str, unit: str) -> str:
    number = _number(value)
    return "?" if number is None else f"{number:{spec}}{unit}"


def parse_time(value: Any) -> float | None:
    """Seconds since the epoch of an ISO 8601 time from a payload, None if not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def age_text(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def clock_text(value: Any) -> str:
    """HH:MM:SS of a payload time (UTC), ``?`` if it is not one."""
    at = parse_time(value)
    return "?" if at is None else datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def event_line(gateway_id: str, event: dict[str, Any]) -> Styled:
    """One line for an event payload, styled by the alert's severity."""
    at = clock_text(event.get("at"))
    kind = clean(event.get("kind"), 24)
    alert = event.get("alert")
    if isinstance(alert, dict):
        severity = str(alert.get("severity"))
        style = SEVERITY_STYLE.get(severity, ()) if kind != "alert_cleared" else (GREEN,)
        by = alert.get("acknowledged_by")
        who = f" by {clean(by, 64)}" if kind == "alert_acknowledged" and by else ""
        text = (
            f"{at} {clean(gateway_id, 24)} {kind:<19} {clean(alert.get('pump_id'), 16):<9} "
            f"{clean(alert.get('type'), 24):<15} {clean(severity, 10):<8} "
            f"{clean(alert.get('message'), 120)}{who}"
        )
        return style, text
    detail = event.get("detail")
    detail_text = "" if detail is None else clean(json.dumps(detail, sort_keys=True), 120)
    pump = clean(event.get("pump_id"), 16)
    return (DIM,), f"{at} {clean(gateway_id, 24)} {kind:<19} {pump:<9} {detail_text}".rstrip()


# --- the state model ------------------------------------------------------------------


@dataclass
class GatewayView:
    """What one gateway published (payloads as decoded JSON objects)."""

    status: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    pumps: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


@dataclass
class PendingAck:
    gateway: str
    alert_id: str
    by: str
    sent_at: float


class WatchState:
    """Everything seen under ``prefix``: fed with (topic, payload), read by ``render``.

    ``take_fresh()`` returns the lines worth printing on their own since the last call
    (events, command answers, a gateway going online or offline): what a non-terminal
    output shows instead of redrawing.
    """

    def __init__(self, prefix: str = "pumpgw") -> None:
        self.prefix = prefix.rstrip("/")
        self.gateways: dict[str, GatewayView] = {}
        self.events: deque[Styled] = deque(maxlen=EVENTS_KEPT)
        self.notes: deque[Styled] = deque(maxlen=NOTES_KEPT)
        self.pending: dict[tuple[str, str], PendingAck] = {}
        self.answers: dict[tuple[str, str], dict[str, Any]] = {}  # answers to our acks
        self.connection = "connecting"
        self.ignored = 0  # messages under the prefix that are not the contract's
        self._fresh: list[str] = []

    # -- input -------------------------------------------------------------------------

    def feed(self, topic: str, payload: bytes, now: float) -> None:
        head = self.prefix + "/"
        if not topic.startswith(head):
            self.ignored += 1
            return
        gw, *rest = topic[len(head) :].split("/")
        try:
            known = self._take(gw, rest, payload, now)
        except (ValueError, RecursionError):  # bad JSON, bad UTF-8, absurd nesting
            known = False
        if not known:
            self.ignored += 1

    def _take(self, gw: str, rest: list[str], payload: bytes, now: float) -> bool:
        match rest:
            case ["status"]:
                view = self._gateway(gw)
                status = clean(payload.decode("utf-8", "replace").strip(), 20) or None
                if view.status is not None and status != view.status:
                    self._emit(
                        self.events,
                        (RED,) if status == "offline" else (GREEN,),
                        now,
                        f"gateway {clean(gw, 24)} is {status or 'gone'}",
                    )
                view.status = status
            case ["info"]:
                self._gateway(gw).info = self._object(payload) or {}
            case ["pumps", pump, "state"]:
                data = self._object(payload)
                if data is None:
                    self._gateway(gw).pumps.pop(pump, None)
                else:
                    self._gateway(gw).pumps[pump] = data
            case ["pumps", pump, "alerts", alert_type]:
                data = self._object(payload)
                if data is None:
                    self._gateway(gw).alerts.pop((pump, alert_type), None)
                else:
                    self._gateway(gw).alerts[(pump, alert_type)] = data
            case ["events"]:
                event = self._object(payload)
                if event is None:
                    return False
                self._gateway(gw)
                style, text = event_line(gw, event)
                self.events.append((style, text))
                self._fresh.append(text)
            case ["cmd", "result"]:
                self._answer(gw, self._object(payload) or {}, now)
            case ["cmd", _]:
                pass  # commands to a gateway (ours or another user's): its answer tells
            case _:
                return False
        return True

    @staticmethod
    def _object(payload: bytes) -> dict[str, Any] | None:
        """A JSON object payload; None for an empty payload (a retained message
        deleted). Anything else raises ValueError."""
        if not payload:
            return None
        data = json.loads(payload)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data

    def _gateway(self, gw: str) -> GatewayView:
        return self.gateways.setdefault(gw, GatewayView())

    def _emit(self, where: deque[Styled], style: tuple[str, ...], now: float, text: str) -> None:
        stamp = datetime.fromtimestamp(now, UTC).strftime("%H:%M:%S")
        where.append((style, f"{stamp} {text}"))
        self._fresh.append(f"{stamp} {text}")

    def _answer(self, gw: str, result: dict[str, Any], now: float) -> None:
        alert_id = result.get("alert_id")
        key = (gw, alert_id if isinstance(alert_id, str) else "")
        if result.get("command") != "ack" or key not in self.pending:
            return  # another user's command: the alert's own topic shows the outcome
        pending = self.pending.pop(key)
        self.answers[key] = result
        if result.get("ok") is True:
            self._emit(
                self.notes,
                (GREEN,),
                now,
                f"{clean(gw, 24)}: alert {clean(alert_id, 64)} acknowledged "
                f"by {clean(pending.by, 64)}",
            )
        else:
            self._emit(
                self.notes,
                (BOLD, RED),
                now,
                f"{clean(gw, 24)} refused the ack of {clean(alert_id, 64)}: "
                f"{clean(result.get('error'), 200)}",
            )

    def ack_sent(self, gw: str, alert_id: str, by: str, now: float) -> None:
        self.pending[(gw, alert_id)] = PendingAck(gw, alert_id, by, now)
        self.answers.pop((gw, alert_id), None)
        self._emit(
            self.notes,
            (),
            now,
            f"ack of {clean(alert_id, 64)} sent to {clean(gw, 24)}; waiting for the answer",
        )

    def note(self, text: str, now: float, *, error: bool = False) -> None:
        """A line of feedback to the user (a mistyped command, a broker problem)."""
        self._emit(self.notes, (BOLD, RED) if error else (), now, text)

    def take_fresh(self) -> list[str]:
        fresh, self._fresh = self._fresh, []
        return fresh

    # -- queries -----------------------------------------------------------------------

    def open_alerts(self, gw: str) -> list[dict[str, Any]]:
        """Alerts of a gateway that are not cleared: critical first, active before
        acknowledged, oldest first."""
        alerts = [a for a in self.gateways[gw].alerts.values() if a.get("state") != "cleared"]
        return sorted(
            alerts,
            key=lambda a: (
                -SEVERITY_RANK.get(str(a.get("severity")), 0),
                a.get("state") != "active",
                str(a.get("raised_at")),
                str(a.get("pump_id")),
            ),
        )


def resolve_alert(state: WatchState, ref: str) -> tuple[str, str] | str:
    """(gateway, alert_id) of the alert ``ref`` names: its full id (any state, so the
    gateway can answer about a cleared one), or the last characters of the id of exactly
    one alert that is not cleared. Otherwise a reason (str)."""
    ref = ref.strip().upper()
    if not ref:
        return "which alert? give its id"
    exact, tail = [], []
    for gw, view in state.gateways.items():
        for alert in view.alerts.values():
            alert_id = alert.get("alert_id")
            if not isinstance(alert_id, str):
                continue
            if alert_id.upper() == ref:
                exact.append((gw, alert_id))
            elif (
                len(ref) >= SUFFIX_MIN
                and alert_id.upper().endswith(ref)
                and alert.get("state") != "cleared"
            ):
                tail.append((gw, alert_id))
    if len(exact) == 1:
        return exact[0]
    if len(exact) > 1:
        gws = ", ".join(sorted(gw for gw, _ in exact))
        return f"alert {clean(ref, 64)} is on more than one gateway ({clean(gws)})"
    if len(tail) == 1:
        return tail[0]
    if tail:
        return f"{len(tail)} alerts end in {clean(ref, 64)}: type more of the id"
    if len(ref) < SUFFIX_MIN:
        return f"give at least the last {SUFFIX_MIN} characters of the alert id"
    return f"no open alert with an id ending in {clean(ref, 64)}"


def ack_payload(alert_id: str, by: str, note: str | None) -> bytes:
    """The ``cmd/ack`` payload, checked against the contract (raises ValueError)."""
    try:
        return AckCommand(alert_id=alert_id, by=by, note=note or None).to_json()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(problems) from None


# --- commands typed by the user -------------------------------------------------------


@dataclass(frozen=True)
class AckRequest:
    ref: str
    by: str
    note: str | None


@dataclass(frozen=True)
class Quit:
    pass


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class Invalid:
    reason: str


Command = AckRequest | Quit | Help | Invalid

COMMAND_HELP = "ack <alert id or its last 6 characters> <your name> [note] · help · q quits"


def parse_command(line: str) -> Command | None:
    """What a typed line asks for; None for an empty line."""
    words = line.strip().split(maxsplit=3)
    if not words:
        return None
    verb = words[0].lower()
    if verb in ("q", "quit", "exit"):
        return Quit()
    if verb in ("h", "help", "?"):
        return Help()
    if verb == "ack":
        if len(words) < 3:
            return Invalid("usage: ack <alert id> <your name> [note]")
        return AckRequest(words[1], words[2], words[3] if len(words) > 3 else None)
    return Invalid(f"unknown command {clean(words[0], 20)!r}; {COMMAND_HELP}")


class LineEditor:
    """Keystrokes in, typed lines out (for a terminal in cbreak mode, or a pipe).

    Enter ends a line, Backspace/Ctrl-H deletes, Ctrl-U clears, Ctrl-W deletes a word,
    escape sequences (arrow keys) are dropped, Ctrl-D on an empty line is end of input.
    """

    def __init__(self) -> None:
        self.buffer = ""
        self.eof = False
        self._escape = ""  # an escape sequence being skipped

    def feed(self, text: str) -> list[str]:
        lines = []
        for ch in text:
            if self._escape:
                self._escape += ch
                # ESC x, or ESC [ ... final byte (0x40-0x7E)
                if (len(self._escape) == 2 and ch not in "[O") or (
                    len(self._escape) > 2 and "\x40" <= ch <= "\x7e"
                ):
                    self._escape = ""
                continue
            if ch == "\x1b":
                self._escape = ch
            elif ch in "\r\n":
                lines.append(self.buffer)
                self.buffer = ""
            elif ch in "\x7f\b":
                self.buffer = self.buffer[:-1]
            elif ch == "\x15":
                self.buffer = ""
            elif ch == "\x17":
                self.buffer = self.buffer.rstrip().rpartition(" ")[0]
                self.buffer += " " if self.buffer else ""
            elif ch == "\x04":
                if not self.buffer:
                    self.eof = True
            elif ch == "\t":
                self.buffer += " "
            elif unicodedata.category(ch) not in ("Cc", "Cf"):
                self.buffer += ch
        return lines


# --- rendering ------------------------------------------------------------------------


class Style:
    """ANSI colours, or plain text when ``color`` is off."""

    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, *codes: str) -> str:
        if not self.color or not codes or not text:
            return text
        return f"\033[{';'.join(codes)}m{text}\033[0m"


@dataclass(frozen=True)
class RenderOptions:
    title: str = "pumpgw watch"
    color: bool = False
    stale_after_s: float = STALE_AFTER_S
    device_time: bool = False  # a column with the pump's own clock (the demo runs it fast)
    events: int = 8  # how many recent events to show; 0: no events section
    footer: Sequence[str] = ()


def render(state: WatchState, now: float, options: RenderOptions | None = None) -> list[str]:
    """The whole view as lines (with ANSI colours when ``options.color``)."""
    opt = options or RenderOptions()
    s = Style(opt.color)
    pumps = sum(len(_pump_ids(v)) for v in state.gateways.values())
    clock = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    broker = state.connection
    broker_text = s(broker, GREEN) if broker == "connected" else s(broker, BOLD, RED)
    lines = [
        f"{s(opt.title, BOLD)}  {clock}  broker {broker_text}  "
        f"{len(state.gateways)} gateway(s), {pumps} pump(s)"
    ]
    if not state.gateways:
        lines += ["", f"no gateway has published under {clean(state.prefix)}/ yet"]
    for gw in sorted(state.gateways):
        lines += ["", *_gateway_lines(state, gw, now, opt, s)]
    if opt.events:
        lines += ["", s("events", BOLD)]
        recent = list(state.events)[-opt.events :]
        lines += [s(text, *style) for style, text in recent] or [s("(none yet)", DIM)]
    if state.notes or state.pending:
        lines.append("")
        lines += [s(text, *style) for style, text in state.notes]
        for p in state.pending.values():
            waited = now - p.sent_at
            if waited >= ANSWER_TIMEOUT_S:
                lines.append(
                    s(
                        f"no answer from {clean(p.gateway, 24)} to the ack of {clean(p.alert_id)} "
                        f"for {age_text(waited)}: is the gateway online?",
                        BOLD,
                        RED,
                    )
                )
    if state.ignored:
        lines.append(
            s(
                f"{state.ignored} message(s) under {clean(state.prefix)}/ ignored "
                "(not in the pumpgw contract)",
                DIM,
            )
        )
    if opt.footer:
        lines += ["", *(s(text, DIM) for text in opt.footer)]
    return lines


def _pump_ids(view: GatewayView) -> list[str]:
    ids = set(view.pumps)
    ids.update(pump for pump, _ in view.alerts if pump != GATEWAY_PUMP)
    return sorted(ids)


def _gateway_lines(
    state: WatchState, gw: str, now: float, opt: RenderOptions, s: Style
) -> list[str]:
    view = state.gateways[gw]
    info = view.info
    if view.status == "online":
        status = s("online", GREEN)
    elif view.status is None:
        status = s("status ?", DIM)
    else:
        status = s(clean(view.status, 20).upper(), BOLD, RED)
    parts = [f"gateway {s(clean(gw, 64), BOLD)}", status]
    link = info.get("link")
    if link == "up":
        parts.append(f"programmer link {s('up', GREEN)}")
    elif link is not None:
        why = info.get("link_error")
        reason = f" ({clean(why, 60)})" if why else ""
        parts.append(f"programmer link {s(clean(link, 10).upper(), BOLD, RED)}{reason}")
    prog = _dict(info.get("programmer"))
    if prog:
        ident = " ".join(
            clean(prog.get(k), 24) for k in ("vendor", "model", "serial") if prog.get(k)
        )
        fw = f" fw {clean(prog.get('firmware'), 16)}" if prog.get("firmware") else ""
        parts.append(ident + fw)
    outbox = _dict(info.get("outbox"))
    pending = _number(outbox.get("pending"))
    if outbox.get("error"):
        parts.append(s(f"outbox error: {clean(outbox.get('error'), 60)}", BOLD, RED))
    elif pending:
        over = " over limit" if outbox.get("over_limit") else ""
        parts.append(s(f"outbox {pending:g} waiting{over}", YELLOW))
    counters = _dict(info.get("counters"))
    trouble = [
        f"{clean(k, 24)}={_fmt(counters[k], 'g', '')}"
        for k in ("frames_lost", "protocol_errors", "frames_discarded", "commands_rejected")
        if _number(counters.get(k))
    ]
    if trouble:
        parts.append(s(" ".join(trouble), YELLOW))
    lines = ["  ".join(parts)]

    pumps = _pump_ids(view)
    open_alerts = state.open_alerts(gw)
    labels = [clean(view.pumps.get(p, {}).get("label"), 12) for p in pumps]
    widths = (
        max([4, *(len(clean(p, 16)) for p in pumps)]),
        max([5, *(len(label) for label in labels)]),
    )
    if pumps:
        pw, lw = widths
        head = f"  {'pump':<{pw}} {'label':<{lw}} {'reservoir':>9} {'to refill':>9} {'battery':>7}"
        head += f" {'pump clock':<16}" if opt.device_time else ""
        lines.append(s(f"{head} {'reading':>8}  flags / alerts", DIM))
        for pump in pumps:
            lines.append(_pump_line(view, pump, open_alerts, now, opt, s, widths))
    if open_alerts:
        lines.append(s("  open alerts (acknowledge by id)", DIM))
        pw = max([widths[0], *(9 for a in open_alerts if a.get("pump_id") == GATEWAY_PUMP)])
        tw = max(len(clean(a.get("type"), 24)) for a in open_alerts)
        lines += [_alert_line(a, s, pw, tw) for a in open_alerts]
    return lines


def _pump_line(
    view: GatewayView,
    pump: str,
    open_alerts: list[dict[str, Any]],
    now: float,
    opt: RenderOptions,
    s: Style,
    widths: tuple[int, int],
) -> str:
    pw, lw = widths
    st = view.pumps.get(pump, {})
    mine = [a for a in open_alerts if a.get("pump_id") == pump]
    worst: dict[str, tuple[str, ...]] = {}
    for a in reversed(mine):  # most severe last, so it wins
        column = ALERT_COLUMN.get(str(a.get("type")))
        if column:
            worst[column] = SEVERITY_STYLE.get(str(a.get("severity")), ())

    def cell(column: str, text: str, width: int) -> str:
        return s(f"{text:>{width}}", *worst.get(column, ()))

    received = parse_time(st.get("received_at"))
    age = None if received is None else now - received
    reasons = []
    if st.get("stale") is True:
        reasons.append("no telemetry")
    if age is not None and age > opt.stale_after_s:
        reasons.append(f"last reading {age_text(age)} ago")
    if view.status == "offline":
        reasons.append("gateway offline")
    row = (
        f"  {clean(pump, 16):<{pw}} {clean(st.get('label'), 12):<{lw}} "
        + cell("reservoir", _fmt(st.get("reservoir_ml"), ".1f", " mL"), 9)
        + " "
        + cell("refill", _fmt(st.get("days_to_low_reservoir_alarm"), ".1f", " d"), 9)
        + " "
        + cell("battery", _fmt(st.get("battery_pct"), "g", " %"), 7)
    )
    if opt.device_time:
        device = st.get("device_time")
        shown = clean(device, 16) if parse_time(device) is None else str(device)[:16]
        row += f" {shown.replace('T', ' '):<16}"
    row += f" {'never' if age is None else age_text(age) + ' ago':>8}"
    flags = st.get("flags")
    tags = []
    if reasons:
        tags.append(s("STALE (" + ", ".join(reasons) + ")", BOLD, MAGENTA))
    if isinstance(flags, list) and flags:
        tags.append(s(",".join(clean(f, 16) for f in flags), DIM))
    for a in mine:
        acked = " (ack)" if a.get("state") == "acknowledged" else ""
        tag = f"{clean(a.get('type'), 24)}:{clean(a.get('severity'), 10)}{acked}"
        tags.append(s(tag, *SEVERITY_STYLE.get(str(a.get("severity")), ())))
    if not mine and not reasons:
        tags.append(s("ok", GREEN))
    return f"{row}  {' '.join(tags)}"


def _alert_line(alert: dict[str, Any], s: Style, pump_width: int, type_width: int) -> str:
    severity = str(alert.get("severity"))
    style = SEVERITY_STYLE.get(severity, ())
    pump = alert.get("pump_id")
    pump_text = "(gateway)" if pump == GATEWAY_PUMP else clean(pump, 16)
    acked = alert.get("state") == "acknowledged"
    state = s("acked ", DIM) if acked else s(f"{clean(alert.get('state'), 6).upper():<6}", *style)
    line = (
        f"  {s(f'{clean(severity, 10).upper():<8}', *style)} {pump_text:<{pump_width}} "
        f"{clean(alert.get('type'), 24):<{type_width}} {state} "
        f"since {clock_text(alert.get('raised_at'))}  {clean(alert.get('alert_id'), 32):<26}  "
        f"{clean(alert.get('message'), 120)}"
    )
    if acked:
        by = clean(alert.get("acknowledged_by"), 64)
        line += s(f"  (acknowledged by {by} at {clock_text(alert.get('acknowledged_at'))})", DIM)
    return line


def visible_clip(line: str, width: int) -> str:
    """``line`` cut to ``width`` visible characters, escape sequences kept whole."""
    out, shown, i = [], 0, 0
    while i < len(line):
        if line[i] == "\033":
            end = line.find("m", i)
            end = len(line) - 1 if end < 0 else end
            out.append(line[i : end + 1])
            i = end + 1
            continue
        if shown < width:
            out.append(line[i])
            shown += 1
        i += 1
    return "".join(out)


# --- the shell: broker, terminal ------------------------------------------------------


@dataclass(frozen=True)
class BrokerOptions:
    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


def make_client(opts: BrokerOptions, client_id: str) -> mqtt.Client:
    """A paho client (VERSION2 callbacks, MQTT 3.1.1, clean session), not yet connected.
    TLS verifies the broker's certificate and host name."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    client.suppress_exceptions = True  # a bug in a callback must not end the loop
    client.reconnect_delay_set(1, 10)
    if opts.username is not None:
        client.username_pw_set(opts.username, opts.password)
    if opts.tls:
        client.tls_set(
            ca_certs=str(opts.ca_file) if opts.ca_file else None,
            certfile=str(opts.cert_file) if opts.cert_file else None,
            keyfile=str(opts.key_file) if opts.key_file else None,
        )
    return client


class LiveFeed:
    """A ``WatchState`` fed from paho's network thread; read under ``cond``."""

    def __init__(
        self,
        state: WatchState,
        topic_filter: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.topic_filter = topic_filter
        self.clock = clock
        self.cond = threading.Condition()
        self.changed = threading.Event()
        self.connected = False
        self.refused: str | None = None  # why the broker refused the connection
        self._subscribed_at: float | None = None  # monotonic
        self._last_retained = 0.0

    def attach(self, client: mqtt.Client) -> None:
        client.on_connect = self.on_connect
        client.on_disconnect = self.on_disconnect
        client.on_subscribe = self.on_subscribe
        client.on_message = self.on_message

    def on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self.cond:
            if reason.is_failure:
                self.refused = str(reason)
                self.state.connection = f"refused: {reason}"
            else:
                self.connected, self.refused = True, None
                self.state.connection = "connected"
                client.subscribe(self.topic_filter, qos=QOS)
            self.cond.notify_all()
        self.changed.set()

    def on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self.cond:
            if self.connected:
                self.state.connection = f"disconnected ({reason}), reconnecting"
            self.connected = False
            self.cond.notify_all()
        self.changed.set()

    def on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self.cond:
            if any(rc.is_failure for rc in reason_codes):
                self.state.note(
                    f"the broker refused the subscription to {self.topic_filter}",
                    self.clock(),
                    error=True,
                )
            self._subscribed_at = self._last_retained = time.monotonic()
            self.cond.notify_all()
        self.changed.set()

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            try:
                self.state.feed(msg.topic, bytes(msg.payload), self.clock())
            except Exception:  # a view must outlive any payload
                self.state.ignored += 1
            if msg.retain:
                self._last_retained = time.monotonic()
            self.cond.notify_all()
        self.changed.set()

    def wait_connected(self, timeout: float) -> str | None:
        """None once connected, else why not."""
        with self.cond:
            self.cond.wait_for(lambda: self.connected or self.refused is not None, timeout)
            if self.connected:
                return None
            if self.refused is not None:
                return f"the broker refused the connection: {self.refused}"
            return f"no answer from the broker within {timeout:g} s"

    def wait_settled(self, timeout: float, quiet: float = SETTLE_S) -> bool:
        """Wait until subscribed and no retained message came for ``quiet`` seconds:
        the broker has sent everything it kept. False on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                now = time.monotonic()
                if self._subscribed_at is not None and now - self._last_retained >= quiet:
                    return True
                if now >= deadline:
                    return False
                wake = deadline
                if self._subscribed_at is not None:
                    wake = min(wake, self._last_retained + quiet)
                self.cond.wait(max(0.01, wake - now))

    def wait_for(self, predicate: Callable[[WatchState], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.state), timeout)


class Screen:
    """Shows a ``LiveFeed``: redraws a terminal in place, or, when ``out`` is not a
    terminal, prints each fresh line (events, answers) once."""

    def __init__(self, out: IO[str], options: RenderOptions, *, tty: bool | None = None) -> None:
        self.out = out
        self.options = options
        self.tty = out.isatty() if tty is None else tty
        self._drawn_at = 0.0
        self._cleared = False

    def update(self, feed: LiveFeed, prompt: str | None = None, force: bool = False) -> None:
        if not self.tty:
            with feed.cond:
                fresh = feed.state.take_fresh()
            for line in fresh:
                print(line, file=self.out)
            self.out.flush()
            return
        moment = time.monotonic()
        since = moment - self._drawn_at
        if not force and (since < REDRAW_S or (since < AGE_TICK_S and not feed.changed.is_set())):
            return
        feed.changed.clear()
        self._drawn_at = moment
        with feed.cond:
            feed.state.take_fresh()
            lines = render(feed.state, feed.clock(), self.options)
        self.draw(lines, prompt)

    def draw(self, lines: list[str], prompt: str | None) -> None:
        width, height = _terminal_size(self.out)
        keep = height - (1 if prompt is not None else 0) - 1
        if len(lines) > keep:
            lines = [*lines[: max(0, keep - 1)], "…"]
        text = "\033[H" + ("" if self._cleared else "\033[2J")
        self._cleared = True
        text += "".join(visible_clip(line, width) + "\033[K\n" for line in lines)
        text += "\033[J"
        if prompt is not None:
            text += visible_clip(prompt, width - 1)
        self.out.write(text)
        self.out.flush()


def _terminal_size(out: IO[str]) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(out.fileno())
    except (OSError, ValueError):
        return 100, 40
    return max(20, size.columns), max(5, size.lines)


# --- pumpgw watch ---------------------------------------------------------------------


def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    conn = parser.add_argument_group("broker")
    conn.add_argument("--host", default="localhost", help="broker host (default localhost)")
    conn.add_argument("--port", type=int, default=None, help="default 1883, 8883 with --tls")
    conn.add_argument("--prefix", default="pumpgw", help="topic prefix (default pumpgw)")
    conn.add_argument("--username")
    conn.add_argument(
        "--password-file", type=Path, metavar="FILE", help="its first line is the password"
    )
    conn.add_argument("--tls", action="store_true", help="TLS, verifying the broker's name")
    conn.add_argument(
        "--ca-file", type=Path, metavar="FILE", help="CA certificate(s); default the system's"
    )
    conn.add_argument(
        "--cert-file", type=Path, metavar="FILE", help="client certificate (with --key-file)"
    )
    conn.add_argument("--key-file", type=Path, metavar="FILE")
    conn.add_argument(
        "--timeout",
        type=float,
        default=ANSWER_TIMEOUT_S,
        metavar="S",
        help=f"wait this long for the broker and for answers (default {ANSWER_TIMEOUT_S:g})",
    )
    view = parser.add_argument_group("view")
    view.add_argument("--no-color", action="store_true", help="plain text (also NO_COLOR=1)")
    view.add_argument(
        "--stale-after",
        type=float,
        default=STALE_AFTER_S,
        metavar="S",
        help=f"mark a pump stale when its last reading is older (default {STALE_AFTER_S:g})",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--once", action="store_true", help="print one snapshot of what the broker keeps, exit"
    )
    mode.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    mode.add_argument("--ack", metavar="ALERT_ID", help="acknowledge this alert, then exit")
    ack = parser.add_argument_group("--ack")
    ack.add_argument("--by", metavar="NAME", help="who acknowledges (your name)")
    ack.add_argument("--note", metavar="TEXT", help="a note kept with the acknowledgement")
    ack.add_argument(
        "--gateway",
        metavar="GW",
        help="the alert's gateway (default: found among the retained alerts)",
    )


def _usage_problem(args: argparse.Namespace) -> str | None:
    if args.ack is None and (args.by or args.note or args.gateway):
        return "--by, --note and --gateway go with --ack"
    if args.ack is not None and not args.by:
        return "--ack needs --by NAME"
    if not args.tls and (args.ca_file or args.cert_file or args.key_file):
        return "--ca-file, --cert-file and --key-file need --tls"
    if bool(args.cert_file) != bool(args.key_file):
        return "--cert-file and --key-file go together"
    if args.password_file and not args.username:
        return "--password-file needs --username"
    if args.port is not None and not 1 <= args.port <= 65535:
        return f"--port {args.port}: not a port number"
    for name in ("duration", "timeout", "stale_after"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            return f"--{name.replace('_', '-')} must be positive"
    return None


def run_watch(args: argparse.Namespace) -> int:
    problem = _usage_problem(args)
    if problem:
        print(f"pumpgw watch: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    password = None
    if args.password_file:
        try:
            lines = args.password_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or exc
            print(f"pumpgw watch: --password-file {args.password_file}: {why}", file=sys.stderr)
            return EXIT_USAGE
        password = lines[0] if lines else ""
    opts = BrokerOptions(
        host=args.host,
        port=args.port or (8883 if args.tls else 1883),
        username=args.username,
        password=password,
        tls=args.tls,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
    )
    color = not args.no_color and not os.environ.get("NO_COLOR") and sys.stdout.isatty()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # like Ctrl-C
    try:
        return _watch(args, opts, color)
    except KeyboardInterrupt:
        return EXIT_OK


def _watch(args: argparse.Namespace, opts: BrokerOptions, color: bool) -> int:
    prefix = args.prefix.strip("/")
    state = WatchState(prefix)
    feed = LiveFeed(state, f"{prefix}/+/#")
    timeout = args.timeout
    try:
        client = make_client(opts, f"pumpgw-watch-{os.getpid()}-{os.urandom(3).hex()}")
        feed.attach(client)
        client.connect(opts.host, opts.port, keepalive=30)
    except (OSError, ValueError) as exc:  # refused, no route, TLS files or verification
        print(f"pumpgw watch: cannot connect to {opts.host}:{opts.port}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    client.loop_start()
    try:
        problem = feed.wait_connected(timeout)
        if problem:
            print(f"pumpgw watch: {opts.host}:{opts.port}: {problem}", file=sys.stderr)
            return EXIT_FAILED
        options = RenderOptions(
            title=f"pumpgw watch {opts.host}:{opts.port}",
            color=color,
            stale_after_s=args.stale_after,
            footer=(COMMAND_HELP,),
        )
        if args.ack is not None:
            return _ack(args, client, feed, prefix, timeout)
        if args.once:
            if not feed.wait_settled(timeout):
                print("pumpgw watch: the broker did not confirm the subscription", file=sys.stderr)
                return EXIT_FAILED
            with feed.cond:
                lines = render(
                    state,
                    feed.clock(),
                    RenderOptions(
                        title=options.title, color=color, stale_after_s=args.stale_after, events=0
                    ),
                )
            print("\n".join(lines), flush=True)
            return EXIT_OK
        return _live(args, client, feed, prefix, options)
    finally:
        client.disconnect()
        client.loop_stop()


def _ack(
    args: argparse.Namespace, client: mqtt.Client, feed: LiveFeed, prefix: str, timeout: float
) -> int:
    alert_id, gw = args.ack.strip(), args.gateway
    if not feed.wait_settled(timeout):
        print("pumpgw watch: the broker did not confirm the subscription", file=sys.stderr)
        return EXIT_FAILED
    if gw is None:
        with feed.cond:
            found = resolve_alert(feed.state, alert_id)
        if isinstance(found, str):
            print(f"pumpgw watch: {found} (give --gateway to send it anyway)", file=sys.stderr)
            return EXIT_FAILED
        gw, alert_id = found
    try:
        payload = ack_payload(alert_id, args.by, args.note)
    except ValueError as exc:
        print(f"pumpgw watch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    key = (gw, alert_id)
    with feed.cond:
        feed.state.ack_sent(gw, alert_id, args.by, feed.clock())
    info = client.publish(f"{prefix}/{gw}/cmd/ack", payload, qos=QOS)
    try:
        info.wait_for_publish(timeout)
    except (RuntimeError, ValueError) as exc:
        print(f"pumpgw watch: the ack was not sent: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not feed.wait_for(lambda st: key in st.answers, timeout):
        print(
            f"pumpgw watch: no answer from gateway {gw} within {timeout:g} s "
            f"(is it online? `pumpgw watch --once` shows it)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    with feed.cond:
        answer = feed.state.answers[key]
    if answer.get("ok") is True:
        print(f"{gw}: alert {alert_id} acknowledged by {args.by}")
        return EXIT_OK
    print(f"{gw} refused the ack of {alert_id}: {clean(answer.get('error'), 300)}")
    return EXIT_FAILED


def _live(
    args: argparse.Namespace,
    client: mqtt.Client,
    feed: LiveFeed,
    prefix: str,
    options: RenderOptions,
) -> int:
    screen = Screen(sys.stdout, options)
    stdin = sys.stdin
    fd = stdin.fileno() if stdin is not None and not stdin.closed else -1
    # keystrokes drawn by our prompt only when we draw the screen too; a terminal on
    # stdin with the output piped keeps its own line editing and echo
    interactive = fd >= 0 and os.isatty(fd) and screen.tty
    if not screen.tty:  # a log, not a screen: first what the broker keeps, then lines
        feed.wait_settled(args.timeout)
        with feed.cond:
            feed.state.take_fresh()
            lines = render(
                feed.state,
                feed.clock(),
                RenderOptions(title=options.title, stale_after_s=options.stale_after_s, events=0),
            )
        print("\n".join(lines), flush=True)
    saved = _cbreak(fd) if interactive else None
    try:
        return _loop(args, client, feed, prefix, screen, fd, interactive)
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        if screen.tty:
            sys.stdout.write("\n")
            sys.stdout.flush()


def _cbreak(fd: int) -> list[Any] | None:
    """Keystrokes one by one, not echoed (Ctrl-C still interrupts); the old mode."""
    import termios
    import tty

    try:
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
    except termios.error:
        return None
    return saved


def _loop(
    args: argparse.Namespace,
    client: mqtt.Client,
    feed: LiveFeed,
    prefix: str,
    screen: Screen,
    fd: int,
    interactive: bool,
) -> int:
    editor = LineEditor()
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    reading = fd >= 0
    deadline = None if args.duration is None else time.monotonic() + args.duration
    prompt = "> " if interactive else None
    while deadline is None or time.monotonic() < deadline:
        typed = False
        if reading:
            ready, _, _ = select.select([fd], [], [], REDRAW_S)
        else:
            time.sleep(REDRAW_S)
            ready = []
        if ready:
            data = os.read(fd, 4096)
            if not data:
                if os.isatty(fd):
                    return EXIT_OK  # Ctrl-D in a terminal, or the terminal went away
                reading = False  # a pipe or /dev/null that ended: keep watching
            for line in editor.feed(decoder.decode(data)):
                if _command(line, client, feed, prefix):
                    return EXIT_OK
            if editor.eof:
                return EXIT_OK
            typed = True
        shown = None if prompt is None else prompt + editor.buffer
        screen.update(feed, shown, force=typed)
    return EXIT_OK


def _command(line: str, client: mqtt.Client, feed: LiveFeed, prefix: str) -> bool:
    """Carry out one typed line; True when it asks to quit."""
    command = parse_command(line)
    if isinstance(command, Quit):
        return True
    now = feed.clock()
    send: tuple[str, bytes] | None = None
    with feed.cond:
        state = feed.state
        match command:
            case Help():
                state.note(COMMAND_HELP, now)
            case Invalid(reason=reason):
                state.note(reason, now, error=True)
            case AckRequest(ref=ref, by=by, note=note):
                found = resolve_alert(state, ref)
                if isinstance(found, str):
                    state.note(found, now, error=True)
                else:
                    gw, alert_id = found
                    try:
                        send = (f"{prefix}/{gw}/cmd/ack", ack_payload(alert_id, by, note))
                        state.ack_sent(gw, alert_id, by, now)
                    except ValueError as exc:
                        state.note(f"not sent: {exc}", now, error=True)
    if send is not None:  # outside our lock: paho's thread takes it to deliver messages
        client.publish(*send, qos=QOS)
    feed.changed.set()
    return False
