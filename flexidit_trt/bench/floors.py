"""The floor of one forward, and how far a measured forward is above it.

A forward of `batch` rows at patch p cannot take less than either
- its FLOPs at the measured matrix rate: 2 FLOPs per MAC × forward_macs(config, p) × batch / peak, or
- reading its weights once at the measured copy bandwidth: weight bytes / bandwidth,
so floor = max(compute, memory); the larger term names the bound. Both rates are measured in the same
run (hardware.py); the FLOPs come from the config (model/macs.py, the DiT paper's count: matmuls and
attention products, not norms or softmax), the weight bytes from the static model's parameters at the
run's precision (every parameter of `FlexiDiT.static(p)`, counted on the meta device: no memory).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the model package loads torch: imported where used, so `bench report` needs none
    from ..model.config import DiTConfig

FLOPS_PER_MAC = 2


@dataclass(frozen=True)
class Floor:
    flops: float  # of the whole forward (all rows)
    weight_bytes: int
    compute_ms: float  # flops / peak
    memory_ms: float  # weight bytes / bandwidth

    @property
    def floor_ms(self) -> float:
        return max(self.compute_ms, self.memory_ms)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_ms >= self.memory_ms else "memory"

    def to_dict(self) -> dict:
        return {**asdict(self), "floor_ms": self.floor_ms, "bound": self.bound}


def forward_flops(config: DiTConfig, patch_size: int, batch: int) -> float:
    from ..model.macs import forward_macs

    return float(FLOPS_PER_MAC * forward_macs(config, patch_size) * batch)


def weight_bytes(config: DiTConfig, patch_size: int, precision: str) -> int:
    """Bytes of `static(patch_size)`'s parameters as the torch backend runs them at `precision`."""
    import torch

    from ..engines.torch_graphs import TORCH_DTYPES
    from ..model.dit import FlexiDiT

    with torch.device("meta"):
        model = FlexiDiT(config, initialize=False)
    # fp16 keeps the residual stream (and its weights) fp32, as runtime/torch_backend.py builds it.
    static = model.static(patch_size, dtype=TORCH_DTYPES[precision], fp32_residual=precision == "fp16")
    return sum(t.numel() * t.element_size() for t in static.parameters())


def forward_floor(
    config: DiTConfig,
    patch_size: int,
    batch: int,
    weight_bytes: int,
    peak_flops_per_s: float,
    bytes_per_s: float,
) -> Floor:
    flops = forward_flops(config, patch_size, batch)
    return Floor(
        flops=flops,
        weight_bytes=int(weight_bytes),
        compute_ms=1e3 * flops / peak_flops_per_s,
        memory_ms=1e3 * weight_bytes / bytes_per_s,
    )


def against_floor(floor: Floor, measured_ms: float, peak_flops_per_s: float) -> dict[str, float]:
    """Achieved TFLOP/s, its fraction of the measured peak, and the measured time over the floor."""
    achieved = floor.flops / (measured_ms / 1e3)
    return {
        "tflops": achieved / 1e12,
        "peak_fraction": achieved / peak_flops_per_s,
        "over_floor": measured_ms / floor.floor_ms,
    }
