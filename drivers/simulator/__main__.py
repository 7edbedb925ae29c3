"""``python -m drivers.simulator``: the simulator without the gateway's CLI."""

import sys

from drivers.simulator.cli import OneLineErrorParser, add_simulate_arguments, run_simulate


def main() -> int:
    parser = OneLineErrorParser(
        prog="python -m drivers.simulator",
        description="Simulated PTP/1 pump programmer on a pseudo-terminal or TCP port.",
    )
    add_simulate_arguments(parser)
    return run_simulate(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
