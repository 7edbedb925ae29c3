"""Derived telemetry: programmed flow and how long the reservoir lasts.

Projections run on the programmer's clock (the STAT's own ``time``; the
receive time only when the STAT has none), so an accelerated simulator or a
replayed capture is judged as the pump lived it. The rate is the measured
drain rate once it is established, else the programmed flow; with an unknown
input or a zero rate there is no projection (``None``), never a zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from drivers.ptp import Stat, flag_names
from gateway.contract import PumpState


@dataclass(frozen=True, slots=True)
class Projection:
    flow_ml_per_day: float | None  # programmed: dose / concentration
    drain_ml_per_day: float | None  # measured, once established
    days_to_low_reservoir_alarm: float | None
    days_to_empty: float | None
    refill_due: datetime | None


# Below this (0.1 uL/day) nothing is draining: no projection, not a date
# thousands of years away (and no overflow from float noise in a flat slope).
MIN_RATE_ML_PER_DAY = 1e-4


def project(stat: Stat, measured_ml_per_day: float | None, received_at: datetime) -> Projection:
    flow = stat.flow_ml_per_day
    rate = measured_ml_per_day if measured_ml_per_day is not None else flow
    days_to_alarm = days_to_empty = None
    refill_due = None
    if stat.res_ml is not None and rate is not None and rate >= MIN_RATE_ML_PER_DAY:
        days_to_empty = stat.res_ml / rate
        if stat.lra_ml is not None:
            days_to_alarm = max(0.0, stat.res_ml - stat.lra_ml) / rate
            origin = stat.time or received_at
            refill_due = (origin + timedelta(days=days_to_alarm)).replace(microsecond=0)
    return Projection(flow, measured_ml_per_day, days_to_alarm, days_to_empty, refill_due)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def pump_state(
    stat: Stat, projection: Projection, *, label: str | None, received_at: datetime, stale: bool
) -> PumpState:
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
        flow_ml_per_day=_round(projection.flow_ml_per_day, 4),
        drain_ml_per_day=_round(projection.drain_ml_per_day, 4),
        days_to_low_reservoir_alarm=_round(projection.days_to_low_reservoir_alarm, 1),
        days_to_empty=_round(projection.days_to_empty, 1),
        refill_due=projection.refill_due,
        flags=None if stat.flags is None else flag_names(stat.flags),
        stale=stale,
    )
