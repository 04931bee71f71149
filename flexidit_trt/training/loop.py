"""What the training loops share (base training, flexify, the classifier): the error they raise, the
checks of the loop options, the device, and the batch schedule that makes a resumed run exact."""

from __future__ import annotations

import math

import torch

from ..device import Device
from ..errors import UsageError


class TrainError(UsageError, ValueError):
    """Options or a run folder that cannot be used; the message says which and why."""


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
            (self.minutes is None or self.minutes > 0, f"minutes must be > 0, got {self.minutes}"),
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
