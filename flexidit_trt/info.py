"""Model facts for `flexidit-trt info`: parameters, tokens and compute per patch size, from the config."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .model.config import DiTConfig
from .model.macs import forward_macs


@dataclass(frozen=True)
class PatchInfo:
    patch_size: int
    tokens: int
    gmacs: float
    relative_cost: float  # MACs relative to the base patch size


@dataclass(frozen=True)
class ModelInfo:
    name: str
    depth: int
    hidden_size: int
    num_heads: int
    input_size: int
    base_parameters: int  # the reference DiT layout, positional table included (as the paper counts)
    total_parameters: int  # plus weak-size embeddings and LoRA adapters
    patches: tuple[PatchInfo, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def model_info(config: DiTConfig) -> ModelInfo:
    """Counts parameters on a meta-device model: shapes only, no memory for the weights."""
    import torch

    from .model.dit import FlexiDiT

    with torch.device("meta"):
        model = FlexiDiT(config, initialize=False)
    macs = {p: forward_macs(config, p) for p in config.patch_sizes}
    base = macs[config.patch_size]
    patches = tuple(PatchInfo(p, config.tokens(p), macs[p] / 1e9, macs[p] / base) for p in config.patch_sizes)
    return ModelInfo(
        name=config.name,
        depth=config.depth,
        hidden_size=config.hidden_size,
        num_heads=config.num_heads,
        input_size=config.input_size,
        base_parameters=model.num_parameters(base_only=True),
        total_parameters=model.num_parameters(base_only=False),
        patches=patches,
    )
