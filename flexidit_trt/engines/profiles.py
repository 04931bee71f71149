"""Optimization profiles: which batch ranges an engine is tuned for.

The sequence length is fixed per engine (one engine per patch size), so only the batch varies. The
engine batches are the requested image batches plus, with guidance, twice each (a guided step runs
the conditional and unconditional halves in one pass; weak-to-strong guidance runs each engine on the
conditional half alone, so both sizes occur).

- "ranges" (default): adjacent ranges ending at each engine batch, opt = max: [1,1] [2,2] [3,4] [5,8] ...
  Every batch up to the largest has a profile, each requested size is tuned exactly (opt), and no
  range spans more than a factor of two, so one set of tactics stays close to its shapes.
- "exact": one profile per engine batch with min = opt = max (static shapes: can be faster still, but
  other batch sizes have no profile).
"""

from __future__ import annotations

from dataclasses import dataclass

PROFILE_MODES = ("ranges", "exact")


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int

    def to_dict(self) -> dict:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    def covers(self, batch: int) -> bool:
        return self.min <= batch <= self.max


def engine_batches(batch_sizes: tuple[int, ...] | list[int], guidance: bool = True) -> list[int]:
    """The batch sizes an engine runs at: each image batch and, with guidance, twice it."""
    sizes = [int(b) for b in batch_sizes]
    if not sizes or any(b <= 0 for b in sizes):
        raise ValueError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    return sorted(set(sizes) | ({2 * b for b in sizes} if guidance else set()))


def batch_profiles(
    batch_sizes: tuple[int, ...] | list[int], *, guidance: bool = True, mode: str = "ranges"
) -> list[BatchProfile]:
    """Profiles for the engine batches of `batch_sizes` (see the module docstring)."""
    if mode not in PROFILE_MODES:
        raise ValueError(f"profile mode must be one of {', '.join(PROFILE_MODES)}, got {mode!r}")
    batches = engine_batches(batch_sizes, guidance)
    if mode == "exact":
        return [BatchProfile(b, b, b) for b in batches]
    profiles, low = [], 1
    for b in batches:
        profiles.append(BatchProfile(low, b, b))
        low = b + 1
    return profiles


def input_shapes(
    profile: BatchProfile, in_channels: int, latent_size: int
) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shapes of each graph input for one profile."""
    spatial = (in_channels, latent_size, latent_size)
    batches = (profile.min, profile.opt, profile.max)
    return {
        "x": tuple((b, *spatial) for b in batches),
        "t": tuple((b,) for b in batches),
        "y": tuple((b,) for b in batches),
    }
