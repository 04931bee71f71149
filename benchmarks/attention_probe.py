"""Which scaled_dot_product_attention kernel is fastest at DiT-XL/2's attention shapes (16 heads of 72) on
this GPU: each backend's device time per call, from a CUDA graph of CALLS calls replayed REPLAYS times, with
q, k, v laid out as the model makes them (views of one qkv tensor). The compiled engines take whichever
kernel torch's dispatcher picks when they are traced (cuDNN on the H200); a faster one at patch 4's 64
tokens would lower patch 4's cost relative to patch 2's, the limit of the 8-image ratio (NOTES).
Usage (GPU machine): python3 benchmarks/attention_probe.py"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HEADS, HEAD_DIM = 16, 72
SHAPES = [(16, 64), (16, 256), (2, 64), (2, 256)]  # (batch, tokens): p4 / p2 at 8 images and at 1 image
BACKENDS = [
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]
CALLS, REPLAYS = 50, 20


def per_call_us(backend: SDPBackend, batch: int, tokens: int) -> float | str:
    qkv = torch.randn(batch, tokens, 3, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    try:
        with sdpa_kernel([backend]):
            F.scaled_dot_product_attention(q, k, v)  # warm-up (and the check that it runs here)
            torch.cuda.synchronize()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
                for _ in range(CALLS):
                    F.scaled_dot_product_attention(q, k, v)
    except RuntimeError as err:
        return f"not available ({str(err).splitlines()[0][:60]})"
    times = []
    for _ in range(REPLAYS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / CALLS)
    return statistics.median(times)


def main() -> None:
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; µs per call (CUDA graph of {CALLS})")
    print("| batch | tokens | " + " | ".join(b.name for b in BACKENDS) + " |")
    print("|---|---|" + "---|" * len(BACKENDS))
    for batch, tokens in SHAPES:
        cells = [per_call_us(b, batch, tokens) for b in BACKENDS]
        print(
            f"| {batch} | {tokens} | "
            + " | ".join(c if isinstance(c, str) else f"{c:.2f}" for c in cells)
            + " |"
        )


if __name__ == "__main__":
    main()
