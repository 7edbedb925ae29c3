"""``python -m benchmarks``: every benchmark, one process tree, one table, one JSON.

Run from the repository root with the project's interpreter
(``.venv/bin/python -m benchmarks``). See benchmarks/README.md for what each
figure means. Everything runs on 127.0.0.1, bounded in count and time, and
every process started is stopped on the way out (also on Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks import fleet, footprint, latency, peer, recovery, report, throughput
from benchmarks.common import (
    ROOT,
    BenchSkipped,
    Broker,
    busiest_processes,
    loadavg,
    log,
    machine_info,
    rmtree_quiet,
    stop_all,
    write_json,
)

ALL = ("latency", "peer", "throughput", "recovery", "footprint", "fleet")
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "latest.json"

# (full, --quick)
SIZES: dict[str, tuple[int, int]] = {
    "samples": (2000, 30),
    "steady": (20000, 300),
    "alerts": (10000, 200),
    "recovery_messages": (10000, 500),
    "outage_s": (3, 1),
    "ready_trials": (5, 1),
    "idle_s": (60, 2),
    "load_rate": (1000, 200),
    "load_s": (10, 2),
    "peer_default_window_s": (125, 0),
    "paced_frames": (200, 20),
    "fleet_gateways": (25, 2),
    "fleet_s": (30, 3),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="pumpgw benchmarks: latency against a raw relay and mqtt-io, throughput, "
        "recovery after a broker outage, footprint, a fleet on one broker.",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds; the smoke test)")
    p.add_argument(
        "--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}"
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    p.add_argument("--workdir", type=Path, help="state, configs and logs (default: a temp dir)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the logs afterwards")
    size = p.add_argument_group("sizes (defaults: full run; --quick: tiny)")
    size.add_argument("--samples", type=int, help="latency samples per contender (2000)")
    size.add_argument("--gap-ms", type=float, default=5.0, help="pause between latency samples")
    size.add_argument("--steady", type=int, help="throughput: steady readings (20000)")
    size.add_argument("--alerts", type=int, help="throughput: alert readings (10000)")
    size.add_argument("--recovery-messages", type=int, help="queued in the outage (10000)")
    size.add_argument("--outage-s", type=float, help="broker outage after queueing (3)")
    size.add_argument("--ready-trials", type=int, help="daemon starts to READY (5)")
    size.add_argument("--idle-s", type=float, help="idle CPU window (60)")
    size.add_argument("--load-rate", type=float, help="footprint load, readings/s (1000)")
    size.add_argument("--load-s", type=float, help="footprint load duration (10)")
    size.add_argument(
        "--peer-install",
        choices=["yes", "no"],
        default="yes",
        help="create benchmarks/.peer-venv with mqtt-io when missing (yes)",
    )
    size.add_argument(
        "--peer-default-window-s",
        type=float,
        help="mqtt-io at its default 60 s interval: frames written for this long (125; 0 skips)",
    )
    size.add_argument("--paced-frames", type=int, help="frames at 115200 baud to mqtt-io (200)")
    size.add_argument("--fleet-gateways", type=int, help="fleet size N (25)")
    size.add_argument("--fleet-s", type=float, help="fleet measuring window (30)")
    size.add_argument("--fleet-speed", type=float, default=28800.0, help="simulator speed")
    size.add_argument(
        "--fleet-start-timeout-s", type=float, default=240.0, help="for all links to come up"
    )
    args = p.parse_args(argv)
    for name, (full, quick) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(args.only) - set(ALL)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pumpgw-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # Logs of the gateway modules used in-process (recovery, pipeline) go to a file.
    logging.basicConfig(
        filename=workdir / "in-process.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    started = datetime.now(UTC)
    t0 = time.monotonic()
    meta: dict[str, Any] = {
        "command": "python -m benchmarks " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "started_at": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine_info(workdir),
        "load_before": {"loadavg_1_5_15": loadavg(), "busiest": busiest_processes()},
        "sizes": {name: getattr(args, name) for name in SIZES},
    }
    log(f"workdir {workdir}; load average {meta['load_before']['loadavg_1_5_15']}")
    results: dict[str, Any] = {}
    failed = False
    broker: Broker | None = None
    try:
        shared_needed = {"latency", "peer", "throughput", "footprint"} & set(args.only)
        if shared_needed:
            broker = Broker(workdir / "broker", name="broker")
            broker.start()
        shared: Broker | None = broker
        runs: dict[str, Callable[[], dict[str, Any]]] = {
            "latency": lambda: latency.run(_b(shared), workdir, args.samples, args.gap_ms / 1000),
            "peer": lambda: peer.run(
                _b(shared),
                workdir,
                args.samples,
                args.gap_ms / 1000,
                args.peer_install == "yes",
                args.peer_default_window_s,
                args.paced_frames,
            ),
            "throughput": lambda: throughput.run(
                _b(shared), workdir / "throughput", args.steady, args.alerts
            ),
            "recovery": lambda: recovery.run(
                workdir / "recovery", args.recovery_messages, args.outage_s
            ),
            "footprint": lambda: footprint.run(
                _b(shared),
                workdir / "footprint",
                args.ready_trials,
                args.idle_s,
                args.load_rate,
                args.load_s,
            ),
            "fleet": lambda: fleet.run(
                workdir / "fleet",
                args.fleet_gateways,
                args.fleet_s,
                args.fleet_speed,
                args.fleet_start_timeout_s,
            ),
        }
        for name in ALL:
            if name not in args.only:
                continue
            t = time.monotonic()
            try:
                results[name] = runs[name]()
            except BenchSkipped as exc:
                log(f"{name}: skipped: {exc}")
                results[name] = {"skipped": str(exc)}
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                failed = True
                log(f"{name}: FAILED: {exc!r}")
                traceback.print_exc()
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            results.get(name, {})["elapsed_s"] = round(time.monotonic() - t, 1)
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        failed = True
    finally:
        if broker is not None:
            broker.stop()
        stop_all()
    meta["duration_s"] = round(time.monotonic() - t0, 1)
    meta["load_after"] = {"loadavg_1_5_15": loadavg()}
    goals = [
        {"benchmark": name, **goal}
        for name, result in results.items()
        for goal in result.get("goals", [])
    ]
    document = {"meta": meta, "goals": goals, "results": results}
    write_json(args.json, document)
    table = report.markdown(results)
    m = meta["machine"]
    print(
        f"\npumpgw benchmarks, {meta['started_at']}, {m['nproc']} x {m['cpu_model']}, "
        f"load average {meta['load_before']['loadavg_1_5_15']} -> "
        f"{meta['load_after']['loadavg_1_5_15']}, {meta['duration_s']:.0f} s\n"
    )
    print(table)
    print(f"\nJSON: {_shown(args.json)}")
    if failed or args.keep_workdir:
        print(f"logs: {workdir}")
    else:
        rmtree_quiet(workdir)
    return 1 if failed else 0


def _b(broker: Broker | None) -> Broker:
    assert broker is not None
    return broker


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path(os.getcwd()).resolve()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
