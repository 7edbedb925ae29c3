"""The sans-IO programmer: commands in, frames out, with an injected monotonic clock."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from drivers.ptp import (
    Alrm,
    DecodedItem,
    Err,
    Evt,
    Flag,
    FrameDiscarded,
    Hello,
    IdCommand,
    Message,
    Ok,
    PollCommand,
    ProtocolError,
    Stat,
    StreamCommand,
    StreamDecoder,
    TimeCommand,
    crc16,
    encode,
)
from drivers.simulator.device import (
    MIN_STREAM_PERIOD_S,
    Programmer,
    SimulatedPump,
    alarm_changes,
)
from drivers.simulator.line import NoisyLine
from drivers.simulator.physics import SECONDS_PER_DAY
from drivers.simulator.scenarios import SCENARIOS

START = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def programmer(*scenarios: str, speed: float = 1.0, seed: int = 0) -> Programmer:
    pumps = [SimulatedPump(f"PMP-{i:04d}", SCENARIOS[name]) for i, name in enumerate(scenarios, 1)]
    return Programmer(pumps, start_time=START, speed=speed, now=0.0, seed=seed)


def frame(body: bytes) -> bytes:
    """A host frame with a good CRC around any body, valid or not."""
    return b"$%s*%04X\r\n" % (body, crc16(body))


def decode(data: bytes) -> list[DecodedItem]:
    return StreamDecoder(role="host").feed(data)


def ask(device: Programmer, command: Message, now: float = 0.0) -> list[DecodedItem]:
    return decode(device.receive(encode(command), now))


def test_power_up_sends_an_unprompted_hello() -> None:
    assert decode(programmer("normal", "refill").power_cycle()) == [
        Hello(1, "SIMU", "SIM-PTP1", "SIM00001", "0.1.0", 2)
    ]


def test_id_answers_hello() -> None:
    assert ask(programmer("normal"), IdCommand()) == [
        Hello(1, "SIMU", "SIM-PTP1", "SIM00001", "0.1.0", 1)
    ]


def test_poll_all_sends_one_stat_per_pump_then_ok() -> None:
    answer = ask(programmer("normal", "low-reservoir"), PollCommand())
    assert [type(m) for m in answer] == [Stat, Stat, Ok]
    first, second, ok = answer
    assert isinstance(first, Stat) and isinstance(second, Stat)
    assert (first.seq, first.pump_id, first.res_ml, first.time) == (0, "PMP-0001", 15.0, START)
    assert (second.seq, second.pump_id, second.res_ml) == (1, "PMP-0002", 6.0)
    assert ok == Ok("POLL")


def test_poll_one_pump() -> None:
    answer = ask(programmer("normal", "low-reservoir"), PollCommand("PMP-0002"))
    assert [(type(m), getattr(m, "pump_id", None)) for m in answer] == [
        (Stat, "PMP-0002"),
        (Ok, None),
    ]


def test_poll_unknown_pump_is_nopump() -> None:
    assert ask(programmer("normal"), PollCommand("PMP-0009")) == [
        Err("POLL", "NOPUMP", "no such pump")
    ]


@pytest.mark.parametrize(
    ("body", "command", "code"),
    [
        (b"FOO", "FOO", "BADCMD"),
        (b"HELLO,1,A,B,C,D,1", "HELLO", "BADCMD"),  # a device message is no command
        (b"STREAM,5000", "STREAM", "BADARG"),
        (b"STREAM,abc", "STREAM", "BADARG"),
        (b"STREAM", "STREAM", "BADARG"),
        (b"POLL,pmp-1", "POLL", "BADARG"),
        (b"TIME,yesterday", "TIME", "BADARG"),
        (b"ID,1", "ID", "BADARG"),
        (b"X" * 240, "X" * 16, "BADCMD"),
    ],
)
def test_bad_commands_are_answered_with_err(body: bytes, command: str, code: str) -> None:
    [answer] = decode(programmer("normal").receive(frame(body), 0.0))
    assert isinstance(answer, Err)
    assert (answer.command, answer.code) == (command, code)
    assert answer.text


def test_time_outside_the_clock_range_is_badarg() -> None:
    [answer] = ask(programmer("normal"), TimeCommand(datetime(2100, 1, 1, tzinfo=UTC)))
    assert isinstance(answer, Err) and (answer.command, answer.code) == ("TIME", "BADARG")


def test_frames_with_bad_crc_are_dropped_silently_and_counted() -> None:
    device = programmer("normal")
    assert device.receive(b"$ID*0000\r\n$POLL*12\r\n", 0.0) == b""
    assert device.host_counters.frames_discarded == 2
    assert decode(device.receive(encode(IdCommand())[:3], 0.0)) == []  # split anywhere
    assert [type(m) for m in decode(device.receive(encode(IdCommand())[3:], 0.0))] == [Hello]


def test_stream_sends_every_interval_of_simulated_time() -> None:
    device = programmer("normal", "normal", speed=2.0)
    assert device.next_due() is None
    assert device.on_due(100.0) == b""
    assert ask(device, StreamCommand(60), now=10.0) == [Ok("STREAM")]
    assert device.next_due() == 10.0
    first = decode(device.on_due(10.0))
    assert [(m.seq, m.pump_id) for m in first if isinstance(m, Stat)] == [
        (0, "PMP-0001"),
        (1, "PMP-0002"),
    ]
    assert device.next_due() == 40.0  # 60 simulated seconds at speed 2
    assert device.on_due(39.9) == b""
    second = decode(device.on_due(40.0))
    assert [m.seq for m in second if isinstance(m, Stat)] == [2, 3]
    assert [m.time for m in second if isinstance(m, Stat)] == [
        datetime(2026, 11, 30, 8, 1, 20, tzinfo=UTC)
    ] * 2


def test_stream_skips_batches_missed_while_late() -> None:
    device = programmer("normal")
    device.receive(encode(StreamCommand(10)), 0.0)
    device.on_due(0.0)
    assert len(decode(device.on_due(95.0))) == 1
    assert device.next_due() == 105.0


def test_stream_is_never_faster_than_the_minimum_real_period() -> None:
    device = programmer("normal", speed=100_000.0)
    device.receive(encode(StreamCommand(1)), 5.0)
    device.on_due(5.0)
    assert device.next_due() == pytest.approx(5.0 + MIN_STREAM_PERIOD_S)


def test_stream_zero_stops() -> None:
    device = programmer("normal")
    device.receive(encode(StreamCommand(60)), 0.0)
    assert ask(device, StreamCommand(0), now=1.0) == [Ok("STREAM")]
    assert device.next_due() is None
    assert device.on_due(1000.0) == b""


def test_time_sets_the_clock_but_not_the_pumps() -> None:
    device = programmer("normal", speed=60.0)
    new_time = datetime(2030, 1, 1, tzinfo=UTC)
    assert ask(device, TimeCommand(new_time), now=60.0) == [Ok("TIME")]
    stat, _ = ask(device, PollCommand(), now=120.0)
    assert isinstance(stat, Stat)
    assert stat.time == datetime(2030, 1, 1, 1, 0, tzinfo=UTC)
    expected = SCENARIOS["normal"].model_at("PMP-0001", 120.0 * 60.0).reservoir_ml
    assert stat.res_ml == round(expected, 2)


def test_alarms_come_right_before_the_stat_that_shows_them() -> None:
    device = programmer("low-reservoir", speed=SECONDS_PER_DAY)  # one day per second
    assert [type(m) for m in ask(device, PollCommand(), now=0.0)] == [Stat, Ok]
    low = ask(device, PollCommand(), now=4.0)
    assert low[:2] == [
        Alrm(1, "PMP-0001", datetime(2026, 12, 4, 8, 0, tzinfo=UTC), "LOWRES", "SET"),
        low[1],
    ]
    assert isinstance(low[1], Stat) and low[1].seq == 2 and low[1].flags == Flag.LOW_RES
    empty = ask(device, PollCommand(), now=7.0)
    assert [(m.code, m.action) for m in empty if isinstance(m, Alrm)] == [("EMPTY", "SET")]
    assert [type(m) for m in ask(device, PollCommand(), now=8.0)] == [Stat, Ok]  # no change


def test_refill_event_then_cleared_alarm_then_stat() -> None:
    device = programmer("refill", speed=SECONDS_PER_DAY)
    ask(device, PollCommand(), now=1.2)  # LOWRES SET, STAT
    answer = ask(device, PollCommand(), now=2.0)
    assert [type(m) for m in answer] == [Evt, Alrm, Stat, Ok]
    evt, alrm, stat, _ = answer
    assert isinstance(evt, Evt) and (evt.kind, evt.detail, evt.pump_id) == (
        "REFILL",
        19.8,
        "PMP-0001",
    )
    assert isinstance(alrm, Alrm) and (alrm.code, alrm.action) == ("LOWRES", "CLR")
    assert isinstance(stat, Stat) and stat.res_ml == pytest.approx(19.3)
    assert [evt.seq, alrm.seq, stat.seq] == [2, 3, 4]
    assert encode(evt).startswith(b"$EVT,2,PMP-0001,2026-12-02T08:00:00Z,REFILL,19.8*")


def test_link_loss_alarm_and_frozen_readings() -> None:
    device = programmer("link-loss", speed=SECONDS_PER_DAY)
    lost = ask(device, PollCommand(), now=1.0)
    assert [(m.code, m.action) for m in lost if isinstance(m, Alrm)] == [("LINK", "SET")]
    stat = next(m for m in lost if isinstance(m, Stat))
    assert stat.flags == Flag.NO_LINK and stat.res_ml == 14.7
    back = ask(device, PollCommand(), now=2.0)
    assert [(m.code, m.action) for m in back if isinstance(m, Alrm)] == [("LINK", "CLR")]


def test_alarm_changes_name_each_flag_that_moved() -> None:
    assert alarm_changes(Flag.ERI | Flag.NO_LINK, Flag.ERI | Flag.EOS | Flag.LOW_RES) == [
        ("EOS", "SET"),
        ("LOWRES", "SET"),
        ("LINK", "CLR"),
    ]
    assert alarm_changes(Flag(0), Flag.SUSPENDED) == []  # SUSPENDED has no ALRM code


def test_power_cycle_restarts_seq_stops_streaming_and_reannounces_alarms() -> None:
    device = programmer("motor-stall", speed=SECONDS_PER_DAY)
    device.receive(encode(StreamCommand(60)), 1.0)
    assert len(decode(device.on_due(1.0))) == 2  # ALRM STALL SET, STAT
    assert decode(device.power_cycle()) == [Hello(1, "SIMU", "SIM-PTP1", "SIM00001", "0.1.0", 1)]
    assert device.next_due() is None
    alrm, stat, _ = ask(device, PollCommand(), now=2.0)
    assert isinstance(alrm, Alrm) and (alrm.seq, alrm.code) == (0, "STALL")
    assert isinstance(stat, Stat) and stat.seq == 1


def test_seq_wraps_after_65535() -> None:
    pumps = 16
    device = programmer(*["normal"] * pumps)
    device.receive(encode(StreamCommand(1)), 0.0)
    data = b"".join(device.on_due(float(t)) for t in range(65536 // pumps))
    last = decode(data[-400:])
    assert [m.seq for m in last if isinstance(m, Stat)][-1] == 65535
    wrapped = decode(device.on_due(float(65536 // pumps)))
    assert [m.seq for m in wrapped if isinstance(m, Stat)][:2] == [0, 1]


def test_programmer_refuses_impossible_setups() -> None:
    normal = SCENARIOS["normal"]
    with pytest.raises(ValueError):
        Programmer([], start_time=START, speed=1.0, now=0.0)
    with pytest.raises(ValueError):
        Programmer([SimulatedPump("A", normal)] * 2, start_time=START, speed=1.0, now=0.0)
    with pytest.raises(ValueError):
        Programmer([SimulatedPump("A", normal)], start_time=START, speed=0.0, now=0.0)
    with pytest.raises(ValueError):
        Programmer(
            [SimulatedPump("A", normal)],
            start_time=datetime(1999, 1, 1, tzinfo=UTC),
            speed=1.0,
            now=0.0,
        )


def stream_output(device: Programmer, batches: int) -> bytes:
    out = device.receive(encode(StreamCommand(60)), 0.0)
    return out + b"".join(device.on_due(t * 60.0) for t in range(batches))


def is_subsequence(needles: Sequence[object], haystack: Sequence[object]) -> bool:
    remaining = iter(haystack)
    return all(any(n == h for h in remaining) for n in needles)


def test_noisy_line_corrupts_frames_but_never_forges_one() -> None:
    noisy = stream_output(programmer("noisy-line", "normal", seed=7), 400)
    clean = stream_output(programmer("normal", "normal"), 400)
    decoder = StreamDecoder(role="host")
    received = decoder.feed(noisy)
    sent = decode(clean)
    messages = [m for m in received if not isinstance(m, FrameDiscarded)]
    assert not any(isinstance(m, ProtocolError) for m in received)
    assert decoder.counters.protocol_errors == 0
    assert 0.1 * len(sent) < decoder.counters.frames_discarded < 0.4 * len(sent)
    assert len(messages) > 0.6 * len(sent)
    assert is_subsequence(messages, sent)  # every frame that decodes is one that was sent


def test_noisy_line_is_deterministic_for_a_seed() -> None:
    frames = [encode(Ok("POLL"))] * 50
    assert NoisyLine(3).transmit(frames) == NoisyLine(3).transmit(frames)
    assert NoisyLine(3).transmit(frames) != NoisyLine(4).transmit(frames)
