"""Pump physics and scenarios: pure functions of simulated time, no clock, no sleep."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.ptp import Evt, Flag, PollCommand, Stat, StreamDecoder, encode
from drivers.simulator.device import Programmer, SimulatedPump
from drivers.simulator.physics import (
    SECONDS_PER_DAY,
    PumpModel,
    advance,
    battery_voltage,
    refill,
    to_stat,
)
from drivers.simulator.scenarios import SCENARIOS, AutoRefill, PumpEvent

DAY = SECONDS_PER_DAY
T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def at(scenario: str, days: float) -> PumpModel:
    return SCENARIOS[scenario].model_at("PMP-0001", days * DAY)


def test_normal_pump_delivers_dose_over_concentration_per_day() -> None:
    start, one_day = at("normal", 0), at("normal", 1)
    assert start.flow_ml_day == pytest.approx(0.6)
    assert one_day.reservoir_ml == pytest.approx(15.0 - 0.6)
    assert one_day.battery_pct == pytest.approx(80.0 - 0.01)
    assert one_day.flags == Flag(0)


def test_delivery_factor_scales_the_drain() -> None:
    half = replace(at("normal", 0), delivery_factor=0.5)
    assert advance(half, DAY).reservoir_ml == pytest.approx(15.0 - 0.3)


def test_advance_composes_and_is_pure() -> None:
    model = at("normal", 0)
    stepped = advance(advance(model, 1000.0), 2000.0)
    assert stepped.reservoir_ml == pytest.approx(advance(model, 3000.0).reservoir_ml)
    assert model.reservoir_ml == 15.0  # the original is untouched
    assert at("link-loss", 1.0) == at("link-loss", 1.0)


def test_advance_refuses_negative_time() -> None:
    with pytest.raises(ValueError):
        advance(at("normal", 0), -1.0)


def test_low_reservoir_crossing_times() -> None:
    assert at("low-reservoir", 0).flow_ml_day == pytest.approx(1.0)
    assert at("low-reservoir", 1 - 1 / DAY).reservoir_ml > 5.0
    assert at("low-reservoir", 1).reservoir_ml == pytest.approx(5.0)
    assert Flag.LOW_RES not in at("low-reservoir", 4 - 1 / DAY).flags
    assert at("low-reservoir", 4).flags == Flag.LOW_RES
    assert Flag.EMPTY not in at("low-reservoir", 6 - 1 / DAY).flags
    empty = at("low-reservoir", 6)
    assert empty.reservoir_ml == 0.0
    assert empty.flags == Flag.LOW_RES | Flag.EMPTY
    assert at("low-reservoir", 30).reservoir_ml == 0.0  # clamped, stays empty


def test_battery_eri_then_eos_then_clamped() -> None:
    assert at("battery-eri-eos", 0).battery_pct == 30.0
    assert Flag.ERI not in at("battery-eri-eos", 2.5 - 1 / DAY).flags
    assert at("battery-eri-eos", 2.5).flags == Flag.ERI
    assert Flag.EOS not in at("battery-eri-eos", 6.25 - 1 / DAY).flags
    assert at("battery-eri-eos", 6.25).flags == Flag.ERI | Flag.EOS
    assert at("battery-eri-eos", 10).battery_pct == 0.0
    assert at("battery-eri-eos", 10).reservoir_ml == pytest.approx(15.0 - 6.0)


def test_bat_pct_reads_20_or_less_exactly_when_eri_is_set() -> None:
    before = to_stat(at("battery-eri-eos", 2.5 - 60 / DAY), 0, T0)
    after = to_stat(at("battery-eri-eos", 2.5), 0, T0)
    assert (before.bat_pct, before.flags) == (21, Flag(0))
    assert (after.bat_pct, after.flags) == (20, Flag.ERI)


def test_motor_stall_stops_delivery() -> None:
    assert Flag.MOTOR_STALL not in at("motor-stall", 0.5 - 1 / DAY).flags
    stalled = at("motor-stall", 0.5)
    assert stalled.flags == Flag.MOTOR_STALL
    assert stalled.reservoir_ml == pytest.approx(15.0 - 0.3)
    assert at("motor-stall", 5).reservoir_ml == stalled.reservoir_ml
    assert at("motor-stall", 5).battery_pct < stalled.battery_pct  # electronics still run


def test_link_loss_freezes_the_readings_then_recovers() -> None:
    last_known = to_stat(at("link-loss", 0.5 - 1 / DAY), 7, T0)
    lost_early, lost_late = (to_stat(at("link-loss", d), 7, T0) for d in (0.5, 1.4))
    assert lost_early.flags == lost_late.flags == Flag.NO_LINK
    assert lost_late.res_ml == lost_early.res_ml == pytest.approx(15.0 - 0.3)
    assert lost_late.res_ml == pytest.approx(last_known.res_ml or 0, abs=0.01)
    back = to_stat(at("link-loss", 1.5), 7, T0)
    assert back.flags == Flag(0)
    assert back.res_ml == pytest.approx(15.0 - 0.9)  # the pump kept delivering meanwhile


def test_refill_restores_the_reservoir_and_is_an_event() -> None:
    scenario = SCENARIOS["refill"]
    assert at("refill", 1.5 - 1 / DAY).flags == Flag.LOW_RES
    refilled = at("refill", 1.5)
    assert refilled.reservoir_ml == pytest.approx(19.8)
    assert refilled.flags == Flag(0)
    assert at("refill", 2.5).reservoir_ml == pytest.approx(18.8)
    assert scenario.events_between(0, 1.5 * DAY) == [PumpEvent("REFILL", 19.8)]
    assert scenario.events_between(0, 1.5 * DAY - 1) == []
    assert scenario.events_between(1.5 * DAY, 9 * DAY) == []


def test_refill_beyond_capacity_is_refused() -> None:
    with pytest.raises(ValueError):
        refill(at("normal", 0), 20.5)


def test_stat_rounds_and_converts() -> None:
    stat = to_stat(at("normal", 1 / 3), 42, T0)
    assert stat.seq == 42
    assert stat.pump_id == "PMP-0001"
    assert stat.time == T0
    assert stat.res_ml == 14.8
    assert (stat.cap_ml, stat.lra_ml, stat.dose_mcg_day, stat.conc_mcg_ml) == (20, 2, 300, 500)
    assert stat.bat_pct == 80
    assert stat.bat_v == battery_voltage(80.0 - 0.01 / 3) == 2.98
    assert battery_voltage(0.0) == 2.5
    assert battery_voltage(100.0) == 3.1


def test_every_scenario_is_known_by_its_name() -> None:
    assert set(SCENARIOS) == {
        "normal",
        "low-reservoir",
        "battery-eri-eos",
        "motor-stall",
        "link-loss",
        "noisy-line",
        "refill",
        "refill-cycle",
        "over-infusion",
        "catheter-occlusion",
        "wrong-concentration",
    }
    assert [name for name, s in SCENARIOS.items() if s.noisy_line] == ["noisy-line"]


CYCLE = 7.75  # days from a full 20.0 mL down to 4.5 mL at 2.0 mL/day


def test_refill_cycle_numbers() -> None:
    start = at("refill-cycle", 0)
    assert (start.capacity_ml, start.lra_ml, start.reservoir_ml) == (20.0, 2.0, 20.0)
    assert (start.dose_mcg_day, start.conc_mcg_ml, start.battery_pct) == (1000.0, 500.0, 80.0)
    assert start.flow_ml_day == 2.0
    assert SCENARIOS["refill-cycle"].auto_refill == AutoRefill(at_or_below_ml=4.5, volume_ml=20.0)


@pytest.mark.parametrize("cycle", [0, 1, 2, 57, 200])
def test_refill_cycle_crosses_the_clinical_thresholds_then_refills_to_full(cycle: int) -> None:
    begin = cycle * CYCLE
    assert at("refill-cycle", begin).reservoir_ml == pytest.approx(20.0)
    # 16 mL: 7 days to the 2.0 mL alarm (refill due, warning)
    assert at("refill-cycle", begin + 2.0 - 1 / DAY).reservoir_ml > 16.0
    assert at("refill-cycle", begin + 2.0 + 1 / DAY).reservoir_ml < 16.0
    # 6 mL: 2 days to the alarm (refill due, critical)
    assert at("refill-cycle", begin + 7.0 - 1 / DAY).reservoir_ml > 6.0
    assert at("refill-cycle", begin + 7.0 + 1 / DAY).reservoir_ml < 6.0
    # 5 mL: reservoir low (warning)
    assert at("refill-cycle", begin + 7.5 - 1 / DAY).reservoir_ml > 5.0
    assert at("refill-cycle", begin + 7.5 + 1 / DAY).reservoir_ml < 5.0
    assert at("refill-cycle", begin + CYCLE - 1 / DAY).reservoir_ml == pytest.approx(4.5, abs=1e-4)
    assert at("refill-cycle", begin + CYCLE - 1 / DAY).reservoir_ml > 4.5
    assert at("refill-cycle", begin + CYCLE - 1 / DAY).flags == Flag(0)
    refilled = at("refill-cycle", begin + CYCLE)
    assert refilled.reservoir_ml == pytest.approx(20.0)
    assert refilled.flags == Flag(0)  # never down to the 2.0 mL alarm
    assert refilled.battery_pct == pytest.approx(80.0 - 0.01 * (begin + CYCLE))


def test_refill_cycle_reports_one_refill_per_cycle() -> None:
    scenario, event = SCENARIOS["refill-cycle"], PumpEvent("REFILL", 20.0)
    assert scenario.events_between(0, CYCLE * DAY - 1) == []
    assert scenario.events_between(0, CYCLE * DAY) == [event]
    assert scenario.events_between(CYCLE * DAY, 2 * CYCLE * DAY - 1) == []
    assert scenario.events_between(CYCLE * DAY, 2 * CYCLE * DAY) == [event]
    assert scenario.events_between(0, 40 * DAY) == [event] * 5  # 7.75, 15.5, 23.25, 31, 38.75
    assert len(scenario.events_between(0, 100 * DAY)) == 12  # the 12th at 93 days


@given(
    times=st.lists(st.floats(min_value=0, max_value=240 * DAY), min_size=3, max_size=3).map(sorted)
)
def test_refill_cycle_events_add_up_and_match_the_reservoir(times: list[float]) -> None:
    a, b, c = times
    scenario = SCENARIOS["refill-cycle"]
    whole = scenario.events_between(a, c)
    assert scenario.events_between(a, b) + scenario.events_between(b, c) == whole
    assert len(scenario.events_between(0, c)) == int(c // (CYCLE * DAY))
    model = scenario.model_at("PMP-0001", c)
    assert 4.5 < model.reservoir_ml <= 20.0 or model.reservoir_ml == pytest.approx(4.5)
    since_refill_days = (c % (CYCLE * DAY)) / DAY
    assert model.reservoir_ml == pytest.approx(20.0 - 2.0 * since_refill_days, abs=1e-6)


def test_refill_cycle_event_comes_with_the_next_stat() -> None:
    device = Programmer(
        [SimulatedPump("PMP-0001", SCENARIOS["refill-cycle"])], start_time=T0, speed=1.0, now=0.0
    )
    device.power_cycle()

    def poll(days: float) -> list[object]:
        return list(StreamDecoder().feed(device.receive(encode(PollCommand()), days * DAY)))

    first = [m for m in poll(7.6) if isinstance(m, Stat)]
    assert [s.res_ml for s in first] == [4.8]
    second = poll(7.8)
    assert [(type(m), getattr(m, "res_ml", None)) for m in second[:2]] == [
        (Evt, None),
        (Stat, 19.9),
    ]
    evt = second[0]
    assert isinstance(evt, Evt) and (evt.kind, evt.detail) == ("REFILL", 20.0)
    assert not any(isinstance(m, Evt) for m in poll(7.9))
    assert sum(isinstance(m, Evt) for m in poll(7.9 + 2 * CYCLE)) == 2


def test_auto_refill_must_refill_above_its_threshold() -> None:
    with pytest.raises(ValueError):
        AutoRefill(at_or_below_ml=4.5, volume_ml=4.5)


@pytest.mark.parametrize(
    ("name", "flow", "after_one_day"),
    [("over-infusion", 0.75, 14.25), ("catheter-occlusion", 0.18, 14.82)],
)
def test_delivery_faults_drain_at_the_wrong_rate_unseen(
    name: str, flow: float, after_one_day: float
) -> None:
    assert at(name, 0).flow_ml_day == pytest.approx(flow)
    stat = to_stat(at(name, 1), 0, T0)
    assert stat.res_ml == pytest.approx(after_one_day)
    # The STAT still says 300 mcg/day at 500 mcg/mL, i.e. 0.6 mL/day, and no flag.
    assert (stat.cap_ml, stat.lra_ml, stat.dose_mcg_day, stat.conc_mcg_ml) == (20, 2, 300, 500)
    assert stat.flags == Flag(0) and stat.bat_pct == 80
    assert SCENARIOS[name].events_between(0, 30 * DAY) == []


def test_wrong_concentration_refill() -> None:
    scenario = SCENARIOS["wrong-concentration"]
    before = to_stat(at("wrong-concentration", 1 - 1 / DAY), 0, T0)
    assert before.res_ml == pytest.approx(3.4)
    assert (before.dose_mcg_day, before.conc_mcg_ml) == (300, 500)
    after = to_stat(at("wrong-concentration", 1), 0, T0)
    assert (after.res_ml, after.dose_mcg_day, after.conc_mcg_ml) == (19.5, 300, 2000)
    assert at("wrong-concentration", 1).flow_ml_day == pytest.approx(0.15)
    assert at("wrong-concentration", 3).reservoir_ml == pytest.approx(19.5 - 0.3)
    assert scenario.events_between(0, DAY) == [PumpEvent("REFILL", 19.5)]
    assert scenario.events_between(0, DAY - 1) == []
    assert scenario.events_between(DAY, 30 * DAY) == []


def test_refill_with_another_concentration() -> None:
    model = refill(at("normal", 0), 10.0, conc_mcg_ml=1000.0)
    assert (model.reservoir_ml, model.conc_mcg_ml, model.dose_mcg_day) == (10.0, 1000.0, 300.0)
    assert refill(model, 12.0).conc_mcg_ml == 1000.0
    with pytest.raises(ValueError):
        refill(model, 12.0, conc_mcg_ml=0.0)


@given(
    name=st.sampled_from(sorted(SCENARIOS)),
    elapsed_s=st.floats(min_value=0, max_value=400 * DAY),
    seq=st.integers(min_value=0, max_value=65535),
)
def test_any_scenario_at_any_time_gives_a_valid_stat(name: str, elapsed_s: float, seq: int) -> None:
    stat = to_stat(SCENARIOS[name].model_at("PMP-0001", elapsed_s), seq, T0)
    assert StreamDecoder().feed(encode(stat)) == [stat]
