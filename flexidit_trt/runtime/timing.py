"""Timing the loop: per-step latency and forward time (CUDA events on a GPU, perf_counter on the CPU),
the progress bar that follows the device without waiting for it, and the record of a time budget."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

from ..diffusion import Plan
from ..diffusion.time_planner import TimePlan
from .record import TimeBudgetRecord, TimingRecord

_host_clock = time.perf_counter  # the CPU loop's clock (a module attribute: tests simulate engine latency)
TIMED_STEPS = 5  # loop steps timed per patch and batch size for a time budget, after one warm-up step


class Timer:
    """Per-step latency and forward time. GPU: CUDA events recorded in the loop, read after each batch's
    end; CPU: perf_counter (the CPU runs synchronously anyway)."""

    def __init__(self, device: str, stream: Any, steps: int):
        self.gpu = device != "cpu"
        self.stream = stream
        self.steps = steps
        self.step_ms = np.zeros(steps)  # summed over batches
        self.forward_ms = np.zeros(steps)
        self.loop_ms = 0.0
        if self.gpu:
            from ..engines import cuda

            self._starts = [cuda.Event() for _ in range(steps + 1)]  # start of step i; [steps]: the end
            self._fwd_ends = [cuda.Event() for _ in range(steps)]
        else:
            self._t_start = np.zeros(steps + 1)
            self._t_fwd = np.zeros(steps)

    def start_chunk(self) -> None:
        self.done = 0  # steps the device has finished in this batch (progress)

    def step_start(self, i: int) -> None:
        if self.gpu:
            self._starts[i].record(self.stream)
        else:
            self._t_start[i] = _host_clock()

    def forward_end(self, i: int) -> None:
        if self.gpu:
            self._fwd_ends[i].record(self.stream)
        else:
            self._t_fwd[i] = _host_clock()

    def end_chunk(self) -> None:
        if self.gpu:
            self._starts[self.steps].record(self.stream)
        else:
            self._t_start[self.steps] = _host_clock()

    def finished(self, i: int) -> bool:
        """Whether step i of this batch has finished on the device (never waits); only for steps whose
        successor has started (its start event is recorded in this batch)."""
        return True if not self.gpu else self._starts[i + 1].query()

    def close(self) -> None:
        if self.gpu:
            for event in [*self._starts, *self._fwd_ends]:
                event.close()

    def collect(self) -> None:
        """After a batch's synchronisation: add its event times."""
        if self.gpu:
            starts = [self._starts[i].elapsed_ms(self._starts[i + 1]) for i in range(self.steps)]
            fwds = [self._starts[i].elapsed_ms(self._fwd_ends[i]) for i in range(self.steps)]
            loop = self._starts[0].elapsed_ms(self._starts[self.steps])
        else:
            starts = list(np.diff(self._t_start) * 1e3)
            fwds = list((self._t_fwd - self._t_start[:-1]) * 1e3)
            loop = (self._t_start[-1] - self._t_start[0]) * 1e3
        self.step_ms += starts
        self.forward_ms += fwds
        self.loop_ms += loop

    def summary(self, schedule: Plan, wall_s: float, chunks: int) -> TimingRecord:
        by_patch: dict[str, dict] = {}
        patches = np.asarray(schedule.patch_per_step)
        for p in sorted(set(schedule.patch_per_step)):
            sel = patches == p
            step, fwd = self.step_ms[sel] / chunks, self.forward_ms[sel] / chunks
            by_patch[str(p)] = {
                "steps": int(sel.sum()),
                "step_ms_median": float(np.median(step)),
                "step_ms_mean": float(np.mean(step)),
                "forward_ms_median": float(np.median(fwd)),
                "forward_ms_mean": float(np.mean(fwd)),
            }
        forward_total = float(self.forward_ms.sum())
        return TimingRecord(
            clock="cuda events" if self.gpu else "perf_counter",
            total_wall_s=wall_s,
            loop_ms=self.loop_ms,
            forward_ms_sum=forward_total,
            loop_overhead_ms=self.loop_ms - forward_total,
            loop_overhead_fraction=(self.loop_ms - forward_total) / forward_total if forward_total else None,
            batches=chunks,
            per_step_ms=[round(float(v) / chunks, 4) for v in self.step_ms],
            by_patch=by_patch,
        )


class ProgressBar:
    def __init__(self, bar: Any):
        self.bar = bar
        self.shown = 0
        self.base = 0

    def advance(self, timer: Timer, i: int) -> None:
        """Move the bar to the steps the device has finished: reads events, never waits."""
        if self.bar is None:
            return
        while timer.done < i and timer.finished(timer.done):  # step j ends where step j + 1 starts
            timer.done += 1
        self._show(self.base + timer.done)
        if i == timer.steps - 1:  # the batch's end: its steps are done once the caller synchronises
            self.base += timer.steps

    def _show(self, n: int) -> None:
        if n > self.shown:
            self.bar.update(n - self.shown)
            self.shown = n

    def close(self) -> None:
        if self.bar is not None:
            self._show(self.base)
            self.bar.close()


def progress_bar(total: int, enabled: bool | None) -> ProgressBar:
    """True: a bar; None: a bar on a terminal, else a line every tenth of the run (a bar redrawn with
    carriage returns is unreadable in a log); False: nothing. All on stderr, never on stdout (--json)."""
    if enabled is False:
        return ProgressBar(None)
    if enabled is None and not sys.stderr.isatty():
        return ProgressBar(StepLines(total))
    from tqdm.auto import tqdm

    # A terminal that reports its size as 0 x 0 (a pseudo-terminal nobody sized: `script`, `docker exec
    # -t`) makes tqdm draw nothing: give it a default size there.
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        size = os.terminal_size((0, 0))
    shape = {"ncols": None if size.columns else 80, "nrows": None if size.lines else 20}
    return ProgressBar(tqdm(total=total, unit="step", file=sys.stderr, **shape))


class StepLines:
    """A progress bar's `update`/`close` as a line on stderr every `every` steps (default: a tenth)."""

    def __init__(self, total: int, every: int | None = None):
        self.total, self.every = total, every or max(1, -(-total // 10))
        self.n, self.started = 0, time.perf_counter()

    def update(self, k: int) -> None:
        before, self.n = self.n, self.n + k
        if self.n // self.every > before // self.every or self.n == self.total:
            elapsed = time.perf_counter() - self.started
            print(f"step {self.n}/{self.total} ({elapsed:.1f} s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def time_record(
    timed: TimePlan, by_batch: dict[int, dict[int, float]], steps: int, clock: str
) -> TimeBudgetRecord:
    """The record's account of a time budget (its achieved time is added after the loop)."""
    warm, timed_steps = measure_counts(steps)
    return TimeBudgetRecord(
        limit_s=timed.limit_s,
        clock=clock,
        measured=f"median of {timed_steps} loop steps per patch and batch size, after {warm} warm-up",
        step_ms_by_patch={str(p): 1e3 * s for p, s in sorted(timed.step_seconds.items())},
        step_ms_by_batch={str(b): {str(p): 1e3 * s for p, s in ps.items()} for b, ps in by_batch.items()},
        weak_steps=timed.plan.weak_steps,
        predicted_s=timed.predicted_s,
        static_predicted_s=timed.static_s,
    )


def measure_counts(steps: int) -> tuple[int, int]:
    """(warm-up, timed) loop steps per patch and batch size when a time budget is measured."""
    return (1, min(TIMED_STEPS, steps - 1)) if steps > 1 else (0, 1)
