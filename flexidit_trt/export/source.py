"""Where a build's weights come from: a checkpoint (identified by its content hash) or seeded random
weights. Loading is lazy, so a rebuild whose graphs are all current never reads the weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts import BuildError, sha256_path

VAE_FACTOR = 8  # the SD VAE maps 8x8 pixels to one latent


@dataclass
class ModelSource:
    """A model named `name` at `patch_sizes`, from `checkpoint` or from `init="random"` with `seed`.

    image_size: pixels; None means the checkpoint's (or 256 for random weights). overrides: config
    fields for random weights (e.g. depth=2 for tests and the benchmark's tiny run).
    """

    name: str | None
    patch_sizes: tuple[int, ...]
    checkpoint: Path | None = None
    image_size: int | None = None
    seed: int = 0
    overrides: dict = field(default_factory=dict)
    _model: object = field(default=None, repr=False)
    _checkpoint_sha: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.checkpoint is None:
            self.name = self.name or "dit_xl"
            self.image_size = self.image_size or 256
            self._check_image_size()
            self._config = self.random_config()  # fail fast on a bad name or patch size
        else:
            self.checkpoint = Path(self.checkpoint)
            if not self.checkpoint.exists():
                raise BuildError(f"checkpoint not found: {self.checkpoint}")
            if self.image_size is not None:
                self._check_image_size()
            if self.overrides:
                raise BuildError(
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

    # -- loading ---------------------------------------------------------------------------------------------
    def random_config(self):
        from ..model.config import get_config

        latent = self.image_size // VAE_FACTOR
        try:
            return get_config(self.name, input_size=latent, patch_sizes=self.patch_sizes, **self.overrides)
        except (ValueError, TypeError) as err:
            raise BuildError(str(err)) from None

    def load(self):
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
        self._model = model
        return model

    def _check_loaded(self, config) -> None:
        missing = [p for p in self.patch_sizes if p not in config.patch_sizes]
        if missing:
            raise BuildError(
                f"checkpoint {self.checkpoint} has patch sizes {list(config.patch_sizes)}; "
                f"{', '.join(map(str, missing))} requested (a flexible checkpoint carries only the sizes it was "
                "saved with)"
            )
        if self.name is None:
            self.name = config.name
        elif config.name != self.name:
            raise BuildError(
                f"checkpoint {self.checkpoint} holds a {config.name} (depth {config.depth}, hidden "
                f"{config.hidden_size}), not {self.name}; pass --model {config.name} or omit --model"
            )
        image = config.input_size * VAE_FACTOR
        if self.image_size is not None and self.image_size != image:
            raise BuildError(
                f"checkpoint {self.checkpoint} is for {image} px images (latent {config.input_size}), "
                f"not {self.image_size}"
            )
        self.image_size = image

    def _check_image_size(self) -> None:
        if self.image_size <= 0 or self.image_size % VAE_FACTOR:
            raise BuildError(
                f"image size {self.image_size} is not a positive multiple of {VAE_FACTOR} (the VAE's factor)"
            )
