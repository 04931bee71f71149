"""The arena on the CPU (aligned host memory): alignment, non-overlap, full error, reset, close, sizing.
The device arena is covered in test_kernels_gpu.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from flexidit_trt.runtime.native import ARENA_ALIGN, Arena, ArenaFullError, arena_size, open_arena_bytes


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


def test_host_arrays_keep_their_memory_past_close():
    """close() gives the allocation up; host arrays still referring to it keep it until the last of them
    (views of views included) is dropped, so no array ever points at freed memory."""
    start = open_arena_bytes()
    arena = Arena(1 << 22, "cpu")  # large enough for malloc to unmap it on free
    a = arena.host_array((1 << 20,), np.float32)
    a[:] = 3.0
    tail = a[-4:]
    arena.close()
    assert arena.closed and arena.ptr == 0
    assert open_arena_bytes() == start + (1 << 22), "freed under a live host array"
    with pytest.raises(RuntimeError, match="closed"):
        arena.host_array((4,), np.float32)
    a[:8] = 5.0  # still the arena's memory, still writable
    del a
    assert open_arena_bytes() == start + (1 << 22)
    np.testing.assert_array_equal(tail, 3.0)
    del tail
    assert open_arena_bytes() == start

    arena = Arena(1 << 20, "cpu")  # the same without close(): the arena object itself goes first
    b = arena.host_array((16,), np.float32)
    del arena
    b[:] = 1.0
    assert open_arena_bytes() == start + (1 << 20)
    del b
    assert open_arena_bytes() == start


def test_reset_refuses_while_host_arrays_are_alive():
    """reset() would hand the same memory out again under arrays that still see it: it refuses, naming
    how many are alive, and changes nothing."""
    with Arena(4096, "cpu") as arena:
        a = arena.host_array((16,), np.float32)
        b = arena.host_array((16,), np.float32)
        a_view = a[2:]
        used = arena.used
        del a
        with pytest.raises(RuntimeError, match=r"reset\(\): 2 host arrays of this arena are still alive"):
            arena.reset()
        assert arena.used == used
        del b
        with pytest.raises(RuntimeError, match=r"reset\(\): 1 host array of this arena is still alive"):
            arena.reset()
        del a_view
        arena.reset()
        assert arena.used == 0
        c = arena.host_array((0,), np.float32)  # empty arrays are blocks too
        assert c.shape == (0,)
        del c
        arena.block(16)  # raw blocks are plain addresses: reset() releases them, as documented
        arena.reset()
        assert arena.used == 0


RACE = textwrap.dedent(
    """
    import threading

    import numpy as np

    from flexidit_trt.diffusion.coeffs import StepCoeffs
    from flexidit_trt.runtime.native import Arena, PhiloxNoise, open_arena_bytes
    from array_kernels import fused_step

    shape = (4, 4, 256, 256)  # 4 MiB a buffer: malloc maps such blocks and unmaps them on free
    coeffs = StepCoeffs(c_x=0.9, c_pred=0.3, sigma=0.1, add_noise=True)
    arena = Arena(3 * (4 << 20), "cpu")
    x, cond, out = (arena.host_array(shape, np.float32) for _ in range(3))
    x[...], cond[...] = 1.0, 2.0
    ref = np.empty(shape, np.float32)
    fused_step(x.copy(), cond.copy(), coeffs, ref, noise=PhiloxNoise(1, 2))
    started = threading.Event()

    def steps(x, cond, out):  # this frame's references are all that is left of the arrays
        for i in range(12):
            fused_step(x, cond, coeffs, out, noise=PhiloxNoise(1, 2))  # the GIL is released inside
            started.set()
        np.testing.assert_array_equal(out.view(np.uint32), ref.view(np.uint32))

    worker = threading.Thread(target=steps, args=(x, cond, out))
    del x, cond, out
    worker.start()
    started.wait()
    arena.close()  # while the worker's steps run
    junk = [np.full(shape, np.nan, np.float32) for _ in range(3)]  # would reuse what close() freed
    worker.join()
    assert open_arena_bytes() == 0
    print("ok")
    """
)


def test_close_from_another_thread_does_not_free_under_a_running_step():
    """A step runs with the GIL released; Arena.close() from another thread meanwhile must not free the
    memory it works on. Run in a child process: the failure this guards against is a crash."""
    here = os.path.dirname(os.path.abspath(__file__))  # the child imports the tests' array_kernels
    done = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, timeout=120, cwd=here)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])


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
