"""Derived telemetry: programmed flow and how long the reservoir lasts.

Projections run on the programmer's clock (the STAT's own ``time``; the
receive time only when the STAT has none), so an accelerated simulator or a
replayed capture is judged as the pump lived it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from drivers.ptp import Stat, flag_names
from gateway.contract import PumpState


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def project_state(
    stat: Stat, *, label: str | None, received_at: datetime, stale: bool
) -> PumpState:
    flow = stat.flow_ml_per_day
    rate = flow  # the measured drain rate replaces this once it is established
    days_to_alarm = days_to_empty = None
    refill_due = None
    if stat.res_ml is not None and rate is not None and rate > 0:
        days_to_empty = stat.res_ml / rate
        if stat.lra_ml is not None:
            days_to_alarm = max(0.0, stat.res_ml - stat.lra_ml) / rate
            origin = stat.time or received_at
            refill_due = (origin + timedelta(days=days_to_alarm)).replace(microsecond=0)
    return PumpState(
        pump_id=stat.pump_id,
        label=label,
        seq=stat.seq,
        device_time=stat.time,
        received_at=received_at,
        reservoir_ml=stat.res_ml,
        capacity_ml=stat.cap_ml,
        low_reservoir_alarm_ml=stat.lra_ml,
        battery_pct=stat.bat_pct,
        battery_v=stat.bat_v,
        dose_mcg_per_day=stat.dose_mcg_day,
        concentration_mcg_per_ml=stat.conc_mcg_ml,
        flow_ml_per_day=_round(flow, 4),
        drain_ml_per_day=None,
        days_to_low_reservoir_alarm=_round(days_to_alarm, 1),
        days_to_empty=_round(days_to_empty, 1),
        refill_due=refill_due,
        flags=None if stat.flags is None else flag_names(stat.flags),
        stale=stale,
    )
