"""The alert engine: a pure function of (state, input, now, config).

``rules`` holds the thresholds logic (one function per alert type),
``projection`` the derived telemetry, ``core.step`` the episodes.
"""

from gateway.engine.core import initial_state, step
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
    "initial_state",
    "step",
]
