"""The engine state on disk: what must survive a restart, as versioned JSON.

Kept: every open alert episode (id, severity, state, acknowledgement), the
pumps being watched with their last state, and the id counter. Not kept:
silence clocks, which restart at ``now`` (a restarted gateway gives every
pump a full ``telemetry_timeout_s``) and the link, which starts down.
"""

from __future__ import annotations

from datetime import datetime
from types import MappingProxyType

from pydantic import BaseModel, ConfigDict

from gateway.contract import Alert, PumpState
from gateway.engine.state import EngineState, PumpTrack

SNAPSHOT_VERSION = 1


class _PumpSnapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pump_id: str
    last_state: PumpState | None
    valid_streak: int
    alerts: list[Alert]


class _EngineSnapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int
    gateway_id: str
    next_id: int
    gateway_alerts: list[Alert]
    pumps: list[_PumpSnapshot]


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
            )
            for t in state.pumps.values()
        ],
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
        )
    return EngineState(
        gateway_id=base.gateway_id,
        pumps=MappingProxyType(pumps),
        gateway_alerts=MappingProxyType({a.type: a for a in snap.gateway_alerts}),
        link_up=False,
        link_since=now,
        link_reason="gateway restarted",
        next_id=snap.next_id,
    )
