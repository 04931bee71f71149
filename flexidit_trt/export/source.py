"""Where a build's weights come from: a checkpoint (identified by its content hash) or seeded random
weights. Loading is lazy, so a rebuild whose graphs are all current never reads the weights.

Model names are canonical: "DiT-S/2", "dit-s" and "dit_s" all name the config `dit_s`, which names the
export folder and is what a checkpoint's config is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING

from ..artifacts import BuildError, OptionError, sha256_path
from ..model.config import VAE_FACTOR

if TYPE_CHECKING:
    from ..model import DiTConfig, FlexiDiT


def latent_size(image_size: int, factor: int = VAE_FACTOR) -> int:
    """The model-input side of `image_size` pixels, `factor` pixels per cell (the VAE's 8 for latent models,
    1 for pixel-space ones: DiTConfig.pixels_per_latent); OptionError unless it is a positive multiple of
    `factor`. The one check of an image size: `build`, `info` and ModelSource all call it."""
    whole = isinstance(image_size, Integral) and not isinstance(image_size, bool)
    if not whole or image_size <= 0 or image_size % factor:
        what = "a positive multiple of {factor} (the VAE's factor)" if factor > 1 else "a positive integer"
        raise OptionError(f"image size {image_size} is not {what.format(factor=factor)}")
    return int(image_size) // factor


@dataclass
class ModelSource:
    """A model named `name` at `patch_sizes`, from `checkpoint` or from `init="random"` with `seed`.

    name: any spelling get_config accepts ("dit_s", "DiT-S/2"); it becomes the canonical config name.
    None means the checkpoint's (or dit_xl for random weights). image_size: pixels; None means the
    checkpoint's (or 256 for random weights). overrides: config fields for random weights (e.g. depth=2
    for tests and the benchmark's tiny run).
    """

    name: str | None
    patch_sizes: tuple[int, ...]
    checkpoint: Path | None = None
    image_size: int | None = None
    seed: int = 0
    overrides: dict = field(default_factory=dict)
    _model: object = field(default=None, repr=False)
    _checkpoint_sha: str | None = field(default=None, repr=False)
    _config: DiTConfig | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.checkpoint is None:
            self._spec = self.name or "dit_xl"  # as given: "DiT-S/4" also names the base patch
            self._config = self.random_config()  # fail fast on a bad name or patch size
            self.name = self._config.name
        else:
            self._spec = self.name
            if self.name is not None:
                self.name = canonical_name(self.name)
            self.checkpoint = Path(self.checkpoint)
            if not self.checkpoint.exists():
                raise BuildError(f"checkpoint not found: {self.checkpoint}")
            if self.image_size is not None:
                latent_size(self.image_size, 1)  # a positive integer; the factor is the checkpoint's
            if self.overrides:
                raise OptionError(
                    "config overrides apply to random weights only; a checkpoint fixes its config"
                )

    # -- identity --------------------------------------------------------------------------------------------
    @property
    def is_random(self) -> bool:
        return self.checkpoint is None

    def checkpoint_sha256(self) -> str | None:
        if self.checkpoint is not None and self._checkpoint_sha is None:
            self._checkpoint_sha = sha256_path(self.checkpoint)
        return self._checkpoint_sha

    def describe(self) -> dict:
        """The manifest's record of the weights."""
        if self.is_random:
            return {"init": "random", "seed": self.seed, "path": None, "sha256": None}
        return {
            "init": "checkpoint",
            "seed": None,
            "path": str(self.checkpoint),
            "sha256": self.checkpoint_sha256(),
        }

    def label(self) -> str:
        if self.is_random:
            return f"seeded random weights (seed {self.seed}; no --checkpoint given)"
        return f"checkpoint {self.checkpoint}"

    @property
    def config(self) -> DiTConfig | None:
        """The flexible model's config where known without loading it: always for random weights; for a
        checkpoint once resolve() or load() has read it."""
        return self._config

    # -- loading ---------------------------------------------------------------------------------------------
    def random_config(self) -> DiTConfig:
        from ..model.config import get_config

        try:
            base = get_config(self._spec, **self.overrides)
            if self.image_size is None:
                self.image_size = base.image_size
            latent = latent_size(self.image_size, base.pixels_per_latent)
            return get_config(self._spec, input_size=latent, patch_sizes=self.patch_sizes, **self.overrides)
        except (ValueError, TypeError) as err:
            raise OptionError(str(err)) from None

    def resolve(self) -> bool:
        """Settle the name and image size (and check the patch sizes) from the config, reading the
        weights only where the config cannot be had without them. Returns whether the weights were
        loaded. Random weights are settled from the start; our flexible .safetensors files carry their
        config as metadata (read from the header alone); other layouts are loaded (config inference
        needs the tensors' shapes)."""
        if self.is_random or self._config is not None:
            return False
        config = peek_checkpoint_config(self.checkpoint)
        if config is None:
            self.load()
            return True
        self._check_loaded(config)
        self._config = config
        return False

    def load(self) -> FlexiDiT:
        """The FlexiDiT (loaded once); checks that it has every requested patch size and fits the name."""
        if self._model is not None:
            return self._model
        from ..model import CheckpointError, FlexiDiT, load_checkpoint

        if self.is_random:
            model = FlexiDiT.from_config(self._config, init="random", seed=self.seed)
        else:
            try:
                model = load_checkpoint(self.checkpoint, patch_sizes=self.patch_sizes)
            except CheckpointError as err:
                raise BuildError(str(err)) from None
            self._check_loaded(model.config)
            self._config = model.config
        self._model = model
        return model

    def _check_loaded(self, config) -> None:
        # The options against the checkpoint's config: a contradiction is bad usage, like a bad value.
        missing = [p for p in self.patch_sizes if p not in config.patch_sizes]
        if missing:
            raise OptionError(
                f"checkpoint {self.checkpoint} has patch sizes {list(config.patch_sizes)}; "
                f"{', '.join(map(str, missing))} requested (a flexible checkpoint carries only the sizes it was "
                "saved with)"
            )
        if self.name is None:
            self.name = config.name
        elif config.name != self.name:
            raise OptionError(
                f"checkpoint {self.checkpoint} holds a {config.name} (depth {config.depth}, hidden "
                f"{config.hidden_size}), not {self.name}; pass --model {config.name} or omit --model"
            )
        image = config.image_size
        if self.image_size is not None and self.image_size != image:
            raise OptionError(
                f"checkpoint {self.checkpoint} is for {image} px images (model input {config.input_size}), "
                f"not {self.image_size}"
            )
        self.image_size = image


def canonical_name(name: str) -> str:
    """The config name for any spelling get_config accepts ("DiT-XL/2" → "dit_xl"); OptionError if unknown."""
    from ..model.config import get_config

    try:
        return get_config(name).name
    except (ValueError, TypeError) as err:
        raise OptionError(str(err)) from None


def peek_checkpoint_config(path: Path) -> DiTConfig | None:
    """The config of a checkpoint read without its tensors, where that is possible: our flexible
    .safetensors (the JSON metadata `save_checkpoint` writes, and the key names from the header, which
    tell the layout as load_checkpoint sees it). None for anything else (load it to know)."""
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    from ..model.checkpoints import config_from_metadata, detect_layout

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
        config = config_from_metadata(path, meta)
        if config is None or detect_layout(keys) != "flexible":
            return None  # base weights only: load_checkpoint derives the weak sizes, so load it
        return config
    except Exception:  # CheckpointError, a foreign or truncated file, bad metadata, ...
        return None  # unreadable here: loading it says why
