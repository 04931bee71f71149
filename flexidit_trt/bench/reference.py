"""The reference baseline: DiT's own sampling loop as its sample.py runs it (fp32 weights, TF32), from the
transcription in reference_loop.py — the loop the tests check against our pipeline.

    loop = ReferenceLoop.load(model, device="cuda:0", steps=250, cfg_scale=4.0, seed=0)
    loop(labels)            # one full trajectory, synchronised
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WARMUP_STEPS = 5  # the warm-up trajectory: enough for cuBLAS / cuDNN set-up, not a whole loop


@dataclass
class ReferenceLoop:
    """One reference trajectory per call on a fp32 copy of the model's base-patch network."""

    network: Any
    device: str
    steps: int
    cfg_scale: float
    seed: int
    diffusion: Any = field(init=False)  # sample.py builds it before sampling
    _warm: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from .reference_loop import ReferenceDiffusion  # imports torch: not when the bench is imported

        self.diffusion = ReferenceDiffusion(self.steps)
        self._warm = ReferenceDiffusion(min(self.steps, WARMUP_STEPS))

    @classmethod
    def load(cls, model: Any, *, device: str, steps: int, cfg_scale: float, seed: int) -> ReferenceLoop:
        network = model.static(model.config.patch_size).to(device).eval()  # fp32, as sample.py loads it
        return cls(network, device, steps, cfg_scale, seed)

    def __call__(self, labels: list[int], warmup: bool = False) -> Any:
        import torch

        from .reference_loop import reference_precision, reference_sample

        with reference_precision():
            samples = reference_sample(
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
