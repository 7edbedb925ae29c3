"""``pumpgw``: run, simulate, check-config, demo, watch, dashboard.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad configuration.
Bad input gives a one-line reason per problem, never a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import sys
from pathlib import Path

from drivers.logfmt import setup_logging
from gateway.config import Config, ConfigError, load_config, read_password

EXIT_BAD_CONFIG = 2


def _load(path: Path) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.file)
    if config is None:
        return EXIT_BAD_CONFIG
    pumps = ", ".join(config.pumps) or "none configured (any pump the programmer reports)"
    print(
        f"{args.file}: OK (gateway {config.gateway.id}, "
        f"serial {config.serial.port}, pumps: {pumps})"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_BAD_CONFIG
    try:
        password = read_password(config)
    except OSError as exc:
        print(f"{args.config}: mqtt.password_file: cannot read: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    setup_logging(args.log_level)
    from gateway.daemon import Daemon

    try:
        daemon = Daemon(config, password, config_path=args.config)
    except (OSError, sqlite3.Error) as exc:
        state_dir = config.gateway.state_dir
        print(
            f"{args.config}: gateway.state_dir: cannot open the outbox in {state_dir}: {exc}",
            file=sys.stderr,
        )
        return EXIT_BAD_CONFIG
    daemon.install_signal_handlers()
    return daemon.run()


def cmd_simulate(args: argparse.Namespace) -> int:
    from drivers.simulator.cli import run_simulate

    return run_simulate(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(
        speed=args.speed,
        duration_s=args.duration,
        broker=args.broker,
        dashboard_port=args.dashboard_port,
    )


def cmd_watch(args: argparse.Namespace) -> int:
    from gateway.watch import run_watch

    return run_watch(args)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from gateway.dashboard.server import DashboardServer, DashboardSettings, export

    try:
        settings = DashboardSettings(
            broker_url=args.broker_url,
            prefix=args.prefix,
            username=args.username,
            stale_after_s=args.stale_after_s,
        )
    except ValidationError as exc:
        for error in exc.errors():
            option = "--" + str(error["loc"][0]).replace("_", "-")
            print(f"pumpgw dashboard: {option}: {error['msg']}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.export is not None:
        written = export(args.export, settings)
        print(
            f"dashboard: {len(written)} files in {args.export} (open index.html from a web server)"
        )
        return 0
    try:
        server = DashboardServer(settings, args.listen, args.port)
    except OSError as exc:
        print(
            f"pumpgw dashboard: cannot listen on {args.listen}:{args.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    print(
        f"dashboard: {server.url} (broker {settings.broker_url}, prefix {settings.prefix})",
        flush=True,
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def add_dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    from gateway.dashboard.server import DEFAULT_PORT

    parser.add_argument(
        "--broker-url",
        default="ws://localhost:9001/",
        help="the broker's MQTT-over-WebSockets listener as the browser reaches it "
        "(default ws://localhost:9001/)",
    )
    parser.add_argument("--prefix", default="pumpgw", help="topic prefix (mqtt.topic_prefix)")
    parser.add_argument("--username", default=None, help="broker user name to fill in")
    parser.add_argument(
        "--stale-after-s",
        type=float,
        default=600,
        help="mark a pump stale when its last reading is older than this (default 600)",
    )
    parser.add_argument("--listen", default="127.0.0.1", help="address to serve on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to serve on")
    parser.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="copy the page and its config.json to DIR instead of serving it",
    )


def build_parser() -> argparse.ArgumentParser:
    from drivers.simulator.cli import OneLineErrorParser, add_simulate_arguments
    from gateway.watch import add_watch_arguments

    parser = OneLineErrorParser(
        prog="pumpgw",
        description="Bedside telemetry gateway for implanted intrathecal drug pumps.",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=OneLineErrorParser
    )

    run = sub.add_parser("run", help="run the gateway daemon")
    run.add_argument("--config", "-c", type=Path, required=True, help="gateway.toml")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_check_config)

    simulate = sub.add_parser("simulate", help="simulated pump programmer speaking PTP/1")
    add_simulate_arguments(simulate)
    simulate.set_defaults(func=cmd_simulate)

    demo = sub.add_parser(
        "demo", help="broker + simulated programmer + gateway, with a live view (Ctrl-C stops)"
    )
    demo.add_argument(
        "--speed", type=float, default=8640.0, help="simulated seconds per real second"
    )
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument(
        "--broker",
        choices=["mosquitto", "amqtt"],
        default="mosquitto",
        help="mosquitto when installed (default), else the embedded amqtt broker",
    )
    demo.add_argument(
        "--dashboard-port",
        type=int,
        default=8080,
        help="serve the clinic dashboard here (default 8080; another port when taken)",
    )
    demo.set_defaults(func=cmd_demo)

    watch = sub.add_parser(
        "watch",
        help="live view of every gateway and pump on a broker; acknowledge alerts",
        description="Live view of every gateway and pump publishing on a broker, alerts "
        "coloured by severity. Type `ack <alert id> <your name> [note]` + Enter to "
        "acknowledge; q quits.",
    )
    add_watch_arguments(watch)
    watch.set_defaults(func=cmd_watch)

    dashboard = sub.add_parser(
        "dashboard",
        help="serve the clinic dashboard (a static page that talks MQTT over WebSockets)",
        description="Serve the clinic dashboard: a static page that connects to the broker "
        "over MQTT over WebSockets, shows every gateway and pump live and acknowledges "
        "alerts. --export DIR copies it for any web server (or mosquitto's http_dir).",
    )
    add_dashboard_arguments(dashboard)
    dashboard.set_defaults(func=cmd_dashboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
