"""Model configurations: the reference DiT sizes plus the FlexiDiT patch set, in one table."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

VAE_FACTOR = 8  # the SD VAE maps 8x8 pixels to one latent
LATENT_CHANNELS = 4  # SD-VAE latents; 1 or 3 channels are pixels in [-1, 1]


@dataclass(frozen=True)
class DiTConfig:
    """Everything that fixes a FlexiDiT's shapes. `patch_size` is the base (strongest) patch."""

    depth: int
    hidden_size: int
    num_heads: int
    patch_size: int = 2
    patch_sizes: tuple[int, ...] = (2, 4)
    input_size: int = 32  # latent side: 256 px images through the SD VAE
    in_channels: int = 4
    num_classes: int = 1000
    mlp_ratio: float = 4.0
    learn_sigma: bool = True
    class_dropout_prob: float = 0.1  # > 0 adds the null-class row used by classifier-free guidance
    lora_rank: int = 0  # 0: no adapters; > 0: LoRA per weak patch size
    lora_alpha: float | None = None  # scale = alpha / rank; None means alpha = rank
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        sizes = tuple(sorted({int(p) for p in self.patch_sizes} | {int(self.patch_size)}))
        object.__setattr__(self, "patch_sizes", sizes)
        problems = []
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if min(sizes) != self.patch_size:
            problems.append(
                f"patch sizes {list(sizes)} must all be >= the base patch_size {self.patch_size} "
                "(weak sizes are larger patches)"
            )
        for p in sizes:
            if p < 1 or self.input_size % p:
                problems.append(f"input_size {self.input_size} is not divisible by patch size {p}")
        if self.lora_rank < 0:
            problems.append(f"lora_rank must be >= 0, got {self.lora_rank}")
        if problems:
            raise ValueError("invalid DiT config: " + "; ".join(problems))

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def pixels_per_latent(self) -> int:
        """Image pixels per side of one model input cell: the VAE's factor for latent models, 1 for pixel-space
        ones (dit_fmnist denoises the 32x32 image itself)."""
        return VAE_FACTOR if self.in_channels == LATENT_CHANNELS else 1

    @property
    def image_size(self) -> int:
        """The image side in pixels this config makes."""
        return self.input_size * self.pixels_per_latent

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def weak_patch_sizes(self) -> tuple[int, ...]:
        return tuple(p for p in self.patch_sizes if p != self.patch_size)

    @property
    def num_embeddings(self) -> int:
        """Rows of the class table: the classes plus the null class when guidance dropout is on."""
        return self.num_classes + int(self.class_dropout_prob > 0)

    def tokens(self, patch_size: int) -> int:
        return (self.input_size // patch_size) ** 2

    def replace(self, **changes) -> DiTConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DiTConfig:
        data = json.loads(text)
        data["patch_sizes"] = tuple(data["patch_sizes"])
        return cls(**data)


# depth / hidden / heads of the DiT paper (Table 1); head size 64, except XL's 72. Then our small model.
CONFIGS: dict[str, DiTConfig] = {
    "dit_s": DiTConfig(depth=12, hidden_size=384, num_heads=6, name="dit_s"),
    "dit_b": DiTConfig(depth=12, hidden_size=768, num_heads=12, name="dit_b"),
    "dit_l": DiTConfig(depth=24, hidden_size=1024, num_heads=16, name="dit_l"),
    "dit_xl": DiTConfig(depth=28, hidden_size=1152, num_heads=16, name="dit_xl"),
    # The embedded default model: pixel-space Fashion-MNIST (28×28 padded to 32×32, 1 channel, 10 classes),
    # sized so 250 DDPM steps with CFG at budget 0.5 run in under a minute on 2 CPU cores in fp32 (head
    # size 48: a multiple of 8, which the GPU's fused attention kernels want when it trains).
    "dit_fmnist": DiTConfig(
        depth=7, hidden_size=192, num_heads=4, in_channels=1, num_classes=10, name="dit_fmnist"
    ),
}


def get_config(name: str, **overrides) -> DiTConfig:
    """The named config with `overrides` applied (e.g. input_size=64, patch_sizes=(2, 4, 8))."""
    key = name.lower().replace("-", "_").replace("/", "_")
    if key not in CONFIGS:
        # "DiT-XL/2" style names carry the base patch.
        stem, _, patch = key.rpartition("_")
        if stem in CONFIGS and patch.isdigit():
            overrides.setdefault("patch_size", int(patch))
            overrides.setdefault("patch_sizes", (int(patch), 2 * int(patch)))
            key = stem
        else:
            raise ValueError(f"unknown model config {name!r}; choose one of {', '.join(CONFIGS)}")
    if "patch_sizes" in overrides:
        overrides["patch_sizes"] = tuple(overrides["patch_sizes"])
    return dataclasses.replace(CONFIGS[key], **overrides)
