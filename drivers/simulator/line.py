"""The serial line between programmer and gateway: clean, or deterministically noisy.

A line turns the frames the programmer sends into the bytes that arrive.
``NoisyLine`` corrupts about one frame in four with a seeded RNG, in ways a
receiver must always catch; it never yields a CRC-valid frame whose content
differs from what was sent:

- a flipped byte: one BODY byte replaced by another printable byte (not ``$``
  or ``*``); CRC-16 detects every single-byte error, so the CRC fails;
- a truncation: the frame is cut before its ``\\n``, at least one byte after
  its ``$``; the next frame's ``$`` abandons it;
- noise: bytes without ``$`` or ``\\n`` inserted before the frame, skipped by
  the receiver (or, after a truncated frame, abandoned with it).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

CORRUPTION_RATE = 0.25
_FLIP_ALPHABET = bytes(b for b in range(0x20, 0x7F) if b not in b"$*")
_NOISE_ALPHABET = bytes(b for b in range(0x100) if b not in b"$\n")
_MAX_NOISE = 16


class Line(Protocol):
    def transmit(self, frames: Sequence[bytes]) -> bytes:
        """The bytes that arrive at the other end for these whole frames."""
        ...


class CleanLine:
    def transmit(self, frames: Sequence[bytes]) -> bytes:
        return b"".join(frames)


class NoisyLine:
    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def transmit(self, frames: Sequence[bytes]) -> bytes:
        return b"".join(self._corrupt(frame) for frame in frames)

    def _corrupt(self, frame: bytes) -> bytes:
        if self._rng.random() >= CORRUPTION_RATE:
            return frame
        corruption = self._rng.choice((self._flip_byte, self._truncate, self._prepend_noise))
        return corruption(frame)

    def _flip_byte(self, frame: bytes) -> bytes:
        position = self._rng.randrange(1, frame.index(b"*"))  # inside BODY
        original = frame[position]
        replacement = self._rng.choice([b for b in _FLIP_ALPHABET if b != original])
        return frame[:position] + bytes((replacement,)) + frame[position + 1 :]

    def _truncate(self, frame: bytes) -> bytes:
        return frame[: self._rng.randrange(2, len(frame))]

    def _prepend_noise(self, frame: bytes) -> bytes:
        noise = bytes(self._rng.choices(_NOISE_ALPHABET, k=self._rng.randint(1, _MAX_NOISE)))
        return noise + frame
