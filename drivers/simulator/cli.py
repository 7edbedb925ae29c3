"""Command line of the simulator: ``pumpgw simulate`` / ``python -m drivers.simulator``.

The first line on stdout is the gateway's ``serial.port`` (a pty path such as
``/dev/pts/7``, or ``socket://127.0.0.1:PORT``), flushed at once; logs go to
stderr, one ``key=value`` line per event. A bad option exits with code 2;
``OneLineErrorParser`` reports it as a single line, without the usage dump.

Signals: SIGUSR1 power-cycles the programmer; SIGUSR2 pulls its cable out,
and the next SIGUSR2 plugs it back in, printing the port again as a new line
on stdout (a pty comes back under a new path, TCP on the same port).
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

from drivers.logfmt import log_event, setup_logging
from drivers.simulator.device import CLOCK_RANGE_TEXT, Programmer, SimulatedPump, in_clock_range
from drivers.simulator.scenarios import SCENARIOS, Scenario
from drivers.simulator.server import (
    PtyTransport,
    TcpTransport,
    Transport,
    print_port,
    serve,
    signal_wakeups,
)

_PUMP_ID = re.compile(r"[A-Z0-9-]{1,16}")  # PTP/1 section 3, pump_id
_SCENARIO_NAMES = ", ".join(SCENARIOS)
SIGNALS_HELP = (
    "signals: SIGTERM/SIGINT stop; SIGUSR1 power-cycles the programmer; SIGUSR2 pulls its"
    " cable out, the next SIGUSR2 plugs it back in and prints the port again on stdout"
    " (a pty under a new path, TCP on the same port)"
)

_log = logging.getLogger(__name__)


def default_pump_id(position: int) -> str:
    """PMP-0001 for the first pump, PMP-0002 for the second, ..."""
    return f"PMP-{position:04d}"


def parse_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {name!r} (choose from {_SCENARIO_NAMES})"
        ) from None


def parse_pump(text: str, position: int) -> SimulatedPump:
    """``[ID=]SCENARIO``; without an id, the pump is named by its position."""
    pump_id, _, name = text.rpartition("=")
    pump_id = pump_id or default_pump_id(position)
    if not _PUMP_ID.fullmatch(pump_id):
        raise argparse.ArgumentTypeError(f"bad pump id {pump_id!r} (must match [A-Z0-9-]{{1,16}})")
    return SimulatedPump(pump_id, parse_scenario(name))


def _speed(text: str) -> float:
    try:
        speed = float(text)
    except ValueError:
        speed = math.nan
    if not (math.isfinite(speed) and speed > 0):
        raise argparse.ArgumentTypeError(f"speed must be a number > 0, not {text!r}")
    return speed


def _tcp_port(text: str) -> int:
    if not (text.isdigit() and int(text) <= 65535):
        raise argparse.ArgumentTypeError(
            f"TCP port must be 0-65535 (0: any free port), not {text!r}"
        )
    return int(text)


def _start_time(text: str) -> datetime:
    try:
        start = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"start time must be ISO 8601 UTC like 2026-11-30T08:00:00Z, not {text!r}"
        ) from None
    start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
    if not in_clock_range(start):
        raise argparse.ArgumentTypeError(
            f"start time must be within {CLOCK_RANGE_TEXT}, not {text!r}"
        )
    return start


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose bad-option report is one line on stderr, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class _AddPump(argparse.Action):
    """Appends one ``SimulatedPump`` per ``--pump``, refusing duplicate ids."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        pumps: tuple[SimulatedPump, ...] = getattr(namespace, self.dest) or ()
        try:
            pump = parse_pump(str(values), len(pumps) + 1)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        if any(other.pump_id == pump.pump_id for other in pumps):
            raise argparse.ArgumentError(self, f"pump id {pump.pump_id} given twice")
        setattr(namespace, self.dest, (*pumps, pump))


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --pump/--scenario, --speed, --tcp, --start and --seed to ``parser``, and say
    what the signals do (as its epilog, unless it has one)."""
    if parser.epilog is None:
        parser.epilog = SIGNALS_HELP
    pumps = parser.add_mutually_exclusive_group()
    pumps.add_argument(
        "--pump",
        dest="pumps",
        action=_AddPump,
        default=(),
        metavar="[ID=]SCENARIO",
        help="add a pump (repeatable); ids default to PMP-0001, PMP-0002, ... by position;"
        f" scenarios: {_SCENARIO_NAMES}",
    )
    pumps.add_argument(
        "--scenario",
        type=parse_scenario,
        metavar="NAME",
        help="one pump with this scenario (default: one 'normal' pump)",
    )
    parser.add_argument(
        "--speed",
        type=_speed,
        default=1.0,
        metavar="FACTOR",
        help="simulated seconds per real second (1440: one day per minute; default 1)",
    )
    parser.add_argument(
        "--tcp",
        type=_tcp_port,
        metavar="PORT",
        help="listen on 127.0.0.1:PORT (0: any free port) instead of a pseudo-terminal",
    )
    parser.add_argument(
        "--start",
        type=_start_time,
        metavar="TIME",
        help="programmer clock at start, ISO 8601 UTC (default: now)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the noisy line (default 0)"
    )


def run_simulate(args: argparse.Namespace) -> int:
    """Run the simulator until SIGTERM/SIGINT; 0 on a clean stop, 1 if the port cannot open."""
    setup_logging()
    pumps = args.pumps or (SimulatedPump(default_pump_id(1), args.scenario or SCENARIOS["normal"]),)
    start = args.start or datetime.now(UTC).replace(microsecond=0)
    try:
        transport: Transport = PtyTransport() if args.tcp is None else TcpTransport(args.tcp)
    except OSError as exc:
        log_event(_log, "port_unavailable", level=logging.ERROR, error=exc)
        return 1
    programmer = Programmer(
        pumps, start_time=start, speed=args.speed, now=time.monotonic(), seed=args.seed
    )
    try:
        with signal_wakeups() as wakeups:
            print_port(transport.port_name)
            serve(programmer, transport, wakeups, announce=print_port)
    finally:
        transport.close()
    return 0
