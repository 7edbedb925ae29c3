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
class LowValueRule:
    """A value that is bad when low, plus the pump's own flags for the same
    condition: warning at or below ``warning``, critical at or below
    ``critical``, clearing only above ``warning + margin``."""

    describe: str
    unit: str
    warning: float
    critical: float
    margin: float
    critical_flag: tuple[Flag, str]
    warning_flag: tuple[Flag, str]

    def assess(
        self, value: float | None, flags: Flag | None, current: Severity | None
    ) -> Finding | None:
        return combine(
            [
                self._by_value(value, active=current is not None),
                _flag(flags, *self.critical_flag, Severity.CRITICAL, value),
                _flag(flags, *self.warning_flag, Severity.WARNING, value),
            ],
            current,
        )

    def _by_value(self, value: float | None, active: bool) -> Finding | None:
        if value is None:
            return None
        shown = f"{self.describe} {value:g}{self.unit}"
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


def _values_known(stat: Stat) -> bool:
    return stat.flags is None or Flag.NO_LINK not in stat.flags


def reservoir_low(stat: Stat, t: Thresholds, current: Severity | None) -> Finding | None:
    rule = LowValueRule(
        "Reservoir",
        " mL",
        warning=t.reservoir_warning_ml,
        critical=t.reservoir_critical_ml,
        margin=t.reservoir_hysteresis_ml,
        critical_flag=(Flag.EMPTY, "Pump reports reservoir EMPTY"),
        warning_flag=(Flag.LOW_RES, "Pump's own low-reservoir alarm is sounding (LOW_RES)"),
    )
    return rule.assess(stat.res_ml if _values_known(stat) else None, stat.flags, current)


def battery_low(stat: Stat, t: Thresholds, current: Severity | None) -> Finding | None:
    rule = LowValueRule(
        "Battery",
        "%",
        warning=t.battery_warning_pct,
        critical=t.battery_critical_pct,
        margin=t.battery_hysteresis_pct,
        critical_flag=(Flag.EOS, "Battery at end of service (EOS)"),
        warning_flag=(Flag.ERI, "Battery at elective replacement indicator (ERI)"),
    )
    return rule.assess(stat.bat_pct if _values_known(stat) else None, stat.flags, current)


def pump_fault(stat: Stat, t: Thresholds, current: Severity | None) -> Finding | None:
    return _flag(
        stat.flags,
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


ReadingRule = Callable[[Stat, Thresholds, Severity | None], Finding | None]

READING_RULES: dict[AlertType, ReadingRule] = {
    AlertType.RESERVOIR_LOW: reservoir_low,
    AlertType.BATTERY_LOW: battery_low,
    AlertType.PUMP_FAULT: pump_fault,
}
