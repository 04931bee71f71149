"""The model `flexidit-trt run` uses when none is named: the embedded default, in one place.

The trained default (10 classes, 32×32 pixels, one channel) lands as `flexidit_trt/weights/default.safetensors`;
until that file exists, the default is a small DiT of the same shape with seeded random weights, and every
output says so ("random weights").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..model import FlexiDiT

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "default.safetensors"
DEFAULT_NAME = "default"
RANDOM_SEED = 0
# Pixel space, 10 classes, patch sizes 2 and 4; sized so that the default run (10 images, 250 DDPM steps,
# CFG 4.0, budget 0.5) takes well under a minute on 2 CPU cores: one torch thread spent 211 ms (p2) and
# 43 ms (p4) of CPU time per batch-20 forward at hidden 96, so ~26 CPU-seconds for the run's 92 + 158
# forwards; hidden 128 took 384 / 62 ms (45 CPU-seconds), too close to the minute.
RANDOM_CONFIG = dict(
    depth=6, hidden_size=96, num_heads=3, in_channels=1, input_size=32, num_classes=10, patch_sizes=(2, 4)
)


def default_checkpoint() -> Path | None:
    """The trained default model's file, or None while it has not landed."""
    return DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None


def default_model() -> tuple[FlexiDiT, str, bool]:
    """(model, where its weights come from in words, whether they are random)."""
    from ..model import DiTConfig, FlexiDiT, load_checkpoint

    path = default_checkpoint()
    if path is not None:
        return load_checkpoint(path), f"default model {path}", False
    config = DiTConfig(**RANDOM_CONFIG, name=DEFAULT_NAME)
    model = FlexiDiT.from_config(config, init="random", seed=RANDOM_SEED)
    return model, f"random weights (seed {RANDOM_SEED}): the default model has not been trained yet", True
