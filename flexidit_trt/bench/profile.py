"""Where one engine's forward spends its time: torch.profiler over `runs` back-to-back calls, summarised
as kernels per forward, device busy time against wall time (the gap is launch and host overhead), time
by kernel category, the top kernels, and a one-line `limit` naming the largest part of the wall time.

    prof = profile_forward(backend.fn, (x, t, y), device="cuda:0")
    prof.limit            # "GEMM-bound: 71% of device time in GEMMs (busy 93% of wall)"
    prof.to_dict()        # what the results file keeps under "profiles"

The callable runs eagerly, outside any CUDA graph, so every kernel is visible to the profiler: a graph
replay would show up as one opaque launch. The launch gap measured here is therefore the one a CUDA
graph removes; the bench's timed forwards replay graphs (its forwards table), so compare against those.

On a GPU the rows are the device's kernels, copies and memsets (CUPTI, through the profiler's CUDA
activity) with their device durations; on the CPU they are the CPU ops with their self time (nested ops
each counted once, so the times add up), and the gap is Python and dispatcher time between ops.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..device import is_cuda

CATEGORIES = ("gemm", "attention", "norm_elementwise", "copies", "other")
CATEGORY_TITLES = {
    "gemm": "GEMM",
    "attention": "attention",
    "norm_elementwise": "normalisation/elementwise",
    "copies": "copies",
    "other": "other",
}
TOP_KERNELS = 15
_ELEMENTWISE = (
    r"triton|norm|moments|elementwise|vectorized|reduce|softmax|gelu|silu|sigmoid|tanh"
    r"|aten::(?:add|mul|sub|div|neg|exp|pow|rsqrt|sqrt|sum|mean|var|where|sin|cos|fill|zero|clamp|abs|lerp)_?\b"
)
# First match wins. Inductor's pointwise / persistent / reduction kernels are elementwise whatever ops
# they fused (their names list the origin ops: "triton_poi_fused__scaled_dot_product..." is no attention);
# attention before GEMM, as FlashAttention's kernels carry "cutlass" in their template arguments; Inductor's
# matmul templates ("triton_tem_fused_addmm_...") are GEMMs; copies before the elementwise patterns, as
# torch's copy kernel is an elementwise one ("vectorized_elementwise_kernel<4, direct_copy_kernel_cuda...");
# cuDNN's layout changes (nchwToNhwcKernel) are copies.
_PATTERNS = tuple(
    (category, re.compile(pattern, re.IGNORECASE))
    for category, pattern in (
        ("norm_elementwise", r"^triton_(?:poi|per|red)_"),
        ("attention", r"flash|fmha|efficient_attention|sdpa|scaled_dot_product|attention"),
        (
            "gemm",
            r"gemm|gemv|cutlass|xmma|nvjet|cublas|triton_tem_|matmul|aten::_?(?:add|b|baddb)?mm(?:_|\b)"
            r"|aten::linear\b|conv(?:olution|\dd|_)",
        ),
        ("copies", r"memcpy|memset|copy|\bcat\b|cat_|catarray|concat|contiguous|clone|nchwtonhwc|nhwctonchw"),
        ("norm_elementwise", _ELEMENTWISE),
    )
)


def kernel_category(name: str) -> str:
    """The category of one kernel (or CPU op) by its name: one of CATEGORIES."""
    for category, pattern in _PATTERNS:
        if pattern.search(name):
            return category
    return "other"


def categorize(rows: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Device time per category (every category present, 0.0 where none) of (name, device_time_us) rows."""
    out = dict.fromkeys(CATEGORIES, 0.0)
    for name, us in rows:
        out[kernel_category(name)] += us
    return out


