"""The arena on the CPU (aligned host memory): alignment, non-overlap, full error, reset, close, sizing.
The device arena is covered in test_kernels_gpu.py."""

from __future__ import annotations

import numpy as np
import pytest

from flexidit_trt.kernels import ARENA_ALIGN, Arena, ArenaFullError, arena_size, open_arena_bytes


def test_blocks_are_aligned_and_disjoint():
    with Arena(1 << 16, "cpu") as arena:
        assert arena.ptr % ARENA_ALIGN == 0
        sizes = [1, 3, 1000, 255, 256, 257, 0, 4096, 17]
        blocks = [(arena.block(n), n) for n in sizes]
        for ptr, _ in blocks:
            assert ptr % ARENA_ALIGN == 0
        spans = sorted((p, p + n) for p, n in blocks if n)
        assert all(end <= start for (_, end), (start, _) in zip(spans[:-1], spans[1:], strict=True))
        assert spans[0][0] >= arena.ptr and spans[-1][1] <= arena.ptr + arena.capacity
        assert arena.used == blocks[-1][0] + 17 - arena.ptr


def test_block_alignment_argument():
    with Arena(1 << 16, "cpu") as arena:
        arena.block(10)
        assert arena.block(100, align=4096) % 4096 == 0
        a = arena.block(3, align=1)
        assert arena.block(5, align=1) == a + 3
        for bad in (0, 3, 384):
            with pytest.raises(ValueError, match="power of two"):
                arena.block(8, align=bad)
        with pytest.raises(ValueError, match=">= 0"):
            arena.block(-1)


def test_full_arena_raises_with_sizes():
    with Arena(1024, "cpu") as arena:
        arena.block(1000)
        with pytest.raises(ArenaFullError, match=r"requested 100 bytes \(align 256\).* 1000 of 1024 bytes"):
            arena.block(100)
        assert arena.used == 1000  # a failed block changes nothing
        with pytest.raises(MemoryError):  # ArenaFullError is a MemoryError
            arena.block(2**62)
        arena.block(24, align=8)  # still fits exactly
        assert arena.used == 1024


def test_reset_releases_all_blocks():
    with Arena(4096, "cpu") as arena:
        first = arena.block(1000)
        arena.block(2000)
        arena.reset()
        assert arena.used == 0
        assert arena.block(4096) == first


def test_close_is_idempotent_and_final():
    arena = Arena(4096, "cpu")
    arena.block(16)
    arena.close()
    arena.close()
    assert arena.closed and arena.ptr == 0 and arena.used == 0
    with pytest.raises(RuntimeError, match="closed"):
        arena.block(16)
    with Arena(4096, "cpu") as other:
        pass
    assert other.closed
    assert "closed" in repr(other)


def test_bad_arguments():
    for bad in (0, -5):
        with pytest.raises(ValueError, match="positive"):
            Arena(bad, "cpu")
    with pytest.raises(ValueError, match="device"):
        Arena(1024, "gpu")


def test_host_arrays_are_disjoint_views():
    with Arena(1 << 12, "cpu") as arena:
        a = arena.host_array((4, 8), np.float32)
        b = arena.host_array((3,), np.uint16)
        a[:] = 1.5
        b[:] = 7
        assert a.ctypes.data % ARENA_ALIGN == 0 and b.ctypes.data % ARENA_ALIGN == 0
        assert (a == 1.5).all() and (b == 7).all()


def test_freed_on_close_and_on_destruction():
    start = open_arena_bytes()
    for i in range(20):
        arena = Arena(1 << 20, "cpu")
        arena.host_array((1 << 20,), np.uint8)[:] = 1
        assert open_arena_bytes() == start + (1 << 20)
        if i % 2:
            arena.close()
            assert open_arena_bytes() == start
        del arena  # the other half: freed by the destructor
        assert open_arena_bytes() == start


def test_arena_size_is_largest_engine_plus_buffers():
    engines, buffers = [1000, 5000, 3000], [10, 300, 256]
    size = arena_size(engines, buffers)
    assert size == 5120 + 256 + 512 + 256
    for order in (["engine", *buffers], [*buffers, "engine"]):
        with Arena(size, "cpu") as arena:
            for item in order:
                arena.block(max(engines) if item == "engine" else item)
            with pytest.raises(ArenaFullError):
                arena.block(1)
    assert arena_size([], []) == ARENA_ALIGN
    assert arena_size([4096], [], align=4096) == 4096 + 4096 - ARENA_ALIGN
    with pytest.raises(ValueError):
        arena_size([-1], [])
    with pytest.raises(ValueError):
        arena_size([1], [], align=100)
