"""Device memory of the engines' CUDA graphs: one shared pool against one pool per engine, the same
engines re-captured both ways."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..runtime import Pipeline, Selection
from .session import Session

if TYPE_CHECKING:  # torch stays an optional import of the bench
    from ..engines.torch_graphs import GraphPool, TorchGraphBackend


def pool_memory(session: Session, pipe: Pipeline) -> dict:
    opts = session.options
    images, budget = max(opts.batch_sizes), min(opts.budgets)
    if budget == 1.0:
        return {"not_measured": "every budget ran one engine: give a budget below 1.0 to compare pools"}
    if session.device == "cpu":
        return {"not_measured": "CPU run: memory pools are a GPU matter"}
    from ..engines.torch_graphs import GraphPool, TorchGraphBackend, graph_pool_bytes

    engines = pipe.backends
    if all(not isinstance(b, TorchGraphBackend) for b in engines.values()):
        if pipe.selection.backend == "trt":
            rows = 2 * images
            sizes = [b.activation_bytes(rows) for b in engines.values()]
            return {
                "images": images,
                "budget": budget,
                "shared_pool_bytes": max(sizes),
                "pool_per_engine_bytes": sum(sizes),
                "how": "the engines' activation sizes at the largest batch (max vs sum); not run",
            }
        return {"not_measured": f"{pipe.selection.backend} owns its device memory (one shared allocator)"}
    import torch

    peak, pooled = {}, {}
    for layout in ("shared", "per_engine"):
        shared = GraphPool(session.device)
        pools = {p: shared if layout == "shared" else GraphPool(session.device) for p in engines}
        clones = {p: graph_clone(b, pools[p]) for p, b in engines.items()}
        probe = Pipeline(
            pipe.spec,
            clones,
            device=session.device,
            selection=Selection(pipe.selection.backend, f"memory probe: {layout} graph pool"),
            precision=pipe.precision,
            max_batch=images,
            owned=list({id(v): v for v in pools.values()}.values()),
        )
        session.release()
        torch.cuda.reset_peak_memory_stats(session.device)
        before = torch.cuda.memory_reserved(session.device)
        try:
            session.generate(probe, session.labels(images), budget)
            peak[layout] = torch.cuda.max_memory_reserved(session.device) - before
            # Before close(): the captured graphs still hold their pools' segments.
            pooled[layout] = graph_pool_bytes(list(pools.values()))  # a shared pool counts once
        finally:
            probe.close()
            del probe, clones, pools, shared
            session.release()
    session.say(
        f"  memory at {images} images, budget {budget}: graph pools reserve "
        f"{pooled['shared']['reserved_bytes'] / 2**20:.0f} MiB shared, "
        f"{pooled['per_engine']['reserved_bytes'] / 2**20:.0f} MiB one per engine (peak reserved "
        f"{peak['shared'] / 2**20:.0f} / {peak['per_engine'] / 2**20:.0f} MiB)"
    )
    return {
        "images": images,
        "budget": budget,
        "shared_pool_bytes": pooled["shared"]["reserved_bytes"],
        "pool_per_engine_bytes": pooled["per_engine"]["reserved_bytes"],
        "graph_pools": pooled,
        "peak_reserved_bytes": peak,
        "how": "the same engines re-captured in CUDA graphs either way; the graph pools' own segments "
        "after one trajectory (torch.cuda.memory_snapshot); peak_reserved_bytes: torch's peak reserved "
        "memory during it above what was reserved before (eager warm-up and cache included)",
    }


def graph_clone(engine: TorchGraphBackend, pool: GraphPool | None) -> TorchGraphBackend:
    """The same forward captured in another graph pool (the memory probe's shared vs per-engine layouts);
    it keeps the engine's backend name for the run record."""
    from ..engines.torch_graphs import TorchGraphBackend

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
