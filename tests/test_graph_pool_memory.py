"""graph_pool_bytes: the device memory of CUDA-graph pools, read from the allocator's snapshot. On the CPU
with a snapshot of the real structure; on a GPU (pytest -q -m gpu) with real captures, one shared pool
against one pool per graph."""

from __future__ import annotations

import contextlib
import itertools

import pytest
import torch

from flexidit_trt.engines.torch_graphs import GraphPool, graph_pool_bytes

MIB = 2**20


def block(size: int, state: str) -> dict:
    # Field names and states as torch/csrc/cuda/Module.cpp's segmentInfoToDict writes them (blockDict:
    # address, size, requested_size, state in {active_allocated, active_pending_free, inactive}, frames);
    # torch/cuda/memory.py's _snapshot docstring lists the same keys.
    return {"address": 0, "size": size, "requested_size": size, "state": state, "frames": []}


def segment(pool_id: tuple[int, int], blocks: list[dict], device: int = 0) -> dict:
    # segmentInfoToDict's segmentDict (torch/csrc/cuda/Module.cpp; torch/cuda/memory.py, _snapshot's
    # Segment): segment_pool_id is the owning pool's (int, int) id, (0, 0) for the general pool.
    total = sum(b["size"] for b in blocks)
    allocated = sum(b["size"] for b in blocks if b["state"] == "active_allocated")
    return {
        "device": device,
        "address": 0,
        "total_size": total,
        "allocated_size": allocated,
        "active_size": allocated,
        "requested_size": allocated,
        "stream": 0,
        "segment_type": "large" if total > MIB else "small",
        "segment_pool_id": pool_id,
        "is_expandable": False,
        "frames": [],
        "blocks": blocks,
    }


@pytest.fixture
def fake_pools(monkeypatch):
    """GraphPools whose handles come from a stand-in graph_pool_handle: ids (0, 1), (0, 2), ... as torch
    hands them out ({0, uid}), in torch 2.13's _POOL_HANDLE form where it exists (a NewType over the pair)."""
    ids = itertools.count(1)
    wrap = getattr(torch.cuda, "_POOL_HANDLE", tuple)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: wrap((0, next(ids))))
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())

    def make(n: int) -> list[GraphPool]:
        pools = [GraphPool("cuda:0") for _ in range(n)]
        for p in pools:
            assert p.handle is not None  # first use: the pool gets its id
        return pools

    return make


def snapshot() -> list[dict]:
    """Pool (0, 1): two segments, one block of each state; pool (0, 2): one segment, all free; around them
    the general pool (0, 0), a pool of someone else (0, 3) and a graph's own private pool (1, 0) (the
    transposed id of (0, 1)), on two devices."""
    return [
        segment((0, 0), [block(20 * MIB, "active_allocated")]),
        segment(
            (0, 1),
            [
                block(4 * MIB, "active_allocated"),
                block(2 * MIB, "active_pending_free"),
                block(14 * MIB, "inactive"),
            ],
        ),
        segment((0, 0), [block(2 * MIB, "inactive")], device=1),
        segment((0, 2), [block(40 * MIB, "inactive")]),
        segment((0, 1), [block(512, "active_allocated"), block(2 * MIB - 512, "inactive")]),
        segment((0, 3), [block(6 * MIB, "active_allocated")]),
        segment((1, 0), [block(20 * MIB, "active_allocated")]),
    ]


def test_only_the_given_pools_segments_count_each_pool_once(fake_pools):
    a, b = fake_pools(2)
    unused = GraphPool("cuda:0")  # never captured into: no id, nothing held
    assert (a.pool_id, b.pool_id, unused.pool_id) == ((0, 1), (0, 2), None)
    pool_a = {"pool_id": [0, 1], "reserved_bytes": 22 * MIB, "allocated_bytes": 4 * MIB + 512, "segments": 2}
    pool_b = {"pool_id": [0, 2], "reserved_bytes": 40 * MIB, "allocated_bytes": 0, "segments": 1}
    # Both engines on one shared pool: the pool counts once.
    assert graph_pool_bytes([a, a, unused], snapshot()) == {
        "reserved_bytes": 22 * MIB,
        "allocated_bytes": 4 * MIB + 512,
        "pools": [pool_a],
    }
    assert graph_pool_bytes([b, a], snapshot()) == {
        "reserved_bytes": 62 * MIB,
        "allocated_bytes": 4 * MIB + 512,
        "pools": [pool_b, pool_a],  # in the order given
    }


def test_snapshot_is_taken_when_not_given_and_not_for_unused_pools(fake_pools, monkeypatch):
    (a,) = fake_pools(1)
    monkeypatch.setattr(torch.cuda, "memory_snapshot", snapshot)
    assert graph_pool_bytes([a]) == graph_pool_bytes([a], snapshot())

    def no_snapshot():
        raise AssertionError("no pool was used: nothing to read")

    monkeypatch.setattr(torch.cuda, "memory_snapshot", no_snapshot)
    assert graph_pool_bytes([GraphPool("cuda:0")]) == {"reserved_bytes": 0, "allocated_bytes": 0, "pools": []}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_two_graphs_in_one_pool_hold_less_than_in_two():
    """Each graph's capture needs two live 4 MiB intermediates and keeps its 4 MiB output (allocated in the
    pool, held here): one 20 MiB segment (the allocator's large segment for requests under 10 MiB) holds
    both graphs when they share a pool, where two pools take one segment each. A 64 MiB tensor in the
    general pool must not count."""
    device = "cuda"
    x = torch.randn(1024, 1024, device=device)  # 4 MiB, general pool
    ballast = torch.empty(64 * MIB, dtype=torch.uint8, device=device)
    out_bytes = x.numel() * x.element_size()

    def capture(pool: GraphPool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool.handle):
            out = (x * 2 + 1).relu()
        return graph, out

    shared = GraphPool(device)
    kept = [capture(shared), capture(shared)]
    one = graph_pool_bytes([shared, shared])
    separate_pools = [GraphPool(device), GraphPool(device)]
    kept += [capture(p) for p in separate_pools]
    two = graph_pool_bytes(separate_pools)

    for graph, out in kept:  # the captures are real graphs
        graph.replay()
        torch.testing.assert_close(out, (x * 2 + 1).relu())
    assert [r["allocated_bytes"] for r in two["pools"]] == [out_bytes, out_bytes]
    assert one["allocated_bytes"] == 2 * out_bytes
    assert all(r["reserved_bytes"] >= 2 * out_bytes for r in two["pools"])
    assert 0 < one["reserved_bytes"] <= two["reserved_bytes"] < ballast.numel()
    assert one["reserved_bytes"] < two["reserved_bytes"]  # sharing saved a pool's worth here
