"""The reference baseline: DiT's own sampling loop as its sample.py runs it (fp32 weights, TF32), from the
transcription in benchmarks/reference_sample.py — imported from the checkout by path, not copied, so the
benchmark times exactly the loop the tests check against our pipeline.

    loop = ReferenceLoop.load(model, device="cuda:0", steps=250, cfg_scale=4.0, seed=0)
    loop(labels)            # one full trajectory, synchronised
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import FlexiditError

REFERENCE_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "reference_sample.py"
WARMUP_STEPS = 5  # the warm-up trajectory: enough for cuBLAS / cuDNN set-up, not a whole loop


class ReferenceUnavailable(FlexiditError):
    """The reference loop cannot run here; the message says why (the results file's "not run" cell)."""


def load_module(path: Path = REFERENCE_SCRIPT) -> ModuleType:
    """A benchmarks/ script as a module, loaded once per process (its folder on sys.path while it loads,
    for sibling imports such as reference_sample's reference_iddpm); by default reference_sample.py."""
    if not path.is_file():
        raise ReferenceUnavailable(
            f"{path} not found: the reference loop lives in the repository's benchmarks/ (run from a checkout)"
        )
    loaded = sys.modules.get(path.stem)
    if loaded is not None and Path(getattr(loaded, "__file__", "")).resolve() == path.resolve():
        return loaded
    folder = str(path.parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        try:
            spec.loader.exec_module(module)
        except Exception:
            sys.modules.pop(path.stem, None)
            raise
    finally:
        if added:
            sys.path.remove(folder)
    return module


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
        module = load_module()
        network = model.static(model.config.patch_size).to(device).eval()  # fp32, as sample.py loads it
        return cls(module, network, device, steps, cfg_scale, seed)

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
