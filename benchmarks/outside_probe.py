"""Where a trajectory's time outside its sampling loop goes (the bench's `outside_loop_ms`: the record's wall
time less the loop's CUDA-event time). torch-fused and torch-flash spent 13-17 ms there against torch's 5-10
ms on an H200, after the modulation table's fill became one pass. DiT-XL/2, random bf16 weights, eager
engines in CUDA graphs (the host work outside the loop is the same compiled or not), 250 DDPM steps, CFG:
each variant's outside time over REPEATS calls, the table's fill alone (host time to return, then to the
device finishing it), and cProfile's top functions of one call.
Usage (GPU machine): python3 benchmarks/outside_probe.py"""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import time

import numpy as np
import torch

from flexidit_trt.model import FlexiDiT
from flexidit_trt.runtime import Pipeline

REPEATS = 5


def outside_ms(pipe: Pipeline, images: int, budget: float) -> float:
    labels = [(17 * i) % 1000 for i in range(images)]
    pipe.generate(labels, budget=budget, steps=250)  # warm-up: capture, table sizes
    out = []
    for _ in range(REPEATS):
        timing = pipe.generate(labels, budget=budget, steps=250).record["timing"]
        out.append(timing["total_wall_s"] * 1e3 - timing["loop_ms"])
    return statistics.median(out)


def main() -> None:
    model = FlexiDiT.from_config("dit_xl", init="random").eval()
    print("variant | images | budget | outside loop ms (median of 5)")
    for premod in (False, True):
        with Pipeline.from_model(
            model, device="cuda", precision="bf16", precompute_modulation=premod
        ) as pipe:
            for images, budget in ((1, 1.0), (1, 0.5), (8, 0.5)):
                print(
                    f"{'premod' if premod else 'plain'} | {images} | {budget} | {outside_ms(pipe, images, budget):.1f}"
                )
            if premod:
                table = pipe.backends[4].table
                steps = np.linspace(999.0, 0.0, 166, dtype=np.float32)
                for rows in (2, 16):
                    labels = np.arange(rows) % 1001
                    host, device = [], []
                    for _ in range(REPEATS):
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        table.fill(steps, labels)
                        host.append((time.perf_counter() - t0) * 1e3)
                        torch.cuda.synchronize()
                        device.append((time.perf_counter() - t0) * 1e3)
                    print(
                        f"fill 166 steps x {rows} rows: host {statistics.median(host):.2f} ms, "
                        f"done on the device {statistics.median(device):.2f} ms"
                    )
                for images in (1, 8):
                    labels = [(17 * i) % 1000 for i in range(images)]
                    prof = cProfile.Profile()
                    prof.enable()
                    pipe.generate(labels, budget=0.5, steps=250)
                    prof.disable()
                    text = io.StringIO()
                    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(18)
                    print(f"--- cProfile, premod, {images} images, budget 0.5 (sorted by own time)")
                    print("\n".join(text.getvalue().splitlines()[:40]))


if __name__ == "__main__":
    main()
