"""The engine state on disk: what must survive a restart, as versioned JSON.

Kept: every open alert episode (id, severity, state, acknowledgement, when
it was last announced), the pumps being watched with their last state,
program and volume, and the id counter. Not kept: silence clocks, which
restart at ``now`` (a restarted gateway gives every pump a full
``telemetry_timeout_s``), the link, which starts down, and the drain-rate
window, which is measured again (``flow_deviation`` holds meanwhile).
"""

from __future__ import annotations

from datetime import datetime
from types import MappingProxyType

from pydantic import BaseModel, ConfigDict

from gateway.contract import Alert, PumpState
from gateway.engine.state import EngineState, Program, PumpTrack

SNAPSHOT_VERSION = 1


class _PumpSnapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pump_id: str
    last_state: PumpState | None
    valid_streak: int
    alerts: list[Alert]
    dose_mcg_per_day: float | None = None
    concentration_mcg_per_ml: float | None = None
    last_reservoir_ml: float | None = None


class _EngineSnapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int
    gateway_id: str
    next_id: int
    gateway_alerts: list[Alert]
    pumps: list[_PumpSnapshot]
    announced: dict[str, datetime] = {}


def dump_state(state: EngineState) -> str:
    return _EngineSnapshot(
        version=SNAPSHOT_VERSION,
        gateway_id=state.gateway_id,
        next_id=state.next_id,
        gateway_alerts=list(state.gateway_alerts.values()),
        pumps=[
            _PumpSnapshot(
                pump_id=t.pump_id,
                last_state=t.last_state,
                valid_streak=t.valid_streak,
                alerts=list(t.alerts.values()),
                dose_mcg_per_day=t.program.dose_mcg_per_day,
                concentration_mcg_per_ml=t.program.concentration_mcg_per_ml,
                last_reservoir_ml=t.last_reservoir_ml,
            )
            for t in state.pumps.values()
        ],
        announced=dict(state.announced),
    ).model_dump_json()


def restore_state(text: str, base: EngineState, now: datetime) -> EngineState:
    """``base`` is the fresh state for the current config; the snapshot's
    alerts and pumps are laid over it. Raises ValueError for a snapshot this
    version cannot read (the caller starts fresh and says so)."""
    snap = _EngineSnapshot.model_validate_json(text)
    if snap.version != SNAPSHOT_VERSION:
        raise ValueError(f"engine snapshot version {snap.version}, expected {SNAPSHOT_VERSION}")
    if snap.gateway_id != base.gateway_id:
        raise ValueError(
            f"engine snapshot belongs to gateway {snap.gateway_id!r}, not {base.gateway_id!r}"
        )
    pumps = dict(base.pumps)
    for p in snap.pumps:
        pumps[p.pump_id] = PumpTrack(
            p.pump_id,
            watch_since=now,
            last_state=p.last_state,
            valid_streak=p.valid_streak,
            alerts=MappingProxyType({a.type: a for a in p.alerts}),
            program=Program(p.dose_mcg_per_day, p.concentration_mcg_per_ml),
            last_reservoir_ml=p.last_reservoir_ml,
        )
    return EngineState(
        gateway_id=base.gateway_id,
        pumps=MappingProxyType(pumps),
        gateway_alerts=MappingProxyType({a.type: a for a in snap.gateway_alerts}),
        link_up=False,
        link_since=now,
        link_reason="gateway restarted",
        next_id=snap.next_id,
        announced=MappingProxyType(snap.announced),
    )
