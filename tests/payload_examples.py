"""Payloads shaped as docs/mqtt.md shows them, for the dashboards' tests
(``pumpgw watch`` and the browser page); test_watch checks them against the
contract models."""

from __future__ import annotations

from typing import Any

INFO: dict[str, Any] = {
    "gateway_id": "bed-12", "version": "0.1.0", "started_at": "2026-11-30T07:00:00.120Z",
    "link": "up", "link_error": None,
    "programmer": {"vendor": "ACME", "model": "ITP-200", "serial": "PRG00042",
                   "firmware": "2.3.1", "protocol": 1},
    "counters": {"frames_ok": 120, "frames_discarded": 0, "protocol_errors": 0,
                 "frames_lost": 0, "commands_rejected": 0},
    "broker": {"connected": True, "last_error": None, "disconnects": 0},
    "outbox": {"pending": 0, "bytes": 0, "over_limit": False, "error": None},
}  # fmt: skip
STATE: dict[str, Any] = {
    "pump_id": "PMP-0001", "label": "Bed 12", "seq": 17,
    "device_time": "2026-11-30T08:00:00Z", "received_at": "2026-11-30T08:00:00.120Z",
    "reservoir_ml": 12.4, "capacity_ml": 20.0, "low_reservoir_alarm_ml": 2.0,
    "battery_pct": 81, "battery_v": 3.01, "dose_mcg_per_day": 300.0,
    "concentration_mcg_per_ml": 500.0, "flow_ml_per_day": 0.6, "drain_ml_per_day": None,
    "days_to_low_reservoir_alarm": 17.3, "days_to_empty": 20.7,
    "refill_due": "2026-12-17T16:00:00Z", "flags": [], "stale": False,
}  # fmt: skip
ALERT: dict[str, Any] = {
    "alert_id": "01M8NQFJ004CGAETXH215VGQN2", "pump_id": "PMP-0001",
    "type": "reservoir_low", "severity": "critical", "state": "active",
    "message": "Reservoir 1.9 mL (critical at 2 mL)", "value": 1.9, "threshold": 2.0,
    "raised_at": "2026-11-30T07:58:00Z", "updated_at": "2026-11-30T07:59:00Z",
    "acknowledged_by": None, "acknowledged_at": None,
}  # fmt: skip
BATTERY: dict[str, Any] = {
    **ALERT, "alert_id": "01M8NQFJ00BATTERYWARNX3K7Q", "type": "battery_low",
    "severity": "warning", "message": "Battery 24 % (warning at 25 %)", "value": 24.0,
    "threshold": 25.0, "state": "acknowledged", "acknowledged_by": "nurse-jane",
    "acknowledged_at": "2026-11-30T08:00:05Z",
}  # fmt: skip