def limit_verdict(busy_fraction: float, by_category_us: dict[str, float], on_gpu: bool = True) -> str:
    """The largest part of the wall time, in words: the idle gap (1 − busy) or a category's share of the
    device time times the busy fraction. Only the biggest part can give the largest gain."""
    total = sum(by_category_us.values())
    if total <= 0:
        return "unknown: no device kernels were recorded" if on_gpu else "unknown: no ops were recorded"
    busy = min(max(busy_fraction, 0.0), 1.0)
    shares = {c: us / total for c, us in by_category_us.items()}
    top = max(shares, key=lambda c: shares[c])
    if 1.0 - busy >= shares[top] * busy:
        what = "launch-bound: device busy" if on_gpu else "host-bound: ops busy"
        return f"{what} {busy:.0%} of wall"
    where = f"(busy {busy:.0%} of wall)"
    return {
        "gemm": f"GEMM-bound: {shares[top]:.0%} of device time in GEMMs {where}",
        "attention": f"attention-bound: {shares[top]:.0%} of device time in attention {where}",
        "norm_elementwise": f"memory-bound elementwise: {shares[top]:.0%} in normalisation/elementwise {where}",
        "copies": f"copy-bound: {shares[top]:.0%} of device time in copies {where}",
        "other": f"other kernels: {shares[top]:.0%} of device time, none of the named categories {where}",
    }[top]


@dataclass(frozen=True)
class KernelStat:
    name: str
    category: str
    count: int  # calls over all profiled forwards
    total_us: float  # device time over all profiled forwards

    @property
    def mean_us(self) -> float:
        return self.total_us / self.count if self.count else 0.0


@dataclass(frozen=True)
class ForwardProfile:
    """One engine's forward, `runs` calls under the profiler; every time is µs per forward."""

    device: str
    activities: tuple[str, ...]
    runs: int
    kernels_per_forward: float  # device kernels and copies (GPU) or CPU ops (CPU)
    device_us_per_forward: float  # the rows' durations summed: what the categories split
    busy_us_per_forward: float  # the device busy at all (overlapping kernels counted once)
    wall_us_per_forward: float  # the same calls without the profiler, back to back, one sync at the end
    profiled_wall_us_per_forward: float  # the profiled calls (the profiler's own overhead included)
    by_category_us: dict[str, float]
    top: tuple[KernelStat, ...]
    limit: str
    rows: str  # what the rows are, in words
    note: str = field(default="")

    @property
    def busy_fraction(self) -> float:
        return self.busy_us_per_forward / self.wall_us_per_forward if self.wall_us_per_forward > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        total = sum(self.by_category_us.values())
        return {
            "device": self.device,
            "activities": list(self.activities),
            "runs": self.runs,
            "rows": self.rows,
            "kernels_per_forward": self.kernels_per_forward,
            "device_us_per_forward": self.device_us_per_forward,
            "busy_us_per_forward": self.busy_us_per_forward,
            "wall_us_per_forward": self.wall_us_per_forward,
            "profiled_wall_us_per_forward": self.profiled_wall_us_per_forward,
            "busy_fraction": self.busy_fraction,
            "by_category": {
                c: {"us_per_forward": us, "share": us / total if total > 0 else 0.0}
                for c, us in self.by_category_us.items()
            },
            "top": [
                {
                    "name": k.name,
                    "category": k.category,
                    "count": k.count,
                    "per_forward": k.count / self.runs,
                    "total_us": k.total_us,
                    "mean_us": k.mean_us,
                }
                for k in self.top
            ],
            "limit": self.limit,
            "note": self.note,
        }


