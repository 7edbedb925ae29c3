"""A pure, deterministic model of one implanted intrathecal pump.

``PumpModel`` is a frozen value; every function here takes a model (and a
duration) and returns a new one. Nothing reads a clock: time is passed in.

The alarm flags that follow from the numbers (``LOW_RES``, ``EMPTY``,
``ERI``, ``EOS``) are computed from the reservoir and battery on demand, so
they can never disagree with them. Scripted conditions (``MOTOR_STALL``,
``NO_LINK``) are stored in ``conditions``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime

from drivers.ptp.messages import Flag, Stat

SECONDS_PER_DAY = 86_400.0
ERI_BATTERY_PCT = 20.0
EOS_BATTERY_PCT = 5.0
NO_FLAGS = Flag(0)


@dataclass(frozen=True, slots=True)
class PumpModel:
    """One pump's state. ``delivery_factor`` is the fraction of the programmed
    flow actually delivered (0 while the motor is stalled). ``last_known`` is
    what the programmer last read from the pump, kept while the link is lost."""

    pump_id: str
    capacity_ml: float
    lra_ml: float
    reservoir_ml: float
    dose_mcg_day: float
    conc_mcg_ml: float
    battery_pct: float
    battery_drain_pct_day: float
    conditions: Flag = NO_FLAGS
    delivery_factor: float = 1.0
    last_known: PumpModel | None = None

    @property
    def flow_ml_day(self) -> float:
        """Volume actually delivered per day: dose / concentration x delivery factor."""
        return self.dose_mcg_day / self.conc_mcg_ml * self.delivery_factor

    @property
    def flags(self) -> Flag:
        """Every condition present in the pump itself, computed and scripted."""
        flags = self.conditions
        if self.reservoir_ml <= self.lra_ml:
            flags |= Flag.LOW_RES
        if self.reservoir_ml <= 0.0:
            flags |= Flag.EMPTY
        if self.battery_pct <= ERI_BATTERY_PCT:
            flags |= Flag.ERI
        if self.battery_pct <= EOS_BATTERY_PCT:
            flags |= Flag.EOS
        return flags


def advance(model: PumpModel, seconds: float) -> PumpModel:
    """The pump ``seconds`` later: reservoir drained, battery discharged, both clamped at 0."""
    if seconds < 0:
        raise ValueError(f"cannot advance a pump by {seconds} s")
    days = seconds / SECONDS_PER_DAY
    return replace(
        model,
        reservoir_ml=max(0.0, model.reservoir_ml - model.flow_ml_day * days),
        battery_pct=max(0.0, model.battery_pct - model.battery_drain_pct_day * days),
    )


def stall(model: PumpModel) -> PumpModel:
    """The motor stalls: MOTOR_STALL set, nothing delivered any more."""
    return replace(model, conditions=model.conditions | Flag.MOTOR_STALL, delivery_factor=0.0)


def lose_link(model: PumpModel) -> PumpModel:
    """The programmer loses the pump: NO_LINK set, the readings freeze as they are now."""
    return replace(model, conditions=model.conditions | Flag.NO_LINK, last_known=model)


def restore_link(model: PumpModel) -> PumpModel:
    """The programmer reaches the pump again: live readings, NO_LINK cleared."""
    return replace(model, conditions=model.conditions & ~Flag.NO_LINK, last_known=None)


def refill(model: PumpModel, volume_ml: float, conc_mcg_ml: float | None = None) -> PumpModel:
    """A clinician refills the reservoir to ``volume_ml``; with ``conc_mcg_ml``, with a drug
    of that concentration (the pump is programmed for it, the dose stays)."""
    if not 0.0 <= volume_ml <= model.capacity_ml:
        raise ValueError(f"refill of {volume_ml} mL outside 0..{model.capacity_ml}")
    if conc_mcg_ml is None:
        return replace(model, reservoir_ml=volume_ml)
    if not conc_mcg_ml > 0.0:
        raise ValueError(f"concentration must be > 0, not {conc_mcg_ml}")
    return replace(model, reservoir_ml=volume_ml, conc_mcg_ml=conc_mcg_ml)


def reported_flags(model: PumpModel) -> Flag:
    """The flags a STAT shows: the last known ones plus NO_LINK while the link is lost."""
    if model.last_known is None:
        return model.flags
    return model.last_known.flags | Flag.NO_LINK


def battery_voltage(battery_pct: float) -> float:
    """Cell voltage for a state of charge: 2.5 V empty to 3.1 V full."""
    return round(2.5 + 0.6 * battery_pct / 100.0, 2)


def to_stat(model: PumpModel, seq: int, time: datetime) -> Stat:
    """The STAT the programmer sends for this pump.

    ``bat_pct`` is rounded up, so it reads 20 or less exactly when ERI is set
    (and 5 or less exactly when EOS is).
    """
    shown = model.last_known or model
    return Stat(
        seq=seq,
        pump_id=model.pump_id,
        time=time,
        res_ml=round(shown.reservoir_ml, 2),
        cap_ml=shown.capacity_ml,
        lra_ml=shown.lra_ml,
        bat_pct=math.ceil(shown.battery_pct),
        bat_v=battery_voltage(shown.battery_pct),
        dose_mcg_day=shown.dose_mcg_day,
        conc_mcg_ml=shown.conc_mcg_ml,
        flags=reported_flags(model),
    )
