"""The alert rules: what one reading says about each alert type.

Each rule returns a ``Finding`` (the condition is present at a severity, or
absent) or ``None`` when the reading does not tell (an unknown value, or a
pump the programmer cannot reach). ``None`` never raises and never clears.
Hysteresis lives here: a value inside ``threshold + margin`` keeps an active
alert active.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from drivers.ptp import Flag, Stat
from gateway.config import Thresholds
from gateway.contract import AlertType, Severity
from gateway.engine.projection import Projection


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity | None  # None: the condition is absent
    message: str
    value: float | None = None
    threshold: float | None = None

    @property
    def rank(self) -> int:
        return self.severity.rank if self.severity else 0


def combine(findings: Sequence[Finding | None], current: Severity | None) -> Finding | None:
    """The worst known finding, or None when an unknown source could still
    hold the current alert (unknown is not zero)."""
    known = [f for f in findings if f is not None]
    if not known:
        return None
    worst = max(known, key=lambda f: f.rank)
    current_rank = current.rank if current else 0
    if len(known) < len(findings) and worst.rank < current_rank:
        return None
    return worst


@dataclass(frozen=True, slots=True)
class Observation:
    """One valid STAT and what was derived from it."""

    stat: Stat
    projection: Projection

    @property
    def values_known(self) -> bool:
        """False while NO_LINK: the other fields are old values, not news."""
        return self.stat.flags is None or Flag.NO_LINK not in self.stat.flags


@dataclass(frozen=True, slots=True)
class LowValueRule:
    """A value that is bad when low, plus the pump's own flags for the same
    condition: warning at or below ``warning``, critical at or below
    ``critical``, clearing only above ``warning + margin``. ``describe``
    formats the value, e.g. ``"Reservoir {:g} mL"``."""

    describe: str
    unit: str
    warning: float
    critical: float
    margin: float
    flags: tuple[tuple[Flag, str, Severity], ...] = ()

    def assess(
        self, value: float | None, flags: Flag | None, current: Severity | None
    ) -> Finding | None:
        return combine(
            [
                self._by_value(value, active=current is not None),
                *(_flag(flags, flag, text, sev, value) for flag, text, sev in self.flags),
            ],
            current,
        )

    def _by_value(self, value: float | None, active: bool) -> Finding | None:
        if value is None:
            return None
        shown = self.describe.format(value)
        if value <= self.critical:
            at = f"(critical at {self.critical:g}{self.unit})"
            return Finding(Severity.CRITICAL, f"{shown} {at}", value, self.critical)
        if value <= self.warning or (active and value <= self.warning + self.margin):
            at = f"(warning at {self.warning:g}{self.unit})"
            return Finding(Severity.WARNING, f"{shown} {at}", value, self.warning)
        return Finding(None, shown, value, self.warning)


def _flag(
    flags: Flag | None, flag: Flag, message: str, severity: Severity, value: float | None
) -> Finding | None:
    if flags is None or Flag.NO_LINK in flags:
        return None  # unknown, or last-known values of an unreachable pump
    if flag in flags:
        return Finding(severity, message, value)
    return Finding(None, f"{flag.name} not set", value)


def reservoir_low(obs: Observation, t: Thresholds, current: Severity | None) -> Finding | None:
    rule = LowValueRule(
        "Reservoir {:g} mL",
        " mL",
        warning=t.reservoir_warning_ml,
        critical=t.reservoir_critical_ml,
        margin=t.reservoir_hysteresis_ml,
        flags=(
            (Flag.EMPTY, "Pump reports reservoir EMPTY", Severity.CRITICAL),
            (
                Flag.LOW_RES,
                "Pump's own low-reservoir alarm is sounding (LOW_RES)",
                Severity.WARNING,
            ),
        ),
    )
    value = obs.stat.res_ml if obs.values_known else None
    return rule.assess(value, obs.stat.flags, current)


def battery_low(obs: Observation, t: Thresholds, current: Severity | None) -> Finding | None:
    rule = LowValueRule(
        "Battery {:g}%",
        "%",
        warning=t.battery_warning_pct,
        critical=t.battery_critical_pct,
        margin=t.battery_hysteresis_pct,
        flags=(
            (Flag.EOS, "Battery at end of service (EOS)", Severity.CRITICAL),
            (Flag.ERI, "Battery at elective replacement indicator (ERI)", Severity.WARNING),
        ),
    )
    value = obs.stat.bat_pct if obs.values_known else None
    return rule.assess(value, obs.stat.flags, current)


def refill_due(obs: Observation, t: Thresholds, current: Severity | None) -> Finding | None:
    """Days until the pump's own low-reservoir alarm, by the measured drain
    rate once established, else the programmed flow."""
    rule = LowValueRule(
        "Low-reservoir alarm projected in {:.1f} days",
        " days",
        warning=t.refill_warning_days,
        critical=t.refill_critical_days,
        margin=t.refill_hysteresis_days,
    )
    days = obs.projection.days_to_low_reservoir_alarm if obs.values_known else None
    return rule.assess(days, None, current)


def flow_deviation(obs: Observation, t: Thresholds, current: Severity | None) -> Finding | None:
    """Measured drain rate against the programmed flow. Faster: the pump may
    empty early (over-infusion, leak). Slower: catheter occlusion or stall."""
    measured = obs.projection.drain_ml_per_day
    programmed = obs.projection.flow_ml_per_day
    if measured is None or not programmed or not obs.values_known:
        return None
    deviation = (measured - programmed) / programmed * 100
    way = (
        "faster than programmed: over-infusion or leak, the pump may empty early"
        if deviation > 0
        else "slower than programmed: catheter occlusion or stall?"
    )
    message = (
        f"Reservoir drains {abs(deviation):.0f}% {way} "
        f"(measured {measured:.3f} mL/day, programmed {programmed:.3f} mL/day)"
    )
    size = abs(deviation)
    held = current is not None and size >= t.flow_deviation_pct - t.flow_hysteresis_pct
    if size > t.flow_deviation_pct or held:
        return Finding(Severity.WARNING, message, round(deviation, 1), t.flow_deviation_pct)
    return Finding(None, message, round(deviation, 1), t.flow_deviation_pct)


def dose_out_of_range(obs: Observation, t: Thresholds, current: Severity | None) -> Finding | None:
    """Programmed dose outside [dose_min_mcg, dose_max_mcg], or a concentration
    not in ``allowed_concentrations`` (a refill with the wrong syringe)."""
    dose = obs.stat.dose_mcg_day if obs.values_known else None
    conc = obs.stat.conc_mcg_ml if obs.values_known else None
    by_dose: Finding | None = None
    if dose is not None:
        if dose < t.dose_min_mcg:
            text = f"Programmed dose {dose:g} mcg/day below {t.dose_min_mcg:g}"
            by_dose = Finding(Severity.WARNING, text, dose, t.dose_min_mcg)
        elif dose > t.dose_max_mcg:
            text = f"Programmed dose {dose:g} mcg/day above {t.dose_max_mcg:g}"
            by_dose = Finding(Severity.WARNING, text, dose, t.dose_max_mcg)
        else:
            by_dose = Finding(None, f"Programmed dose {dose:g} mcg/day", dose)
    by_conc: Finding | None = Finding(None, "any concentration allowed")
    allowed = t.allowed_concentrations
    if allowed is not None:
        by_conc = None
        if conc is not None:
            listed = ", ".join(f"{c:g}" for c in allowed)
            if any(abs(conc - c) < 1e-6 for c in allowed):
                by_conc = Finding(None, f"Concentration {conc:g} mcg/mL allowed", conc)
            else:
                text = f"Concentration {conc:g} mcg/mL is not one of {listed}"
                by_conc = Finding(Severity.WARNING, text, conc)
    return combine([by_dose, by_conc], current)


def pump_fault(obs: Observation, t: Thresholds, current: Severity | None) -> Finding | None:
    return _flag(
        obs.stat.flags,
        Flag.MOTOR_STALL,
        "Pump motor stalled: no drug is being delivered",
        Severity.CRITICAL,
        None,
    )


def telemetry_lost_by_flag(stat: Stat) -> Finding:
    """A valid STAT is telemetry; with NO_LINK it only repeats old values."""
    if stat.flags is not None and Flag.NO_LINK in stat.flags:
        return Finding(Severity.CRITICAL, "Programmer lost its link to the pump (NO_LINK)")
    return Finding(None, "Telemetry received")


def telemetry_lost_by_silence(silent_s: float, t: Thresholds) -> Finding | None:
    if silent_s >= t.telemetry_timeout_s:
        return Finding(
            Severity.CRITICAL,
            f"No valid telemetry for {silent_s:.0f} s (limit {t.telemetry_timeout_s:g} s)",
            silent_s,
            t.telemetry_timeout_s,
        )
    return None


def link_lost(down_s: float | None, timeout_s: float, reason: str) -> Finding | None:
    """``down_s`` is None while the link is up."""
    if down_s is None:
        return Finding(None, "Serial link to the programmer is up")
    if down_s >= timeout_s:
        return Finding(
            Severity.CRITICAL,
            f"Serial link to the programmer down for {down_s:.0f} s "
            f"(limit {timeout_s:g} s): {reason}",
            down_s,
            timeout_s,
        )
    return None


ReadingRule = Callable[[Observation, Thresholds, Severity | None], Finding | None]

READING_RULES: dict[AlertType, ReadingRule] = {
    AlertType.RESERVOIR_LOW: reservoir_low,
    AlertType.REFILL_DUE: refill_due,
    AlertType.BATTERY_LOW: battery_low,
    AlertType.PUMP_FAULT: pump_fault,
    AlertType.FLOW_DEVIATION: flow_deviation,
    AlertType.DOSE_OUT_OF_RANGE: dose_out_of_range,
}
# A refill restarts these episodes' hysteresis: they clear unless still low.
REFILL_RESETS = (AlertType.RESERVOIR_LOW, AlertType.REFILL_DUE)
# ...and ends this episode outright: if still due, a new one starts at the
# severity the new volume earns (its projection changed with the refill).
REFILL_ENDS = (AlertType.REFILL_DUE,)
