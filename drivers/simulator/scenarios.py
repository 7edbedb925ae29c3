"""Named scenarios: an initial pump plus scripted changes at simulated times.

A scenario is a pure function of the simulated time elapsed since power-up:
``scenario.model_at(pump_id, elapsed_s)`` replays the script from the
initial model, so the same elapsed time always gives the same pump, whatever
was asked before. Cost: O(number of changes) per call.

A scenario may also refill the pump automatically (``AutoRefill``) whenever
its reservoir falls to a threshold, forever. Between two scripted changes the
flow is constant, so those refill times are computed, not stepped through:
they cost O(1) per stretch between changes (plus one per event returned).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from drivers.simulator.physics import (
    SECONDS_PER_DAY,
    PumpModel,
    advance,
    lose_link,
    refill,
    restore_link,
    stall,
)


@dataclass(frozen=True, slots=True)
class PumpEvent:
    """Something that happens to a pump, reported as ``EVT,...,<kind>,<detail>``."""

    kind: str
    detail: float | None


@dataclass(frozen=True, slots=True)
class Change:
    """At ``at_s`` simulated seconds after power-up, ``apply`` changes the pump."""

    at_s: float
    apply: Callable[[PumpModel], PumpModel]
    event: PumpEvent | None = None


@dataclass(frozen=True, slots=True)
class AutoRefill:
    """Whenever the reservoir falls to ``at_or_below_ml``, it is refilled to ``volume_ml``
    at once (same drug), reported as ``EVT,...,REFILL,<volume_ml>``; for as long as the
    pump runs."""

    at_or_below_ml: float
    volume_ml: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.at_or_below_ml < self.volume_ml:
            raise ValueError(f"refill to {self.volume_ml} mL at {self.at_or_below_ml} mL")

    @property
    def event(self) -> PumpEvent:
        return PumpEvent("REFILL", self.volume_ml)


@dataclass(frozen=True, slots=True)
class _Refills:
    """Automatic refills at ``first_s + k * period_s`` for k = 0 .. ``count`` - 1."""

    first_s: float
    period_s: float  # > 0; math.inf when the pump does not drain
    count: int

    def at(self, k: int) -> float:
        return self.first_s + k * self.period_s if k else self.first_s

    def first_later_than(self, time_s: float) -> int:
        """Index of the first refill later than ``time_s``; ``count`` when there is none."""
        k = min(max(0, math.floor((time_s - self.first_s) / self.period_s) + 1), self.count)
        # The rounded quotient can put k one off: settle it on the times themselves.
        while k > 0 and self.at(k - 1) > time_s:
            k -= 1
        while k < self.count and self.at(k) <= time_s:
            k += 1
        return k


_NO_REFILLS = _Refills(0.0, math.inf, 0)


@dataclass(frozen=True, slots=True)
class Scenario:
    """``initial.pump_id`` is a placeholder: each pump gets its own id.

    ``noisy_line`` says the serial line corrupts frames; noise is a property
    of the line, so one noisy pump makes the whole line noisy.
    """

    name: str
    initial: PumpModel
    changes: tuple[Change, ...] = ()
    noisy_line: bool = False
    auto_refill: AutoRefill | None = None

    def model_at(self, pump_id: str, elapsed_s: float) -> PumpModel:
        model, now = replace(self.initial, pump_id=pump_id), 0.0
        for change in self.changes:
            if change.at_s > elapsed_s:
                break
            model, now = change.apply(self._run(model, now, change.at_s)), change.at_s
        return self._run(model, now, elapsed_s)

    def events_between(self, after_s: float, upto_s: float) -> list[PumpEvent]:
        """Events in the interval (after_s, upto_s], scripted and automatic, in order."""
        events: list[PumpEvent] = []
        model, now = self.initial, 0.0
        for change in self.changes:
            if change.at_s > upto_s:
                break
            events += self._refill_events(model, now, change.at_s, after_s)
            if change.event is not None and after_s < change.at_s:
                events.append(change.event)
            model, now = change.apply(self._run(model, now, change.at_s)), change.at_s
        return events + self._refill_events(model, now, upto_s, after_s)

    def _run(self, model: PumpModel, start_s: float, end_s: float) -> PumpModel:
        """The pump at ``end_s``, from ``model`` at ``start_s`` with no scripted change
        between: drained, and refilled automatically."""
        refills = self._refills(model, start_s, end_s)
        if self.auto_refill is None or refills.count == 0:
            return advance(model, end_s - start_s)
        last_s = refills.at(refills.count - 1)
        refilled = refill(advance(model, last_s - start_s), self.auto_refill.volume_ml)
        return advance(refilled, end_s - last_s)

    def _refill_events(
        self, model: PumpModel, start_s: float, end_s: float, after_s: float
    ) -> list[PumpEvent]:
        """The automatic refills of ``_run(model, start_s, end_s)`` later than ``after_s``."""
        if self.auto_refill is None:
            return []
        refills = self._refills(model, start_s, end_s)
        return [self.auto_refill.event] * (refills.count - refills.first_later_than(after_s))

    def _refills(self, model: PumpModel, start_s: float, end_s: float) -> _Refills:
        """When, in [start_s, end_s], the pump starting as ``model`` is refilled automatically."""
        rule = self.auto_refill
        if rule is None or end_s < start_s:
            return _NO_REFILLS
        flow = model.flow_ml_day
        if model.reservoir_ml <= rule.at_or_below_ml:
            first_s = start_s
        elif flow > 0.0:
            first_s = start_s + (model.reservoir_ml - rule.at_or_below_ml) / flow * SECONDS_PER_DAY
        else:
            return _NO_REFILLS
        if first_s > end_s:
            return _NO_REFILLS
        period_s = (
            (rule.volume_ml - rule.at_or_below_ml) / flow * SECONDS_PER_DAY
            if flow > 0.0
            else math.inf
        )
        endless = _Refills(first_s, period_s, sys.maxsize)
        return replace(endless, count=endless.first_later_than(end_s))


def _days(days: float) -> float:
    return days * SECONDS_PER_DAY


def _refill_at(at_s: float, volume_ml: float, conc_mcg_ml: float | None = None) -> Change:
    return Change(
        at_s,
        partial(refill, volume_ml=volume_ml, conc_mcg_ml=conc_mcg_ml),
        PumpEvent("REFILL", volume_ml),
    )


_NORMAL = PumpModel(
    pump_id="PMP-0001",
    capacity_ml=20.0,
    lra_ml=2.0,
    reservoir_ml=15.0,
    dose_mcg_day=300.0,
    conc_mcg_ml=500.0,
    battery_pct=80.0,
    battery_drain_pct_day=0.01,
)
_ONE_ML_PER_DAY = replace(_NORMAL, dose_mcg_day=500.0)

SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario("normal", _NORMAL),
        Scenario("low-reservoir", replace(_ONE_ML_PER_DAY, reservoir_ml=6.0)),
        Scenario("battery-eri-eos", replace(_NORMAL, battery_pct=30.0, battery_drain_pct_day=4.0)),
        Scenario("motor-stall", _NORMAL, (Change(_days(0.5), stall),)),
        Scenario(
            "link-loss",
            _NORMAL,
            (Change(_days(0.5), lose_link), Change(_days(1.5), restore_link)),
        ),
        Scenario("noisy-line", _NORMAL, noisy_line=True),
        Scenario(
            "refill",
            replace(_ONE_ML_PER_DAY, reservoir_ml=3.0),
            (_refill_at(_days(1.5), 19.8),),
        ),
        # 2.0 mL/day from a full 20.0 mL, refilled to 20.0 at 4.5 mL: every 7.75
        # days a refill. Each round: refill due (16 mL: 7 days to the 2 mL alarm)
        # at +2 d, critical (6 mL) at +7 d, reservoir low (5 mL) at +7.5 d, refill.
        Scenario(
            "refill-cycle",
            replace(_NORMAL, reservoir_ml=20.0, dose_mcg_day=1000.0),
            auto_refill=AutoRefill(at_or_below_ml=4.5, volume_ml=20.0),
        ),
        Scenario("over-infusion", replace(_NORMAL, delivery_factor=1.25)),
        Scenario("catheter-occlusion", replace(_NORMAL, delivery_factor=0.3)),
        # 0.6 mL/day from 4.0 mL; at day 1 refilled (3.4 -> 19.5 mL) with a drug
        # four times as strong, so 0.15 mL/day from then on.
        Scenario(
            "wrong-concentration",
            replace(_NORMAL, reservoir_ml=4.0),
            (_refill_at(_days(1.0), 19.5, conc_mcg_ml=2000.0),),
        ),
    )
}
