"""The measured drain rate: least-squares slope of reservoir volume over time.

Readings (on the programmer's clock) are kept for ``flow_window_h``. The
window restarts after a refill or a program change; an unknown reading
splits it into segments, and the slope is pooled within segments, so no
interval that contains an unknown reading is used. The rate is established
once the segments together span ``flow_min_span_h``.

Each segment keeps running sums (times relative to the segment's first
reading, so they stay small and exact enough), so adding a reading costs
O(1) plus the readings that fall out of the window.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class _Segment:
    origin: float  # day of the segment's first reading ever
    first: float  # day of its oldest reading still in the window
    last: float
    n: int = 0
    st: float = 0.0
    sv: float = 0.0
    stt: float = 0.0
    stv: float = 0.0

    def plus(self, t: float, v: float, sign: int = 1) -> _Segment:
        x = t - self.origin
        return replace(
            self,
            n=self.n + sign,
            st=self.st + sign * x,
            sv=self.sv + sign * v,
            stt=self.stt + sign * x * x,
            stv=self.stv + sign * x * v,
        )

    @property
    def sxx(self) -> float:
        return self.stt - self.st * self.st / self.n if self.n > 1 else 0.0

    @property
    def sxy(self) -> float:
        return self.stv - self.st * self.sv / self.n if self.n > 1 else 0.0


@dataclass(frozen=True, slots=True)
class DrainWindow:
    points: tuple[tuple[float, float], ...] = ()  # (day, mL), oldest first
    segments: tuple[_Segment, ...] = ()  # consecutive runs of points, oldest first
    split: bool = False  # the next reading starts a new segment

    def add(self, day: float, volume_ml: float, window_days: float) -> DrainWindow:
        if self.points and day <= self.points[-1][0]:
            if day == self.points[-1][0]:
                return self  # the same reading again
            return DrainWindow().add(day, volume_ml, window_days)  # clock went back
        segments = list(self.segments)
        if self.split or not segments:
            segments.append(_Segment(origin=day, first=day, last=day))
        segments[-1] = replace(segments[-1].plus(day, volume_ml), last=day)
        points = (*self.points, (day, volume_ml))
        return DrainWindow(*_forget_before(points, segments, day - window_days), split=False)

    def gap(self, day: float, window_days: float) -> DrainWindow:
        """A reading that is no drain point (unknown, or an empty reservoir):
        the interval across it is not used, and time still moves the window."""
        if not self.points:
            return self
        points, segments = _forget_before(self.points, list(self.segments), day - window_days)
        return DrainWindow(points, segments, split=True)

    def rate_ml_per_day(self, min_span_days: float) -> float | None:
        """The measured drain rate (positive while draining), once established."""
        span = sum(s.last - s.first for s in self.segments)
        sxx = sum(s.sxx for s in self.segments)
        # Days since 1970 carry ~1e-12 of rounding: 12 h must count as 12 h.
        if span < min_span_days - 1e-9 or sxx <= 0:
            return None
        return -sum(s.sxy for s in self.segments) / sxx


def _forget_before(
    points: tuple[tuple[float, float], ...], segments: list[_Segment], cutoff: float
) -> tuple[tuple[tuple[float, float], ...], tuple[_Segment, ...]]:
    """Drop readings older than ``cutoff``; they belong to the oldest segments."""
    drop = 0
    while drop < len(points) and points[drop][0] < cutoff:
        t, v = points[drop]
        oldest = segments[0].plus(t, v, sign=-1)
        drop += 1
        if oldest.n == 0:
            segments.pop(0)
        else:
            segments[0] = replace(oldest, first=points[drop][0])
    return points[drop:], tuple(segments)
