"""What the runtime needs to know about a model, without torch: shapes, classes, MACs per patch size and
where the weights came from. Built from a `FlexiDiT` (torch backends) or from a manifest's config
(engines and exported graphs), so the ONNX Runtime and TensorRT paths never import the model code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..model import FlexiDiT


@dataclass(frozen=True)
class ModelSpec:
    name: str
    in_channels: int
    input_size: int  # latent (or pixel) side
    num_classes: int
    null_label: int | None  # the class-table row of guidance's null class; None: trained without one
    learn_sigma: bool
    patch_sizes: tuple[int, ...]
    macs_by_patch: Mapping[int, int]  # one image forward, from the config (model/macs.py)
    weights: str  # in words, for people: "random weights (seed 0)", "checkpoint /path/x.safetensors"
    random_weights: bool
    checkpoint_sha256: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict, compare=False)  # the full config, for the record

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.input_size, self.input_size)

    @property
    def is_latent(self) -> bool:
        """4-channel models denoise SD-VAE latents; 1 or 3 channels are pixels in [-1, 1]."""
        return self.in_channels == 4

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        macs_by_patch: Mapping[int, int],
        *,
        weights: str,
        random_weights: bool,
        checkpoint_sha256: str | None = None,
        patch_sizes: tuple[int, ...] | None = None,
    ) -> ModelSpec:
        """From a config as a dict (DiTConfig's JSON, as manifests store it)."""
        null = config["num_classes"] if config.get("class_dropout_prob", 0) > 0 else None
        sizes = tuple(sorted(patch_sizes or macs_by_patch))
        return cls(
            name=config.get("name", "custom"),
            in_channels=int(config["in_channels"]),
            input_size=int(config["input_size"]),
            num_classes=int(config["num_classes"]),
            null_label=null,
            learn_sigma=bool(config.get("learn_sigma", True)),
            patch_sizes=sizes,
            macs_by_patch={int(p): int(macs_by_patch[p]) for p in sizes},
            weights=weights,
            random_weights=random_weights,
            checkpoint_sha256=checkpoint_sha256,
            config=dict(config),
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "weights": self.weights,
            "random_weights": self.random_weights,
            "checkpoint_sha256": self.checkpoint_sha256,
            "patch_sizes": list(self.patch_sizes),
            "macs_by_patch": {str(p): m for p, m in self.macs_by_patch.items()},
            "config": dict(self.config),
        }


def spec_from_entries(entries: Mapping[int, dict], model_name: str) -> ModelSpec:
    """A ModelSpec from manifest entries by patch size (config, MACs per patch size, checkpoint
    description; the config and checkpoint of the smallest patch size's entry)."""
    entry = entries[min(entries)]
    ckpt = entry.get("checkpoint") or {}
    random = ckpt.get("init") == "random"
    weights = f"random weights (seed {ckpt.get('seed')})" if random else f"checkpoint {ckpt.get('path')}"
    config = {**entry["config"], "name": model_name}
    return ModelSpec.from_config(
        config,
        {p: int(e["macs"]) if "macs" in e else macs_from_config(config, p) for p, e in entries.items()},
        weights=weights,
        random_weights=random,
        checkpoint_sha256=ckpt.get("sha256"),
        patch_sizes=tuple(sorted(entries)),
    )


def macs_from_config(config: dict, patch_size: int) -> int:
    # model/macs.py needs only the config, but importing it loads the model package (torch); engine
    # manifests without a "macs" field reach this only where torch is installed.
    from ..model.config import DiTConfig
    from ..model.macs import forward_macs

    return forward_macs(DiTConfig.from_json(json.dumps(config)), patch_size)


def spec_from_model(
    model: FlexiDiT,
    *,
    weights: str | None = None,
    random_weights: bool | None = None,
    checkpoint_sha256: str | None = None,
) -> ModelSpec:
    """The spec of a FlexiDiT in memory; `weights` describes them (default: random weights given in
    memory)."""
    config = json.loads(model.config.to_json())
    macs = {p: model.macs(p) for p in model.patch_sizes}
    random = random_weights if random_weights is not None else weights is None
    return ModelSpec.from_config(
        config,
        macs,
        weights=weights or "random weights (given in memory)",
        random_weights=random,
        checkpoint_sha256=checkpoint_sha256,
    )