def profile_forward(
    fn: Callable[..., Any],
    inputs: Sequence[Any],
    *,
    device: str,
    runs: int = 10,
    warmup: int = 3,
    top: int = TOP_KERNELS,
) -> ForwardProfile:
    """Profile `fn(*inputs)`: `warmup` calls, `runs` timed without the profiler (the wall time), then
    `runs` under torch.profiler (CPU activity, and CUDA's on a GPU). Eager: no CUDA graph."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive int, got {runs!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    on_gpu = is_cuda(device)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(device)

    def calls(n: int) -> float:
        """Wall µs of n back-to-back calls, waited for at the end."""
        sync()
        start = time.perf_counter()
        for _ in range(n):
            fn(*inputs)
        sync()
        return (time.perf_counter() - start) * 1e6

    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_gpu else [])]
    with torch.no_grad():  # as the engines run (a compiled fn guards on grad mode)
        calls(warmup)
        wall_us = calls(runs)
        if on_gpu:
            with profile(activities=activities):  # CUPTI's first session pays its set-up: not this one's
                calls(1)
        with profile(activities=activities) as prof:
            profiled_us = calls(runs)
    rows, intervals = _rows(prof.events(), on_gpu)
    by_name: dict[str, list[float]] = {}
    for name, us in rows:
        by_name.setdefault(name, []).append(us)
    stats = sorted(
        (KernelStat(n, kernel_category(n), len(v), sum(v)) for n, v in by_name.items()),
        key=lambda k: (-k.total_us, k.name),
    )
    by_category = {c: us / runs for c, us in categorize(rows).items()}
    device_us = sum(us for _, us in rows) / runs
    busy_us = (_union_us(intervals) if on_gpu else sum(us for _, us in rows)) / runs
    wall = wall_us / runs
    return ForwardProfile(
        device=device,
        activities=tuple("cuda" if a == ProfilerActivity.CUDA else "cpu" for a in activities),
        runs=runs,
        kernels_per_forward=len(rows) / runs,
        device_us_per_forward=device_us,
        busy_us_per_forward=busy_us,
        wall_us_per_forward=wall,
        profiled_wall_us_per_forward=profiled_us / runs,
        by_category_us=by_category,
        top=tuple(stats[:top]),
        limit=limit_verdict(busy_us / wall if wall > 0 else 0.0, by_category, on_gpu),
        rows="CUDA kernels, memcpys and memsets (device time)" if on_gpu else "CPU ops (self time)",
        note="eager launches, no CUDA graph (kernels visible): the gap to wall is launch and host overhead, "
        "which a CUDA graph replay removes"
        if on_gpu
        else "CPU run: ops' self time; the gap to wall is Python and dispatcher overhead",
    )


_DEVICE_ACTIVITIES = {"kernel", "gpu_memcpy", "gpu_memset"}
TRITON_PREFIX = "triton_"  # inductor's kernel names: triton_poi_/triton_red_/triton_per_/triton_tem_...


def _rows(events: Iterable[Any], on_gpu: bool) -> tuple[list[tuple[str, float]], list[tuple[float, float]]]:
    """(name, µs) per recorded kernel or op, and the device intervals (start, end µs) on a GPU."""
    from torch.autograd import DeviceType

    events = list(events)
    # record_function ranges (torch.compile's "## Call CompiledFxGraph ... ##" among them) can be mirrored
    # onto the GPU timeline under the CPU range's name. The activity type tells them from kernels; without
    # it (torch 2.11's FunctionEvent has none) a device event named like a CPU event is dropped, except
    # inductor's Triton kernels: each launch is recorded on the CPU under its kernel's name, so the name
    # test alone would drop every one of them.
    host_names = {
        e.name for e in events if e.device_type == DeviceType.CPU and not e.name.startswith(TRITON_PREFIX)
    }
    rows, intervals = [], []
    for e in events:
        if getattr(e, "is_user_annotation", False):
            continue
        activity = getattr(e, "activity_type", None)  # absent on older torch: the device type decides
        if on_gpu:
            if e.device_type != DeviceType.CUDA:
                continue
            if activity is None:
                if e.name in host_names:
                    continue
            elif activity not in _DEVICE_ACTIVITIES:
                continue
            start, end = e.time_range.start, e.time_range.end
            rows.append((e.name, end - start))
            intervals.append((start, end))
        elif e.device_type == DeviceType.CPU and activity in (None, "cpu_op"):
            rows.append((e.name, e.self_cpu_time_total))
    return rows, intervals


def _union_us(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of intervals: time the device ran anything (concurrent kernels once)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total
