"""The reference baseline: DiT's own sampling loop as its sample.py runs it (fp32 weights, TF32), from the
transcription in reference_loop.py — the loop the tests check against our pipeline.

    loop = ReferenceLoop.load(model, device="cuda:0", steps=250, cfg_scale=4.0, seed=0)
    loop(labels)            # one full trajectory, synchronised
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

WARMUP_STEPS = 5  # the warm-up trajectory: enough for cuBLAS / cuDNN set-up, not a whole loop


class ReferenceLoop:
    """One reference trajectory per call on a fp32 copy of the model's base-patch network."""

    def __init__(
        self, module: ModuleType, network: Any, device: str, steps: int, cfg_scale: float, seed: int
    ):
        self.module = module
        self.network = network
        self.device = device
        self.steps = steps
        self.cfg_scale = cfg_scale
        self.seed = seed
        self.diffusion = module.ReferenceDiffusion(steps)  # sample.py builds it before sampling
        self._warm = module.ReferenceDiffusion(min(steps, WARMUP_STEPS))

    @classmethod
    def load(cls, model: Any, *, device: str, steps: int, cfg_scale: float, seed: int) -> ReferenceLoop:
        from . import reference_loop  # imports torch: here, not when the bench package is imported

        network = model.static(model.config.patch_size).to(device).eval()  # fp32, as sample.py loads it
        return cls(reference_loop, network, device, steps, cfg_scale, seed)

    def __call__(self, labels: list[int], warmup: bool = False) -> Any:
        import torch

        with self.module.reference_precision():
            samples = self.module.reference_sample(
                self.network,
                labels,
                cfg_scale=self.cfg_scale,
                steps=self.steps,
                seed=self.seed,
                device=self.device,
                diffusion=self._warm if warmup else self.diffusion,
            )
        if self.device != "cpu":
            torch.cuda.synchronize(self.device)
        return samples

    def close(self) -> None:
        self.network = None
