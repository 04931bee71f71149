"""Why the projection-only model diverges (benchmarks/NOTES.md, 2026-12-01 eval): on the CPU, the packaged
default model's weak (p4) pass before flexify (base weights, pinv-resized patch embedding, no adapters)
against after, at a few timesteps, then 10 samples at budget 0.75 with 50 DDPM steps each way.

    python3 benchmarks/projection_check.py > benchmarks/results/eval/projection_check.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from eval_gpu import projection_only  # noqa: E402  (the eval's own projection-only model)

from flexidit_trt.evaluation.run import load_model  # noqa: E402
from flexidit_trt.runtime import Pipeline  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    flexified, source = load_model(None, (2, 4))
    models = {"projection only": projection_only(flexified).eval(), "after flexify": flexified.eval()}
    print(f"model: {source}")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 32, 32, generator=gen), torch.arange(8)
    print("p4 output on pure noise x ~ N(0, 1) (at t = 999 the right eps is about x itself: std ~1):")
    with torch.no_grad():
        for t in (999, 700, 400):
            for name, model in models.items():
                out = model.static(4)(x, torch.full((8,), float(t)), y)
                eps, v = out[:, :1], out[:, 1:]
                print(
                    f"  t={t:3d} {name:>15}: eps std {eps.std():.3f}, variance values in [{v.min():.2f}, {v.max():.2f}]"
                )
    print("10 samples, budget 0.75, 50 DDPM steps, CFG 1.5 (final x; images live in [-1, 1]):")
    for name, model in models.items():
        result = Pipeline.from_model(model, precision="fp32").generate(
            list(range(10)), budget=0.75, steps=50, cfg_scale=1.5
        )
        final = result.samples
        print(f"  {name:>15}: min {np.min(final):.3g}, max {np.max(final):.3g}, std {np.std(final):.3g}")


if __name__ == "__main__":
    main()
