"""Timing: back-to-back calls after a warm-up, each timed by its own pair of marks, summarised as the
median and the spread.

GPU: CUDA events recorded on the run's stream between calls (engines/cuda.py: no torch), read after one
synchronisation at the end, so the host never waits between calls and a host-bound call shows up as the
gaps it leaves on the device. CPU: perf_counter (the CPU runs synchronously anyway).

    clock = EventClock(stream) if gpu else HostClock()
    stats = time_calls(lambda: backend.forward(16), clock, TimingOptions(runs=30, warmup=5))
    stats.median_ms, stats.iqr_ms, stats.runs
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

MIN_RUNS = 20  # the fewest timed runs whose median is worth quoting


@dataclass(frozen=True)
class TimingOptions:
    runs: int = 30  # timed calls
    warmup: int = 5  # untimed calls first (allocator, autotuning, clocks ramping up)

    def __post_init__(self) -> None:
        if isinstance(self.runs, bool) or not isinstance(self.runs, int) or self.runs < MIN_RUNS:
            raise ValueError(
                f"timed runs must be an int >= {MIN_RUNS} (a median and spread need them), got {self.runs!r}"
            )
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 1:
            raise ValueError(f"warm-up runs must be an int >= 1, got {self.warmup!r}")


DEFAULT_TIMING = TimingOptions()


@dataclass(frozen=True)
class Stats:
    """Milliseconds of `runs` timed calls."""

    runs: int
    median_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    p25_ms: float
    p75_ms: float

    @property
    def iqr_ms(self) -> float:
        return self.p75_ms - self.p25_ms

    @property
    def spread(self) -> float | None:
        """Interquartile range over the median: the run-to-run noise as a fraction (None at a zero median)."""
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else None

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "iqr_ms": self.iqr_ms, "spread": self.spread}


# Above this spread a timing is marked noisy where it is shown: a host-bound loop (the reference at 1 image) has
# ranged 3.6-6.6 s within one run on an H200, and every "× reference" taken from it inherits that.
NOISY_SPREAD = 0.10


def noisy_note(wall: dict) -> str | None:
    """' (noisy: runs a-b s)' for a timing's stats dict (Stats.to_dict) whose spread exceeds NOISY_SPREAD."""
    spread = wall.get("spread")
    if spread is None or spread <= NOISY_SPREAD:
        return None
    return f"noisy: runs {wall['min_ms'] / 1e3:.3f}–{wall['max_ms'] / 1e3:.3f} s"


def summarize(samples_ms: Sequence[float]) -> Stats:
    """Median, mean, extremes and quartiles (numpy's linear interpolation) of the samples."""
    values = np.asarray(list(samples_ms), dtype=np.float64)
    if values.size == 0:
        raise ValueError("no timings to summarise")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"timings must be finite and non-negative, got {values.tolist()}")
    p25, median, p75 = np.percentile(values, [25, 50, 75])
    return Stats(
        runs=int(values.size),
        median_ms=float(median),
        mean_ms=float(values.mean()),
        min_ms=float(values.min()),
        max_ms=float(values.max()),
        p25_ms=float(p25),
        p75_ms=float(p75),
    )


class Clock(Protocol):
    def mark(self) -> Any:
        """A timestamp in the order of the work (a recorded event, or now)."""

    def elapsed_ms(self, start: Any, end: Any) -> float:
        """Milliseconds between two marks (after `wait`)."""

    def wait(self) -> None:
        """Until every mark has been passed."""

    def release(self, mark: Any) -> None:
        """The mark is read: its resources may be reused."""


class HostClock:
    """perf_counter marks, for work that runs synchronously on the host."""

    def mark(self) -> float:
        return time.perf_counter()

    def elapsed_ms(self, start: float, end: float) -> float:
        return (end - start) * 1e3

    def wait(self) -> None:
        pass

    def release(self, mark: float) -> None:
        pass


class EventClock:
    """CUDA events recorded on `stream` (an engines.cuda.Stream). The events of one `time_calls` are
    created before the timed calls (creating them costs nothing inside the timing) and reused once read."""

    def __init__(self, stream: Any):
        self.stream = stream
        self._spare: list[Any] = []

    def reserve(self, n: int) -> None:
        from ..engines import cuda

        self._spare.extend(cuda.Event() for _ in range(max(0, n - len(self._spare))))

    def mark(self) -> Any:
        from ..engines import cuda

        event = self._spare.pop() if self._spare else cuda.Event()
        event.record(self.stream)
        return event

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return start.elapsed_ms(end)

    def wait(self) -> None:
        self.stream.synchronize()

    def release(self, mark: Any) -> None:
        self._spare.append(mark)


def time_calls(fn: Callable[[], None], clock: Clock, options: TimingOptions = DEFAULT_TIMING) -> Stats:
    """Run `fn` warmup times, then `runs` times back to back with a mark between calls; the statistics
    of the intervals."""
    for _ in range(options.warmup):
        fn()
    if isinstance(clock, EventClock):
        clock.reserve(options.runs + 1)
    marks = [clock.mark()]
    for _ in range(options.runs):
        fn()
        marks.append(clock.mark())
    clock.wait()
    intervals = [clock.elapsed_ms(a, b) for a, b in zip(marks, marks[1:], strict=False)]
    for mark in marks:
        clock.release(mark)
    return summarize(intervals)


def time_wall(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[Stats, Any]:
    """Wall-clock seconds (as ms) of whole calls that synchronise themselves (a trajectory, a reference
    loop): `warmup` untimed calls, then `repeats` timed ones; also the last call's result."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1e3)
    return summarize(times), result
