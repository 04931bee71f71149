"""Device memory of the engines' CUDA graphs: one shared pool against one pool per engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays an optional import of the bench
    from ..runtime.torch_graphs import GraphPool, TorchGraphBackend


def graph_clone(engine: TorchGraphBackend, pool: GraphPool | None) -> TorchGraphBackend:
    """The same forward captured in another graph pool (the memory probe's shared vs per-engine layouts);
    it keeps the engine's backend name for the run record."""
    from ..runtime.torch_graphs import TorchGraphBackend

    clone = TorchGraphBackend(
        engine.fn,
        patch_size=engine.patch_size,
        device=engine.device,
        out_dtype=engine.out_dtype,
        max_batch=engine.max_batch,
        pool=pool,
    )
    clone.name = engine.name
    return clone
