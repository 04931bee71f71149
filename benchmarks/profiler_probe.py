"""Why torch.profiler's events() lose inductor's Triton kernels (NOTES, 2026-12-01): profile a tiny compiled
DiT forward on the GPU and print every CUDA-side event with the fields bench/profile.py filters on
(activity_type, is_user_annotation, whether a CPU event has the same name), plus what the Chrome trace
holds. Usage (GPU machine): python3 benchmarks/profiler_probe.py OUT_DIR"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from flexidit_trt.model import FlexiDiT


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model = FlexiDiT.from_config("dit_s", init="random", depth=2, hidden_size=128, num_heads=2, input_size=16)
    net = torch.compile(model.static(2, dtype=torch.bfloat16).cuda(), fullgraph=True, dynamic=False)
    x = torch.randn(8, 4, 16, 16, device="cuda")
    t, y = torch.rand(8, device="cuda") * 999, torch.arange(8, device="cuda")
    with torch.no_grad():
        for _ in range(3):
            net(x, t, y)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            net(x, t, y)
            torch.cuda.synchronize()
    events = list(prof.events())
    host = {e.name for e in events if e.device_type == DeviceType.CPU}
    rows = collections.Counter()
    for e in events:
        if e.device_type != DeviceType.CUDA:
            continue
        key = (
            e.name[:70],
            repr(getattr(e, "activity_type", "<no attribute>")),
            repr(getattr(e, "is_user_annotation", "<no attribute>")),
            e.name in host,
        )
        rows[key] += 1
    print(
        f"torch {torch.__version__}; CUDA-side events: name | activity_type | is_user_annotation | name on CPU | n"
    )
    for (name, activity, annotation, on_host), n in sorted(rows.items()):
        print(f"  {name} | {activity} | {annotation} | {on_host} | {n}")
    trace = out / "trace.json"
    prof.export_chrome_trace(str(trace))
    cats = collections.Counter()
    triton = collections.Counter()
    for ev in json.loads(trace.read_text()).get("traceEvents", []):
        cats[ev.get("cat")] += 1
        if str(ev.get("name", "")).startswith("triton_"):
            triton[ev.get("cat")] += 1
    print("chrome trace categories:", dict(cats))
    print("chrome trace events named triton_*, by category:", dict(triton))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
