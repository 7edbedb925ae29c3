"""The alert engine: a pure function of (state, input, now, config).

``rules`` holds the thresholds logic (one function per alert type),
``projection`` the derived telemetry, ``core.step`` the episodes.
"""

from gateway.engine.core import initial_state, step
from gateway.engine.snapshot import dump_state, restore_state
from gateway.engine.state import (
    Acknowledge,
    EngineInput,
    EngineState,
    InvalidData,
    Lifecycle,
    LinkChanged,
    Outcome,
    ProgrammerRestarted,
    PumpEventReceived,
    PumpTrack,
    Reading,
    Tick,
)

__all__ = [
    "Acknowledge",
    "EngineInput",
    "EngineState",
    "InvalidData",
    "Lifecycle",
    "LinkChanged",
    "Outcome",
    "ProgrammerRestarted",
    "PumpEventReceived",
    "PumpTrack",
    "Reading",
    "Tick",
    "dump_state",
    "initial_state",
    "restore_state",
    "step",
]
