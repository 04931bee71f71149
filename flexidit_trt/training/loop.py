"""What the training loops share (base training, flexify, the classifier): the error they raise, the
checks of the loop options, the device, and the batch schedule that makes a resumed run exact."""

from __future__ import annotations

import math
from typing import Protocol

import torch

from ..errors import UsageError


class TrainError(UsageError, ValueError):
    """Options or a run folder that cannot be used; the message says which and why."""


class LoopOptions(Protocol):
    """The options every training loop has."""

    steps: int
    minutes: float | None
    batch_size: int
    lr: float


def check_options(options: LoopOptions, checks: list[tuple[bool, str]]) -> None:
    """TrainError listing every failed check: the loop checks (steps, time box, batch, lr) that
    training and flexify share, then `checks` (ok, message) of the caller's own options."""
    o = options
    checks = [
        (o.steps >= 1, f"steps must be >= 1, got {o.steps}"),
        (o.minutes is None or o.minutes > 0, f"minutes must be > 0, got {o.minutes}"),
        (o.batch_size >= 1, f"batch size must be >= 1, got {o.batch_size}"),
        (o.lr > 0 and math.isfinite(o.lr), f"lr must be a positive number, got {o.lr}"),
        *checks,
    ]
    problems = [msg for ok, msg in checks if not ok]
    if problems:
        raise TrainError("; ".join(problems))


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"device {device!r} requested but CUDA is not available")
    return dev


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
