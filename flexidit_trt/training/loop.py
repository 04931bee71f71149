"""What the training loops share (base training, flexify, the classifier): the error they raise, the
checks of the loop options, the device, and the batch schedule that makes a resumed run exact."""

from __future__ import annotations

import math

import torch

from ..device import Device
from ..errors import FlexiditError, UsageError


class TrainError(UsageError, ValueError):
    """Options or a run folder that cannot be used; the message says which and why."""


class DivergedError(FlexiditError):
    """A training loop's loss is no longer finite: the work failed (exit 1), nothing more is written."""


class LossWatch:
    """Stops a training loop at its first non-finite loss. On a GPU the check adds no host sync per step:
    each step folds its loss's finiteness into a device-side "first bad step", read where the loop syncs
    anyway (its log line, its checkpoint), so the loop stops there, naming the step, before it writes
    anything. On the CPU reading costs nothing, so every step is checked as it ends."""

    def __init__(self, what: str, device: torch.device, per_step: bool | None = None):
        self.what = what
        self.host = device.type == "cpu" if per_step is None else per_step
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def add(self, loss: torch.Tensor, step: int) -> None:
        """After `step`'s loss is known (before its optimizer step on the CPU)."""
        if self.host:
            if not math.isfinite(float(loss.detach())):
                self._fail(step, f"{float(loss.detach())}")
            return
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step), self.first_bad)

    def check(self) -> None:
        """Where the loop syncs anyway: raise if any step so far had a non-finite loss."""
        if not self.host and (step := int(self.first_bad)) >= 0:
            self._fail(step, "not finite")

    def _fail(self, step: int, value: str) -> None:
        raise DivergedError(
            f"{self.what} stopped: the loss at step {step + 1} is {value} "
            "(a learning rate too high, or NaN in the data or the weights); nothing was written for it"
        )


class LoopOptions:
    """Base of a training loop's options (a frozen dataclass with these four fields): checked when made,
    first what every loop shares (steps, time box, batch, lr), then the subclass's own `checks()`."""

    steps: int
    minutes: float | None
    batch_size: int
    lr: float

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """TrainError listing every failed check."""
        checks = [
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (
                self.minutes is None or (math.isfinite(self.minutes) and self.minutes > 0),
                f"minutes must be > 0 and finite, got {self.minutes}",
            ),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            *self.checks(),
        ]
        problems = [msg for ok, msg in checks if not ok]
        if problems:
            raise TrainError("; ".join(problems))

    def checks(self) -> list[tuple[bool, str]]:
        """(ok, message) of the subclass's own fields."""
        return []


def warmup(step: int, steps: int) -> float:
    """The linear warm-up factor of optimizer step `step` (0-based): (step + 1) / steps, up to 1."""
    return min(1.0, (step + 1) / max(1, steps))


def cosine(done: float) -> float:
    """The cosine learning-rate factor at `done` (the fraction of the run behind): 1 at the start, 0 at the end."""
    return 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, done))))


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = Device.parse(device)
    except ValueError as err:
        raise TrainError(str(err)) from None
    if parsed.is_cuda and not torch.cuda.is_available():
        raise TrainError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)  # as given: torch keeps "cuda" (the current GPU) apart from "cuda:0"


class BatchSchedule:
    """Which images, timesteps, noise and dropped labels step n uses: a function of (seed, n) only.

    Each epoch is a fresh permutation seeded by (seed, epoch); the random draws of step n come from a
    generator seeded by (seed, n). So a resumed run needs no saved RNG state to continue identically.
    """

    def __init__(self, count: int, batch_size: int, seed: int, device: torch.device):
        self.count, self.batch_size, self.seed, self.device = count, batch_size, seed, device
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> torch.Tensor:
        per_epoch = max(1, self.count // self.batch_size)  # the short remainder of an epoch is skipped
        epoch, pos = divmod(step, per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.count, generator=gen).to(self.device)
        start = pos * self.batch_size
        idx = self._perm[start : start + self.batch_size]
        if len(idx) < self.batch_size:  # a subset smaller than one batch: repeat it
            idx = self._perm.repeat(math.ceil(self.batch_size / self.count))[: self.batch_size]
        return idx

    def generator(self, step: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed((self.seed + 1) * 7_919_993 + step)
