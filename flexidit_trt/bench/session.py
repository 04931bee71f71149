"""What every measurement of one `flexidit-trt bench` run shares: its options, device and precision, the
model every backend runs, the hardware measured at its start, and where its progress lines go."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ..runtime import Pipeline
from ..runtime.options import GUIDANCE
from .floors import weight_bytes
from .options import BenchOptions

SAMPLING = ("steps", "sampler", "guidance", "cfg_scale", "seed")  # the options every trajectory samples with


@dataclass(frozen=True)
class Session:
    options: BenchOptions
    device: str
    precision: str
    model: Any  # the FlexiDiT every torch backend runs and the reference loop copies
    peak: float  # the matmul FLOP/s measured in this run
    bandwidth: float  # the copy bytes/s measured in this run
    say: Callable[[str], None]

    @property
    def config(self) -> Any:
        return self.model.config

    @cached_property
    def weight_bytes(self) -> dict[int, int]:
        return {p: weight_bytes(self.config, p, self.precision) for p in self.config.patch_sizes}

    @cached_property
    def macs(self) -> dict[int, int]:
        return {p: self.model.macs(p) for p in self.config.patch_sizes}

    def labels(self, images: int) -> list[int]:
        return [(17 * i) % self.config.num_classes for i in range(images)]  # spread over the classes

    def generate(self, pipe: Pipeline, labels: list[int], budget: float) -> Any:
        """One trajectory of `labels` (one batch) at `budget` with the bench's sampling options."""
        sampling = {name: getattr(self.options, name) for name in SAMPLING}
        return pipe.generate(labels, budget=budget, batch_size=len(labels), progress=False, **sampling)

    def forward_rows(self, images: int) -> tuple[int, ...]:
        """The batches (rows) the trajectories run the engines at for `images` per batch."""
        kind = GUIDANCE[self.options.guidance]
        return {"cfg": (2 * images,), "none": (images,), "weak_to_strong": (images, 2 * images)}[kind]

    def release(self) -> None:
        """Free what the last measurement left (its pipeline, graphs and cached blocks)."""
        gc.collect()
        if self.device != "cpu":
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
