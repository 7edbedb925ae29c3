"""Named scenarios: an initial pump plus scripted changes at simulated times.

A scenario is a pure function of the simulated time elapsed since power-up:
``scenario.model_at(pump_id, elapsed_s)`` replays the script from the
initial model, so the same elapsed time always gives the same pump, whatever
was asked before. Cost: O(number of changes) per call.
"""

from __future__ import annotations

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
class Scenario:
    """``initial.pump_id`` is a placeholder: each pump gets its own id.

    ``noisy_line`` says the serial line corrupts frames; noise is a property
    of the line, so one noisy pump makes the whole line noisy.
    """

    name: str
    initial: PumpModel
    changes: tuple[Change, ...] = ()
    noisy_line: bool = False

    def model_at(self, pump_id: str, elapsed_s: float) -> PumpModel:
        model, now = replace(self.initial, pump_id=pump_id), 0.0
        for change in self.changes:
            if change.at_s > elapsed_s:
                break
            model, now = change.apply(advance(model, change.at_s - now)), change.at_s
        return advance(model, elapsed_s - now)

    def events_between(self, after_s: float, upto_s: float) -> list[PumpEvent]:
        """Events scripted in the interval (after_s, upto_s], in order."""
        return [
            change.event
            for change in self.changes
            if change.event is not None and after_s < change.at_s <= upto_s
        ]


def _days(days: float) -> float:
    return days * SECONDS_PER_DAY


def _refill_at(at_s: float, volume_ml: float) -> Change:
    return Change(at_s, partial(refill, volume_ml=volume_ml), PumpEvent("REFILL", volume_ml))


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
    )
}
