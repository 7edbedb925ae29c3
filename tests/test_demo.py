"""``pumpgw demo`` as a user runs it, stopped by --duration, with each broker."""

from __future__ import annotations

import pytest
from processes import run_cli


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_demo_shows_alerts_and_stops_cleanly(broker: str) -> None:
    done = run_cli("demo", "--duration", "15", "--broker", broker)
    assert done.returncode == 0, done.stderr
    assert f"broker: {broker}" in done.stdout
    # Not a terminal: the demo prints one line per event instead of a table.
    assert "gateway_started" in done.stdout
    assert "pump_fault" in done.stdout  # PMP-0003 stalls half a simulated day in
    assert "reservoir_low" in done.stdout  # PMP-0001 drains past 5 mL after a day
    assert "Traceback" not in done.stderr
